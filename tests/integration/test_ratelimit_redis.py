"""Rate limiting shared through a real redis-server: exactness across instances, outages."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable

import redis
from backend import BackendThread
from gateway import Gateway, wait_until
from ratelimit_support import (
    burst,
    get,
    limited_config,
    metric,
    obs_text_config,
    obs_text_statuses,
)
from wire import request

from redis_server import RedisServer


def redis_config(
    backends: BackendThread, server: RedisServer, limit: int = 20
) -> dict[str, object]:
    return limited_config(
        backends,
        {"path": "/r", "rate_limit": {"requests": limit, "window": "1h"}},
        {"path": "/s", "rate_limit": {"requests": limit, "window": "1h",
                                      "algorithm": "sliding_window"}},
        redis={"url": server.url},
    )  # fmt: skip


def test_two_instances_share_one_bucket_exactly(
    backends: BackendThread, make_gateway: Callable[..., Gateway], redis_server: RedisServer
) -> None:
    config = redis_config(backends, redis_server)
    # Exact only while Redis answers within the timeout (past it a request is judged locally,
    # by design); 2 CPUs shared by parallel test runs can exceed the default 50 ms.
    config["rate_limiting"] = {"timeout": "2s"}
    one, two = make_gateway(config), make_gateway(config)
    for path in ("/r", "/s"):
        statuses = asyncio.run(burst([f"{one.url}{path}", f"{two.url}{path}"], 60))
        degraded = one.events("ratelimit_backend_degraded") + two.events(
            "ratelimit_backend_degraded"
        )
        assert Counter(statuses) == {200: 20, 429: 40}, (path, degraded)
    client = redis.Redis.from_url(redis_server.url)
    assert sorted(client.keys("aiogate:rl:*")) == [
        b"aiogate:rl:route./r.0:127.0.0.1",
        b"aiogate:rl:route./s.0:127.0.0.1",
    ]
    assert 0 < client.pttl("aiogate:rl:route./r.0:127.0.0.1") <= 3_601_000
    assert metric(one.admin_url, 'aiogate_ratelimit_backend_up{backend="redis"}') == [
        'aiogate_ratelimit_backend_up{backend="redis"} 1.0'
    ]
    # A long dimension value is hashed into a short key.
    get(f"{one.url}/r", {"X-Forwarded-For": "10.0.0.1"})
    long_ip = "2001:db8:" + ":".join(["abcd"] * 6)
    assert get(f"{one.url}/r", {"X-Forwarded-For": long_ip})[0] == 200  # 5 used of 20 there


def test_redis_killed_mid_load_falls_back_then_restores(
    backends: BackendThread, make_gateway: Callable[..., Gateway], redis_server: RedisServer
) -> None:
    config = redis_config(backends, redis_server, limit=30)
    config["rate_limiting"] = {"timeout": "50ms", "backoff": "200ms", "max_backoff": "400ms"}
    gw = make_gateway(config)
    statuses = asyncio.run(burst([f"{gw.url}/r"], 10))
    assert statuses == [200] * 10
    redis_server.kill()
    started = time.monotonic()
    statuses = asyncio.run(burst([f"{gw.url}/r"], 60))
    elapsed = time.monotonic() - started
    # Never a 5xx, never a stall: the local bucket (a fresh 30) takes over at once.
    assert set(statuses) <= {200, 429}
    assert Counter(statuses) == {200: 30, 429: 30}
    assert elapsed < 5
    degraded = gw.wait_event("ratelimit_backend_degraded")
    assert degraded[0]["backend"] == "redis"
    assert metric(gw.admin_url, 'aiogate_ratelimit_backend_up{backend="redis"}') == [
        'aiogate_ratelimit_backend_up{backend="redis"} 0.0'
    ]
    # Limiting continues while Redis stays down (the breaker keeps requests off it).
    assert [get(f"{gw.url}/r")[0] for _ in range(3)] == [429] * 3
    redis_server.start()  # same port, empty: the script must be loaded again (NOSCRIPT)

    def restored() -> bool:
        get(f"{gw.url}/r", {"X-Forwarded-For": "10.7.0.1"})
        return bool(gw.events("ratelimit_backend_restored"))

    wait_until(restored, 10, "ratelimit_backend_restored")
    assert metric(gw.admin_url, 'aiogate_ratelimit_backend_up{backend="redis"}') == [
        'aiogate_ratelimit_backend_up{backend="redis"} 1.0'
    ]
    client = redis.Redis.from_url(redis_server.url)
    assert client.exists("aiogate:rl:route./r.0:10.7.0.1")
    assert len(gw.events("ratelimit_backend_degraded")) == 1
    assert not [e for e in gw.events("request") if e["status"] >= 500]


def test_redis_down_at_start_is_a_degraded_start(
    backends: BackendThread, make_gateway: Callable[..., Gateway], redis_server: RedisServer
) -> None:
    redis_server.kill()
    gw = make_gateway(redis_config(backends, redis_server, limit=2))
    assert [get(f"{gw.url}/r")[0] for _ in range(3)] == [200, 200, 429]
    gw.wait_event("ratelimit_backend_degraded")


def test_obs_text_header_values_are_limited_in_redis_never_a_500(
    backends: BackendThread, make_gateway: Callable[..., Gateway], redis_server: RedisServer
) -> None:
    config = obs_text_config(backends, redis={"url": redis_server.url})
    config["rate_limiting"] = {"timeout": "2s"}  # judged by Redis, not by a slow-call fallback
    gw = make_gateway(config)
    # The same outcome as with local buckets (test_ratelimit.py), judged by Redis this time.
    assert obs_text_statuses(gw) == [200, 200, 429, 200, 200]
    assert request(gw.port, "GET", "/open", [("X-API-Key", "k\xe9y")]).status == 429
    assert gw.events("ratelimit_backend_degraded") == []
    digest = hashlib.blake2b(b"caf\xe9", digest_size=16).hexdigest()
    keys = sorted(redis.Redis.from_url(redis_server.url).keys("aiogate:rl:*"))
    assert keys == [
        b"aiogate:rl:global.0:ip:127.0.0.1",
        f"aiogate:rl:route./t.0:h:#{digest}".encode(),
    ]
