"""load -> validate -> build Runtime -> swap -> drain and close the old one.

An invalid file never replaces a valid one: any failure before the swap leaves the running
Runtime untouched and is reported as a `config_rejected` event with every error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from . import log
from .admin import ReloadOutcome
from .config import ConfigError, GatewayConfig, SourceValue, load_config
from .config.diff import diff_summary
from .metrics import CONFIG_RELOADS, config_loaded
from .runtime import Runtime, RuntimeHolder
from .tasks import TaskSet
from .tls import TlsListener

__all__ = ["ConfigOverlay", "Reloader", "configure_logging", "restart_only_changes"]


class ConfigOverlay(Protocol):
    """Turns the config read from the file into the config to run (service discovery merges
    the backends it found). `applied` hears of each file config that went live."""

    def apply(self, config: GatewayConfig) -> GatewayConfig: ...

    def applied(self, config: GatewayConfig) -> None: ...


def configure_logging(config: GatewayConfig) -> None:
    cfg = config.logging
    log.configure(
        level=cfg.level,
        fmt=cfg.format,
        levels=cfg.levels,
        access_log=cfg.access_log,
        access_sample=cfg.access_log_sample,
        # Several processes share stdout when workers > 1: keep their lines whole.
        whole_lines=config.server.workers > 1,
    )


def restart_only_changes(old: GatewayConfig, new: GatewayConfig) -> list[str]:
    """Settings bound to sockets or processes: a reload cannot apply them."""
    keys = []
    if old.server.listen != new.server.listen:
        keys.append("server.listen")
    if old.server.workers != new.server.workers:
        keys.append("server.workers")
    if old.server.max_header_size != new.server.max_header_size:
        keys.append("server.max_header_size")
    if old.server.max_headers != new.server.max_headers:
        keys.append("server.max_headers")
    if old.server.idle_timeout != new.server.idle_timeout:
        keys.append("server.idle_timeout")
    if old.admin.listen != new.admin.listen:
        keys.append("admin.listen")
    if (old.server.tls is None) != (new.server.tls is None):
        # Certificates, keys and client CA rotate on reload; TLS on or off is the socket's.
        keys.append("server.tls")
    return keys


class Reloader:
    """Serialises reloads and owns the tasks that drain replaced Runtimes."""

    def __init__(
        self, config_path: Path, holder: RuntimeHolder, *, count_reloads: bool = True
    ) -> None:
        self._path = config_path
        self._holder = holder
        # Workers of a supervisor do not count: the parent counts each reload once.
        self._count = count_reloads
        self._lock = asyncio.Lock()
        #: Set by `close()` under the lock: no Runtime is started after shutdown began, so
        #: none can be left running that nobody closes.
        self._closed = False
        self._draining = TaskSet()
        #: The running config as read from the file, before any overlay.
        self.base: GatewayConfig = holder.current.config
        #: The file bytes the running config was loaded from (the file watcher's baseline);
        #: None after a config pushed through the admin API, which the file does not hold.
        self.loaded_file: bytes | None = None
        self.overlay: ConfigOverlay | None = None
        #: The bytes `base` was read from (file or PUT /admin/config): a config source's change
        #: is merged over them, not over whatever the file holds by then.
        self.file_text: bytes | None = None
        #: The last value of the config source (etcd) that went live; every reload merges it.
        self.source_value: SourceValue | None = None
        #: The TLS listener whose certificate a reload re-reads (None: plain HTTP).
        self.tls: TlsListener | None = None
        #: A worker's: reads the value its supervisor (which watches etcd for the host) last
        #: accepted; each reload merges that instead of `source_value`.
        self.read_source: Callable[[], SourceValue | None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    async def reload(self, raw: bytes | None = None) -> ReloadOutcome:
        """Load the config file (or `raw`, a whole config sent through the admin API) and
        swap it in; on any failure the running config stays."""
        async with self._lock:
            if self._closed:
                return self._shutting_down()
            text = raw if raw is not None else await asyncio.to_thread(self._read_file)
            source, origin = self.source_value, "file"
            if self.read_source is not None:
                source = await asyncio.to_thread(self.read_source)
                # Told by SIGHUP either way: the event says which of the two changed.
                if text == self.file_text and source != self.source_value:
                    origin = "etcd"
            outcome = await self._reload(text, source, origin=origin)
            if outcome.applied:
                self.loaded_file = text if raw is None else None
            return outcome

    async def apply_source(self, value: SourceValue | None) -> ReloadOutcome:
        """The config source changed (`None`: its key was deleted): merge it over the running
        file config and swap that in like a reload; if it is invalid the running config stays
        and so does the last good value."""
        async with self._lock:
            if self._closed:
                return self._shutting_down()
            return await self._reload(self.file_text, value, origin="etcd")

    def _read_file(self) -> bytes | None:
        try:
            return self._path.read_bytes()
        except OSError:
            return None  # load_config reads it again and reports why it cannot

    async def _reload(
        self, text: bytes | None, source: SourceValue | None, *, origin: str
    ) -> ReloadOutcome:
        old = self._holder.current
        logger = log.get_logger("aiogate.reload")
        try:
            config = loaded = await asyncio.to_thread(
                load_config, self._path, raw=text, source=source
            )
        except ConfigError as exc:
            errors = tuple(str(issue) for issue in exc.issues)
            return self._rejected(old, errors, origin)
        if self.overlay is not None:
            config = self.overlay.apply(loaded)
        context = await self._stage_tls(config)
        if isinstance(context, str):
            return self._rejected(old, (context,), origin)
        new = await self._start_runtime(old, config)
        if isinstance(new, str):
            return self._rejected(old, (new,), origin)
        self._holder.current = new
        if context is not None:
            assert self.tls is not None
            self.tls.apply(context, config.server.header_timeout)
        # Before any await: a cancellation from here on must not leave `old` unretired.
        self._retire_later(old)
        self.base = loaded
        self.file_text = text
        self.source_value = source
        if self.overlay is not None:
            self.overlay.applied(loaded)
        configure_logging(config)
        if self._count:
            CONFIG_RELOADS.labels("applied").inc()
            if text is not None:  # None: the file vanished after it was loaded (old hash kept)
                config_loaded(text + (source.raw if source is not None else b""))
        pending = restart_only_changes(old.config, config)
        log.get_logger("aiogate.reload").info(
            log.CONFIG_RELOADED,
            source=origin,
            path=str(self._path),
            pid=os.getpid(),
            generation=new.generation,
            routes=len(config.routes),
            upstreams=len(config.upstreams),
            restart_required=pending,
            changes=diff_summary(old.config, config),
        )
        if pending:
            logger.warning(log.CONFIG_RESTART_REQUIRED, keys=pending)
        return ReloadOutcome(True, new.generation)

    async def _stage_tls(self, config: GatewayConfig) -> ssl.SSLContext | str | None:
        """The listener's next context, read from the files now (a fresh one, so a bad PEM or a
        key that does not match rejects the reload and the running one stays); None when the
        listener is plain HTTP or the new config drops `server.tls` (a restart applies that)."""
        if self.tls is None or config.server.tls is None:
            return None
        try:
            return await asyncio.to_thread(self.tls.stage, config.server.tls)
        except ValueError as exc:
            return f"{self._path}: server.tls: {exc}"

    async def _start_runtime(self, old: Runtime, config: GatewayConfig) -> Runtime | str:
        """A started Runtime for `config`, or why there is none (`old` keeps running)."""
        try:
            new = Runtime(config, generation=old.generation + 1, previous=old)
        except Exception as exc:  # a config that validates but cannot be built
            return f"{self._path}: {exc}"
        try:
            await new.start()
        except BaseException as exc:
            # Undo what starting did, on a cancellation too (shutdown): its tasks, threads and
            # sockets go. The backend state went live only if `start` got to its very end;
            # then the running Runtime's registry takes it back.
            with contextlib.suppress(Exception):
                await new.close()
            if new.upstream_states.committed:
                old.upstream_states.commit(
                    old.generation,
                    asyncio.get_running_loop().time(),
                    replacing=new.upstream_states,
                )
                if old.host is not None:  # the host view drives the running one again
                    old.host.attach(old.upstream_states)
            if not isinstance(exc, Exception):
                raise
            return f"{self._path}: {exc}"
        return new

    async def rebuild(self, reason: str) -> ReloadOutcome:
        """Run the current file config again through the overlay, without reading the file.

        Service discovery calls this when a backend set changed: the new Runtime is built and
        swapped in exactly like a reload's, so in-flight requests finish on the old one and
        backend state carries over. Nothing happens when the result equals the running config.
        """
        async with self._lock:
            old = self._holder.current
            if self._closed:
                return self._shutting_down()
            config = self.overlay.apply(self.base) if self.overlay is not None else self.base
            if config == old.config:
                return ReloadOutcome(True, old.generation)
            new = await self._start_runtime(old, config)
            logger = log.get_logger("aiogate.reload")
            if isinstance(new, str):
                logger.error(log.DISCOVERY_APPLY_FAILED, reason=reason, error=new, pid=os.getpid())
                return ReloadOutcome(False, old.generation, (new,))
            self._holder.current = new
            self._retire_later(old)
            logger.info(
                log.DISCOVERY_APPLIED,
                reason=reason,
                pid=os.getpid(),
                generation=new.generation,
                changes=diff_summary(old.config, config),
            )
            return ReloadOutcome(True, new.generation)

    def _shutting_down(self) -> ReloadOutcome:
        return ReloadOutcome(
            False, self._holder.current.generation, ("the gateway is shutting down",)
        )

    def _retire_later(self, old: Runtime) -> None:
        self._draining.spawn(self._retire(old), name=f"retire-runtime-{old.generation}")

    def _rejected(
        self, current: Runtime, errors: tuple[str, ...], origin: str = "file"
    ) -> ReloadOutcome:
        if self._count:
            CONFIG_RELOADS.labels("rejected").inc()
        log.get_logger("aiogate.reload").error(
            log.CONFIG_REJECTED,
            source=origin,
            path=str(self._path),
            pid=os.getpid(),
            errors=list(errors),
            generation=current.generation,
        )
        return ReloadOutcome(False, current.generation, errors)

    async def _retire(self, old: Runtime) -> None:
        """Close a replaced Runtime once its in-flight requests have finished."""
        drained = await old.drain(old.config.server.shutdown_timeout)
        if not drained:
            log.get_logger("aiogate.reload").warning(
                log.RUNTIME_DRAIN_TIMEOUT, generation=old.generation, in_flight=old.in_flight
            )
        await old.close()

    async def close(self) -> None:
        """Stop reloading for good, then wait for replaced Runtimes to drain (at shutdown).

        Taking the lock waits for a reload in progress (one from the admin API, say): the
        Runtime it swaps in is the current one the daemon closes next. Any reload after this
        is answered "shutting down" without building anything.
        """
        async with self._lock:
            self._closed = True
        await self._draining.wait()
