"""Active health checks: one background task per upstream, owned by its Runtime.

Every `interval` (± `jitter`) the task checks all backends of the upstream concurrently and
feeds each verdict to the backend's state, which flips health only after `healthy_threshold`
/ `unhealthy_threshold` verdicts in a row. Checks:

- `http`: a request on the checker's own keep-alive connection (not the traffic pool's), healthy
  when the status is in `expected_statuses` (default: any 2xx/3xx);
- `tcp`: a connect;
- `script`: `command` run without a shell (`{host}`, `{port}`, `{url}` in arguments are
  replaced; its environment is PATH, LANG, `env` and AIOGATE_BACKEND_*, or the gateway's own
  with `inherit_env`), exit 0 = healthy; it runs in a
  process group of its own, killed whole at `timeout`, on cancel and once the script exits;
  the first 2 KiB of its output go to the log (the rest is read and dropped).

After a reload, the old Runtime's task keeps running until that Runtime is closed, but only the
task of the Runtime that owns a backend's state (`check_owner`) records verdicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import Mapping, Sequence

from .. import log
from ..config import HealthCheckConfig
from ..tasks import BackgroundTask
from .forward import ConnectionPool, UpstreamError
from .pool import Backend, UpstreamPool

__all__ = ["HealthChecker", "run_script", "script_env"]

_OUTPUT_LIMIT = 2048
_REAP_WAIT = 1.0
_USER_AGENT = "aiogate-health-check"


class HealthChecker:
    """Runs the active checks of one upstream until stopped."""

    def __init__(
        self,
        pool: UpstreamPool,
        config: HealthCheckConfig,
        generation: int,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._config = config
        self._generation = generation
        self._random = rng or random.Random()
        self._task = BackgroundTask(f"health-{pool.name}")
        self._connections: dict[str, ConnectionPool] = {}
        if config.type == "http":
            for backend in pool.backends:
                # One connection per backend, so a check costs no handshake once warm.
                self._connections[backend.label] = ConnectionPool(
                    backend.connections.origin,
                    max_idle=1,
                    idle_timeout=max(config.interval * 2, 1.0),
                    connect_timeout=config.timeout,
                    ssl_context=backend.connections.ssl_context,
                    server_name=pool.config.tls.server_name,
                )

    def start(self) -> None:
        self._task.start(self._run())

    async def stop(self) -> None:
        await self._task.stop()
        for connections in self._connections.values():
            await connections.close()

    async def _run(self) -> None:
        config = self._config
        loop = asyncio.get_running_loop()
        # A short random delay first, so that many upstreams do not all check at once.
        await asyncio.sleep(self._random.uniform(0, min(config.interval, 1.0) * config.jitter))
        while True:
            await self.check_all(loop)
            spread = config.interval * config.jitter
            await asyncio.sleep(config.interval + self._random.uniform(-spread, spread))

    async def check_all(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        loop = loop or asyncio.get_running_loop()
        backends: Sequence[Backend] = self._pool.backends
        results = await asyncio.gather(*(self._check(b) for b in backends))
        now = loop.time()
        config = self._config
        for backend, (ok, detail) in zip(backends, results, strict=True):
            state = backend.state
            if state.check_owner != self._generation:
                continue  # a newer Runtime checks this backend now
            state.check_result(
                ok, detail, config.healthy_threshold, config.unhealthy_threshold, now
            )

    async def _check(self, backend: Backend) -> tuple[bool, str]:
        kind = self._config.type
        try:
            if kind == "http":
                return await self._http(backend)
            if kind == "tcp":
                return await self._tcp(backend)
            return await self._script(backend)
        except Exception as exc:  # a check must never kill the task
            return False, f"check error: {exc!r}"

    async def _http(self, backend: Backend) -> tuple[bool, str]:
        config = self._config
        loop = asyncio.get_running_loop()
        headers = [
            ("Host", config.host or backend.authority),
            ("User-Agent", _USER_AGENT),
        ]
        connections = self._connections[backend.label]
        try:
            response = await connections.request(
                config.method,
                backend.base_path + config.path,
                headers,
                None,
                deadline=loop.time() + config.timeout,
            )
            try:
                await response.read()
            finally:
                response.release()
        except UpstreamError as exc:
            return False, f"http: {exc}"
        status = response.status
        expected = config.expected_statuses
        ok = status in expected if expected else 200 <= status < 400
        return ok, f"http {status}"

    async def _tcp(self, backend: Backend) -> tuple[bool, str]:
        origin = backend.connections.origin
        try:
            async with asyncio.timeout(self._config.timeout):
                _, writer = await asyncio.open_connection(origin.host, origin.port)
        except TimeoutError:
            return False, f"tcp: connect timed out after {self._config.timeout:g}s"
        except OSError as exc:
            return False, f"tcp: {exc.strerror or exc}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True, "tcp connected"

    async def _script(self, backend: Backend) -> tuple[bool, str]:
        config = self._config
        assert config.command is not None
        origin = backend.connections.origin
        values = {"host": origin.host, "port": str(origin.port), "url": backend.label}
        argv = [_expand(arg, values) for arg in config.command]
        env = dict(
            script_env(config.env, inherit=config.inherit_env),
            AIOGATE_BACKEND_URL=backend.label,
            AIOGATE_BACKEND_HOST=origin.host,
            AIOGATE_BACKEND_PORT=str(origin.port),
            AIOGATE_UPSTREAM=self._pool.name,
        )
        try:
            code, output = await run_script(argv, env, config.timeout)
        except OSError as exc:
            return False, f"script: cannot run {argv[0]!r}: {exc.strerror or exc}"
        if code is None:
            return False, f"script: killed after {config.timeout:g}s"
        text = output.decode(errors="replace").strip()
        logger = log.get_logger("aiogate.health")
        (logger.debug if code == 0 else logger.info)(
            log.HEALTH_CHECK_OUTPUT,
            upstream=self._pool.name,
            backend=backend.label,
            exit_code=code,
            output=text,
        )
        return code == 0, f"script exit {code}"


def script_env(extra: Mapping[str, str], *, inherit: bool) -> dict[str, str]:
    """The environment of a check script: PATH and LANG only, unless told to inherit.

    The gateway's environment holds its secrets (`${env:JWT_SECRET}`, the admin token); a
    check script needs none of them, and whatever it runs could leak them.
    """
    if inherit:
        base = dict(os.environ)
    else:
        base = {"PATH": os.environ.get("PATH", os.defpath)}
        if "LANG" in os.environ:
            base["LANG"] = os.environ["LANG"]
    base.update(extra)
    return base


async def run_script(
    argv: Sequence[str], env: Mapping[str, str], seconds: float
) -> tuple[int | None, bytes]:
    """Run a check script: (exit code, or None when killed after `seconds`; its first output).

    The script runs in a session (a process group) of its own, and the whole group is killed:
    after `seconds`, when the check is cancelled, and once the script has exited (whatever it
    left running would otherwise hold the output pipe open, and live on after every check).
    Only the first `_OUTPUT_LIMIT` bytes of output are kept; the rest is read and dropped, so
    a chatty script costs no memory. Raises OSError when the script cannot be started.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    reader = asyncio.create_task(_read_capped(proc.stdout, _OUTPUT_LIMIT))
    try:
        async with asyncio.timeout(seconds):
            code = await proc.wait()
            _kill_group(proc.pid)
            return code, await reader
    except TimeoutError:
        await _kill(proc)
        return None, b""
    except asyncio.CancelledError:
        await _kill(proc)
        raise
    finally:
        if not reader.done():
            reader.cancel()
        # Awaited, not left behind; its own cancellation (or a pipe error) is of no interest.
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await reader


async def _kill(proc: asyncio.subprocess.Process) -> None:
    _kill_group(proc.pid)
    # Bounded: a process that left the group (setsid) and holds the pipe would keep asyncio's
    # wait() from returning; the child itself is reaped by the child watcher all the same.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_REAP_WAIT):
            await proc.wait()


async def _read_capped(stream: asyncio.StreamReader, limit: int) -> bytes:
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return bytes(kept)


def _kill_group(pgid: int) -> None:
    # The script is its session's leader, so its pid is the group id. While the group has a
    # member the id cannot be reused; once it has none this is ESRCH.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _expand(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{" + key + "}", value)
    return arg
