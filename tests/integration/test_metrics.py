"""The metric set against the real daemon: values, not just names."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from backend import BackendThread
from gateway import Gateway, wait_until
from gwconfigs import basic_config
from metrics_support import scrape

from aiogate import __version__


def call(gw: Gateway, path: str, method: str = "GET", headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(gw.url + path, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


def metrics_config(backends: BackendThread, **extra: Any) -> dict[str, Any]:
    config = basic_config(backends, **extra)
    config["routes"] = [*config["routes"], {"path": "/slow", "upstream": "user-service"}]
    return config


def test_requests_latency_and_errors_by_configured_route(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(metrics_config(backends))
    for i in range(3):
        assert call(gw, f"/api/users/{i}") == 200
    assert call(gw, "/api/orders", "POST") == 200
    assert call(gw, "/nowhere") == 404
    assert call(gw, "/api/orders/1/items", "DELETE") == 405
    m = scrape(gw)
    total = "aiogate_requests_total"
    assert m.value(total, route="/api/users", method="GET", status="200") == 3
    assert m.value(total, route="/api/orders", method="POST", status="200") == 1
    assert m.value(total, route="", method="GET", status="404") == 1
    # A method the route lacks is answered before a route is chosen: no route label.
    assert m.value(total, route="", method="DELETE", status="405") == 1
    # Bounded cardinality: the route label is the configured route, never the raw path.
    routes = {labels["route"] for labels in m.labelsets(total)}
    assert routes == {"/api/users", "/api/orders", ""}
    # Latency histogram with the gateway buckets (0.5 ms ... 10 s).
    count = m.value("aiogate_request_duration_seconds_count", route="/api/users")
    assert count == 3
    buckets = {
        s["le"] for s in m.labelsets("aiogate_request_duration_seconds_bucket")
        if s["route"] == "/api/users"
    }  # fmt: skip
    assert {"0.0005", "0.001", "0.01", "1.0", "10.0", "+Inf"} <= buckets
    assert "30.0" not in buckets
    assert m.value("aiogate_request_duration_seconds_sum", route="/api/users") > 0
    # Upstream latency by upstream and backend (the backend's URL).
    assert (
        m.value(
            "aiogate_upstream_duration_seconds_count",
            upstream="user-service",
            backend=backends.url("backend-1"),
        )
        == 3
    )
    assert m.value("aiogate_upstream_duration_seconds_count", upstream="order-service") == 1
    # Gateway-made errors by kind.
    assert m.value("aiogate_errors_total", kind="no_route") == 1
    assert m.value("aiogate_errors_total", kind="method_not_allowed") == 1
    assert m.value("aiogate_build_info", version=__version__) == 1


def test_active_connections_and_upstream_in_flight(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(metrics_config(backends))
    assert scrape(gw).value("aiogate_active_connections") == 0
    sockets = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(3)]
    try:
        wait_until(lambda: scrape(gw).value("aiogate_active_connections") == 3, what="3 conns")
        # A slow upstream answer is in flight on its backend until its head arrives.
        done = threading.Event()

        def slow() -> None:
            call(gw, "/slow/1.5")
            done.set()

        threading.Thread(target=slow, daemon=True).start()
        backend = backends.url("backend-1")
        wait_until(
            lambda: scrape(gw).value(
                "aiogate_upstream_in_flight", upstream="user-service", backend=backend
            ) == 1,
            what="one request in flight",
        )  # fmt: skip
        assert done.wait(10)
        wait_until(
            lambda: scrape(gw).value("aiogate_upstream_in_flight", backend=backend) == 0,
            what="nothing in flight",
        )
    finally:
        for sock in sockets:
            sock.close()
    wait_until(lambda: scrape(gw).value("aiogate_active_connections") == 0, what="0 conns")


def test_config_reloads_hash_and_load_time(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(metrics_config(backends))
    first = scrape(gw)
    hash1 = first.value("aiogate_config_hash")
    loaded1 = first.value("aiogate_config_last_load_timestamp_seconds")
    assert hash1 > 0
    assert abs(loaded1 - time.time()) < 60
    config = dict(gw.config)
    config["routes"] = [*config["routes"], {"path": "/extra", "upstream": "order-service"}]
    gw.write(config)
    gw.signal(signal.SIGHUP)
    gw.wait_event("config_reloaded")
    second = scrape(gw)
    assert second.value("aiogate_config_reloads_total", result="applied") == 1
    assert second.value("aiogate_config_hash") not in (0, hash1)
    assert second.value("aiogate_config_last_load_timestamp_seconds") >= loaded1
    # A rejected file changes nothing but the rejection count.
    gw.path.write_text("routes: [")
    gw.signal(signal.SIGHUP)
    gw.wait_event("config_rejected")
    third = scrape(gw)
    assert third.value("aiogate_config_reloads_total", result="rejected") == 1
    assert third.value("aiogate_config_reloads_total", result="applied") == 1
    assert third.value("aiogate_config_hash") == second.value("aiogate_config_hash")


def test_workers_metrics_aggregate_and_survive_a_dead_worker(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(metrics_config(backends, server={"workers": 2, "shutdown_timeout": "5s"}))
    wait_until(lambda: len({e["pid"] for e in gw.events("worker_started")}) == 2, what="workers")
    sent = 40
    for _ in range(sent):
        assert call(gw, "/api/users", headers={"Connection": "close"}) == 200
    for _ in range(5):
        assert call(gw, "/missing", headers={"Connection": "close"}) == 404
    m = scrape(gw)
    assert m.value("aiogate_requests_total", route="/api/users", status="200") == sent
    assert m.value("aiogate_errors_total", kind="no_route") == 5
    assert m.value("aiogate_request_duration_seconds_count", route="/api/users") == sent
    assert m.value("aiogate_config_hash") > 0
    assert m.value("aiogate_build_info", version=__version__) == 1
    # A worker dies: its counts stay in the totals, its live gauges are dropped.
    victim = next(iter({e["pid"] for e in gw.events("worker_started")}))
    os.kill(victim, signal.SIGKILL)
    gw.wait_event("worker_started", count=3, timeout=20)
    m = scrape(gw)
    assert m.value("aiogate_requests_total", route="/api/users", status="200") == sent
    assert m.value("aiogate_active_connections") == 0
    # The replacement counts into the same totals.
    wait_until(
        lambda: call(gw, "/api/users", headers={"Connection": "close"}) == 200, what="serving"
    )
    m = scrape(gw)
    assert m.value("aiogate_requests_total", route="/api/users", status="200") == sent + 1


def test_metrics_endpoint_is_prometheus_text(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(metrics_config(backends))
    with urllib.request.urlopen(f"{gw.admin_url}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    for name in (
        "aiogate_requests_total", "aiogate_request_duration_seconds",
        "aiogate_upstream_duration_seconds", "aiogate_ratelimit_rejections_total",
        "aiogate_circuit_state", "aiogate_circuit_transitions_total", "aiogate_backend_healthy",
        "aiogate_active_connections", "aiogate_auth_failures_total", "aiogate_errors_total",
        "aiogate_upstream_in_flight", "aiogate_config_reloads_total", "aiogate_config_hash",
        "aiogate_config_last_load_timestamp_seconds", "aiogate_build_info",
    ):  # fmt: skip
        assert f"# TYPE {name} " in text, name
    json.dumps(text)  # plain text, no binary
    # No `*_created` timestamps: a series per counter and histogram child nobody graphs.
    assert "_created" not in text
