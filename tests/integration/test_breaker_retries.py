"""Circuit breaker, retries and the retry budget against the real daemon."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ctlbackend import CtlGroup, ctl_group_fixtures
from gateway import Gateway, wait_until
from metrics_support import scrape
from pool_support import backend_view, call, pool_config

BREAKER = {"failure_threshold": 3, "success_threshold": 2, "timeout": "1s",
           "half_open_requests": 1}  # fmt: skip


group, _fresh = ctl_group_fixtures(2, prefix="c")


def _transitions(gw: Gateway) -> list[tuple[str, str]]:
    return [(e["from"], e["to"]) for e in gw.events("circuit_state_changed")]


def test_breaker_opens_probes_and_closes(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, count=1, circuit_breaker=BREAKER))
    b = group[0]
    b.status = 500
    assert [call(gw)[0] for _ in range(3)] == [500, 500, 500]
    opened = time.monotonic()
    status, data, _, took = call(gw)
    assert (status, data["error"]) == (503, "no_healthy_backend")
    assert took < 0.5
    assert b.traffic == 3  # open: nothing reaches the backend
    event = gw.wait_event("circuit_state_changed")[0]
    assert (event["upstream"], event["backend"], event["from"], event["to"]) == (
        "pool", b.url, "closed", "open",
    )  # fmt: skip
    b.status = 200
    # after `timeout` a probe passes; success_threshold (2) successes close it
    wait_until(lambda: call(gw)[0] == 200, 5, "half-open probe")
    recovery = time.monotonic() - opened
    assert call(gw)[0] == 200
    wait_until(lambda: ("half_open", "closed") in _transitions(gw), 5, "closed")
    assert _transitions(gw) == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert b.traffic == 3 + 2
    assert backend_view(gw, b.url)["circuit"] == "closed"
    print(f"\nbreaker: open -> closed in {recovery:.2f}s (timeout 1s)")


def test_probe_failure_reopens(group: CtlGroup, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(pool_config(group, count=1, circuit_breaker=BREAKER))
    b = group[0]
    b.status = 503
    for _ in range(3):
        call(gw)
    assert call(gw)[0] == 503
    assert b.traffic == 3
    wait_until(lambda: call(gw)[1].get("error") is None, 5, "a probe reaching the backend")
    assert b.traffic == 4  # exactly one probe (half_open_requests: 1)
    wait_until(lambda: len(_transitions(gw)) >= 3, 5, "re-open")
    assert _transitions(gw)[:3] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
    ]
    status, data, _, _ = call(gw)
    assert (status, data["error"]) == (503, "no_healthy_backend")
    assert b.traffic == 4


def test_open_circuit_fallback_response(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    fallback = {"status": 503, "body": "come back later", "headers": {"Retry-After": "5"}}
    gw = make_gateway(
        pool_config(group, count=1, circuit_breaker={**BREAKER, "fallback": fallback})
    )
    group[0].status = 500
    for _ in range(3):
        call(gw)
    status, data, headers, _ = call(gw)
    assert (status, data["raw"], headers["Retry-After"]) == (503, "come back later", "5")
    assert "X-Request-ID" in headers


def test_retries_go_to_a_healthy_backend(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, retries={"attempts": 2, "base_delay": "10ms"}))
    group[1].down()
    assert {call(gw)[0] for _ in range(10)} == {200}
    assert {call(gw, method="POST", body=b"x")[0] for _ in range(4)} == {200}  # never reached
    group[1].up()
    group[1].status = 503
    assert {call(gw)[0] for _ in range(6)} == {200}  # GET: a 503 is retried elsewhere
    # Each retry is a `retry` event naming the failed backend, the reason and the request.
    retries = gw.wait_event("retry")
    reasons = {event["reason"] for event in retries}
    assert reasons <= {"connect", "status"}
    assert "connect" in reasons
    assert all(event["upstream"] and event["backend"] and event["request_id"] for event in retries)
    assert all(event["attempt"] >= 1 and event["delay_ms"] >= 0 for event in retries)


def test_a_post_a_backend_saw_is_not_retried(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, strategy="round_robin", retries={"attempts": 2}))
    group[0].status = group[1].status = 503
    statuses = [call(gw, method="POST", body=b"payload")[0] for _ in range(4)]
    assert statuses == [503] * 4
    assert group[0].methods["POST"] + group[1].methods["POST"] == 4


def test_retry_budget_stops_a_storm(group: CtlGroup, make_gateway: Callable[..., Gateway]) -> None:
    """Retries in flight stay within half of the requests in flight: 8 requests fail at once
    (both backends answer 503 after 0.5 s), 4 are retried, and no retry is retried again."""
    # `budget_reserve` is deprecated: still accepted, and ignored.
    retries = {"attempts": 2, "base_delay": "1ms", "budget": 0.5, "min_retry_concurrency": 0,
               "budget_reserve": 2}  # fmt: skip
    gw = make_gateway(pool_config(group, retries=retries, circuit_breaker={"enabled": False}))
    group[0].status = group[1].status = 503
    group[0].delay = group[1].delay = 0.5
    with ThreadPoolExecutor(8) as clients:
        statuses = list(clients.map(lambda _: call(gw)[0], range(8)))
    assert statuses == [503] * 8
    # The first 4 failures take the 4 slots (half of 8 in flight); the other 4 are refused.
    # The retried 4 fail again, each freeing its slot as it asks for a new one: with 4, then
    # 3, 2, 1 requests in flight, the share (2, 1, 1, 0) is always below the slots held.
    retries_made = group[0].traffic + group[1].traffic - 8
    assert retries_made == 4, retries_made
    refused = scrape(gw).value("aiogate_upstream_retries_total", reason="budget_exhausted")
    assert refused == 8


def test_read_timeout_per_route(group: CtlGroup, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(pool_config(group, count=1, route={"read_timeout": "200ms"}))
    group[0].delay = 2
    status, data, _, took = call(gw)
    assert (status, data["error"]) == (504, "upstream_timeout")
    assert took < 1.5
