"""Rate limiting through the real daemon, local buckets (no Redis)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from backend import BackendThread
from gateway import Gateway
from ratelimit_support import (
    body,
    burst,
    get,
    limited_config,
    metric,
    obs_text_config,
    obs_text_statuses,
)
from wire import request


def test_roadmap_validation_429_after_the_limit(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(
        limited_config(backends, {"path": "/api", "rate_limit": {"requests": 10, "window": "60s"}})
    )
    statuses = []
    last: tuple[int, dict[str, str], bytes] | None = None
    for i in range(100):
        status, headers, raw = get(f"{gw.url}/api/x")
        statuses.append(status)
        if i == 0:
            assert headers["X-RateLimit-Limit"] == "10"
            assert headers["X-RateLimit-Remaining"] == "9"
            assert headers["X-RateLimit-Reset"] == "6"  # one token back every 6 s
            assert headers["RateLimit-Policy"] == '"route./api.0";q=10;w=60'
            assert headers["RateLimit"] == '"route./api.0";r=9;t=6'
            assert "Retry-After" not in headers
        last = (status, headers, raw)
    assert statuses == [200] * 10 + [429] * 90
    assert last is not None
    status, headers, raw = last
    payload = body(raw)
    assert payload["error"] == "rate_limited"
    assert payload["request_id"] == headers["X-Request-ID"]
    assert headers["Content-Type"].startswith("application/json")
    assert 1 <= int(headers["Retry-After"]) <= 6
    assert headers["X-RateLimit-Remaining"] == "0"
    assert headers["X-RateLimit-Limit"] == "10"
    # One line per refusal: the access line (ratelimit_rejected is a debug line).
    lines = gw.wait_event("request", 100)
    refused = [line for line in lines if line["status"] == 429]
    assert len(refused) == 90
    assert refused[0]["route"] == "/api"
    assert gw.events("ratelimit_rejected") == []
    samples = metric(gw.admin_url, "aiogate_ratelimit_rejections_total{")
    assert samples == ['aiogate_ratelimit_rejections_total{dimension="ip",route="/api"} 90.0']
    # A route without a limit carries no limit headers.


def test_concurrent_requests_admit_exactly_the_limit(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    import asyncio

    gw = make_gateway(
        limited_config(
            backends,
            {"path": "/tb", "rate_limit": {"requests": 20, "window": "1h"}},
            {
                "path": "/sw",
                "rate_limit": {"requests": 20, "window": "1h", "algorithm": "sliding_window"},
            },
        )
    )
    for path in ("/tb", "/sw"):
        statuses = asyncio.run(burst([f"{gw.url}{path}"], 60))
        assert Counter(statuses) == {200: 20, 429: 40}, path


def test_dimensions_ip_route_and_header_with_ip_fallback(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(
        limited_config(
            backends,
            {"path": "/ip", "rate_limit": {"requests": 2, "window": "1h"}},
            {"path": "/route", "rate_limit": {"requests": 3, "window": "1h", "dimension": "route"}},
            {
                "path": "/tenant",
                "rate_limit": {"requests": 2, "window": "1h", "dimension": "header:X-Tenant"},
            },
        )
    )

    def statuses(path: str, n: int, **headers: str) -> list[int]:
        return [get(f"{gw.url}{path}", headers)[0] for _ in range(n)]

    # ip: each client (X-Forwarded-For believed from the trusted 127.0.0.1) has its own bucket.
    assert statuses("/ip", 3, **{"X-Forwarded-For": "10.0.0.1"}) == [200, 200, 429]
    assert statuses("/ip", 3, **{"X-Forwarded-For": "10.0.0.2"}) == [200, 200, 429]
    # route: one bucket for everybody.
    assert statuses("/route", 2, **{"X-Forwarded-For": "10.0.0.1"}) == [200, 200]
    assert statuses("/route", 2, **{"X-Forwarded-For": "10.0.0.2"}) == [200, 429]
    # header: per value; without the header the client IP is the value.
    assert statuses("/tenant", 3, **{"X-Tenant": "a"}) == [200, 200, 429]
    assert statuses("/tenant", 2, **{"X-Tenant": "b"}) == [200, 200]
    assert statuses("/tenant", 3, **{"X-Forwarded-For": "10.0.0.9"}) == [200, 200, 429]
    assert statuses("/tenant", 1, **{"X-Forwarded-For": "10.0.0.8"}) == [200]


def test_user_api_key_and_tiers(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    config = limited_config(
        backends,
        {"path": "/user", "auth": {"type": "api_key"},
         "rate_limit": {"requests": 2, "window": "1h", "dimension": "user"}},
        {"path": "/key", "rate_limit": {"requests": 2, "window": "1h", "dimension": "api_key"}},
        {"path": "/public-user",
         "rate_limit": {"requests": 1, "window": "1h", "dimension": "user"}},
        auth={"api_key": {"header": "X-API-Key", "keys": [
            {"key": "alice-key", "consumer": "alice", "tier": "gold"},
            {"key": "bob-key", "consumer": "bob"},
            {"key": "carol-key", "consumer": "carol", "tier": "unknown-tier"},
        ]}},
        rate_limit_tiers={"gold": [{"requests": 5, "window": "1h", "dimension": "user"}]},
    )  # fmt: skip
    gw = make_gateway(config)

    def statuses(path: str, n: int, **headers: str) -> list[int]:
        return [get(f"{gw.url}{path}", headers)[0] for _ in range(n)]

    bob = {"X-API-Key": "bob-key", "X-Forwarded-For": "10.1.0.1"}
    assert statuses("/user", 3, **bob) == [200, 200, 429]
    # Another client IP does not give bob a new bucket: the dimension is the user.
    assert statuses("/user", 1, **{**bob, "X-Forwarded-For": "10.1.0.2"}) == [429]
    # alice's tier "gold" replaces the route's 2 with 5.
    alice = {"X-API-Key": "alice-key"}
    status, headers, _ = get(f"{gw.url}/user", alice)
    assert (status, headers["X-RateLimit-Limit"]) == (200, "5")
    assert statuses("/user", 5, **alice) == [200] * 4 + [429]
    # An unknown tier falls back to the route's limits.
    assert statuses("/user", 3, **{"X-API-Key": "carol-key"}) == [200, 200, 429]
    # api_key on a public route: nobody verified the key, so it does not count: a new key per
    # request is no new bucket. The client IP is counted instead.
    assert statuses("/key", 3, **{"X-API-Key": "k1", "X-Forwarded-For": "10.2.0.2"}) == [
        200, 200, 429,
    ]  # fmt: skip
    assert statuses("/key", 1, **{"X-API-Key": "k2", "X-Forwarded-For": "10.2.0.2"}) == [429]
    assert statuses("/key", 3, **{"X-Forwarded-For": "10.2.0.1"}) == [200, 200, 429]
    # user on a public route: no consumer, so the client IP is counted.
    assert statuses("/public-user", 2, **{"X-Forwarded-For": "10.3.0.1"}) == [200, 429]
    assert statuses("/public-user", 1, **{"X-Forwarded-For": "10.3.0.2"}) == [200]


def test_global_and_route_limits_report_the_most_restrictive(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(
        limited_config(
            backends,
            {
                "path": "/a",
                "rate_limit": [
                    {"requests": 3, "window": "1h"},
                    {"requests": 100, "window": "1s", "name": "burst"},
                ],
            },
            {"path": "/b"},
            rate_limits=[{"dimension": "ip", "limit": 5, "window": "1h", "name": "global-ip"}],
        )
    )
    ip = {"X-Forwarded-For": "10.9.0.1"}
    status, headers, _ = get(f"{gw.url}/a", ip)
    assert (status, headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == (
        200, "3", "2",
    )  # fmt: skip
    assert headers["RateLimit-Policy"] == (
        '"global-ip";q=5;w=3600, "route./a.0";q=3;w=3600, "burst";q=100;w=1'
    )
    assert [get(f"{gw.url}/a", ip)[0] for _ in range(3)] == [200, 200, 429]
    # The route limit refused the 4th: the global bucket was not charged for it (3 used of 5).
    statuses = [get(f"{gw.url}/b", ip)[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    status, headers, _ = get(f"{gw.url}/b", ip)
    assert (headers["X-RateLimit-Limit"], headers["RateLimit"].split(";")[0]) == (
        "5",
        '"global-ip"',
    )
    # Proxied and gateway-made responses alike carry the headers; /healthz is not a route.
    status, headers, _ = get(f"{gw.url}/nothing-here", ip)
    assert status == 404
    assert "X-RateLimit-Limit" not in headers


def test_workers_without_redis_each_take_their_share(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    import asyncio

    config = limited_config(
        backends, {"path": "/w", "rate_limit": {"requests": 20, "window": "1h"}}
    )
    config["server"]["workers"] = 2
    gw = make_gateway(config)
    _status, headers, _ = get(f"{gw.url}/w")
    assert headers["X-RateLimit-Limit"] == "10"  # each of the 2 workers: 20 / 2
    # New connections spread over both workers (SO_REUSEPORT): together they admit 20.
    statuses = asyncio.run(burst([f"{gw.url}/w"], 80, fresh=True))
    assert Counter(statuses)[200] == 19  # plus the one above


def test_obs_text_header_values_are_limited_never_a_500(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(obs_text_config(backends))
    # /t: 2 for the header value. The global api_key limit of 4 counts the client IP (the key
    # is unverified) over both routes; the third /t, refused by the route limit, charges none.
    assert obs_text_statuses(gw) == [200, 200, 429, 200, 200]
    assert request(gw.port, "GET", "/open", [("X-API-Key", "k\xe9y")]).status == 429
