"""An upstream's etcd prefix as a discovery source: range read, then watch from the next revision.

Any failure (connection lost, watch canceled, revision compacted) ends `watch()`; the runner
starts it over (after a jittered back-off, or at once after a compaction): read everything
again, watch again. A registration removed meanwhile is found missing by the re-read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

from .. import log
from ..config import BackendConfig, EtcdDiscoveryConfig
from .etcd import EtcdClient, EtcdError, KeyValue, WatchCompacted, WatchEvent
from .merge import BadValue, parse_backend
from .source import Backends

__all__ = ["EtcdSource"]

#: What the watch and the probe hand to `watch()`: a batch of changes, or why the link ended.
_Change = list[WatchEvent] | Exception


class EtcdSource:
    """Backends registered under one etcd key prefix (a `Source`)."""

    def __init__(
        self, upstream: str, config: EtcdDiscoveryConfig, *, client: EtcdClient | None = None
    ) -> None:
        self.upstream = upstream
        self.config = config
        self._client = client or EtcdClient(config.endpoints, config.timeout)
        self._revision = 0  # of the last successful range read
        self._log = log.get_logger("aiogate.discovery")

    # -- the Source interface ----------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self._client.endpoint

    def describe(self) -> Mapping[str, object]:
        return {"prefix": self.config.prefix, "revision": self._revision}

    async def watch(self) -> AsyncIterator[Backends]:
        entries: dict[str, BackendConfig] = {}
        revision, kvs = await self._client.range_prefix(self.config.prefix)
        self._revision = revision
        for kv in kvs:
            self._put(entries, kv)
        yield _backends(entries)
        # Both helpers end only by queueing the reason: whichever ends first ends the link.
        changes: asyncio.Queue[_Change] = asyncio.Queue()
        watch = asyncio.create_task(
            self._watch(revision + 1, changes), name=f"etcd-watch-{self.upstream}"
        )
        probe = asyncio.create_task(self._probe(changes), name=f"etcd-probe-{self.upstream}")
        try:
            while True:
                change = await changes.get()
                if isinstance(change, Exception):
                    raise change
                self._apply(entries, change)
                yield _backends(entries)
        finally:
            for task in (watch, probe):
                task.cancel()
            await asyncio.gather(watch, probe, return_exceptions=True)

    def failed(self, error: Exception) -> bool:
        if isinstance(error, WatchCompacted):
            return True  # the link is fine: re-read at once from the current revision
        self._client.rotate()
        return False

    async def close(self) -> None:
        await self._client.close()

    # -- etcd ---------------------------------------------------------------------------------
    async def _watch(self, start_revision: int, changes: asyncio.Queue[_Change]) -> None:
        try:
            async for events in self._client.watch_prefix(self.config.prefix, start_revision):
                if events:
                    changes.put_nowait(events)
            changes.put_nowait(EtcdError("watch ended"))  # pragma: no cover - it always raises
        except Exception as exc:
            changes.put_nowait(exc)

    async def _probe(self, changes: asyncio.Queue[_Change]) -> None:
        """A quiet watch cannot tell a silent cluster from a dead link: ask now and then."""
        try:
            while True:
                await asyncio.sleep(self.config.keepalive)
                await self._client.status()
        except Exception as exc:
            changes.put_nowait(exc)

    def _apply(self, entries: dict[str, BackendConfig], events: list[WatchEvent]) -> None:
        for event in events:
            if event.type == "DELETE":
                entries.pop(event.kv.key, None)
            else:
                self._put(entries, event.kv)

    def _put(self, entries: dict[str, BackendConfig], kv: KeyValue) -> None:
        try:
            entries[kv.key] = parse_backend(kv.value)
        except BadValue as exc:
            # A bad registration must not keep a previously good one of the same key alive.
            entries.pop(kv.key, None)
            self._log.warning(
                log.DISCOVERY_BAD_VALUE, upstream=self.upstream, key=kv.key, error=str(exc)
            )


def _backends(entries: Mapping[str, BackendConfig]) -> Backends:
    """The set in a stable order (by key, whatever order etcd sent), each URL once."""
    seen: set[str] = set()
    backends = []
    for key in sorted(entries):
        backend = entries[key]
        if backend.url not in seen:
            seen.add(backend.url)
            backends.append(backend)
    return tuple(backends)
