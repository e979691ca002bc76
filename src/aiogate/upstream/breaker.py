"""The circuit breaker of one backend: a pure state machine on an injected clock.

closed --failure_threshold consecutive failures--> open --timeout--> half_open
half_open --success_threshold consecutive successes--> closed
half_open --any failure--> open

While half-open at most `half_open_requests` probes are in flight; a request only becomes a
probe through `acquire()`, and must then report back through `record()` or `cancel()`.
The breaker never reads a clock itself: every call that needs the time gets `now`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ..config import CircuitBreakerConfig

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "STATE_NAMES", "CircuitBreaker"]

# The values are the contract's `aiogate_circuit_state` gauge values.
CLOSED: Final = 0
HALF_OPEN: Final = 1
OPEN: Final = 2
STATE_NAMES: Final = ("closed", "half_open", "open")

#: (breaker, from_state, to_state) — the pool turns it into the event and the metrics.
OnTransition = Callable[["CircuitBreaker", int, int], None]


def _ignore(breaker: CircuitBreaker, old: int, new: int) -> None:
    return None


class CircuitBreaker:
    __slots__ = (
        "changed_at",
        "config",
        "failures",
        "on_transition",
        "opened_at",
        "probes",
        "state",
        "successes",
    )

    def __init__(self, config: CircuitBreakerConfig, on_transition: OnTransition = _ignore) -> None:
        self.config = config
        self.on_transition = on_transition
        self.state = CLOSED
        self.failures = 0  # consecutive, while closed
        self.successes = 0  # consecutive, while half-open
        self.probes = 0  # half-open requests in flight
        self.opened_at = 0.0
        self.changed_at = 0.0

    def available(self, now: float) -> bool:
        """Whether a request may go to this backend now (moves open -> half-open on time)."""
        state = self.state
        if state == CLOSED:
            return True
        if state == OPEN:
            if now < self.opened_at + self.config.timeout:
                return False
            self._move(HALF_OPEN, now)
        return self.probes < self.config.half_open_requests

    def reopens_at(self) -> float:
        return self.opened_at + self.config.timeout

    def acquire(self) -> bool:
        """Called when a request is sent; True if it is a half-open probe (report it back)."""
        if self.state != HALF_OPEN:
            return False
        self.probes += 1
        return True

    def cancel(self, probe: bool) -> None:
        """The request ended without a verdict on the backend (e.g. the client went away)."""
        if probe and self.probes > 0:
            self.probes -= 1

    def record(self, success: bool, now: float, probe: bool = False) -> None:
        if probe and self.probes > 0:
            self.probes -= 1
        if not self.config.enabled:
            return
        state = self.state
        if success:
            if state == CLOSED:
                self.failures = 0
            elif state == HALF_OPEN and probe:
                self.successes += 1
                if self.successes >= self.config.success_threshold:
                    self._move(CLOSED, now)
            return
        if state == CLOSED:
            self.failures += 1
            if self.failures >= self.config.failure_threshold:
                self._open(now)
        elif state == HALF_OPEN:
            self._open(now)
        # OPEN: late answers of requests sent before it opened change nothing.

    def _open(self, now: float) -> None:
        self.opened_at = now
        self._move(OPEN, now)

    def _move(self, new: int, now: float) -> None:
        old = self.state
        self.changed_at = now
        self.state = new
        self.failures = 0
        self.successes = 0
        if new != HALF_OPEN:
            self.probes = 0
        self.on_transition(self, old, new)
