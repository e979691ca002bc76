"""Load-balancing strategies: pick one backend out of the currently eligible ones.

Pure and synchronous; a strategy never awaits. `eligible` is the list of backends that may
take traffic now (the pool filters out unhealthy or open-circuit ones before asking).
"""

from __future__ import annotations

import bisect
import hashlib
import random
import zlib
from collections.abc import Sequence
from typing import Final, Protocol, TypeVar

__all__ = [
    "IpHash",
    "LeastConnections",
    "P2CEwma",
    "Random",
    "RoundRobin",
    "Strategy",
    "WeightedRoundRobin",
    "make_strategy",
]


class Weighted(Protocol):
    @property
    def weight(self) -> float: ...
    @property
    def in_flight(self) -> int: ...


B = TypeVar("B", bound=Weighted)


class Strategy(Protocol):
    def pick(self, eligible: Sequence[B], client_ip: str) -> B: ...


class RoundRobin:
    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def pick(self, eligible: Sequence[B], client_ip: str) -> B:
        index = self._next % len(eligible)
        self._next = index + 1
        return eligible[index]


class WeightedRoundRobin:
    """nginx's smooth weighted round robin: weights 5,1,1 give a,a,b,a,c,a,a — not a burst."""

    __slots__ = ("_current",)

    def __init__(self) -> None:
        self._current: dict[int, float] = {}

    def pick(self, eligible: Sequence[B], client_ip: str) -> B:
        current = self._current
        total = 0.0
        best: B | None = None
        best_score = 0.0
        for backend in eligible:
            key = id(backend)
            score = current.get(key, 0) + backend.weight
            current[key] = score
            total += backend.weight
            if best is None or score > best_score:
                best, best_score = backend, score
        assert best is not None
        current[id(best)] = best_score - total
        return best


class LeastConnections:
    """Fewest requests in flight; ties go round robin so equal backends share the load."""

    __slots__ = ("_tiebreak",)

    def __init__(self) -> None:
        self._tiebreak = 0

    def pick(self, eligible: Sequence[B], client_ip: str) -> B:
        self._tiebreak += 1
        count = len(eligible)
        start = self._tiebreak % count
        best = eligible[start]
        for offset in range(1, count):
            candidate = eligible[(start + offset) % count]
            # weight scales capacity: 2 in flight on a weight-2 backend is as busy as 1 on weight 1
            if candidate.in_flight * best.weight < best.in_flight * candidate.weight:
                best = candidate
        return best


_VNODES: Final = 160  # ring points per unit of weight: ~±10% balance across backends


def _point(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class IpHash:
    """Consistent hashing of the client IP onto a ring of virtual nodes.

    Each backend owns `weight x 160` points placed by hashing its label, so the points of the
    backends that stay do not move when one leaves the eligible set: only the clients of the
    one that left are remapped (to the next point clockwise). The ring is rebuilt only when
    the eligible sequence object changes (the pool hands out one cached tuple per state).
    """

    __slots__ = ("_for", "_owners", "_points")

    def __init__(self) -> None:
        self._for: object = None
        self._points: list[int] = []
        self._owners: list[object] = []

    def pick(self, eligible: Sequence[B], client_ip: str) -> B:
        if len(eligible) == 1:
            return eligible[0]
        if eligible is not self._for and not self._same(eligible):
            self._build(eligible)
        points = self._points
        index = bisect.bisect(points, zlib.crc32(client_ip.encode()) * 0x9E3779B1 % 2**64)
        return self._owners[index % len(points)]  # type: ignore[return-value]

    def _same(self, eligible: Sequence[B]) -> bool:
        known = self._for
        if not isinstance(known, tuple) or len(known) != len(eligible):
            return False
        return all(a is b for a, b in zip(known, eligible, strict=True))

    def _build(self, eligible: Sequence[B]) -> None:
        ring: list[tuple[int, int, object]] = []
        for order, backend in enumerate(eligible):
            label = getattr(backend, "label", None) or getattr(backend, "name", None) or order
            count = max(1, round(_VNODES * getattr(backend, "base_weight", backend.weight)))
            ring.extend((_point(f"{label}#{n}"), order, backend) for n in range(count))
        ring.sort(key=lambda item: (item[0], item[1]))
        self._points = [item[0] for item in ring]
        self._owners = [item[2] for item in ring]
        self._for = eligible if isinstance(eligible, tuple) else tuple(eligible)


class Random:
    __slots__ = ("_random",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = rng or random.Random()

    def pick(self, eligible: Sequence[B], client_ip: str) -> B:
        return self._random.choices(eligible, weights=[b.weight for b in eligible])[0]


class Latency(Weighted, Protocol):
    @property
    def ewma(self) -> float: ...


L = TypeVar("L", bound=Latency)


class P2CEwma:
    """Power of two choices on peak-EWMA latency (Finagle/Linkerd's balancer).

    Two distinct backends drawn at random; the one with the lower `ewma x (in_flight + 1) /
    weight` wins. The pool keeps `ewma` per backend: it jumps up to a slow observation at
    once (the peak) and decays towards fast ones, so a backend that turns slow loses traffic
    within a request or two, and one that recovers wins it back gradually.
    """

    __slots__ = ("_random",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = rng or random.Random()

    def pick(self, eligible: Sequence[L], client_ip: str) -> L:
        count = len(eligible)
        if count == 1:
            return eligible[0]
        rand = self._random.random
        first = int(rand() * count)
        second = int(rand() * (count - 1))
        if second >= first:
            second += 1
        a, b = eligible[first], eligible[second]
        cost_a = a.ewma * (a.in_flight + 1) * b.weight
        cost_b = b.ewma * (b.in_flight + 1) * a.weight
        return a if cost_a <= cost_b else b


def make_strategy(name: str, rng: random.Random | None = None) -> Strategy:
    if name == "round_robin":
        return RoundRobin()
    if name == "weighted_round_robin":
        return WeightedRoundRobin()
    if name == "least_connections":
        return LeastConnections()
    if name == "ip_hash":
        return IpHash()
    if name == "random":
        return Random(rng)
    if name == "p2c_ewma":
        return P2CEwma(rng)  # type: ignore[return-value]
    raise ValueError(f"unknown strategy {name!r}")
