"""`server.workers: 2`: one view of the backends per host (ADR 0017).

Active checks run once (in the supervisor), every worker follows their verdict, passive
failures seen by any worker count toward the host's breaker, and the admin listener shows the
one host-wide state. The measured delays (a backend failing → every worker avoiding it) are
printed (`-s`), never asserted on.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ctlbackend import CtlBackend, CtlGroup, ctl_group_fixtures
from gateway import Gateway, wait_until
from lifecycle_support import metric_values, metrics_text
from pool_support import admin_upstreams, backend_view, call, pool_config

group, _fresh = ctl_group_fixtures(2, prefix="v")

INTERVAL = 0.25
CHECK = {
    "type": "http",
    "interval": f"{int(INTERVAL * 1000)}ms",
    "timeout": "500ms",
    "unhealthy_threshold": 2,
    "healthy_threshold": 2,
    "jitter": 0,
}
SERVER = {"workers": 2, "shutdown_timeout": "5s"}


def _gateway(make_gateway: Callable[..., Gateway], group: CtlGroup, **upstream: Any) -> Gateway:
    config = pool_config(group, **upstream)
    config["server"] = SERVER
    gw = make_gateway(config)
    wait_until(lambda: _connected(gw) == 2, 10, "both workers linked to the host view")
    return gw


def _connected(gw: Gateway) -> int:
    return int(admin_upstreams(gw)["host_view"]["workers_connected"])


def _spread(gw: Gateway, count: int = 40) -> list[str]:
    """`count` requests, each on a fresh connection: SO_REUSEPORT gives both workers some."""
    backends = []
    for _ in range(count):
        status, data, _, _ = call(gw)
        assert status == 200, (status, data)
        backends.append(data["backend"])
    return backends


def _until_avoided(gw: Gateway, backend: CtlBackend, quiet: float = 1.0) -> float:
    """Send requests until `backend` got none for `quiet` seconds; the time of its last one."""
    last = time.monotonic()
    seen = backend.traffic
    deadline = last + 15
    while time.monotonic() - last < quiet:
        assert time.monotonic() < deadline, "the backend is never avoided"
        call(gw)
        if backend.traffic != seen:
            seen, last = backend.traffic, time.monotonic()
    return last


def _after(event: dict[str, Any], last: float) -> float:
    """Milliseconds from the host's decision (its event) to the last request that still reached
    the backend (`last`, monotonic): how long the decision took to reach every worker, at most."""
    decided = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
    return (time.time() - (time.monotonic() - last) - decided) * 1000


def _gauge(gw: Gateway, name: str, backend: CtlBackend) -> list[float]:
    return [
        value
        for labels, value in metric_values(metrics_text(gw), name)
        if f'backend="{backend.url}"' in labels
    ]


def test_checks_run_once_per_host(group: CtlGroup, make_gateway: Callable[..., Gateway]) -> None:
    gw = _gateway(make_gateway, group, health_check=CHECK)
    time.sleep(INTERVAL * 2)  # past the first, possibly partial, interval
    before = [b.hits["/health"] for b in group.backends]
    window = INTERVAL * 12
    time.sleep(window)
    probes = [b.hits["/health"] - before[i] for i, b in enumerate(group.backends)]
    # One prober: about window / interval = 12 each. One per worker would be about 24.
    assert all(8 <= n <= 16 for n in probes), probes
    document = admin_upstreams(gw)
    assert document["host_view"]["workers_connected"] == 2
    (pool,) = document["upstreams"]
    assert [b["healthy"] for b in pool["backends"]] == [True, True]
    assert [b["circuit"] for b in pool["backends"]] == ["closed", "closed"]
    assert all(b["last_check"]["ok"] for b in pool["backends"])
    assert sorted(set(_spread(gw))) == ["v0", "v1"]
    print(f"\nhealth probes per backend in {window:.1f}s at {INTERVAL}s interval: {probes}")


def test_an_unhealthy_backend_is_avoided_by_every_worker(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = _gateway(make_gateway, group, health_check=CHECK)
    assert sorted(set(_spread(gw, 20))) == ["v0", "v1"]
    group[1].health_status = 503
    failed = time.monotonic()
    last = _until_avoided(gw, group[1])
    (event,) = gw.wait_event("backend_health_changed", 1, timeout=5)  # the host's, once
    assert (event["backend"], event["to"]) == (group[1].url, "unhealthy")
    before = group[1].traffic
    assert set(_spread(gw)) == {"v0"}
    assert group[1].traffic == before
    assert _gauge(gw, "aiogate_backend_healthy", group[1]) == [0.0]
    assert backend_view(gw, group[1].url)["healthy"] is False
    assert len(gw.events("backend_health_changed")) == 1  # no worker speaks for it
    group[1].health_status = 200
    wait_until(lambda: backend_view(gw, group[1].url)["healthy"], 5, "healthy again")
    wait_until(lambda: "v1" in _spread(gw, 10), 5, "traffic back on v1")
    detect = INTERVAL * CHECK["unhealthy_threshold"]  # type: ignore[operator]
    print(
        f"\nactive check: every worker avoided the backend {(last - failed) * 1000:.0f} ms "
        f"after its checks started failing (interval {INTERVAL}s x threshold 2 = {detect}s); "
        f"last request to it {_after(event, last):.0f} ms after the host's verdict"
    )


def test_passive_failures_of_every_worker_open_the_hosts_breaker(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    threshold = 8
    gw = _gateway(
        make_gateway,
        group,
        retries={"attempts": 0},
        circuit_breaker={"failure_threshold": threshold, "timeout": "30s"},
    )
    group[1].status = 500
    failing = time.monotonic()
    last = _until_avoided(gw, group[1])
    (event,) = gw.wait_event("circuit_state_changed", 1, timeout=5)
    assert (event["backend"], event["to"]) == (group[1].url, "open")
    # Each worker counting alone would let 2 x threshold failures through (one circuit per
    # worker); the host's one breaker opens at the threshold, whichever worker saw them.
    # A few may pass while the open state is on its way to the other worker.
    assert group[1].traffic < 2 * threshold, group[1].traffic
    assert set(_spread(gw)) == {"v0"}
    assert _gauge(gw, "aiogate_circuit_state", group[1]) == [2.0]
    assert backend_view(gw, group[1].url)["circuit"] == "open"
    assert len(gw.events("circuit_state_changed")) == 1
    print(
        f"\npassive: {group[1].traffic} failures reached the backend (threshold {threshold}); "
        f"every worker avoided it {(last - failing) * 1000:.0f} ms after it started failing, "
        f"the last one {_after(event, last):.0f} ms after the host opened the circuit"
    )


def test_the_half_open_circuit_is_closed_by_probes_from_the_workers(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = _gateway(
        make_gateway,
        group,
        retries={"attempts": 0},
        circuit_breaker={"failure_threshold": 2, "success_threshold": 2, "timeout": "1s"},
    )
    group[1].status = 500
    _until_avoided(gw, group[1], quiet=0.3)
    group[1].status = 200
    wait_until(lambda: backend_view(gw, group[1].url)["circuit"] != "open", 5, "half-open")
    wait_until(lambda: "v1" in _spread(gw, 6), 5, "probes reach the backend")
    wait_until(lambda: backend_view(gw, group[1].url)["circuit"] == "closed", 5, "closed")
    moves = [e["to"] for e in gw.wait_event("circuit_state_changed", 3, timeout=5)]
    assert moves == ["open", "half_open", "closed"], moves
    assert _gauge(gw, "aiogate_circuit_state", group[1]) == [0.0]


def test_a_reload_keeps_the_host_state(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = _gateway(make_gateway, group, health_check=CHECK)
    group[1].health_status = 503
    gw.wait_event("backend_health_changed", 1, timeout=5)
    config = pool_config(group, health_check=CHECK)
    config["server"] = SERVER
    config["routes"].append({"path": "/q", "upstream": "pool", "name": "q"})
    gw.write(config)
    gw.signal(signal.SIGHUP)
    gw.wait_event("config_reloaded", 1, timeout=10)  # the supervisor's, once every worker has
    before = group[1].traffic
    assert set(_spread(gw)) == {"v0"}
    assert group[1].traffic == before
    assert backend_view(gw, group[1].url)["healthy"] is False
    assert admin_upstreams(gw)["generation"] == 2
    assert len(gw.events("backend_health_changed")) == 1  # not forgotten, not re-learnt
