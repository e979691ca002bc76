"""Metric values (not just names) against the real daemon, for the metrics test_metrics.py does
not count: rate-limit rejections and backend, auth failures, circuit state and transitions
through a real open -> half-open -> closed cycle, backend health, retries, ejections, in-flight.

Every test starts its own gateway, so a counter's value is exactly what the test caused. The
circuit and health tests also check that the contract's `circuit_state_changed` and
`backend_health_changed` log events agree with the metrics, field by field.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backend import BackendThread
from ctlbackend import CtlGroup, ctl_group_fixtures
from gateway import Gateway, free_port, wait_until
from metrics_support import Scrape, scrape
from pool_support import TOKEN, backend_view, call, pool_config
from ratelimit_support import get, limited_config

from redis_server import RedisServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "auth"))
from keys import SECRET, claims, token

BREAKER = {"failure_threshold": 3, "success_threshold": 2, "timeout": "1s",
           "half_open_requests": 1}  # fmt: skip
FAST = {"interval": "200ms", "timeout": "500ms", "unhealthy_threshold": 2, "healthy_threshold": 2}
NO_BREAKER = {"enabled": False}
STATE_FIELDS = ("upstream", "backend", "from", "to")


group, _fresh = ctl_group_fixtures(3, prefix="m")


def samples(m: Scrape, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """{label values (in `keys` order): value} of every sample of `name`."""
    return {
        tuple(s.labels[k] for k in keys): s.value
        for s in m.samples
        if s.name == name
    }  # fmt: skip


def nonzero(values: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    return {k: v for k, v in values.items() if v}


# -- rate limiting ----------------------------------------------------------------------------


def test_ratelimit_rejections_by_route_and_dimension(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(
        limited_config(
            backends,
            {"path": "/a", "rate_limit": {"requests": 2, "window": "1h"}},
            {"path": "/h", "rate_limit": {"requests": 1, "window": "1h",
                                          "dimension": "header:X-Tenant"}},
            {"path": "/m", "name": "mixed", "rate_limit": [
                {"requests": 10, "window": "1h"},
                {"requests": 2, "window": "1h", "dimension": "route"}]},
            {"path": "/free"},
        )
    )  # fmt: skip
    name = "aiogate_ratelimit_rejections_total"
    before = samples(scrape(gw), name, "route", "dimension")
    assert not nonzero(before), before
    assert [get(f"{gw.url}/a")[0] for _ in range(5)] == [200, 200, 429, 429, 429]
    # Another client IP has its own bucket: no rejection.
    assert get(f"{gw.url}/a", {"X-Forwarded-For": "10.9.9.9"})[0] == 200
    acme = [get(f"{gw.url}/h", {"X-Tenant": "acme"})[0] for _ in range(3)]
    assert acme == [200, 429, 429]
    assert get(f"{gw.url}/h", {"X-Tenant": "other"})[0] == 200
    # Two limits: the route-wide one (2) refuses first; it is counted under its dimension.
    mixed = [get(f"{gw.url}/m", {"X-Forwarded-For": f"10.0.0.{i}"})[0] for i in range(4)]
    assert mixed == [200, 200, 429, 429]
    assert [get(f"{gw.url}/free")[0] for _ in range(5)] == [200] * 5
    m = scrape(gw)
    assert nonzero(samples(m, name, "route", "dimension")) == {
        ("/a", "ip"): 3,
        ("/h", "header:X-Tenant"): 2,
        ("mixed", "route"): 2,
    }
    assert m.value(name, route="mixed", dimension="ip") == 0
    assert m.value(name, route="/free") == 0
    # The same rejections, seen as answered requests.
    assert m.value("aiogate_requests_total", route="/a", status="429") == 3
    assert m.value("aiogate_requests_total", route="mixed", status="429") == 2
    assert m.value("aiogate_errors_total", kind="rate_limited") == 7


def test_ratelimit_backend_up_follows_redis(
    backends: BackendThread, make_gateway: Callable[..., Gateway], redis_server: RedisServer
) -> None:
    config = limited_config(
        backends,
        {"path": "/r", "rate_limit": {"requests": 1000, "window": "1h"}},
        redis={"url": redis_server.url},
        rate_limiting={"timeout": "1s", "backoff": "200ms", "max_backoff": "400ms"},
    )
    gw = make_gateway(config)
    up = "aiogate_ratelimit_backend_up"
    assert samples(scrape(gw), up, "backend") == {("redis",): 1.0}
    assert get(f"{gw.url}/r")[0] == 200
    assert scrape(gw).value(up, backend="redis") == 1.0
    redis_server.kill()
    assert get(f"{gw.url}/r")[0] == 200  # judged locally: never a 5xx
    gw.wait_event("ratelimit_backend_degraded")
    assert samples(scrape(gw), up, "backend") == {("redis",): 0.0}
    # Still down: the gauge stays 0 whether a request probes Redis or stays local.
    for _ in range(5):
        assert get(f"{gw.url}/r")[0] == 200
    assert scrape(gw).value(up, backend="redis") == 0.0
    redis_server.start()

    def restored() -> bool:
        assert get(f"{gw.url}/r")[0] == 200
        return scrape(gw).value(up, backend="redis") == 1.0

    wait_until(restored, 15, "aiogate_ratelimit_backend_up back to 1")
    gw.wait_event("ratelimit_backend_restored")  # log lines are flushed on a short timer
    assert len(gw.events("ratelimit_backend_degraded")) == 1
    assert len(gw.events("ratelimit_backend_restored")) == 1


# -- authentication ---------------------------------------------------------------------------


def _auth_config(backends: BackendThread) -> dict[str, Any]:
    upstream = {"name": "svc", "backends": [{"url": backends.url("backend-1")}]}
    return {
        "logging": {"level": "info"},
        "auth": {
            "jwt": {"algorithms": ["HS256"], "secret": "${env:TEST_JWT_SECRET}"},
            "api_key": {"keys": [{"key": "${env:TEST_KEY}", "consumer": "demo"}]},
        },
        "upstreams": [upstream],
        "routes": [
            {"path": "/jwt", "upstream": "svc", "name": "jwt-route", "auth": {"type": "jwt"}},
            {"path": "/key", "upstream": "svc", "name": "key-route", "auth": {"type": "api_key"}},
            {"path": "/either", "upstream": "svc", "auth": {"type": ["jwt", "api_key"]}},
            {"path": "/admin", "upstream": "svc", "name": "admin",
             "auth": {"type": "jwt", "claims": {"role": "admin"}}},
            {"path": "/public", "upstream": "svc"},
        ],
    }  # fmt: skip


def test_auth_failures_by_route_and_reason(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    key = "metric-key-0123456789"
    gw = make_gateway(_auth_config(backends), {"TEST_JWT_SECRET": SECRET, "TEST_KEY": key})
    name = "aiogate_auth_failures_total"
    assert not nonzero(samples(scrape(gw), name, "route", "reason"))

    def status(path: str, headers: dict[str, str] | None = None) -> int:
        return get(f"{gw.url}{path}", headers)[0]

    def bearer(tok: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tok}"}

    good = token(claims(role="user"))
    expired = token(claims(exp=1_000_000))
    forged = token(claims(), key="another-secret-" + "y" * 48)
    # Successes count nothing.
    assert status("/jwt", bearer(good)) == 200
    assert status("/key", {"X-API-Key": key}) == 200
    assert status("/either", {"X-API-Key": key}) == 200
    assert status("/public") == 200
    # Failures, by route and reason.
    assert status("/key") == 401
    assert [status("/key", {"X-API-Key": f"wrong-{i}"}) for i in range(3)] == [401] * 3
    assert [status("/jwt", bearer(expired)) for _ in range(2)] == [401] * 2
    assert status("/jwt", bearer(forged)) == 401
    assert status("/jwt", bearer("not.a.jwt")) == 401
    assert status("/jwt") == 401
    assert status("/either", bearer(expired)) == 401
    assert status("/admin", bearer(good)) == 403  # valid token, lacks the role
    m = scrape(gw)
    assert nonzero(samples(m, name, "route", "reason")) == {
        ("key-route", "missing_credentials"): 1,
        ("key-route", "invalid_api_key"): 3,
        ("jwt-route", "token_expired"): 2,
        ("jwt-route", "invalid_signature"): 1,
        ("jwt-route", "malformed_token"): 1,
        ("jwt-route", "missing_credentials"): 1,
        ("/either", "token_expired"): 1,
        ("admin", "insufficient_claims"): 1,
    }
    # One auth_failed event per counted failure, with the same route and reason.
    events = gw.wait_event("auth_failed", 11)
    assert Counter((e["route"], e["reason"]) for e in events) == Counter(
        {k: int(v) for k, v in nonzero(samples(m, name, "route", "reason")).items()}
    )
    assert m.value("aiogate_requests_total", status="401") == 10
    assert m.value("aiogate_requests_total", status="403") == 1


# -- circuit breaker --------------------------------------------------------------------------


def _breaker_view(gw: Gateway, url: str) -> tuple[float, dict[str, float]]:
    m = scrape(gw)
    state = m.value("aiogate_circuit_state", upstream="pool", backend=url)
    moves = {
        to: value
        for (backend, to), value in samples(
            m, "aiogate_circuit_transitions_total", "backend", "to"
        ).items()
        if backend == url
    }
    return state, moves


def _check_state_events(events: list[dict[str, Any]], allowed: set[str]) -> None:
    """Every event carries upstream, backend, from, to; values from the contract's set, and
    each one starts where the previous one (for that backend) ended."""
    last: dict[str, str] = {}
    for event in events:
        for field in STATE_FIELDS:
            assert isinstance(event.get(field), str), (field, event)
            assert event[field], (field, event)
        assert {event["from"], event["to"]} <= allowed, event
        assert event["from"] != event["to"], event
        backend = event["backend"]
        if backend in last:
            assert event["from"] == last[backend], (last, event)
        last[backend] = event["to"]


def test_circuit_state_and_transitions_through_a_full_cycle(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, count=1, circuit_breaker=BREAKER))
    b = group[0]
    url = b.url
    assert _breaker_view(gw, url) == (0.0, {})  # closed, never moved
    b.status = 500
    assert [call(gw)[0] for _ in range(2)] == [500, 500]
    assert _breaker_view(gw, url) == (0.0, {})  # 2 of 3 failures: still closed
    assert call(gw)[0] == 500
    assert _breaker_view(gw, url) == (2.0, {"open": 1})
    status, data, _, _ = call(gw)
    assert (status, data["error"]) == (503, "no_healthy_backend")
    assert b.traffic == 3
    assert _breaker_view(gw, url) == (2.0, {"open": 1})  # still open inside the timeout
    b.status = 200
    # After the timeout one probe passes: half-open (1 of the 2 successes needed).
    wait_until(lambda: call(gw)[0] == 200, 5, "a half-open probe")
    assert _breaker_view(gw, url) == (1.0, {"open": 1, "half_open": 1})
    assert call(gw)[0] == 200  # the second success closes it
    assert _breaker_view(gw, url) == (0.0, {"open": 1, "half_open": 1, "closed": 1})
    # Fail again, and let the probe fail: open -> half-open -> open.
    b.status = 500
    for _ in range(3):
        call(gw)
    assert _breaker_view(gw, url) == (2.0, {"open": 2, "half_open": 1, "closed": 1})
    before = b.traffic
    wait_until(lambda: call(gw)[1].get("error") is None, 5, "a probe reaching the backend")
    assert b.traffic == before + 1
    assert _breaker_view(gw, url) == (2.0, {"open": 3, "half_open": 2, "closed": 1})
    # The log says the same, event for event, in the contract's words.
    events = gw.wait_event("circuit_state_changed", 6)
    assert len(events) == 6
    _check_state_events(events, {"closed", "open", "half_open"})
    assert {(e["upstream"], e["backend"]) for e in events} == {("pool", url)}
    assert [(e["from"], e["to"]) for e in events] == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "closed"),
        ("closed", "open"), ("open", "half_open"), ("half_open", "open"),
    ]  # fmt: skip
    assert backend_view(gw, url)["circuit"] == "open"


def test_circuit_metrics_are_per_backend(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, count=2, circuit_breaker=BREAKER))
    group[1].status = 503
    for _ in range(6):  # round robin: 3 each, m1 fails its 3
        call(gw)
    m = scrape(gw)
    assert samples(m, "aiogate_circuit_state", "upstream", "backend") == {
        ("pool", group[0].url): 0.0,
        ("pool", group[1].url): 2.0,
    }
    assert nonzero(samples(m, "aiogate_circuit_transitions_total", "backend", "to")) == {
        (group[1].url, "open"): 1.0
    }
    event = gw.wait_event("circuit_state_changed")[0]
    assert {k: event[k] for k in STATE_FIELDS} == {
        "upstream": "pool", "backend": group[1].url, "from": "closed", "to": "open",
    }  # fmt: skip


# -- health -----------------------------------------------------------------------------------


def test_backend_healthy_flips_to_0_and_back_to_1(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, count=2, health_check={"type": "http", **FAST}))
    healthy = "aiogate_backend_healthy"
    b0, b1 = group[0].url, group[1].url
    assert samples(scrape(gw), healthy, "upstream", "backend") == {
        ("pool", b0): 1.0,
        ("pool", b1): 1.0,
    }
    wait_until(lambda: group[1].hits["/health"] >= 1, 5, "a first check")
    group[1].health_status = 503
    wait_until(lambda: scrape(gw).value(healthy, backend=b1) == 0, 5, "healthy 0")
    assert scrape(gw).value(healthy, backend=b0) == 1
    (down,) = gw.wait_event("backend_health_changed")
    assert {k: down[k] for k in STATE_FIELDS} == {
        "upstream": "pool", "backend": b1, "from": "healthy", "to": "unhealthy",
    }  # fmt: skip
    group[1].health_status = 200
    wait_until(lambda: scrape(gw).value(healthy, backend=b1) == 1, 5, "healthy 1")
    events = gw.wait_event("backend_health_changed", 2)
    assert len(events) == 2
    assert {k: events[1][k] for k in STATE_FIELDS} == {
        "upstream": "pool", "backend": b1, "from": "unhealthy", "to": "healthy",
    }  # fmt: skip
    _check_state_events(events, {"healthy", "unhealthy"})
    assert samples(scrape(gw), healthy, "upstream", "backend") == {
        ("pool", b0): 1.0,
        ("pool", b1): 1.0,
    }


def test_backend_healthy_with_a_tcp_check_on_a_backend_that_goes_down(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, count=2, health_check={"type": "tcp", **FAST}))
    healthy = "aiogate_backend_healthy"
    b1 = group[1].url
    group[1].down()
    wait_until(lambda: scrape(gw).value(healthy, backend=b1) == 0, 5, "healthy 0")
    group[1].up()
    wait_until(lambda: scrape(gw).value(healthy, backend=b1) == 1, 5, "healthy 1")
    events = gw.wait_event("backend_health_changed", 2)
    _check_state_events(events, {"healthy", "unhealthy"})
    assert [(e["backend"], e["from"], e["to"]) for e in events] == [
        (b1, "healthy", "unhealthy"),
        (b1, "unhealthy", "healthy"),
    ]
    assert scrape(gw).value(healthy, backend=group[0].url) == 1


# -- retries, ejections, in flight ------------------------------------------------------------


def test_upstream_retries_by_upstream_and_reason(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    retry = {"attempts": 2, "base_delay": "1ms", "max_delay": "5ms", "budget": 1.0}
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    upstreams = [
        {"name": "flaky", "backends": [{"url": group[0].url}], "retries": retry,
         "circuit_breaker": NO_BREAKER},
        {"name": "dead", "backends": [{"url": dead}], "retries": {**retry, "attempts": 1},
         "circuit_breaker": NO_BREAKER},
        {"name": "stingy", "backends": [{"url": group[1].url}],
         "retries": {**retry, "budget": 0.0, "min_retry_concurrency": 0},
         "circuit_breaker": NO_BREAKER},
        {"name": "sleepy", "backends": [{"url": group[2].url}], "read_timeout": "200ms",
         "retries": {**retry, "attempts": 1}, "circuit_breaker": NO_BREAKER},
    ]  # fmt: skip
    config = {
        "logging": {"level": "info"},
        "admin": {"token": TOKEN},
        "upstreams": upstreams,
        "routes": [{"path": f"/{u['name']}", "upstream": u["name"]} for u in upstreams],
    }
    gw = make_gateway(config)
    name = "aiogate_upstream_retries_total"
    assert not nonzero(samples(scrape(gw), name, "upstream", "reason"))
    group[0].status = group[1].status = 503
    group[2].delay = 1.0
    # flaky: every GET is tried 3 times (2 retries on a 503); a POST the backend saw never is.
    assert [call(gw, "/flaky")[0] for _ in range(4)] == [503] * 4
    assert group[0].traffic == 12
    assert [call(gw, "/flaky", method="POST", body=b"x")[0] for _ in range(2)] == [503] * 2
    assert group[0].traffic == 14
    # dead: connection refused, one retry each.
    assert [call(gw, "/dead")[0] for _ in range(3)] == [502] * 3
    # stingy: the budget refuses every retry.
    assert [call(gw, "/stingy")[0] for _ in range(3)] == [503] * 3
    assert group[1].traffic == 3
    # sleepy: the read timeout expires, one retry.
    assert call(gw, "/sleepy")[0] == 504
    m = scrape(gw)
    assert nonzero(samples(m, name, "upstream", "reason")) == {
        ("flaky", "status"): 8,
        ("dead", "connect"): 3,
        ("stingy", "budget_exhausted"): 3,
        ("sleepy", "timeout"): 1,
    }
    assert group[2].traffic == 2


def test_backend_ejections_count_each_ejection(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    passive = {"consecutive_failures": 3, "ejection_time": "1s", "max_ejection_percent": 50}
    gw = make_gateway(
        pool_config(group, count=2, passive_health_check=passive, circuit_breaker=NO_BREAKER)
    )
    name = "aiogate_backend_ejections_total"
    b0, b1 = group[0].url, group[1].url
    assert not nonzero(samples(scrape(gw), name, "upstream", "backend"))
    group[1].status = 503
    for _ in range(20):
        call(gw)
    assert group[1].traffic == 3
    assert nonzero(samples(scrape(gw), name, "upstream", "backend")) == {("pool", b1): 1.0}
    # The cap: with b1 out, b0 failing is not ejected (50% of 2 = 1), so no count for it.
    group[0].status = 503
    for _ in range(6):
        call(gw)
    group[0].status = 200
    assert scrape(gw).value(name, backend=b0) == 0
    # Ejection over: b1 fails 3 more times and is ejected (and counted) once more.
    wait_until(lambda: not backend_view(gw, b1)["ejected"], 5, "ejection end")
    wait_until(lambda: (call(gw), backend_view(gw, b1)["ejected"])[1], 5, "second ejection")
    m = scrape(gw)
    assert nonzero(samples(m, name, "upstream", "backend")) == {("pool", b1): 2.0}
    assert len(gw.wait_event("backend_ejected", 2)) == 2
    assert backend_view(gw, b1)["ejections"] == 2


def test_upstream_in_flight_per_backend(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, count=2, strategy="round_robin"))
    name = "aiogate_upstream_in_flight"
    b0, b1 = group[0].url, group[1].url
    group[0].delay = group[1].delay = 2.0
    done: list[int] = []

    def one() -> None:
        done.append(call(gw, timeout=15)[0])

    threads = [threading.Thread(target=one, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    wait_until(
        lambda: (
            samples(scrape(gw), name, "upstream", "backend")
            == {("pool", b0): 2.0, ("pool", b1): 2.0}
        ),
        10,
        "two requests in flight on each backend",
    )
    for thread in threads:
        thread.join(15)
    assert done == [200] * 4
    assert samples(scrape(gw), name, "upstream", "backend") == {
        ("pool", b0): 0.0,
        ("pool", b1): 0.0,
    }
    # A failed exchange leaves nothing counted in flight either.
    group[0].delay = group[1].delay = 0.0
    group[1].down()
    for _ in range(4):
        call(gw)
    m = scrape(gw)
    assert m.value(name, backend=b0) == 0
    assert m.value(name, backend=b1) == 0
