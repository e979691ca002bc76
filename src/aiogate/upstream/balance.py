"""Load-balancing strategies: pick one backend out of the currently eligible ones.

Pure and synchronous; a strategy never awaits. `eligible` is the list of backends that may
take traffic now (the pool filters out unhealthy or open-circuit ones before asking).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = ["Strategy", "make_strategy"]


class Weighted(Protocol):
    @property
    def weight(self) -> int: ...
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
        self._current: dict[int, int] = {}

    def pick(self, eligible: Sequence[B], client_ip: str) -> B:
        current = self._current
        total = 0
        best: B | None = None
        best_score = 0
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


class IpHash:
    """Same client IP, same backend, while the eligible set does not change."""

    __slots__ = ()

    def pick(self, eligible: Sequence[B], client_ip: str) -> B:
        return eligible[zlib.crc32(client_ip.encode()) % len(eligible)]


class Random:
    __slots__ = ("_random",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = rng or random.Random()

    def pick(self, eligible: Sequence[B], client_ip: str) -> B:
        return self._random.choices(eligible, weights=[b.weight for b in eligible])[0]


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
    raise ValueError(f"unknown strategy {name!r}")
