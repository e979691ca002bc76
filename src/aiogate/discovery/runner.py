"""The loop every discovery source runs in: one background task per discovering upstream.

The source's `watch()` is iterated until it raises; then the runner backs off (doubling with
jitter, from `backoff` up to `max_backoff`) and starts over, unless the source asks for an
immediate retry. While the source is down the last known backends stay; each new set that
differs from the last one is published, and the connection state is logged once per change.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from .. import log
from ..tasks import BackgroundTask
from .source import Backends, Source, SourceSettings

__all__ = ["OnChange", "OnStatus", "SourceRunner"]

#: Called with (upstream, backends) whenever the discovered set changes.
OnChange = Callable[[str, Backends], None]
#: Called with (upstream, connected) when the connection state flips.
OnStatus = Callable[[str, bool], None]


class SourceRunner:
    """Keeps one upstream's backends in sync with its source; `start()` it, `await close()` it."""

    def __init__(
        self,
        upstream: str,
        config: SourceSettings,
        source: Source,
        on_change: OnChange,
        on_status: OnStatus,
        *,
        rng: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.upstream = upstream
        self.config = config
        self.source = source
        self._on_change = on_change
        self._on_status = on_status
        self._uniform = rng
        self.backends: Backends = ()
        self.connected = False
        self._logged_down = False  # this outage has been logged at warning level
        #: Set once the first read succeeded or failed: startup waits for it, not for the source.
        self.first_attempt = asyncio.Event()
        self._task = BackgroundTask(f"discovery-{config.type}-{upstream}")
        self._log = log.get_logger("aiogate.discovery")

    def start(self) -> None:
        self._task.start(self._run())

    async def close(self) -> None:
        try:
            await self._task.stop()
        finally:
            await self.source.close()

    # -- the loop ----------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = self.config.backoff
        while True:
            read = False  # in this attempt: the initial read succeeded
            try:
                async for backends in self.source.watch():
                    self._publish(backends)
                    if not read:
                        read = True
                        self._connected()
                raise ConnectionError("watch ended")  # a source's watch ends only by raising
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the source's errors, or anything unexpected: never die
                self.first_attempt.set()
                endpoint = self.source.endpoint  # before `failed` may switch to another one
                retry_in = 0.0 if self.source.failed(exc) else delay * self._uniform(0.5, 1.0)
                self._disconnected(exc, endpoint, retry_in)
                # It worked for a while: start over quickly; else back off further.
                delay = self.config.backoff if read else min(delay * 2, self.config.max_backoff)
                await asyncio.sleep(retry_in)

    def _connected(self) -> None:
        if not self.connected:
            self.connected = True
            self._logged_down = False
            self._log.info(
                log.DISCOVERY_CONNECTED,
                upstream=self.upstream,
                endpoint=self.source.endpoint,
                **self.source.describe(),
                backends=len(self.backends),
            )
            self._on_status(self.upstream, True)
        self.first_attempt.set()

    def _publish(self, new: Backends) -> None:
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

    def _disconnected(self, exc: BaseException, endpoint: str, retry_in: float) -> None:
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
            endpoint=endpoint,
            error=str(exc) or type(exc).__name__,
            retry_in=round(retry_in, 3),
            backends=len(self.backends),
        )
