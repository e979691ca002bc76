"""The serving process: listeners, signals, readiness, graceful shutdown.

One process serves when `server.workers` is 1. With more, a supervisor (`supervisor.py`) runs the
admin listener and N worker processes that each run this daemon in worker mode and share the
proxy port through SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from . import log, sdnotify
from .admin import ReloadOutcome, make_admin_app
from .config import ConfigError, GatewayConfig, SourceValue, load_config, loaded_source
from .configsource import EtcdConfigWatcher
from .connection import ConnectionFactory
from .discovery import Discovery
from .hostview.link import HostLink
from .listeners import ListenError, start_site
from .metrics import config_loaded
from .reload import Reloader, configure_logging
from .runtime import Runtime, RuntimeHolder
from .server import GatewayServer
from .tasks import TaskSet
from .tls import TlsListener
from .watch import ConfigWatcher
from .watchdog import PING, Watchdog, watchdog_timeout, worker_ping
from .worker_env import HOSTVIEW_ENV, SOURCE_ENV

__all__ = ["Daemon", "bind_socket"]

#: How long a starting worker waits for the host view's first snapshot (the supervisor is up
#: before it spawns workers, so this is only reached when something is wrong).
_FIRST_SNAPSHOT_WAIT = 2.0


def bind_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket; bound here so a bad address fails before anything else starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise ListenError(host, port, exc) from exc
    sock.setblocking(False)
    return sock


class Daemon:
    """Serves one config until told to stop.

    `worker=True`: no admin listener, the supervising parent has it.
    """

    def __init__(self, config_path: Path, config: GatewayConfig, *, worker: bool = False) -> None:
        self._path = config_path
        self._initial = config
        self._worker = worker
        self._stop = asyncio.Event()
        self._ready = False
        self._draining = False
        self._holder: RuntimeHolder | None = None
        self._reloader: Reloader | None = None
        self._tasks = TaskSet()
        #: Reloads asked of this process so far; a worker tags its outcome with it.
        self._reloads = 0
        #: A worker's link to its supervisor's host view: health checks, breakers and
        #: discovery run once per host there. None in a single process.
        socket_path = os.environ.get(HOSTVIEW_ENV) if worker else None
        self._host = HostLink(socket_path) if socket_path else None
        #: Backends from etcd; idle (no tasks) unless an upstream has `discovery:`.
        self._discovery = Discovery(follower=self._host is not None)
        if self._host is not None:
            self._host.on_found = self._discovery.receive
        #: Routes and upstreams from etcd (`config_source:`); None without one.
        self._source: EtcdConfigWatcher | None = None
        #: A worker's copy of etcd's value, kept by the supervisor, which alone watches etcd.
        copy = os.environ.get(SOURCE_ENV) if worker else None
        self._source_copy = Path(copy) if copy else None
        # `reload.watch`: the process owning the config watches it; a worker never does.
        self._watcher = (
            None
            if worker
            else ConfigWatcher(
                config_path, self.reload, lambda: self.config.reload, baseline=self._loaded_file
            )
        )

    # -- AdminController -------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def config(self) -> GatewayConfig:
        assert self._holder is not None
        return self._holder.current.config

    @property
    def config_path(self) -> Path:
        return self._path

    async def reload(self, raw: bytes | None = None) -> ReloadOutcome:
        """Re-read the config file, or apply `raw` (PUT /admin/config) instead."""
        assert self._reloader is not None
        self._reloads += 1
        number = self._reloads
        if not self._draining:
            sdnotify.reloading()
        outcome: ReloadOutcome | None = None
        try:
            outcome = await self._reloader.reload(raw)
        finally:
            # Never READY=1 after STOPPING=1: a reload that ends during shutdown stays quiet.
            if not self._draining:
                if self._worker:
                    # The supervisor answers POST /admin/reload from every worker's outcome.
                    errors = ("the reload did not finish",) if outcome is None else outcome.errors
                    applied = outcome is not None and outcome.applied
                    sdnotify.ready(sdnotify.reload_status(os.getpid(), number, applied, errors))
                else:
                    sdnotify.ready()
        assert outcome is not None  # the reload returned: it did not raise
        await self._sync_source()
        if self._watcher is not None:  # the new config may switch watching on or off
            await self._watcher.sync()
        return outcome

    def _loaded_file(self) -> bytes | None:
        """The bytes the running config was read from (the watcher's baseline)."""
        if self._reloader is None:
            return loaded_source(self._initial)
        return self._reloader.loaded_file

    # -- lifecycle -------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        config = self._initial
        configure_logging(config)
        logger = log.get_logger("aiogate.daemon")
        # The bytes the config was loaded from: the file may have been saved again since.
        file_text = loaded_source(config) or self._path.read_bytes()
        config, source_value = await self._start_source(config, file_text)
        await self._follow_host()
        # The first read from etcd (bounded by its timeout) comes before the first Runtime, so a
        # gateway whose etcd is up starts ready with the registered backends.
        await self._discovery.start(config)
        runtime = Runtime(self._discovery.apply(config), host=self._host)
        await runtime.start()
        if not self._worker:
            config_loaded(file_text + (source_value.raw if source_value is not None else b""))
        holder = self._holder = RuntimeHolder(runtime)
        self._reloader = self._make_reloader(holder, config, file_text, source_value)
        gateway = GatewayServer(holder)
        low_level = gateway.make_server()
        loop = asyncio.get_running_loop()
        listen = config.server
        proxy_socket = bind_socket(listen.host, listen.port, reuse_port=listen.workers > 1)
        proxy = await loop.create_server(self._protocols(low_level, config), sock=proxy_socket)
        admin_runner = None if self._worker else await self._start_admin(holder, config)
        self._install_signals(loop)
        self._ready = True
        logger.info(
            log.STARTED,
            listen=listen.listen,
            tls=listen.tls is not None,
            admin=None if self._worker else config.admin.listen,
            pid=os.getpid(),
            worker=self._worker,
            routes=len(config.routes),
        )
        sdnotify.ready()
        watchdog = self._start_watchdog()
        if self._watcher is not None:
            await self._watcher.sync()
        await self._stop.wait()
        # Graceful shutdown: stop accepting, report not-ready, let in-flight requests finish.
        self._draining = True
        if self._watcher is not None:
            await self._watcher.close()
        sdnotify.stopping()
        timeout = holder.current.config.server.shutdown_timeout
        logger.info(log.SHUTDOWN_STARTED, in_flight=holder.current.in_flight, timeout=timeout)
        proxy.close()
        low_level.pre_shutdown()
        await _shutdown_within(low_level, timeout)
        await self._discovery.close()
        if self._source is not None:
            await self._source.close()
        # SIGHUP reloads in flight are cancelled (a half-started Runtime closes itself), and
        # the Reloader refuses any later one, before the current Runtime is closed: a reload
        # finishing after that would swap in a Runtime nobody closes.
        await self._tasks.cancel()
        await self._reloader.close()
        await holder.current.close()
        await self._unfollow_host()
        if admin_runner is not None:
            await admin_runner.cleanup()
        if watchdog is not None:
            await watchdog.stop()
        logger.info(log.SHUTDOWN_COMPLETE)
        log.flush()
        return 0

    def _protocols(
        self, low_level: web.Server, config: GatewayConfig
    ) -> Callable[[], asyncio.BaseProtocol]:
        """The proxy listener's protocol factory: aiohttp's, inside TLS with `server.tls`.

        Every process serving the port (each worker too) does its own TLS; the Reloader
        re-reads the certificate on every reload.
        """
        tls_config = config.server.tls
        if tls_config is None:
            return low_level
        assert self._reloader is not None
        # The handshake is bounded like a request head: a client that never finishes it is
        # closed after `server.header_timeout`.
        tls = TlsListener(tls_config, low_level, handshake_timeout=config.server.header_timeout)
        self._reloader.tls = tls
        return tls.protocol

    async def _follow_host(self) -> None:
        """A worker of a host view: the host's backend state and discovered backends first."""
        if self._host is not None:
            self._host.start()
            await self._host.first_snapshot(_FIRST_SNAPSHOT_WAIT)

    async def _unfollow_host(self) -> None:
        if self._host is not None:
            await self._host.close()

    def _make_reloader(
        self,
        holder: RuntimeHolder,
        config: GatewayConfig,
        file_text: bytes,
        source_value: SourceValue | None,
    ) -> Reloader:
        """The Reloader of `config` (read from `file_text`, merged with `source_value`), with
        discovery and the config source applying their changes through it from now on."""
        reloader = Reloader(self._path, holder, count_reloads=not self._worker)
        reloader.base = config
        reloader.file_text = file_text
        reloader.loaded_file = file_text
        reloader.source_value = source_value
        reloader.overlay = self._discovery
        if self._worker:
            reloader.read_source = lambda: self._read_source_copy(self.config)
        self._discovery.attach(reloader)
        if self._source is not None:
            self._source.start(reloader)
        return reloader

    async def _start_source(
        self, config: GatewayConfig, file_text: bytes
    ) -> tuple[GatewayConfig, SourceValue | None]:
        """`config` with etcd's routes and upstreams, if etcd answers within its timeout and
        its value is valid; else `config` as it is (the watch applies etcd's value later)."""
        if config.config_source is None:
            return config, None
        if self._worker:
            value = await asyncio.to_thread(self._read_source_copy, config)
        else:
            self._source = EtcdConfigWatcher(config.config_source.etcd)
            value = await self._source.first_read()
        if value is None:
            return config, None
        try:
            merged = await asyncio.to_thread(load_config, self._path, raw=file_text, source=value)
        except ConfigError as exc:
            log.get_logger("aiogate.reload").error(
                log.CONFIG_REJECTED,
                source="etcd",
                path=str(self._path),
                pid=os.getpid(),
                errors=[str(issue) for issue in exc.issues],
                generation=0,
            )
            return config, None
        return merged, value

    def _read_source_copy(self, running: GatewayConfig) -> SourceValue | None:
        """A worker's: the value its supervisor last accepted from etcd, named as a watcher
        names it (errors read the same); None without one."""
        if self._source_copy is None or running.config_source is None:
            return None
        try:
            raw = self._source_copy.read_bytes()
        except FileNotFoundError:
            return None  # the key is absent, or etcd was never read
        return SourceValue(running.config_source.etcd.name, raw)

    async def _sync_source(self) -> None:
        """A reload may add, change or drop `config_source:`: watch what the new config says."""
        if self._worker or self._reloader is None or self._holder is None:
            return
        wanted = self.config.config_source
        settings = wanted.etcd if wanted is not None else None
        if self._source is not None and self._source.settings == settings:
            return
        if self._source is not None:
            await self._source.close()
            self._source = None
        if settings is not None and not self._reloader.closed:
            self._source = EtcdConfigWatcher(settings, running=self._reloader.source_value)
            self._source.start(self._reloader)

    async def _start_admin(self, holder: RuntimeHolder, config: GatewayConfig) -> web.AppRunner:
        runner = web.AppRunner(
            # late-bound: the Runtime current at request time, not at startup
            make_admin_app(self, lambda: holder.current.upstreams_snapshot()),  # noqa: PLW0108
            access_log=None,
        )
        await runner.setup()
        await start_site(runner, config.admin.host, config.admin.port)
        return runner

    def _start_watchdog(self) -> Watchdog | None:
        """systemd's WatchdogSec (the supervisor's, for a worker): pings from this loop."""
        timeout = watchdog_timeout()
        if timeout is None:
            return None
        message = worker_ping(os.getpid()) if self._worker else PING
        watchdog = Watchdog(timeout, message=message)
        watchdog.start()
        return watchdog

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _on_sighup(self) -> None:
        self._tasks.spawn(self.reload(), name="sighup-reload")


async def _shutdown_within(server: web.Server, grace: float) -> None:
    """Let in-flight requests finish for at most `grace` seconds, then close what is left.

    aiohttp's `Server.shutdown(t)` alone waits up to `t` for the handlers, then up to `t` again
    after cancelling them (twice the configured drain), and treats `t <= 0` as "forever".
    """
    if grace > 0:
        try:
            await asyncio.wait_for(server.shutdown(grace), grace)
            return
        except TimeoutError:
            pass
    if isinstance(server, ConnectionFactory):
        # Open WebSockets never finish on their own: each gets a 1001 close frame now.
        server.close_tunnels()
    await server.shutdown(0.05)  # cancel the handlers still running and close their sockets
