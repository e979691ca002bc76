"""The pool manager's pure parts: breaker state machine, hashing ring, p2c, backoff, pool."""

from __future__ import annotations

import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiogate import log
from aiogate.config import CircuitBreakerConfig, RetriesConfig, UpstreamConfig
from aiogate.upstream.balance import IpHash, P2CEwma
from aiogate.upstream.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from aiogate.upstream.pool import NoBackendAvailable, UpstreamPool
from aiogate.upstream.retry import backoff_delay


@pytest.fixture(autouse=True)
def _quiet_log(tmp_path: Path) -> Iterator[None]:
    with (tmp_path / "log").open("w+") as stream:
        log.configure(stream=stream)
        yield
        log.flush()
    log.configure(stream=sys.__stdout__)


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


@dataclass(eq=False)
class B:
    label: str
    weight: float = 1
    in_flight: int = 0
    ewma: float = 0.0


def test_ip_hash_moves_only_the_removed_backends_share() -> None:
    a, b, c = B("a"), B("b"), B("c")
    ring = IpHash()
    ips = [f"10.0.{i // 256}.{i % 256}" for i in range(3000)]
    before = {ip: ring.pick((a, b, c), ip).label for ip in ips}
    shares = Counter(before.values())
    assert all(800 < n < 1200 for n in shares.values()), shares
    after = {ip: ring.pick((a, b), ip).label for ip in ips}
    moved = [ip for ip in ips if before[ip] != after[ip]]
    assert len(moved) == shares["c"]
    assert all(before[ip] == "c" for ip in moved)


def test_p2c_prefers_the_faster_and_less_loaded() -> None:
    fast, slow = B("fast", ewma=0.01), B("slow", ewma=0.2)
    p2c = P2CEwma(random.Random(3))
    assert Counter(p2c.pick([fast, slow], "").label for _ in range(50)) == {"fast": 50}
    fast.in_flight = 40  # 0.01 x 41 > 0.2 x 1
    assert p2c.pick([fast, slow], "").label == "slow"
    three = [B("x", ewma=0.01), B("y", ewma=0.01), B("z", ewma=1.0)]
    picks = Counter(p2c.pick(three, "").label for _ in range(300))
    assert picks["z"] == 0
    assert picks["x"] > 50
    assert picks["y"] > 50


def test_full_jitter() -> None:
    config = RetriesConfig(attempts=3, base_delay=0.1, max_delay=0.3)
    rng = random.Random(1)
    delays = [backoff_delay(config, n, rng) for n in (0, 1, 2, 5) for _ in range(200)]
    assert all(0 <= d <= 0.3 for d in delays)
    assert max(delays[:200]) <= 0.1
    assert max(delays[-200:]) > 0.25


def test_retries_accept_both_spellings() -> None:
    old = RetriesConfig.model_validate({"backoff": 0.5, "max_backoff": 1})
    new = RetriesConfig.model_validate({"base_delay": 0.5, "max_delay": 1})
    assert (old.base_delay, old.max_delay) == (new.base_delay, new.max_delay) == (0.5, 1)
    assert old.backoff == 0.5
    assert old.max_backoff == 1


async def test_pool_skips_open_ejected_unhealthy_and_ramps_slow_start() -> None:
    config = UpstreamConfig.model_validate(
        {"name": "u", "slow_start": 10, "passive_health_check": {"consecutive_failures": 1},
         "backends": [{"url": "http://127.0.0.1:1"}, {"url": "http://127.0.0.1:2", "weight": 4},
                      {"url": "http://127.0.0.1:3"}]}
    )  # fmt: skip
    pool = UpstreamPool(config, now=0.0)
    a, b, c = pool.backends
    pool.pick("", 100.0)
    assert b.weight == 4
    b.state.check_result(False, "x", 1, 1, 100.0)  # unhealthy
    assert {pool.pick("", 101.0).label for _ in range(10)} == {a.label, c.label}
    pool.failed(a, 101.0, probe=False)  # passive: ejected (cap: 50% of 3 -> 1)
    assert {pool.pick("", 102.0).label for _ in range(10)} == {c.label}
    for _ in range(5):
        pool.failed(c, 102.0, probe=False, passive=False)  # breaker opens (default threshold 5)
    with pytest.raises(NoBackendAvailable) as info:
        pool.pick("", 103.0)
    assert info.value.circuit_open
    b.state.check_result(True, "ok", 1, 1, 200.0)  # healthy again at 200: ramps up
    assert pool.pick("", 201.0) is b
    assert b.weight == pytest.approx(0.4)  # 10% floor of weight 4
    pool.pick("", 206.0)
    assert b.weight == pytest.approx(2.4)
    pool.pick("", 211.0)
    assert b.weight == 4
    await pool.close()
