"""Load balancing against the real daemon and real backends: one test per strategy."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from ctlbackend import CtlGroup, ctl_group_fixtures
from gateway import Gateway
from pool_support import admin_upstreams, backend_of, call, pool_config

group, _fresh = ctl_group_fixtures(3)


def test_round_robin_exact(group: CtlGroup, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(pool_config(group, strategy="round_robin"))
    picks = [backend_of(gw) for _ in range(30)]
    assert Counter(picks) == {"b0": 10, "b1": 10, "b2": 10}
    assert picks[:6] == ["b0", "b1", "b2", "b0", "b1", "b2"]


def test_smooth_weighted_round_robin_1_to_3(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, count=2, weights=[1, 3], strategy="weighted_round_robin"))
    picks = [backend_of(gw) for _ in range(40)]
    assert Counter(picks) == {"b0": 10, "b1": 30}
    # smooth: every block of 4 has exactly one b0, never a burst
    for block in range(10):
        assert picks[block * 4 : block * 4 + 4].count("b0") == 1, picks


def test_least_connections_ties_are_fair_and_busy_backends_get_less(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, strategy="least_connections"))
    assert Counter(backend_of(gw) for _ in range(30)) == {"b0": 10, "b1": 10, "b2": 10}
    group[0].delay = 0.4  # b0 holds its requests: in flight there stays high
    with ThreadPoolExecutor(6) as pool:
        picks = list(pool.map(lambda _: backend_of(gw), range(60)))
    counts = Counter(picks)
    assert counts["b0"] < min(counts["b1"], counts["b2"]), counts


def test_ip_hash_is_consistent(group: CtlGroup, make_gateway: Callable[..., Gateway]) -> None:
    config = pool_config(group, strategy="ip_hash")
    config["server"] = {"trusted_proxies": ["127.0.0.1/32"]}
    gw = make_gateway(config)
    clients = [f"10.1.{i // 250}.{i % 250}" for i in range(150)]

    def mapping() -> dict[str, str]:
        return {ip: backend_of(gw, headers={"X-Forwarded-For": ip}) for ip in clients}

    before = mapping()
    assert before == mapping()  # sticky
    shares = Counter(before.values())
    assert set(shares) == {"b0", "b1", "b2"}
    assert min(shares.values()) > 20, shares
    # b2 leaves the pool: only its clients move
    config["upstreams"][0]["backends"] = config["upstreams"][0]["backends"][:2]
    gw.write(config)
    reloads = len(gw.events("config_reloaded"))
    import signal

    gw.signal(signal.SIGHUP)
    gw.wait_event("config_reloaded", reloads + 1)
    after = mapping()
    moved = [ip for ip in clients if before[ip] != after[ip]]
    assert moved
    assert all(before[ip] == "b2" for ip in moved)
    assert len(moved) == shares["b2"]


def test_random_spreads_by_weight(group: CtlGroup, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(pool_config(group, count=2, weights=[1, 3], strategy="random"))
    counts = Counter(backend_of(gw) for _ in range(200))
    assert 20 < counts["b0"] < 80, counts


@pytest.mark.parametrize("strategy", ["round_robin", "least_connections", "p2c_ewma"])
def test_one_slow_backend(
    group: CtlGroup, make_gateway: Callable[..., Gateway], strategy: str
) -> None:
    """p2c_ewma against the others with b0 slow (100 ms): share sent to it and latency."""
    gw = make_gateway(pool_config(group, strategy=strategy))
    group[0].delay = 0.1
    results: list[tuple[str, float]] = []

    def one(_: int) -> tuple[str, float]:
        status, data, _h, took = call(gw)
        assert status == 200
        return str(data["backend"]), took

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(120)))
    slow_share = sum(1 for b, _ in results if b == "b0") / len(results)
    latencies = sorted(t for _, t in results)
    mean = statistics.mean(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"\n[{strategy}] slow-backend share {slow_share:.0%}, mean {mean * 1000:.1f} ms, "
          f"p99 {p99 * 1000:.1f} ms")  # fmt: skip
    if strategy == "p2c_ewma":
        assert slow_share < 0.15, slow_share
    if strategy == "round_robin":
        assert slow_share > 0.3


def test_admin_upstreams_shows_the_pool(
    group: CtlGroup, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(pool_config(group, strategy="round_robin"))
    backend_of(gw)
    doc = admin_upstreams(gw)
    (pool,) = doc["upstreams"]
    assert pool["name"] == "pool"
    assert pool["strategy"] == "round_robin"
    first = pool["backends"][0]
    for key in ("healthy", "circuit", "in_flight", "ejections", "effective_weight", "last_check"):
        assert key in first
    assert first["healthy"] is True
    assert first["circuit"] == "closed"
    status, _, _, _ = call(gw)
    assert status == 200
