"""Backend state that outlives a Runtime: health, ejection, circuit breaker, latency.

A reload builds new pools, but what the gateway has learnt about its backends must not be
forgotten (a reload must not send traffic to a backend known to be down). So the state of each
backend lives in a `StateRegistry` keyed by (upstream, backend URL): the new Runtime adopts the
old registry's entries for backends still in its config and drops the rest.

Every change that alters which backends may be picked bumps `UpstreamState.version`; pools
compare it with the version they last built their eligible set from (one int compare per
request instead of re-filtering the backends).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable

from .. import log
from ..config import CircuitBreakerConfig, UpstreamConfig
from ..metrics import BACKEND_EJECTIONS, BACKEND_HEALTHY, CIRCUIT_STATE, CIRCUIT_TRANSITIONS
from .breaker import STATE_NAMES, CircuitBreaker

__all__ = ["BackendState", "StateRegistry", "UpstreamState"]

_DISABLED = CircuitBreakerConfig(enabled=False)
#: Peak-EWMA decay time constant (seconds): how long a slow observation is remembered.
_EWMA_TAU = 10.0
#: What a failed attempt costs in the latency estimate: failing fast must not look fast.
_FAILURE_PENALTY = 1.0


class UpstreamState:
    __slots__ = ("backends", "name", "version")

    def __init__(self, name: str) -> None:
        self.name = name
        self.version = 0
        self.backends: dict[str, BackendState] = {}


class BackendState:
    __slots__ = (
        "breaker",
        "check_owner",
        "ejected_until",
        "ejections",
        "ewma",
        "ewma_at",
        "fail_streak",
        "healthy",
        "label",
        "last_check",
        "last_check_at",
        "last_check_ok",
        "ok_streak",
        "passive_failures",
        "recovered_at",
        "total_ejections",
        "upstream",
    )

    def __init__(self, upstream: UpstreamState, label: str, now: float) -> None:
        self.upstream = upstream
        self.label = label
        self.healthy = True  # optimistic until checks say otherwise
        self.ok_streak = 0
        self.fail_streak = 0
        self.last_check: str | None = None
        self.last_check_ok: bool | None = None
        self.last_check_at: float | None = None  # wall clock, for operators
        self.check_owner = 0  # generation of the Runtime whose health task may write here
        self.passive_failures = 0
        self.ejected_until = 0.0
        self.ejections = 0  # consecutive ejections (back-off multiplier)
        self.total_ejections = 0
        self.recovered_at = now  # slow start counts from here
        self.ewma = 0.0
        self.ewma_at = now
        self.breaker = CircuitBreaker(_DISABLED, self._on_breaker)
        BACKEND_HEALTHY.labels(upstream.name, label).set(1)
        CIRCUIT_STATE.labels(upstream.name, label).set(0)

    # -- health (active checks) --------------------------------------------------------------
    def check_result(
        self, ok: bool, detail: str, healthy_threshold: int, unhealthy_threshold: int, now: float
    ) -> None:
        """One active check's verdict; flips health after enough in a row (hysteresis)."""
        self.last_check = detail
        self.last_check_ok = ok
        self.last_check_at = time.time()
        if ok:
            self.ok_streak += 1
            self.fail_streak = 0
            if not self.healthy and self.ok_streak >= healthy_threshold:
                self._set_healthy(True, now)
        else:
            self.fail_streak += 1
            self.ok_streak = 0
            if self.healthy and self.fail_streak >= unhealthy_threshold:
                self._set_healthy(False, now)

    def _set_healthy(self, healthy: bool, now: float) -> None:
        self.healthy = healthy
        if healthy:
            self.recovered_at = now
        upstream = self.upstream
        upstream.version += 1
        BACKEND_HEALTHY.labels(upstream.name, self.label).set(1 if healthy else 0)
        log.get_logger("aiogate.health").warning(
            log.BACKEND_HEALTH_CHANGED,
            upstream=upstream.name,
            backend=self.label,
            **{
                "from": "unhealthy" if healthy else "healthy",
                "to": "healthy" if healthy else "unhealthy",
            },
            last_check=self.last_check,
        )

    # -- passive checks ---------------------------------------------------------------------
    def passive_failure(self, config: UpstreamConfig, now: float, pool_size: int) -> None:
        passive = config.passive_health_check
        if passive is None:
            return
        self.passive_failures += 1
        if self.passive_failures < passive.consecutive_failures or self.ejected_until > now:
            return
        limit = pool_size * passive.max_ejection_percent // 100
        if passive.max_ejection_percent > 0:
            limit = max(limit, 1)
        ejected = sum(1 for b in self.upstream.backends.values() if b.ejected_until > now)
        if ejected >= limit:
            return  # the cap protects the rest of the pool from being overloaded
        self.ejections += 1
        self.total_ejections += 1
        self.passive_failures = 0
        seconds = min(passive.ejection_time * self.ejections, passive.max_ejection_time)
        self.ejected_until = now + seconds
        self.upstream.version += 1
        BACKEND_EJECTIONS.labels(self.upstream.name, self.label).inc()
        log.get_logger("aiogate.health").warning(
            log.BACKEND_EJECTED,
            upstream=self.upstream.name,
            backend=self.label,
            seconds=seconds,
            ejections=self.ejections,
        )

    def passive_success(self, now: float) -> None:
        self.passive_failures = 0
        if self.ejections and self.ejected_until and now > self.ejected_until:
            # A success after the ejection ended: the back-off starts over next time.
            self.ejections = 0
            self.ejected_until = 0.0
            self.recovered_at = now

    # -- latency ----------------------------------------------------------------------------
    def observe(self, seconds: float, now: float) -> None:
        """Peak EWMA: jump up to a slower observation, decay towards faster ones."""
        if seconds >= self.ewma:
            self.ewma = seconds
        else:
            weight = math.exp((self.ewma_at - now) / _EWMA_TAU)
            self.ewma = self.ewma * weight + seconds * (1.0 - weight)
        self.ewma_at = now

    def penalise(self, now: float) -> None:
        self.observe(max(self.ewma * 2, _FAILURE_PENALTY), now)

    # -- breaker ----------------------------------------------------------------------------
    def _on_breaker(self, breaker: CircuitBreaker, old: int, new: int) -> None:
        upstream = self.upstream
        upstream.version += 1
        if new == 0:
            self.recovered_at = breaker.changed_at  # ramp up again after an outage
        to = STATE_NAMES[new]
        CIRCUIT_STATE.labels(upstream.name, self.label).set(new)
        CIRCUIT_TRANSITIONS.labels(upstream.name, self.label, to).inc()
        log.get_logger("aiogate.breaker").warning(
            log.CIRCUIT_STATE_CHANGED,
            upstream=upstream.name,
            backend=self.label,
            **{"from": STATE_NAMES[old], "to": to},
        )

    def snapshot(self, now: float) -> dict[str, object]:
        breaker = self.breaker
        return {
            "healthy": self.healthy,
            "ejected": self.ejected_until > now,
            "ejected_for_s": round(max(0.0, self.ejected_until - now), 3),
            "ejections": self.total_ejections,
            "passive_failures": self.passive_failures,
            "circuit": STATE_NAMES[breaker.state] if breaker.config.enabled else "disabled",
            "circuit_failures": breaker.failures,
            "half_open_probes": breaker.probes,
            "last_check": None
            if self.last_check_at is None
            else {
                "ok": self.last_check_ok,
                "detail": self.last_check,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_check_at)),
                "age_s": round(time.time() - self.last_check_at, 3),
            },
            "latency_ewma_ms": round(self.ewma * 1000, 3),
        }


