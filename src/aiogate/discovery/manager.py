"""The daemon's discovery: one source runner per discovering upstream, and the task that applies.

`Discovery` is the Reloader's config overlay: every config the Reloader runs (read from the
file on SIGHUP, or the running file config again when discovery changed) goes through
`apply()`, which merges in the backends discovered so far. A change of a backend set marks the
overlay dirty; one owned task waits for the burst to settle (`debounce`) and asks the Reloader
to rebuild, so a new immutable Runtime replaces the old one the way a reload does.

With `server.workers > 1` discovery runs once per host, in the supervisor; a worker's
`Discovery` is a follower: it runs no source, and takes the discovered sets the supervisor
sends (`receive`), applying them the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Protocol

from .. import log
from ..config import BackendConfig, DiscoveryConfig, GatewayConfig
from ..metrics import DISCOVERY_BACKENDS, DISCOVERY_UP
from ..tasks import BackgroundTask, TaskSet
from .merge import merge
from .registry import make_source
from .runner import SourceRunner

__all__ = ["Discovery", "Rebuilder"]

#: After a failed rebuild, try again this much later (a later change also retries).
_RETRY_AFTER = 1.0


class Rebuilder(Protocol):
    """The part of the Reloader discovery needs: rebuild the running config, overlay applied."""

    async def rebuild(self, reason: str) -> object: ...


class Discovery:
    def __init__(self, *, follower: bool = False) -> None:
        self._follower = follower
        self._watchers: dict[str, SourceRunner] = {}
        self._found: dict[str, tuple[BackendConfig, ...]] = {}
        self._dirty = asyncio.Event()
        self._debounce = 0.0
        self._rebuilder: Rebuilder | None = None
        self._applier = BackgroundTask("discovery-apply")
        self._closing = TaskSet()
        self._log = log.get_logger("aiogate.discovery")

    @property
    def active(self) -> bool:
        return bool(self._watchers)

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, config: GatewayConfig) -> None:
        """Start watching and give each source up to its `timeout` for a first read.

        etcd being down never delays the start longer than that: the gateway starts with the
        static backends (or none) and the watchers keep trying.
        """
        self.applied(config)
        if self._follower:
            return
        waits = [
            asyncio.wait_for(w.first_attempt.wait(), w.config.timeout * 1.5)
            for w in self._watchers.values()
        ]
        for outcome in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, TimeoutError):
                raise outcome

    def attach(self, rebuilder: Rebuilder) -> None:
        """From now on changes are applied through `rebuilder` (the daemon's Reloader)."""
        self._rebuilder = rebuilder
        self._applier.start(self._apply_changes())

    async def close(self) -> None:
        await self._applier.stop()
        watchers = list(self._watchers.values())
        self._watchers.clear()
        await asyncio.gather(*(w.close() for w in watchers), return_exceptions=True)
        await self._closing.wait()

    # -- the Reloader's overlay ----------------------------------------------------------------
    def apply(self, config: GatewayConfig) -> GatewayConfig:
        """`config` (as read from the file) with the discovered backends merged in."""
        return merge(config, self._found)

    def applied(self, config: GatewayConfig) -> None:
        """A new file config runs: start, keep or stop watchers to match its upstreams."""
        wanted: dict[str, DiscoveryConfig] = {
            u.name: u.discovery for u in config.upstreams if u.discovery is not None
        }
        if self._follower:  # the supervisor's sources discover; nothing to start here
            self._found = {name: found for name, found in self._found.items() if name in wanted}
            return
        for name in list(self._watchers):
            watcher = self._watchers[name]
            if wanted.get(name) != watcher.config:
                del self._watchers[name]
                self._found.pop(name, None)
                self._retire(watcher)
                if name not in wanted:
                    with contextlib.suppress(KeyError):
                        DISCOVERY_BACKENDS.remove(name)
        for name, settings in wanted.items():
            if name not in self._watchers:
                source = make_source(name, settings)
                watcher = SourceRunner(name, settings, source, self._changed, self._status)
                self._watchers[name] = watcher
                DISCOVERY_BACKENDS.labels(name).set(0)
                watcher.start()
        self._debounce = min((s.debounce for s in wanted.values()), default=0.0)
        self._update_up()

    def found(self) -> Mapping[str, tuple[BackendConfig, ...]]:
        return dict(self._found)

    def receive(self, found: Mapping[str, tuple[tuple[str, int], ...]]) -> None:
        """A follower's discovered sets, as the supervisor found them: applied if they differ."""
        backends = {
            name: tuple(BackendConfig(url=url, weight=weight) for url, weight in pairs)
            for name, pairs in found.items()
        }
        if backends != self._found:
            self._found = backends
            self._dirty.set()

    # -- callbacks from the watchers -----------------------------------------------------------
    def _changed(self, upstream: str, backends: tuple[BackendConfig, ...]) -> None:
        if upstream not in self._watchers:
            return  # a retired watcher's last word
        self._found[upstream] = backends
        DISCOVERY_BACKENDS.labels(upstream).set(len(backends))
        self._dirty.set()

    def _status(self, upstream: str, connected: bool) -> None:
        del upstream, connected
        self._update_up()

    def _update_up(self) -> None:
        if self._watchers:
            DISCOVERY_UP.set(1 if all(w.connected for w in self._watchers.values()) else 0)
        else:
            DISCOVERY_UP.set(1)  # nothing to discover: nothing is down

    def _retire(self, watcher: SourceRunner) -> None:
        # Closing awaits the watcher's task; keep it owned until close() waits for it.
        self._closing.spawn(watcher.close(), name=f"discovery-retire-{watcher.upstream}")

    # -- applying ------------------------------------------------------------------------------
    async def _apply_changes(self) -> None:
        assert self._rebuilder is not None
        while True:
            await self._dirty.wait()
            # Registrations often come in bursts (a deploy rolls many instances): one rebuild.
            await asyncio.sleep(self._debounce)
            self._dirty.clear()
            try:
                await self._rebuilder.rebuild("discovery")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._log.exception(log.DISCOVERY_APPLY_FAILED, error=str(exc))
                await asyncio.sleep(_RETRY_AFTER)
                self._dirty.set()
