"""The retry budget (Envoy's `retry_budget`) on fake counts of requests and retries."""

from __future__ import annotations

import random

import pytest

from aiogate.config import RetriesConfig
from aiogate.upstream.retry import RetryBudget, RetryLease, backoff_delay


def budget(ratio: float, minimum: int, requests: int = 0, retries: int = 0) -> RetryBudget:
    b = RetryBudget(ratio, minimum)
    b.requests, b.retries = requests, retries
    return b


@pytest.mark.parametrize(
    ("ratio", "minimum", "requests", "limit"),
    [
        (0.2, 3, 0, 3),  # quiet: the floor
        (0.2, 3, 10, 3),  # 2 < 3
        (0.2, 3, 30, 6),
        (0.2, 3, 34, 6),  # floored, as Envoy
        (0.29, 0, 100, 29),  # no float artefact (28.999…)
        (0.0, 0, 1000, 0),  # no retries at all
        (1.0, 0, 7, 7),
    ],
)
def test_limit_is_the_larger_of_the_floor_and_the_share(
    ratio: float, minimum: int, requests: int, limit: int
) -> None:
    assert budget(ratio, minimum, requests).limit() == limit


def test_acquire_stops_at_the_limit_and_resumes_as_retries_finish() -> None:
    b = budget(0.2, 3, requests=30)
    assert [b.acquire() for _ in range(7)] == [True] * 6 + [False]
    assert b.retries == 6
    b.retries -= 1  # one retry's attempt is over
    assert b.acquire()
    assert not b.acquire()
    # Fewer requests in flight shrink the share, down to the floor.
    b.requests = 5
    b.retries = 2
    assert b.acquire()
    assert not b.acquire()


def test_a_lease_counts_its_request_and_holds_one_slot_at_most() -> None:
    b = budget(0.0, 1)
    first, second = RetryLease(b), RetryLease(b)
    assert b.requests == 2
    assert first.start_retry()
    assert not second.start_retry()  # the one slot is taken
    second.start_retry(force=True)  # a retry that adds no load upstream is never refused
    assert b.retries == 2
    first.end_retry()
    first.end_retry()  # idempotent: the slot is given back once
    assert b.retries == 1
    second.close()  # gives back its slot and its request
    second.close()
    assert (b.requests, b.retries) == (1, 0)
    first.close()
    assert (b.requests, b.retries) == (0, 0)


def test_from_config_ignores_the_deprecated_reserve() -> None:
    config = RetriesConfig.model_validate({"budget": 0.5, "budget_reserve": 0})
    b = RetryBudget.from_config(config)
    assert b.limit() == 3  # the default min_retry_concurrency, whatever the reserve said
    b.requests = 10
    assert b.limit() == 5
    stingy = RetryBudget.from_config(
        RetriesConfig.model_validate({"budget": 0, "min_retry_concurrency": 0})
    )
    assert not RetryLease(stingy).start_retry()


def test_full_jitter() -> None:
    config = RetriesConfig(attempts=3, base_delay=0.1, max_delay=0.3)
    rng = random.Random(1)
    delays = [backoff_delay(config, n, rng) for n in (0, 1, 2, 5) for _ in range(200)]
    assert all(0 <= d <= 0.3 for d in delays)
    assert max(delays[:200]) <= 0.1
    assert max(delays[-200:]) > 0.25


def test_retries_accept_both_spellings() -> None:
    old = RetriesConfig.model_validate({"backoff": 0.5, "max_backoff": 1})
    new = RetriesConfig.model_validate({"base_delay": 0.5, "max_delay": 1})
    assert (old.base_delay, old.max_delay) == (new.base_delay, new.max_delay) == (0.5, 1)
    assert old.backoff == 0.5
    assert old.max_backoff == 1
