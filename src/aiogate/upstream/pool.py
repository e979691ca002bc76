"""Upstream pools: the backends of one upstream, a strategy, and a connection pool each.

`pick()` chooses among the backends that may take traffic now: healthy (active checks), not
ejected (passive checks), circuit closed, or half-open with a free probe slot, and below
`max_connections`, and hands out an `Attempt` on it (attempt.py): the attempt holds the
backend's in-flight place and probe slot and reports the outcome to its state. The eligible
set is cached as one tuple and rebuilt only when the upstream's state version changes or a
timed change falls due (an ejection or an open circuit ends, a slow-start ramp steps), so the
common request costs two compares and the strategy.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import Collection, Sequence

from ..config import UpstreamConfig, UpstreamTlsConfig
from ..tlscontext import client_context
from .attempt import Attempt
from .backend import Backend
from .balance import Strategy, make_strategy
from .breaker import HALF_OPEN, OPEN
from .state import StateRegistry, UpstreamState

__all__ = ["Attempt", "Backend", "NoBackendAvailable", "UpstreamPool"]

_SLOW_START_STEPS = 10
_SLOW_START_FLOOR = 0.1


class NoBackendAvailable(Exception):
    """Every backend of the upstream is out of rotation.

    `circuit_open` is True when the reason is open circuits alone (the fallback applies).
    """

    def __init__(self, upstream: str, circuit_open: bool = False) -> None:
        super().__init__(upstream)
        self.circuit_open = circuit_open


class UpstreamPool:
    __slots__ = (
        "_eligible",
        "_next_change",
        "_probing",
        "_state",
        "_strategy",
        "_version",
        "backends",
        "config",
        "max_connections",
        "name",
    )

    def __init__(
        self, config: UpstreamConfig, registry: StateRegistry | None = None, now: float = 0.0
    ) -> None:
        self.config = config
        self.name = config.name
        if registry is None:  # standalone (unit tests): a private registry
            registry = StateRegistry()
            from ..config import CircuitBreakerConfig

            registry.adopt([config], CircuitBreakerConfig(), None, now)
            registry.commit(0, now)
        self._state: UpstreamState = registry.upstreams[config.name]
        context = _ssl_context(config.tls) if any(
            b.scheme == "https" for b in config.backends
        ) else None  # fmt: skip
        states = self._state.backends
        self.backends: Sequence[Backend] = tuple(
            Backend(b, config, context, states[b.url]) for b in config.backends
        )
        self._strategy: Strategy = make_strategy(config.strategy)
        self.max_connections = config.max_connections
        self._eligible: Sequence[Backend] = ()
        self._probing: Sequence[Backend] = ()
        self._version = -1
        self._next_change = -math.inf

    # -- choosing ------------------------------------------------------------------------------
    def pick(
        self, client_ip: str, now: float | None = None, tried: Collection[Backend] = ()
    ) -> Attempt:
        """The next attempt, on a backend `choose` gives; the caller must `close()` it."""
        return Attempt(self.choose(client_ip, now, tried))

    def choose(
        self, client_ip: str, now: float | None = None, tried: Collection[Backend] = ()
    ) -> Backend:
        """A backend for the next attempt; `tried` ones are avoided while others remain.

        `now` is the event loop's clock (the proxy has it at hand already). Choosing takes
        nothing on the backend (no in-flight place, no probe slot): `pick` does.
        """
        if now is None:
            now = time.monotonic()
        if self._version != self._state.version or now >= self._next_change:
            self._refresh(now)
        eligible = self._eligible
        if self._probing:
            probes = [b for b in self._probing if b.state.breaker.available(now)]
            if probes:
                eligible = (*eligible, *probes)
        limit = self.max_connections
        if limit is not None:
            eligible = [b for b in eligible if b.in_flight < limit]
        if tried and len(eligible) > 1:
            fresh = [b for b in eligible if b not in tried]
            if fresh:
                eligible = fresh
        if not eligible:
            raise NoBackendAvailable(self.name, self._all_open(now))
        return self._strategy.pick(eligible, client_ip)

    def _refresh(self, now: float) -> None:
        eligible: list[Backend] = []
        probing: list[Backend] = []
        next_change = math.inf
        slow_start = self.config.slow_start
        for backend in self.backends:
            state = backend.state
            if not state.healthy:
                continue
            if state.ejected_until > now:
                next_change = min(next_change, state.ejected_until)
                continue
            breaker = state.breaker
            if breaker.state == OPEN:
                reopens = breaker.reopens_at()
                if reopens > now:
                    next_change = min(next_change, reopens)
                    continue
                breaker.available(now)  # moves it to half-open
            if breaker.state == HALF_OPEN:
                probing.append(backend)
                continue
            ramp = now - state.recovered_at
            if slow_start and ramp < slow_start:
                share = max(_SLOW_START_FLOOR, ramp / slow_start)
                backend.weight = backend.base_weight * share
                next_change = min(next_change, now + slow_start / _SLOW_START_STEPS)
            else:
                backend.weight = backend.base_weight
            eligible.append(backend)
        self._eligible = tuple(eligible)
        self._probing = tuple(probing)
        self._next_change = next_change
        self._version = self._state.version

    def _all_open(self, now: float) -> bool:
        """Whether the healthy backends are out only because of their circuits."""
        healthy = [b for b in self.backends if b.state.healthy and b.state.ejected_until <= now]
        return bool(healthy) and all(b.state.breaker.state != 0 for b in healthy)

    # -- operators -------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, object]:
        config = self.config
        if self._version != self._state.version or now >= self._next_change:
            self._refresh(now)
        check = config.health_check
        return {
            "name": self.name,
            "strategy": config.strategy,
            "health_check": None if check is None else check.type,
            "backends": [
                {
                    "url": b.label,
                    "weight": b.base_weight,
                    "effective_weight": round(b.weight, 3),
                    "in_flight": b.in_flight,
                    "connections": {"in_use": b.connections.in_use, "idle": b.connections.idle},
                    "eligible": b in self._eligible or b in self._probing,
                    **b.state.snapshot(now),
                }
                for b in self.backends
            ],
        }

    async def close(self) -> None:
        for backend in self.backends:
            await backend.connections.close()


def _ssl_context(tls: UpstreamTlsConfig) -> ssl.SSLContext:
    """One context per upstream: building it loads the trust store, so never per connection."""
    return client_context(
        ca_file=tls.ca_file,
        verify=tls.verify,
        cert_file=tls.client_cert_file,
        key_file=tls.client_key_file,
    )
