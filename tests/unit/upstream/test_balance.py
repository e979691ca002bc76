"""upstream.balance: the five strategies, pure and synchronous."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from aiogate.upstream.balance import (
    IpHash,
    LeastConnections,
    P2CEwma,
    Random,
    RoundRobin,
    WeightedRoundRobin,
    make_strategy,
)


@dataclass(eq=False)
class B:
    name: str
    weight: int = 1
    in_flight: int = 0


def names(picks: list[B]) -> str:
    return "".join(b.name for b in picks)


def test_round_robin_cycles_and_survives_a_shrinking_set() -> None:
    a, b, c = B("a"), B("b"), B("c")
    rr = RoundRobin()
    assert names([rr.pick([a, b, c], "") for _ in range(7)]) == "abcabca"
    # one backend leaves the eligible set: no IndexError, still alternates
    assert names([rr.pick([a, c], "") for _ in range(4)]) in ("acac", "caca")


def test_smooth_weighted_round_robin_interleaves() -> None:
    a, b, c = B("a", 5), B("b", 1), B("c", 1)
    wrr = WeightedRoundRobin()
    assert names([wrr.pick([a, b, c], "") for _ in range(7)]) == "aabacaa"
    assert names([wrr.pick([a, b, c], "") for _ in range(7)]) == "aabacaa"


def test_weighted_round_robin_proportions() -> None:
    a, b = B("a", 3), B("b", 1)
    wrr = WeightedRoundRobin()
    counts = Counter(wrr.pick([a, b], "").name for _ in range(400))
    assert counts == {"a": 300, "b": 100}


def test_least_connections_prefers_the_idlest() -> None:
    a, b, c = B("a", in_flight=3), B("b", in_flight=1), B("c", in_flight=2)
    lc = LeastConnections()
    assert {lc.pick([a, b, c], "").name for _ in range(5)} == {"b"}


def test_least_connections_scales_by_weight() -> None:
    heavy, light = B("heavy", weight=4, in_flight=3), B("light", weight=1, in_flight=1)
    lc = LeastConnections()
    # 3/4 busy beats 1/1 busy
    assert {lc.pick([heavy, light], "").name for _ in range(4)} == {"heavy"}


def test_least_connections_ties_rotate() -> None:
    a, b, c = B("a"), B("b"), B("c")
    lc = LeastConnections()
    assert Counter(lc.pick([a, b, c], "").name for _ in range(30)) == {"a": 10, "b": 10, "c": 10}


def test_ip_hash_is_sticky_per_client() -> None:
    pool = [B("a"), B("b"), B("c")]
    ih = IpHash()
    for ip in ("10.0.0.1", "10.0.0.2", "2001:db8::1", "192.168.1.77"):
        first = ih.pick(pool, ip)
        assert all(ih.pick(pool, ip) is first for _ in range(10))
    spread = {ih.pick(pool, f"10.0.{i}.{j}").name for i in range(4) for j in range(50)}
    assert spread == {"a", "b", "c"}


def test_random_follows_weights_and_is_seedable() -> None:
    a, b, never = B("a", 3), B("b", 1), B("never", 0)
    strategy = Random(random.Random(7))
    picks = Counter(strategy.pick([a, b, never], "").name for _ in range(4000))
    assert "never" not in picks
    assert 2700 < picks["a"] < 3300
    one, two = Random(random.Random(1)), Random(random.Random(1))
    first = [one.pick([a, b], "").name for _ in range(20)]
    assert first == [two.pick([a, b], "").name for _ in range(20)]
    assert set(first) == {"a", "b"}


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("round_robin", RoundRobin),
        ("weighted_round_robin", WeightedRoundRobin),
        ("least_connections", LeastConnections),
        ("ip_hash", IpHash),
        ("random", Random),
    ],
)
def test_make_strategy(name: str, cls: type) -> None:
    assert isinstance(make_strategy(name), cls)


def test_make_strategy_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="fastest"):
        make_strategy("fastest")


def test_single_backend_always_wins() -> None:
    only = B("only")
    for name in ("round_robin", "weighted_round_robin", "least_connections", "ip_hash", "random"):
        strategy = make_strategy(name)
        assert all(strategy.pick([only], "1.2.3.4") is only for _ in range(5))


@dataclass(eq=False)
class Labelled:
    """A backend as the hashing ring and p2c see it: a label and a latency score."""

    label: str
    weight: float = 1
    in_flight: int = 0
    ewma: float = 0.0


def test_ip_hash_moves_only_the_removed_backends_share() -> None:
    a, b, c = Labelled("a"), Labelled("b"), Labelled("c")
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
    fast, slow = Labelled("fast", ewma=0.01), Labelled("slow", ewma=0.2)
    p2c = P2CEwma(random.Random(3))
    assert Counter(p2c.pick([fast, slow], "").label for _ in range(50)) == {"fast": 50}
    fast.in_flight = 40  # 0.01 x 41 > 0.2 x 1
    assert p2c.pick([fast, slow], "").label == "slow"
    three = [Labelled("x", ewma=0.01), Labelled("y", ewma=0.01), Labelled("z", ewma=1.0)]
    picks = Counter(p2c.pick(three, "").label for _ in range(300))
    assert picks["z"] == 0
    assert picks["x"] > 50
    assert picks["y"] > 50
