"""One upstream's etcd prefix, kept in sync: range read, then a watch from the next revision.

Any failure (connection lost, watch canceled, revision compacted) starts the cycle over after a
jittered back-off: read everything again, watch again. While etcd is away the last known
backends stay; a registration that was removed meanwhile is found missing by the re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

from .. import log
from ..config import BackendConfig, EtcdDiscoveryConfig
from .etcd import EtcdClient, EtcdError, KeyValue, WatchCompacted, WatchEvent
from .merge import BadValue, parse_backend

__all__ = ["EtcdWatcher"]

#: Called with (upstream, backends) whenever the discovered set changes.
OnChange = Callable[[str, tuple[BackendConfig, ...]], None]
#: Called with (upstream, connected) when the connection state flips.
OnStatus = Callable[[str, bool], None]


class EtcdWatcher:
    """Owns one background task; `start()` it, `await close()` it."""

    def __init__(
        self,
        upstream: str,
        config: EtcdDiscoveryConfig,
        on_change: OnChange,
        on_status: OnStatus,
        *,
        client: EtcdClient | None = None,
    ) -> None:
        self.upstream = upstream
        self.config = config
        self._on_change = on_change
        self._on_status = on_status
        self._client = client or EtcdClient(config.endpoints, config.timeout)
        self._entries: dict[str, BackendConfig] = {}
        self.backends: tuple[BackendConfig, ...] = ()
        self.connected = False
        self._was_connected = False  # in the current attempt: the read succeeded
        self._logged_down = False  # this outage has been logged at warning level
        #: Set once the first read succeeded or failed: startup waits for it, not for etcd.
        self.first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._log = log.get_logger("aiogate.discovery")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"discovery-etcd-{self.upstream}")

    async def close(self) -> None:
        try:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        finally:
            self._task = None
            await self._client.close()

    # -- the loop ----------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self.config.backoff
        while True:
            try:
                await self._sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # EtcdError, or anything unexpected: never die
                self.first_attempt.set()
                compacted = isinstance(exc, WatchCompacted)
                retry_in = 0.0 if compacted else delay * random.uniform(0.5, 1.0)
                self._disconnected(exc, retry_in)
                if not compacted:
                    self._client.rotate()
                if self._was_connected:
                    delay = self.config.backoff  # it worked for a while: start over quickly
                else:
                    delay = min(delay * 2, self.config.max_backoff)
                await asyncio.sleep(retry_in)

    async def _sync_once(self) -> None:
        self._was_connected = False
        client = self._client
        revision, kvs = await client.range_prefix(self.config.prefix)
        self._replace(kvs)
        self._was_connected = True
        if not self.connected:
            self.connected = True
            self._logged_down = False
            self._log.info(
                log.DISCOVERY_CONNECTED,
                upstream=self.upstream,
                endpoint=client.endpoint,
                prefix=self.config.prefix,
                revision=revision,
                backends=len(self.backends),
            )
            self._on_status(self.upstream, True)
        self.first_attempt.set()
        watch = asyncio.create_task(self._watch(revision + 1), name=f"etcd-watch-{self.upstream}")
        probe = asyncio.create_task(self._probe(), name=f"etcd-probe-{self.upstream}")
        try:
            # Whichever ends first ends the connection: both only end by raising.
            done, _ = await asyncio.wait((watch, probe), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, probe):
                task.cancel()
            await asyncio.gather(watch, probe, return_exceptions=True)
        for task in done:
            task.result()  # re-raise the reason
        raise EtcdError("watch ended")  # pragma: no cover - a done task always raised

    async def _watch(self, start_revision: int) -> None:
        async for events in self._client.watch_prefix(self.config.prefix, start_revision):
            if events:
                self._apply(events)

    async def _probe(self) -> None:
        """A quiet watch cannot tell a silent cluster from a dead link: ask now and then."""
        while True:
            await asyncio.sleep(self.config.keepalive)
            await self._client.status()

    # -- state -------------------------------------------------------------------------------
    def _replace(self, kvs: list[KeyValue]) -> None:
        self._entries = {}
        for kv in kvs:
            self._put(kv)
        self._publish()

    def _apply(self, events: list[WatchEvent]) -> None:
        for event in events:
            if event.type == "DELETE":
                self._entries.pop(event.kv.key, None)
            else:
                self._put(event.kv)
        self._publish()

    def _put(self, kv: KeyValue) -> None:
        try:
            self._entries[kv.key] = parse_backend(kv.value)
        except BadValue as exc:
            # A bad registration must not keep a previously good one of the same key alive.
            self._entries.pop(kv.key, None)
            self._log.warning(
                log.DISCOVERY_BAD_VALUE, upstream=self.upstream, key=kv.key, error=str(exc)
            )

    def _publish(self) -> None:
        seen: set[str] = set()
        backends = []
        for key in sorted(self._entries):  # a stable order, whatever order etcd sent
            backend = self._entries[key]
            if backend.url not in seen:
                seen.add(backend.url)
                backends.append(backend)
        new = tuple(backends)
        if new == self.backends:
            return
        old_urls = {b.url for b in self.backends}
        new_urls = {b.url for b in new}
        self.backends = new
        self._log.info(
            log.DISCOVERY_BACKENDS_CHANGED,
            upstream=self.upstream,
            added=sorted(new_urls - old_urls),
            removed=sorted(old_urls - new_urls),
            backends=[b.url for b in new],
        )
        self._on_change(self.upstream, new)

    def _disconnected(self, exc: BaseException, retry_in: float) -> None:
        was = self.connected
        self.connected = False
        if was:
            self._on_status(self.upstream, False)
        # Logged on every failed attempt while down would flood; once per outage is enough,
        # later attempts go to debug.
        emit = self._log.warning if was or not self._logged_down else self._log.debug
        self._logged_down = True
        emit(
            log.DISCOVERY_DISCONNECTED,
            upstream=self.upstream,
            endpoint=self._client.endpoint,
            error=str(exc) or type(exc).__name__,
            retry_in=round(retry_in, 3),
            backends=len(self.backends),
        )
