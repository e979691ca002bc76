"""Retry policy pieces: the retry budget and full-jitter exponential backoff."""

from __future__ import annotations

import random
from typing import Final

from ..config import RetriesConfig

__all__ = ["IDEMPOTENT_METHODS", "RetryBudget", "backoff_delay"]

#: RFC 9110 §9.2.2: repeating these has the same effect as sending them once.
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class RetryBudget:
    """Retries may be at most `ratio` of requests, plus a reserve for quiet periods.

    Every first attempt deposits `ratio` of a token, every retry spends a whole one; the
    balance starts at, and never exceeds, `reserve` (or one token when the reserve is 0). When
    a backend fails every request, retries therefore settle at `ratio` of the traffic instead of
    multiplying it (the Finagle/Linkerd budget, counted per request rather than per second).
    """

    __slots__ = ("_balance", "_cap", "_ratio")

    def __init__(self, ratio: float, reserve: int) -> None:
        self._ratio = ratio
        self._cap = float(max(reserve, 1))
        self._balance = float(reserve)

    @classmethod
    def from_config(cls, config: RetriesConfig) -> RetryBudget:
        return cls(config.budget, config.budget_reserve)

    def deposit(self) -> None:
        balance = self._balance + self._ratio
        self._balance = balance if balance < self._cap else self._cap

    def withdraw(self) -> bool:
        if self._balance >= 0.999_999:  # ten deposits of 0.1 make one token
            self._balance -= 1.0
            return True
        return False

    @property
    def balance(self) -> float:
        return self._balance


def backoff_delay(config: RetriesConfig, retry: int, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(max_delay, base_delay * 2**retry)) for the retry-th retry."""
    ceiling = min(config.max_delay, config.base_delay * (2**retry))
    return rng.uniform(0.0, ceiling) if ceiling > 0 else 0.0
