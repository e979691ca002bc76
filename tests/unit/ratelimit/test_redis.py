"""RedisLimiter's breaker with a fake Redis client and a fake clock.

Timeouts and errors fall back to the local limiter at once; the breaker then keeps requests
off Redis for a back-off that doubles up to `max_backoff`; after it exactly one request probes
Redis; `ratelimit_backend_degraded` / `ratelimit_backend_restored` are logged once per outage;
the gauge `aiogate_ratelimit_backend_up{backend="redis"}` follows.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from rl_helpers import FakeClock, make_limit

from aiogate import log
from aiogate.ratelimit.local import LocalLimiter, Store
from aiogate.ratelimit.redis import SCRIPT, RedisLimiter

TIMEOUT = 0.05
BACKOFF = 1.0
MAX_BACKOFF = 4.0


class FakeRedis:
    """Stands in for redis.asyncio.Redis: `mode` decides what the next calls do.

    ok      answer with `reply` (admitted, then remaining/reset/retry per key)
    error   raise a redis ConnectionError
    hang    never answer (until `release` is set; the limiter's timeout must cut it)
    noscript  raise NoScriptError once, then behave as ok (a restarted Redis)
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.reply: list[Any] = [1, 7, "0.5", "0"]
        self.evalsha_calls = 0
        self.script_loads = 0
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    async def script_load(self, script: str) -> str:
        assert script == SCRIPT
        self.script_loads += 1
        if self.mode in ("error", "hang"):
            raise RedisConnectionError("connection refused")
        return "sha"

    async def evalsha(self, sha: str, numkeys: int, *args: Any) -> list[Any]:
        self.evalsha_calls += 1
        self.entered.set()
        if self.mode == "error":
            raise RedisConnectionError("connection refused")
        if self.mode == "hang":
            await self.release.wait()
            raise RedisConnectionError("gone")
        if self.mode == "noscript":
            self.mode = "ok"
            raise NoScriptError("NOSCRIPT No matching script")
        for arg in args:  # as redis-py's Encoder: str -> UTF-8, strictly
            if isinstance(arg, str):
                arg.encode("utf-8")
        return list(self.reply)


class Events:
    """Records what the limiter logs (event name and fields), by replacing log.get_logger."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def get_logger(self, name: str) -> Any:
        events = self

        class _Logger:
            def _log(self, event: str, **fields: Any) -> None:
                events.records.append((event, fields))

            debug = info = warning = error = _log

        return _Logger()

    def names(self) -> list[str]:
        return [name for name, _ in self.records]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Events:
    recorder = Events()
    monkeypatch.setattr(log, "get_logger", recorder.get_logger)
    return recorder


def gauge() -> float | None:
    return REGISTRY.get_sample_value("aiogate_ratelimit_backend_up", {"backend": "redis"})


def build(
    fake: FakeRedis, clock: FakeClock, timeout: float = TIMEOUT
) -> tuple[RedisLimiter, LocalLimiter]:
    local = LocalLimiter(clock)
    limiter = RedisLimiter(
        fake,  # type: ignore[arg-type]
        local,
        timeout=timeout,
        backoff=BACKOFF,
        max_backoff=MAX_BACKOFF,
        clock=clock,
    )
    return limiter, local


LIMIT = make_limit(id="t.0", limit=3, window=3.0)


@pytest.fixture(autouse=True)
def _fresh_buckets() -> None:
    LIMIT.store = Store(6.0)  # local buckets must not carry over from another test


async def test_start_loads_the_script_and_sets_the_gauge_up(events: Events) -> None:
    fake, clock = FakeRedis(), FakeClock(100.0)
    limiter, _ = build(fake, clock)
    await limiter.start()
    assert fake.script_loads == 1
    assert limiter.up is True
    assert gauge() == 1.0
    assert events.names() == []


async def test_redis_answers_are_the_verdict(events: Events) -> None:
    fake, clock = FakeRedis(), FakeClock(100.0)
    limiter, _ = build(fake, clock)
    await limiter.start()
    fake.reply = [0, 0, "2.5", "1.25"]
    verdict = await limiter.acquire([LIMIT], ["1.2.3.4"])
    assert (verdict.admitted, verdict.remaining, verdict.limit) == (False, 0, 3)
    assert verdict.reset == 2.5
    assert verdict.retry_after == 1.25
    assert verdict.reported is LIMIT
    assert fake.evalsha_calls == 1


async def test_noscript_reloads_the_script_once_and_retries(events: Events) -> None:
    fake, clock = FakeRedis(), FakeClock(100.0)
    limiter, _ = build(fake, clock)
    await limiter.start()
    fake.mode = "noscript"
    verdict = await limiter.acquire([LIMIT], ["1.2.3.4"])
    assert verdict.remaining == 7  # the Redis reply, not a local fallback
    assert (fake.script_loads, fake.evalsha_calls) == (2, 2)
    assert limiter.up is True
    assert events.names() == []


async def test_a_value_redis_cannot_take_is_judged_locally_without_tripping(
    events: Events,
) -> None:
    fake, clock = FakeRedis(), FakeClock(100.0)
    limiter, _ = build(fake, clock)
    await limiter.start()
    # A lone surrogate (an obs-text header byte as aiohttp decodes it) that reached the
    # limiter unnormalised: redis-py cannot encode it. The limiter must still never raise.
    verdict = await limiter.acquire([LIMIT], ["h:caf\udce9"])
    assert (verdict.admitted, verdict.remaining, verdict.limit) == (True, 2, 3)  # local
    # The request's fault, not Redis's: no breaker, the next request goes to Redis.
    assert limiter.up is True
    assert events.names() == []
    assert (await limiter.acquire([LIMIT], ["1.2.3.4"])).remaining == 7
    assert fake.evalsha_calls == 2


async def test_a_timeout_falls_back_to_the_local_bucket_at_once(events: Events) -> None:
    fake, clock = FakeRedis(), FakeClock(100.0)
    limiter, _ = build(fake, clock)
    await limiter.start()
    fake.mode = "hang"
    started = time.monotonic()
    verdict = await limiter.acquire([LIMIT], ["1.2.3.4"])
    took = time.monotonic() - started
    # Judged by the local bucket (3 per 3 s, one used), not a stall, not an error.
    assert (verdict.admitted, verdict.remaining, verdict.limit) == (True, 2, 3)
    assert took < 1.0, took  # the 50 ms call timeout, with room for a loaded machine
    assert limiter.up is False
    assert gauge() == 0.0
    assert events.names() == ["ratelimit_backend_degraded"]
    fields = events.records[0][1]
    assert fields["backend"] == "redis"
    assert fields["retry_in"] == BACKOFF
    # During the back-off Redis is not called at all: each request is judged locally.
    calls = fake.evalsha_calls
    outcomes = [(await limiter.acquire([LIMIT], ["1.2.3.4"])).admitted for _ in range(3)]
    assert outcomes == [True, True, False]  # the local bucket's 3 tokens, then empty
    assert fake.evalsha_calls == calls
    assert events.names() == ["ratelimit_backend_degraded"]


async def test_error_fallback_uses_the_local_share(events: Events) -> None:
    fake, clock = FakeRedis(), FakeClock(100.0)
    limiter, _ = build(fake, clock)
    await limiter.start()
    fake.mode = "error"
    shared = make_limit(id="t.share", limit=10, window=10.0, local_limit=5)
    verdict = await limiter.acquire([shared], ["x"])
    # Judged alone, a process takes its share: the verdict reports the local limit.
    assert (verdict.admitted, verdict.limit, verdict.remaining) == (True, 5, 4)


async def test_backoff_doubles_up_to_the_max_with_one_probe_each(events: Events) -> None:
    fake, clock = FakeRedis(), FakeClock(100.0)
    limiter, _ = build(fake, clock)
    await limiter.start()
    fake.mode = "error"
    await limiter.acquire([LIMIT], ["a"])  # fails: back-off 1 s
    assert fake.evalsha_calls == 1
    expected_backoffs = [2.0, 4.0, 4.0, 4.0]  # each failed probe doubles, capped at 4 s
    backoff = BACKOFF
    for nxt in expected_backoffs:
        # Just before the back-off ends: still local, Redis untouched.
        calls = fake.evalsha_calls
        clock.now += backoff - 0.001
        await limiter.acquire([LIMIT], ["a"])
        assert fake.evalsha_calls == calls, "called Redis during the back-off"
        # The back-off has passed: exactly one probe, which fails.
        clock.now += 0.002
        await limiter.acquire([LIMIT], ["a"])
        assert fake.evalsha_calls == calls + 1, "one probe after the back-off"
        await limiter.acquire([LIMIT], ["a"])
        assert fake.evalsha_calls == calls + 1, "only one probe"
        backoff = nxt
    assert events.names() == ["ratelimit_backend_degraded"]  # once per outage, not per probe
    assert gauge() == 0.0


async def test_exactly_one_probe_while_it_is_in_flight(events: Events) -> None:
    fake, clock = FakeRedis(), FakeClock(100.0)
    limiter, _ = build(fake, clock, timeout=5.0)
    await limiter.start()
    fake.mode = "error"
    await limiter.acquire([LIMIT], ["a"])
    clock.now += BACKOFF + 0.01
    fake.mode = "hang"
    fake.entered.clear()
    probe = asyncio.create_task(limiter.acquire([LIMIT], ["a"]))
    await asyncio.wait_for(fake.entered.wait(), 5)
    calls = fake.evalsha_calls
    # While the probe waits on Redis every other request is judged locally, at once.
    others = [await asyncio.wait_for(limiter.acquire([LIMIT], ["b"]), 1) for _ in range(5)]
    assert [v.admitted for v in others] == [True, True, True, False, False]
    assert fake.evalsha_calls == calls
    fake.release.set()  # the probe fails
    await asyncio.wait_for(probe, 5)
    assert limiter.up is False
    assert events.names() == ["ratelimit_backend_degraded"]


async def test_probe_success_restores_once_and_resets_the_backoff(events: Events) -> None:
    fake, clock = FakeRedis(), FakeClock(100.0)
    limiter, _ = build(fake, clock)
    await limiter.start()
    fake.mode = "error"
    await limiter.acquire([LIMIT], ["a"])
    clock.now += BACKOFF + 0.01
    await limiter.acquire([LIMIT], ["a"])  # failed probe: back-off now 2 s
    clock.now += 2.0 + 0.01
    fake.mode = "ok"
    fake.reply = [1, 9, "0", "0"]
    verdict = await limiter.acquire([LIMIT], ["a"])
    assert verdict.remaining == 9  # Redis's answer
    assert limiter.up is True
    assert gauge() == 1.0
    assert events.names() == ["ratelimit_backend_degraded", "ratelimit_backend_restored"]
    assert events.records[1][1] == {"backend": "redis"}
    # Back to normal: every request goes to Redis, no more events.
    calls = fake.evalsha_calls
    for _ in range(3):
        await limiter.acquire([LIMIT], ["a"])
    assert fake.evalsha_calls == calls + 3
    assert len(events.records) == 2
    # A new outage starts again from the first back-off (1 s), with one new degraded event.
    fake.mode = "error"
    await limiter.acquire([LIMIT], ["a"])
    assert events.names()[-1] == "ratelimit_backend_degraded"
    assert events.records[-1][1]["retry_in"] == BACKOFF
    calls = fake.evalsha_calls
    clock.now += BACKOFF - 0.01
    await limiter.acquire([LIMIT], ["a"])
    assert fake.evalsha_calls == calls
    clock.now += 0.02
    await limiter.acquire([LIMIT], ["a"])
    assert fake.evalsha_calls == calls + 1
    assert events.names().count("ratelimit_backend_degraded") == 2
    assert events.names().count("ratelimit_backend_restored") == 1


async def test_calls_in_flight_when_redis_fails_count_once(events: Events) -> None:
    fake, clock = FakeRedis(), FakeClock(100.0)
    limiter, _ = build(fake, clock)
    await limiter.start()
    fake.mode = "hang"
    verdicts = await asyncio.gather(*(limiter.acquire([LIMIT], [f"c{i}"]) for i in range(4)))
    # All four were already sent: each times out and is judged locally, none is an error.
    assert [v.admitted for v in verdicts] == [True] * 4
    assert fake.evalsha_calls == 4
    assert events.names() == ["ratelimit_backend_degraded"]
    # The back-off counts from the first failure and was not pushed out by the others.
    clock.now += BACKOFF + 0.001
    fake.mode = "ok"
    await limiter.acquire([LIMIT], ["a"])
    assert limiter.up is True


async def test_redis_down_at_start_is_a_degraded_start(events: Events) -> None:
    fake, clock = FakeRedis(), FakeClock(100.0)
    fake.mode = "error"
    limiter, _ = build(fake, clock)
    await limiter.start()
    assert limiter.up is False
    assert gauge() == 0.0
    assert events.names() == ["ratelimit_backend_degraded"]
    verdict = await limiter.acquire([LIMIT], ["a"])
    assert verdict.admitted is True
    assert fake.evalsha_calls == 0  # the back-off runs from the failed start
    clock.now += BACKOFF
    fake.mode = "ok"
    await limiter.acquire([LIMIT], ["a"])
    assert fake.evalsha_calls == 1
    assert events.names() == ["ratelimit_backend_degraded", "ratelimit_backend_restored"]
    assert gauge() == 1.0
