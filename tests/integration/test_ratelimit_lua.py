"""The Lua script and bucket.py agree: the shared table of cases, and random sequences whose
stored states must match to the last bit (a real redis-server)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import redis

sys.path.insert(0, str(Path(__file__).parents[1] / "unit" / "ratelimit"))

from rl_cases import CASES

from aiogate.ratelimit import bucket
from aiogate.ratelimit.bucket import SLIDING_WINDOW, TOKEN_BUCKET
from aiogate.ratelimit.redis import SCRIPT
from redis_server import RedisServer


def code(algorithm: str) -> int:
    return SLIDING_WINDOW if algorithm == "sliding_window" else TOKEN_BUCKET


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


def run(client: redis.Redis, keys: list[str], now: float, specs: list[tuple[int, int, float]]):
    args: list[object] = [repr(now)]
    for algorithm, limit, window in specs:
        args += [algorithm, limit, repr(window)]
    return client.eval(SCRIPT, len(keys), *keys, *args)


@pytest.mark.parametrize("name", sorted(CASES))
def test_lua_follows_the_table(client: redis.Redis, name: str) -> None:
    algorithm, limit, window, steps = CASES[name]
    for now, admitted, remaining, reset, retry in steps:
        reply = run(client, ["k"], now, [(code(algorithm), limit, window)])
        assert (reply[0] == 1, reply[1]) == (admitted, remaining), now
        assert float(reply[2]) == pytest.approx(reset, abs=1e-9)
        assert float(reply[3]) == pytest.approx(retry, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_lua_and_python_store_identical_states(client: redis.Redis, seed: int) -> None:
    rng = random.Random(seed)
    specs = [
        (rng.choice((TOKEN_BUCKET, SLIDING_WINDOW)), rng.randint(1, 7), rng.choice((0.5, 1.0, 3.7)))
        for _ in range(rng.randint(1, 3))
    ]
    keys = [f"k{i}" for i in range(len(specs))]
    states: list[bucket.State | None] = [None] * len(specs)
    now = 1_700_000_000.0 + rng.random()
    for _ in range(150):
        now += rng.choice((0.0, 0.001, 0.05, 0.3, 1.1, 4.0))
        judged = [
            bucket.judge(a, lim, w, st, now) for (a, lim, w), st in zip(specs, states, strict=True)
        ]
        admitted = all(ok for _, ok in judged)
        expected = [1 if admitted else 0]
        for i, ((a, lim, w), (judged_state, ok)) in enumerate(zip(specs, judged, strict=True)):
            states[i] = state = bucket.consume(a, judged_state) if admitted else judged_state
            remaining, reset, retry = bucket.report(a, lim, w, state, now, admitted=ok)
            expected += [remaining, reset, retry]
        reply = run(client, keys, now, specs)
        got = [reply[0]]
        for i in range(1, len(reply), 3):
            got += [reply[i], float(reply[i + 1]), float(reply[i + 2])]
        assert got == expected  # exact, not approximate: the same doubles
        for key, state in zip(keys, states, strict=True):
            stored = client.hmget(key, "a", "b", "c")
            assert state is not None
            assert tuple(float(v) for v in stored) == state


def test_keys_expire_and_redis_time_is_the_clock(client: redis.Redis) -> None:
    reply = client.eval(SCRIPT, 2, "tb", "sw", "", 0, 5, "10.0", 1, 5, "10.0")
    assert reply[0] == 1
    assert 0 < client.pttl("tb") <= 11_000
    assert 11_000 < client.pttl("sw") <= 21_000
    stored = float(client.hget("tb", "b") or 0)
    seconds, micros = client.time()
    assert abs(stored - (seconds + micros / 1e6)) < 5
