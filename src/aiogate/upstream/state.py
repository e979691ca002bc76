"""Backend state that outlives a Runtime: health, ejection, circuit breaker, latency.

A reload builds new pools, but what the gateway has learnt about its backends must not be
forgotten (a reload must not send traffic to a backend known to be down). So the state of each
backend lives in a `StateRegistry` keyed by (upstream, backend URL): the new Runtime adopts the
old registry's entries for backends still in its config and drops the rest.

Adopting is pure: the new registry gets its own containers, shares an old entry only where
nothing about it changes, and copies the others. What the running Runtime would notice (metric
series removed or reset, a backend revived, the old copies silenced, health-check ownership) is
done by `commit()`, which the new Runtime's `start()` calls once nothing can fail any more. A
reload that fails before that leaves the running Runtime exactly as it was.

Every change that alters which backends may be picked bumps `UpstreamState.version`; pools
compare it with the version they last built their eligible set from (one int compare per
request instead of re-filtering the backends).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from .. import log
from ..config import CircuitBreakerConfig, UpstreamConfig, breaker_for
from ..metrics import BACKEND_EJECTIONS, BACKEND_HEALTHY, CIRCUIT_STATE, CIRCUIT_TRANSITIONS
from .breaker import CLOSED, HALF_OPEN, OPEN, STATE_NAMES, CircuitBreaker

__all__ = ["BackendState", "OutcomeReporter", "StateRegistry", "UpstreamState"]

_DISABLED = CircuitBreakerConfig(enabled=False)
#: `check_owner` of an entry no Runtime's health checks may write to (not yet committed, or
#: superseded by a copy in a newer Runtime).
_UNOWNED = -1
#: What a copy takes over from the entry it replaces (all but identity, owner and breaker).
_CARRIED = (
    "healthy",
    "ok_streak",
    "fail_streak",
    "last_check",
    "last_check_ok",
    "last_check_at",
    "passive_failures",
    "ejected_until",
    "ejections",
    "total_ejections",
    "recovered_at",
    "ewma",
    "ewma_at",
)
#: Peak-EWMA decay time constant (seconds): how long a slow observation is remembered.
_EWMA_TAU = 10.0
#: What a failed attempt costs in the latency estimate: failing fast must not look fast.
_FAILURE_PENALTY = 1.0


class OutcomeReporter(Protocol):
    """Where a worker of a host view sends its attempts' verdicts instead of judging them: the
    supervisor decides breakers and ejections for the whole host (hostview/link.py)."""

    def success(self, state: BackendState, probe: bool) -> None: ...
    def failure(self, state: BackendState, probe: bool, passive: bool) -> None: ...


class _Version:
    """The eligibility version of one upstream, shared by its states across Runtimes: an entry
    shared by an old and a new Runtime invalidates both pools' cached eligible sets."""

    __slots__ = ("listener", "value")

    def __init__(self) -> None:
        self.value = 0
        #: Called after each change (the supervisor's host view publishes from it); None: none.
        self.listener: Callable[[], None] | None = None


