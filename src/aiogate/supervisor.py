"""`server.workers > 1`: a parent that supervises N serving processes sharing one port.

Each worker is `python -m aiogate run` in worker mode: it binds the proxy port with SO_REUSEPORT
(the kernel spreads connections), serves, and speaks the sd_notify protocol to a datagram socket
the parent owns, exactly as a single process would speak to systemd. The parent aggregates those
messages for systemd, runs the admin listener (metrics aggregated through prometheus_client's
multiprocess mode), forwards SIGHUP/SIGTERM, and restarts a worker that dies.

It also watches the config source (`config_source:`, etcd) for the host: each value it accepts
goes to a second private copy the workers merge on every SIGHUP, exactly like a file reload.

It also owns the host view (hostview/, ADR 0017): the host's one opinion of every backend.
Active health checks and discovery run here, once per host; workers follow the result over a
Unix socket and report their attempts' outcomes, which the host's breakers judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Final

from aiohttp import web

from . import log, sdnotify
from .admin import ReloadOutcome, make_admin_app
from .config import (
    ConfigError,
    ConfigIssue,
    GatewayConfig,
    SourceValue,
    load_config,
    loaded_source,
)
from .configsource import EtcdConfigWatcher
from .discovery import Discovery
from .hostview.host import HostView
from .listeners import ListenError, start_site
from .metrics import CONFIG_RELOADS, config_loaded
from .reload import configure_logging
from .tasks import TaskSet
from .watch import ConfigWatcher
from .watchdog import WATCHDOG_USEC, Watchdog, pinging_worker, watchdog_timeout
from .worker_env import HOSTVIEW_ENV, SOURCE_ENV, WORKER_ENV

__all__ = ["Supervisor"]

_RESTART_DELAY: Final = 1.0
_RELOAD_WAIT: Final = 10.0


class _NotifyProtocol(asyncio.DatagramProtocol):
    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def datagram_received(self, data: bytes, addr: object) -> None:
        self._supervisor.on_worker_message(data.decode(errors="replace"))


class Supervisor:
    def __init__(self, config_path: Path, config: GatewayConfig, runtime_dir: Path) -> None:
        """`runtime_dir` is private to this instance and removed at exit; its `metrics`
        folder must already be PROMETHEUS_MULTIPROC_DIR when prometheus_client is imported,
        so the CLI creates it before importing this module."""
        self._path = config_path
        self._config = config
        self._count = config.server.workers
        self._workers: dict[int, asyncio.subprocess.Process] = {}
        self._ready_signals = 0
        self._ready_event = asyncio.Event()
        #: Each worker's latest reload outcome (by pid), and a wake-up for whoever waits on one.
        self._reports: dict[int, sdnotify.ReloadReport] = {}
        self._progress = asyncio.Event()
        self._started = False
        self._stop = asyncio.Event()
        self._generation = 1
        self._lock = asyncio.Lock()
        self._tasks = TaskSet()
        self._dir = runtime_dir
        # Workers read this copy of the last *accepted* file, never the live one: a worker
        # restarted after the file was edited (or rejected) must not crash-loop on it, nor
        # serve a config its siblings do not.
        self._accepted = self._dir / "accepted.yaml"
        self._accepted_text = b""
        #: Whether `_accepted_text` is the file's (not a PUT /admin/config body): the watcher's
        #: baseline then.
        self._accepted_file = False
        #: The last good value of the config source (etcd) and the workers' copy of it (absent
        #: while there is none); every reload merges it, as a single process's Reloader does.
        self._accepted_source = self._dir / "accepted-source.yaml"
        self._source_value: SourceValue | None = None
        #: The host's one watch of the config source; None without `config_source:`.
        self._source: EtcdConfigWatcher | None = None
        # `reload.watch`: the parent watches and reloads; its workers follow by SIGHUP.
        self._watcher = ConfigWatcher(
            config_path,
            self.reload,
            lambda: self._config.reload,
            baseline=lambda: self._accepted_text if self._accepted_file else None,
        )
        #: systemd's watchdog timeout (WatchdogSec), passed on to the workers; None: off.
        self._watchdog_timeout = watchdog_timeout()
        #: When each worker (by pid) last pinged its watchdog. A worker is watched from its
        #: first ping on (it pings once serving), as systemd watches a service once it is ready.
        self._pings: dict[int, float] = {}
        #: The host's backend state, health checks and breakers; workers follow it.
        self._host = HostView(self._dir / "hostview.sock")
        #: Discovery runs here only; the host view sends the workers what it found.
        self._discovery = Discovery()

    # -- AdminController -------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        # Serving while at least one worker lives: the port still answers while a crashed
        # sibling restarts, and a reload in progress is not an outage either.
        return self._started and any(p.returncode is None for p in self._workers.values())

    @property
    def draining(self) -> bool:
        return self._stop.is_set()

    @property
    def config(self) -> GatewayConfig:
        return self._config

    @property
    def config_path(self) -> Path:
        return self._path

    async def reload(self, raw: bytes | None = None) -> ReloadOutcome:
        """Re-read the config file, or apply `raw` (PUT /admin/config) instead: the workers
        read the supervisor's copy, so they apply the same bytes either way."""
        async with self._lock:
            if self.draining:
                return ReloadOutcome(False, self._generation, ("the gateway is shutting down",))
            sdnotify.reloading()
            try:
                outcome = await self._reload(raw)
            finally:
                if not self.draining:  # never READY=1 after STOPPING=1
                    sdnotify.ready()
        await self._watcher.sync()  # the new config may switch watching on or off
        await self._sync_source()
        return outcome

    async def apply_source(self, value: SourceValue | None) -> ReloadOutcome:
        """The config source changed (`None`: its key was deleted): merge it over the running
        file config and reload the workers with it, like a file reload; if it is invalid, or a
        worker rejects it, the running config and the last good value stay."""
        async with self._lock:
            if self.draining:
                return ReloadOutcome(False, self._generation, ("the gateway is shutting down",))
            text = self._accepted_text
            try:
                config = await asyncio.to_thread(load_config, self._path, raw=text, source=value)
            except ConfigError as exc:
                return self._invalid(exc, "etcd")
            return await self._apply(config, text, value, "etcd", from_file=self._accepted_file)

    async def _reload(self, raw: bytes | None) -> ReloadOutcome:
        source = self._source_value  # the new file is merged with the last good value
        try:
            if raw is None:
                config, text = await asyncio.to_thread(self._load_stable, source)
            else:
                config = await asyncio.to_thread(load_config, self._path, raw=raw, source=source)
                text = raw
        except ConfigError as exc:
            return self._invalid(exc, "file")
        return await self._apply(config, text, source, "file", from_file=raw is None)

    def _invalid(self, exc: ConfigError, origin: str) -> ReloadOutcome:
        errors = tuple(str(i) for i in exc.issues)
        CONFIG_RELOADS.labels("rejected").inc()  # the parent counts; workers do not
        log.get_logger("aiogate.reload").error(
            log.CONFIG_REJECTED, source=origin, path=str(self._path), errors=list(errors)
        )
        return ReloadOutcome(False, self._generation, errors)

    async def _apply(
        self,
        config: GatewayConfig,
        text: bytes,
        source: SourceValue | None,
        origin: str,
        *,
        from_file: bool,
    ) -> ReloadOutcome:
        """Have every worker load `text` merged with `source` (validated as `config`)."""
        # Without `config_source:` a value means nothing; dropping it keeps the workers, which
        # name the value by their running config's key, merging exactly what this process does.
        if config.config_source is None:
            source = None
        # A config can validate here and still fail to build in the workers (a CA file that is
        # no PEM bundle, say). The workers read the copies, so they hold the candidate while
        # they reload; both are put back unless every one of them applied it, so that a worker
        # restarted later never loads a config its siblings rejected.
        previous = self._accepted_text, self._source_value
        await asyncio.to_thread(self._write_copies, text, source)
        applied, reasons = await self._ask_workers(list(self._workers.values()))
        if reasons:
            await asyncio.to_thread(self._write_copies, *previous)
            if applied:  # back to the config their siblings still serve
                _, failed = await self._ask_workers(applied)
                if failed:
                    log.get_logger("aiogate.supervisor").error(
                        log.WORKER_ROLLBACK_FAILED, errors=failed
                    )
            CONFIG_RELOADS.labels("rejected").inc()
            log.get_logger("aiogate.reload").error(
                log.CONFIG_REJECTED, source=origin, path=str(self._path), errors=reasons
            )
            return ReloadOutcome(False, self._generation, tuple(reasons))
        self._config = config
        self._generation += 1
        CONFIG_RELOADS.labels("applied").inc()
        self._accepted_text = text
        self._accepted_file = from_file
        self._source_value = source
        config_loaded(text + (source.raw if source is not None else b""))
        configure_logging(config)
        self._discovery.applied(config)
        self._host.apply(self._discovery.apply(config), self._found())
        return ReloadOutcome(True, self._generation)

    async def rebuild(self, reason: str) -> ReloadOutcome:
        """Discovery found a changed backend set: the host view follows it and sends it to the
        workers, which merge it into their config and rebuild as they would for a reload."""
        del reason
        self._host.apply(self._discovery.apply(self._config), self._found())
        return ReloadOutcome(True, self._generation)

    def _found(self) -> dict[str, tuple[tuple[str, int], ...]]:
        return {
            name: tuple((b.url, b.weight) for b in backends)
            for name, backends in self._discovery.found().items()
        }

    def upstreams_document(self) -> dict[str, object]:
        """`GET /admin/upstreams`: the host view, in the single process's document shape."""
        return {"generation": self._generation, **self._host.document()}

    async def _ask_workers(
        self, processes: list[asyncio.subprocess.Process]
    ) -> tuple[list[asyncio.subprocess.Process], list[str]]:
        """SIGHUP `processes`, wait for each one's outcome: (those that applied, the reasons of
        those that did not). A worker that does not answer within `_RELOAD_WAIT` is in
        neither (it is still reloading: nothing says it will reject)."""
        baseline = {p.pid: self._reports[p.pid].number for p in processes if p.pid in self._reports}
        waiting = []
        for process in processes:
            if process.returncode is None:
                process.send_signal(signal.SIGHUP)
                waiting.append(process)
        applied: list[asyncio.subprocess.Process] = []
        reasons: list[str] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _RELOAD_WAIT
        while True:
            self._progress.clear()
            for process in list(waiting):
                report = self._reports.get(process.pid)
                if report is not None and report.number > baseline.get(process.pid, 0):
                    waiting.remove(process)
                    if report.applied:
                        applied.append(process)
                    else:
                        reasons.append(f"worker {process.pid}: {report.reason}")
                elif process.returncode is not None:
                    waiting.remove(process)
                    reasons.append(f"worker {process.pid} exited (code {process.returncode})")
            remaining = deadline - loop.time()
            if not waiting:
                return applied, reasons
            if remaining <= 0:
                log.get_logger("aiogate.supervisor").warning(
                    log.WORKER_RELOAD_SLOW, workers=[p.pid for p in waiting]
                )
                return applied, reasons
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)

    def _load_stable(self, source: SourceValue | None) -> tuple[GatewayConfig, bytes]:
        """Validate the file (merged with `source`) and return the exact bytes validated."""
        before = self._path.read_bytes() if self._path.exists() else b""
        config = load_config(self._path, source=source)
        if self._path.read_bytes() != before:
            message = "the file changed while it was being validated; reload again"
            raise ConfigError([ConfigIssue(str(self._path), 1, 1, message)])
        return config, before

    def _accept_loaded(self) -> None:
        """Accept the bytes the CLI loaded: the file may have been saved again since, and the
        watcher and the workers' copy must start from what this process validated."""
        source = loaded_source(self._config)
        self._accepted_file = True
        self._accept(source if source is not None else self._path.read_bytes())

    def _accept(self, text: bytes) -> None:
        config_loaded(text)
        self._accepted_text = text
        self._write_copy(text)

    def _write_copy(self, text: bytes) -> None:
        staging = self._accepted.with_suffix(".tmp")
        staging.write_bytes(text)
        staging.replace(self._accepted)

    def _write_copies(self, text: bytes, source: SourceValue | None) -> None:
        self._write_copy(text)
        self._write_source_copy(source)

    def _write_source_copy(self, source: SourceValue | None) -> None:
        if source is None:
            self._accepted_source.unlink(missing_ok=True)
            return
        # Only this process and its workers (same user) may read what etcd holds.
        staging = self._accepted_source.with_suffix(".tmp")
        staging.unlink(missing_ok=True)
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(source.raw)
        staging.replace(self._accepted_source)

    # -- the config source -----------------------------------------------------------------
    async def _start_source(self) -> None:
        """etcd's value merged before any worker starts, so their first requests use it (if
        etcd answers within its timeout and the value is valid; else the watch applies it)."""
        wanted = self._config.config_source
        if wanted is None:
            return
        self._source = EtcdConfigWatcher(wanted.etcd)
        value = await self._source.first_read()
        if value is None:
            return
        text = self._accepted_text
        try:
            config = await asyncio.to_thread(load_config, self._path, raw=text, source=value)
        except ConfigError as exc:
            log.get_logger("aiogate.reload").error(
                log.CONFIG_REJECTED,
                source="etcd",
                path=str(self._path),
                errors=[str(issue) for issue in exc.issues],
            )
            return
        self._config = config
        self._source_value = value
        await asyncio.to_thread(self._write_source_copy, value)
        config_loaded(text + value.raw)

    async def _start_watching(self) -> None:
        """The file and etcd, once the workers can take a SIGHUP: a change to the key made
        since the first read is applied now (the watcher reads it again before watching)."""
        if self._source is not None:
            self._source.start(self)
        await self._watcher.sync()

    async def _stop_watching(self) -> None:
        await self._watcher.close()
        if self._source is not None:
            await self._source.close()

    async def _sync_source(self) -> None:
        """A reload may add, change or drop `config_source:`: watch what the new config says."""
        wanted = self._config.config_source
        settings = wanted.etcd if wanted is not None else None
        if self._source is not None and self._source.settings == settings:
            return
        if self._source is not None:
            await self._source.close()
            self._source = None
        if settings is not None and not self.draining:
            self._source = EtcdConfigWatcher(settings, running=self._source_value)
            self._source.start(self)

    # -- worker messages -------------------------------------------------------------------
    def on_worker_message(self, message: str) -> None:
        pinged = pinging_worker(message)
        if pinged is not None:
            self._pings[pinged] = asyncio.get_running_loop().time()
            return
        report = sdnotify.parse_reload_status(message)
        if report is not None:
            self._reports[report.pid] = report
            self._progress.set()
        if "READY=1" in message.splitlines():
            self._ready_signals += 1
            if self._ready_signals >= len(self._workers):
                self._ready_event.set()

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> int:
        try:
            return await self._run()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def _run(self) -> int:
        configure_logging(self._config)
        logger = log.get_logger("aiogate.supervisor")
        loop = asyncio.get_running_loop()
        # Fail fast, with the CLI's clear "cannot start" line, when the proxy port is taken:
        # otherwise every worker would die on bind and be restarted forever.
        _check_bindable(self._config.server.host, self._config.server.port)
        self._accept_loaded()
        await self._start_source()
        notify_path, transport = await self._open_notify_socket(loop)
        await self._start_host_view()
        env = self._worker_env(notify_path)
        watchdog = None
        if self._watchdog_timeout is not None:
            env[WATCHDOG_USEC] = str(int(self._watchdog_timeout * 1_000_000))
            watchdog = Watchdog(self._watchdog_timeout, self._workers_alive)
            watchdog.start()
        admin = web.AppRunner(make_admin_app(self, self.upstreams_document), access_log=None)
        await admin.setup()
        await start_site(admin, self._config.admin.host, self._config.admin.port)
        for index in range(self._count):
            self._spawn_in_background(index, env, delay=0.0)
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            await asyncio.wait_for(self._ready_event.wait(), 30)
            self._started = True
            sdnotify.ready()
            logger.info(
                log.STARTED,
                workers=self._count,
                pid=os.getpid(),
                listen=self._config.server.listen,
                admin=self._config.admin.listen,
            )
        except TimeoutError:
            logger.error(log.WORKERS_NOT_READY, workers=self._count)
        await self._start_watching()
        await self._stop.wait()
        await self._stop_watching()

        sdnotify.stopping()
        logger.info(log.SHUTDOWN_STARTED, workers=len(self._workers))
        for process in self._workers.values():
            process.send_signal(signal.SIGTERM)
        grace = self._config.server.shutdown_timeout + 5.0
        waits = [p.wait() for p in self._workers.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), grace)
        except TimeoutError:
            for process in self._workers.values():
                if process.returncode is None:
                    process.kill()
        await self._tasks.cancel()
        await self._stop_host_view()
        if watchdog is not None:
            await watchdog.stop()
        await admin.cleanup()
        transport.close()
        logger.info(log.SHUTDOWN_COMPLETE)
        log.flush()
        return 0

    def _worker_env(self, notify_path: str) -> dict[str, str]:
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        env[HOSTVIEW_ENV] = str(self._host.socket_path)
        env[SOURCE_ENV] = str(self._accepted_source)
        env.pop("WATCHDOG_PID", None)  # systemd's is ours; a worker pings us instead
        return env

    async def _open_notify_socket(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[str, asyncio.DatagramTransport]:
        notify_path = str(self._dir / "notify.sock")
        notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_sock.bind(notify_path)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _NotifyProtocol(self), sock=notify_sock
        )
        return notify_path, transport

    async def _start_host_view(self) -> None:
        """Discovery's first read, then the host view (workers connect to it as they start)."""
        await self._discovery.start(self._config)
        self._discovery.attach(self)
        await self._host.start(self._discovery.apply(self._config), self._found())

    async def _stop_host_view(self) -> None:
        await self._discovery.close()
        await self._host.close()

    def _workers_alive(self) -> bool:
        """The supervisor's watchdog tick: a worker silent for a whole watchdog timeout has a
        hung event loop; it is killed (and restarted like any worker that died). The
        supervisor's own loop is alive, since this runs: systemd gets its ping."""
        assert self._watchdog_timeout is not None
        now = asyncio.get_running_loop().time()
        for index, process in list(self._workers.items()):
            last = self._pings.get(process.pid)
            if (
                process.returncode is None
                and last is not None
                and now - last > self._watchdog_timeout
            ):
                log.get_logger("aiogate.supervisor").error(
                        log.WORKER_HUNG, worker=index, pid=process.pid,
                        silent_s=round(now - last, 1),
                    )  # fmt: skip
                process.kill()
                self._pings.pop(process.pid, None)
        return True

    def _on_sighup(self) -> None:
        self._tasks.spawn(self.reload(), name="supervisor-reload")

    def _spawn_in_background(self, index: int, env: dict[str, str], *, delay: float) -> None:
        self._tasks.spawn(self._keep_worker(index, env, delay), name=f"supervisor-worker-{index}")

    async def _keep_worker(self, index: int, env: dict[str, str], delay: float) -> None:
        """Run worker `index`, restarting it after an unexpected exit."""
        logger = log.get_logger("aiogate.supervisor")
        while not self.draining:
            if delay:
                await asyncio.sleep(delay)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "aiogate", "run", "--config", str(self._accepted),
                env=dict(env, **{WORKER_ENV: str(index)}),
            )  # fmt: skip
            self._workers[index] = process
            logger.info(log.WORKER_STARTED, worker=index, pid=process.pid)
            code = await process.wait()
            self._pings.pop(process.pid, None)
            self._reports.pop(process.pid, None)
            self._progress.set()  # a reload waiting for its answer stops waiting
            if self._stop.is_set():  # SIGTERM arrived while this worker ran
                return
            del self._workers[index]
            _forget_worker_metrics(process.pid)
            logger.error(log.WORKER_EXITED, worker=index, pid=process.pid, code=code)
            delay = _RESTART_DELAY


def _check_bindable(host: str, port: int) -> None:
    """Raise OSError if the workers could not bind `host:port` (bound, never listened)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ListenError(host, port, exc) from exc


def _forget_worker_metrics(pid: int | None) -> None:
    """A dead worker's live gauges (active connections) must stop counting."""
    if pid is None or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