class StateRegistry:
    """Every upstream's backend states; handed from a Runtime to its successor on reload."""

    __slots__ = ("upstreams",)

    def __init__(self) -> None:
        self.upstreams: dict[str, UpstreamState] = {}

    def adopt(
        self,
        upstreams: Iterable[UpstreamConfig],
        default_breaker: CircuitBreakerConfig,
        previous: StateRegistry | None,
        now: float,
    ) -> None:
        """Fill this registry for `upstreams`, keeping `previous`'s state where it still applies."""
        old = previous.upstreams if previous is not None else {}
        for config in upstreams:
            state = old.get(config.name) or UpstreamState(config.name)
            breaker_config = config.circuit_breaker or default_breaker
            kept: dict[str, BackendState] = {}
            for backend in config.backends:
                entry = state.backends.get(backend.url) or BackendState(state, backend.url, now)
                if entry.breaker.config != breaker_config:
                    entry.breaker = CircuitBreaker(breaker_config, entry._on_breaker)
                    CIRCUIT_STATE.labels(config.name, backend.url).set(0)
                if config.health_check is None and not entry.healthy:
                    entry._set_healthy(True, now)  # no checks any more: nothing keeps it out
                kept[backend.url] = entry
            for url in state.backends.keys() - kept.keys():
                _forget(config.name, url)
            state.backends = kept
            state.version += 1
            self.upstreams[config.name] = state
        for name in old.keys() - self.upstreams.keys():
            for url in old[name].backends:
                _forget(name, url)

    def own(self, generation: int) -> None:
        """From now on only the health checks of Runtime `generation` record verdicts."""
        for state in self.upstreams.values():
            for entry in state.backends.values():
                entry.check_owner = generation


def _forget(upstream: str, backend: str) -> None:
    for metric in (BACKEND_HEALTHY, CIRCUIT_STATE):
        with contextlib.suppress(KeyError):
            metric.remove(upstream, backend)
