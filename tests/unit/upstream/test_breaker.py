"""The circuit breaker's state machine on an injected clock."""

from __future__ import annotations

from aiogate.config import CircuitBreakerConfig
from aiogate.upstream.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker


def _breaker(**kw: object) -> tuple[CircuitBreaker, list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []
    config = CircuitBreakerConfig.model_validate(
        {"failure_threshold": 3, "success_threshold": 2, "timeout": 10, "half_open_requests": 2,
         **kw}
    )  # fmt: skip
    return CircuitBreaker(config, lambda _b, old, new: seen.append((old, new))), seen


def test_breaker_full_cycle_on_an_injected_clock() -> None:
    b, seen = _breaker()
    for now in (1, 2):
        b.record(False, now)
    b.record(True, 3)  # a success resets the consecutive count
    for now in (4, 5, 6):
        b.record(False, now)
    assert b.state == OPEN
    assert seen == [(CLOSED, OPEN)]
    assert not b.available(15.9)
    assert b.available(16.0)
    assert b.state == HALF_OPEN
    probes = [b.acquire(), b.acquire()]
    assert probes == [True, True]
    assert not b.available(16.1)  # both probe slots taken
    b.record(True, 17, probe=True)
    assert b.state == HALF_OPEN
    assert b.available(17)
    b.record(True, 18, probe=True)
    assert b.state == CLOSED
    assert seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_breaker_probe_failure_reopens_and_restarts_the_timer() -> None:
    b, seen = _breaker()
    for _ in range(3):
        b.record(False, 0)
    assert b.available(10)
    probe = b.acquire()
    b.record(False, 11, probe=probe)
    assert b.state == OPEN
    assert b.opened_at == 11
    assert not b.available(20)
    assert b.available(21)
    assert seen[1:3] == [(OPEN, HALF_OPEN), (HALF_OPEN, OPEN)]


def test_breaker_cancelled_probe_frees_its_slot_and_disabled_never_opens() -> None:
    b, _ = _breaker(half_open_requests=1)
    for _ in range(3):
        b.record(False, 0)
    assert b.available(10)
    probe = b.acquire()
    assert not b.available(10)
    b.cancel(probe)
    assert b.available(10)
    off, seen = _breaker(enabled=False)
    for _ in range(10):
        off.record(False, 0)
    assert off.state == CLOSED
    assert not seen
