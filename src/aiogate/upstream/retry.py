"""Retry policy pieces: the retry budget and full-jitter exponential backoff."""

from __future__ import annotations

import random
from typing import Final

from ..config import RetriesConfig

__all__ = ["IDEMPOTENT_METHODS", "RetryBudget", "RetryLease", "backoff_delay"]

#: RFC 9110 §9.2.2: repeating these has the same effect as sending them once.
IDEMPOTENT_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


class RetryBudget:
    """Envoy's retry budget: a limit on retries in flight, scaled by the requests in flight.

    A retry may start while the retries under way are fewer than
    `max(min_retry_concurrency, floor(ratio * requests in flight))`. A retry holds its slot
    from the moment it is allowed until its attempt is over (answered or failed), so the budget
    refills as fast as retries finish: a burst of failures at one instant (a backend dying under
    load) gets `ratio` of the traffic retried at once, and the rest as slots free up, while a
    backend failing every request still cannot multiply the load. `min_retry_concurrency`
    keeps retries possible when traffic is low.

    The proxy holds one `RetryLease` per request, which keeps both counts; they are plain
    integers (a budget lives on one event loop: no lock needed).
    """

    __slots__ = ("_min", "_ratio", "requests", "retries")

    def __init__(self, ratio: float, min_retry_concurrency: int) -> None:
        self._ratio = ratio
        self._min = min_retry_concurrency
        #: Requests in flight (the proxy's `enter` to `leave`).
        self.requests = 0
        #: Retries in flight (`acquire` or `force` to `release`).
        self.retries = 0

    @classmethod
    def from_config(cls, config: RetriesConfig) -> RetryBudget:
        # `budget_reserve` (the former token bucket's starting balance) has no meaning here.
        return cls(config.budget, config.min_retry_concurrency)

    def limit(self) -> int:
        """Retries allowed in flight right now."""
        # The epsilon keeps 0.29 * 100 at 29, not 28.999… floored to 28.
        share = int(self._ratio * self.requests + 1e-9)
        return share if share > self._min else self._min

    def acquire(self) -> bool:
        """Take a slot for one retry if the budget has one free; False: no retry."""
        if self.retries < self._min or self.retries < self.limit():
            self.retries += 1
            return True
        return False


class RetryLease:
    """One request's part of a `RetryBudget`: in flight from creation to `close`, holding at
    most one retry slot at a time.

    `end_retry` and `close` may be called more than once; `close` in a `finally` therefore
    gives everything back whatever ended the request (an exception, a cancellation).
    """

    __slots__ = ("_budget", "_held", "_open")

    def __init__(self, budget: RetryBudget) -> None:
        budget.requests += 1
        self._budget = budget
        self._held = False
        self._open = True

    def start_retry(self, *, force: bool = False) -> bool:
        """Take a slot for a retry if the budget has room; `force`: whatever it says (a retry
        that adds no work upstream). False: no retry."""
        if not force and not self._budget.acquire():
            return False
        if force:
            self._budget.retries += 1
        self._held = True
        return True

    def end_retry(self) -> None:
        """The retry's attempt is over (or will never run): its slot is free again."""
        if self._held:
            self._held = False
            self._budget.retries -= 1

    def close(self) -> None:
        self.end_retry()
        if self._open:
            self._open = False
            self._budget.requests -= 1


def backoff_delay(config: RetriesConfig, retry: int, rng: random.Random) -> float:
    """Full jitter: uniform(0, min(max_delay, base_delay * 2**retry)) for the retry-th retry."""
    ceiling = min(config.max_delay, config.base_delay * (2**retry))
    return rng.uniform(0.0, ceiling) if ceiling > 0 else 0.0