class UpstreamState:
    __slots__ = ("_version", "backends", "name")

    def __init__(self, name: str, version: _Version | None = None) -> None:
        self.name = name
        self._version = version if version is not None else _Version()
        self.backends: dict[str, BackendState] = {}

    @property
    def version(self) -> int:
        return self._version.value

    @version.setter
    def version(self, value: int) -> None:
        version = self._version
        version.value = value
        if version.listener is not None:
            version.listener()

    def listen(self, listener: Callable[[], None] | None) -> None:
        """Call `listener` after every change of which backends may be picked."""
        self._version.listener = listener


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
        "live",
        "ok_streak",
        "passive_failures",
        "recovered_at",
        "reporter",
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
        self.check_owner = _UNOWNED  # generation of the Runtime whose health task may write here
        #: Whether this entry speaks for its backend (gauges, state-change events): set by
        #: `StateRegistry.commit`, cleared when a newer Runtime's copy replaces it.
        self.live = False
        self.passive_failures = 0
        self.ejected_until = 0.0
        self.ejections = 0  # consecutive ejections (back-off multiplier)
        self.total_ejections = 0
        self.recovered_at = now  # slow start counts from here
        self.ewma = 0.0
        self.ewma_at = now
        self.breaker = CircuitBreaker(_DISABLED, self._on_breaker)
        #: Set in a worker of a host view while its link to the supervisor is up: attempts'
        #: verdicts go there instead of to this entry's breaker and passive checks.
        self.reporter: OutcomeReporter | None = None

    def _take(self, source: BackendState, keep_breaker: bool) -> None:
        """Carry `source`'s learnt state over to this copy (its breaker's too if `keep_breaker`)."""
        for name in _CARRIED:
            setattr(self, name, getattr(source, name))
        if keep_breaker:
            old, new = source.breaker, self.breaker
            new.state, new.failures, new.successes = old.state, old.failures, old.successes
            new.opened_at, new.changed_at = old.opened_at, old.changed_at
            # Probes in flight report back to the old breaker: they hold no slot here.
            new.probes = 0

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
        if not self.live:
            return  # a copy not committed yet, or one a newer Runtime replaced: not its to tell
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
        if not self.live:
            return
        to = STATE_NAMES[new]
        CIRCUIT_STATE.labels(upstream.name, self.label).set(new)
        CIRCUIT_TRANSITIONS.labels(upstream.name, self.label, to).inc()
        log.get_logger("aiogate.breaker").warning(
            log.CIRCUIT_STATE_CHANGED,
            upstream=upstream.name,
            backend=self.label,
            **{"from": STATE_NAMES[old], "to": to},
        )

    # -- host view (a worker follows the supervisor) -----------------------------------------
    def follow(
        self, healthy: bool, circuit: int, reopen_in: float, ejected_for: float, now: float
    ) -> None:
        """Take the host's verdict on this backend (a worker of a host view): health, circuit
        and ejection as the supervisor decided them. Silent, like any entry that is not live:
        the supervisor logs the change and sets the gauges, once for the host."""
        changed = False
        if healthy != self.healthy:
            self.healthy = healthy
            if healthy:
                self.recovered_at = now
            changed = True
        ejected_until = now + ejected_for if ejected_for > 0 else 0.0
        if (ejected_until > now) != (self.ejected_until > now):
            changed = True
        self.ejected_until = ejected_until
        breaker = self.breaker
        if breaker.state != circuit:
            breaker.state = circuit
            breaker.failures = breaker.successes = 0
            breaker.changed_at = now
            if circuit != HALF_OPEN:
                breaker.probes = 0  # probes in flight report to the host, not to a slot
            if circuit == CLOSED:
                self.recovered_at = now  # ramp up again after an outage
            changed = True
        if circuit == OPEN:
            # The worker lets probes through when the host's timeout ends, on its own clock.
            breaker.opened_at = now + reopen_in - breaker.config.timeout
        if changed:
            self.upstream.version += 1

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

    __slots__ = ("_copies", "_previous", "_unchecked", "committed", "publish", "upstreams")

    def __init__(self, *, publish: bool = True) -> None:
        self.upstreams: dict[str, UpstreamState] = {}
        #: Whether this process speaks for its backends (gauges, state-change events). A
        #: worker of a host view does not: the supervisor does, once for the host.
        self.publish = publish
        #: Whether `commit` ran: only then did anything outside this registry change.
        self.committed = False
        self._previous: StateRegistry | None = None
        #: (copy, the entry it replaces, whether the copy keeps that entry's breaker state)
        self._copies: list[tuple[BackendState, BackendState, bool]] = []
        #: Upstreams without active health checks: nothing would ever mark their backends
        #: healthy again, so `commit` does.
        self._unchecked: set[str] = set()

    def adopt(
        self,
        upstreams: Iterable[UpstreamConfig],
        default_breaker: CircuitBreakerConfig,
        previous: StateRegistry | None,
        now: float,
    ) -> None:
        """Fill this registry for `upstreams`, keeping `previous`'s state where it still applies.

        Pure: nothing `previous` holds is changed, and no metric or log is touched, so a Runtime
        that fails to build or start after this leaves the running one as it was. An entry is
        shared with `previous` when nothing about it changes (requests on both Runtimes keep
        accounting to it); a backend whose breaker settings changed, or that would be revived
        because its upstream lost its `health_check`, gets a copy of the learnt state instead.
        """
        self._previous = previous
        old = previous.upstreams if previous is not None else {}
        for config in upstreams:
            before = old.get(config.name)
            state = UpstreamState(config.name, before._version if before is not None else None)
            breaker_config = breaker_for(config, default_breaker)
            unchecked = config.health_check is None
            if unchecked:
                self._unchecked.add(config.name)
            for backend in config.backends:
                source = before.backends.get(backend.url) if before is not None else None
                same_breaker = source is not None and source.breaker.config == breaker_config
                if source is not None and same_breaker and (source.healthy or not unchecked):
                    state.backends[backend.url] = source
                    continue
                entry = BackendState(state, backend.url, now)
                entry.breaker = CircuitBreaker(breaker_config, entry._on_breaker)
                if source is not None:
                    entry._take(source, same_breaker)
                    self._copies.append((entry, source, same_breaker))
                state.backends[backend.url] = entry
            self.upstreams[config.name] = state

    def commit(self, generation: int, now: float, replacing: StateRegistry | None = None) -> None:
        """Make this registry the live one: Runtime `generation` has started.

        Copies catch up with what their originals learnt since `adopt`; every entry publishes
        its gauges and takes its health checks from Runtime `generation` only; backends of an
        upstream without checks are revived; the entries of `replacing` (by default the
        registry adopted from) that this one does not share fall silent, and the metric
        series of backends no longer configured are removed. Calling it on the old registry
        with `replacing=` the new one undoes a commit.
        """
        replaced = self._previous if replacing is None else replacing
        self.committed = True
        for copy, source, keep_breaker in self._copies:
            copy._take(source, keep_breaker)
        self._copies = []
        self._previous = None  # or every registry would keep its predecessors alive
        mine: set[int] = set()
        for state in self.upstreams.values():
            for entry in state.backends.values():
                mine.add(id(entry))
                entry.upstream = state  # a shared entry counts ejections in this pool now
                entry.check_owner = generation
                entry.live = self.publish
                if self.publish:
                    BACKEND_HEALTHY.labels(state.name, entry.label).set(int(entry.healthy))
                    CIRCUIT_STATE.labels(state.name, entry.label).set(entry.breaker.state)
                if state.name in self._unchecked and not entry.healthy:
                    entry._set_healthy(True, now)  # no checks any more: nothing keeps it out
            state.version += 1
        if replaced is None:
            return
        for name, old in replaced.upstreams.items():
            current = self.upstreams.get(name)
            for url, entry in old.backends.items():
                if id(entry) not in mine:
                    # The replaced Runtime keeps using it while it drains, silently.
                    entry.live = False
                    entry.check_owner = _UNOWNED
                if self.publish and (current is None or url not in current.backends):
                    _forget(name, url)


def _forget(upstream: str, backend: str) -> None:
    for metric in (BACKEND_HEALTHY, CIRCUIT_STATE):
        with contextlib.suppress(KeyError):
            metric.remove(upstream, backend)
