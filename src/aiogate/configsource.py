"""`config_source: {etcd: ...}`: routes and upstreams kept in one etcd key, applied like a reload.

The daemon reads the key once before its first Runtime (`first_read`, bounded by `timeout`),
then `start()`s a watch. Each new value goes to the Reloader (`apply_source`), which merges it
over the running file config, validates it like `aiogate check` and swaps it in, or rejects it
and keeps the last good one. A deleted key means "the file's routes and upstreams again".

etcd being down never stops serving: the running config stays, the loop reconnects with
jittered exponential back-off (trying the next endpoint each time) and, once back, reads the
key again, so a change made while it was away is applied then. The etcd client is the one
discovery uses (`discovery/etcd.py`).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from . import log
from .admin import ReloadOutcome
from .config import EtcdConfigSource, SourceValue
from .discovery.etcd import EtcdClient, EtcdError, KeyValue, WatchCompacted, WatchEvent
from .tasks import BackgroundTask

__all__ = ["EtcdConfigWatcher", "SourceApplier"]

#: What the watch and the probe hand to the loop: a batch of changes, or why the link ended.
_Change = list[WatchEvent] | Exception


class SourceApplier(Protocol):
    """The part of the Reloader the watcher needs."""

    async def apply_source(self, value: SourceValue | None) -> ReloadOutcome: ...


class EtcdConfigWatcher:
    """Follows one etcd key; `first_read()`, then `start(applier)`, finally `await close()`."""

    def __init__(
        self,
        settings: EtcdConfigSource,
        *,
        running: SourceValue | None = None,
        client: EtcdClient | None = None,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.settings = settings
        self._client = client or EtcdClient(settings.endpoints, settings.timeout)
        self._uniform = rng
        #: The last value read (offered to the applier once), so a re-read after a reconnect
        #: that finds the same value does not reload for nothing. It starts as the value the
        #: running config was merged with (None: the file's routes and upstreams alone).
        self._seen = running
        self._connected = False
        self._logged_down = False
        self._applier: SourceApplier | None = None
        self._task = BackgroundTask("config-source-etcd")
        self._log = log.get_logger("aiogate.config_source")

    # -- lifecycle -----------------------------------------------------------------------------
    async def first_read(self) -> SourceValue | None:
        """The key's value at start (None: absent, or etcd not reachable within `timeout`)."""
        try:
            async with asyncio.timeout(self.settings.timeout * 1.5):
                _, kv = await self._client.get(self.settings.key)
        except (EtcdError, TimeoutError, ValueError, KeyError, AttributeError, TypeError) as exc:
            # Also an answer that is not etcd's (a wrong endpoint, a proxy's page): etcd is
            # then as good as down, and the gateway starts from the file.
            self._down(exc, self._client.endpoint, 0.0)
            self._client.rotate()
            return None
        self._up()
        value = self._seen = self._value(kv)
        return value

    def start(self, applier: SourceApplier) -> None:
        self._applier = applier
        self._task.start(self._run())

    async def close(self) -> None:
        try:
            await self._task.stop()
        finally:
            await self._client.close()

    # -- the loop ------------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self.settings.backoff
        while True:
            read = False  # in this attempt: the key was read
            try:
                revision, kv = await self._client.get(self.settings.key)
                read = True
                self._up()
                await self._offer(self._value(kv))
                async for events in self._changes(revision + 1):
                    # Only the newest state of the key matters; a batch may hold several.
                    last = events[-1]
                    await self._offer(None if last.type == "DELETE" else self._value(last.kv))
                raise EtcdError("watch ended")  # pragma: no cover - _changes ends by raising
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd's errors, or anything unexpected: never die
                endpoint = self._client.endpoint
                if isinstance(exc, WatchCompacted):
                    retry_in = 0.0  # the link is fine: read the key again at once
                else:
                    self._client.rotate()
                    retry_in = delay * self._uniform(0.5, 1.0)
                self._down(exc, endpoint, retry_in)
                # It worked for a while: start over quickly; else back off further.
                delay = self.settings.backoff if read else min(delay * 2, self.settings.max_backoff)
                await asyncio.sleep(retry_in)

    async def _changes(self, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Batches of changes of the key; ends by raising when the watch or the probe fails."""
        changes: asyncio.Queue[_Change] = asyncio.Queue()
        watch = asyncio.create_task(self._watch(start_revision, changes), name="config-etcd-watch")
        probe = asyncio.create_task(self._probe(changes), name="config-etcd-probe")
        try:
            while True:
                change = await changes.get()
                if isinstance(change, Exception):
                    raise change
                yield change
        finally:
            for task in (watch, probe):
                task.cancel()
            await asyncio.gather(watch, probe, return_exceptions=True)

    async def _watch(self, start_revision: int, changes: asyncio.Queue[_Change]) -> None:
        try:
            async for events in self._client.watch_key(self.settings.key, start_revision):
                if events:
                    changes.put_nowait(events)
        except Exception as exc:
            changes.put_nowait(exc)

    async def _probe(self, changes: asyncio.Queue[_Change]) -> None:
        """A quiet watch cannot tell a silent cluster from a dead link: ask now and then."""
        try:
            while True:
                await asyncio.sleep(self.settings.keepalive)
                await self._client.status()
        except Exception as exc:
            changes.put_nowait(exc)

    async def _offer(self, value: SourceValue | None) -> None:
        if value == self._seen:
            return
        self._seen = value
        if value is None:
            self._log.warning(log.CONFIG_SOURCE_DELETED, key=self.settings.key)
        assert self._applier is not None
        # The outcome is logged by the Reloader (config_reloaded / config_rejected).
        await self._applier.apply_source(value)

    def _value(self, kv: KeyValue | None) -> SourceValue | None:
        return None if kv is None else SourceValue(self.settings.name, kv.value)

    # -- connection state, logged once per change ----------------------------------------------
    def _up(self) -> None:
        if not self._connected:
            self._connected = True
            self._logged_down = False
            self._log.info(
                log.CONFIG_SOURCE_CONNECTED, endpoint=self._client.endpoint, key=self.settings.key
            )

    def _down(self, exc: BaseException, endpoint: str, retry_in: float) -> None:
        was = self._connected
        self._connected = False
        # Every failed attempt while down would flood the log: once per outage, then debug.
        emit = self._log.warning if was or not self._logged_down else self._log.debug
        self._logged_down = True
        emit(
            log.CONFIG_SOURCE_DISCONNECTED,
            endpoint=endpoint,
            key=self.settings.key,
            error=str(exc) or type(exc).__name__,
            retry_in=round(retry_in, 3),
        )
