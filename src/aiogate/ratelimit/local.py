"""The in-process limiter: a dict of small slotted buckets per limit.

Exact within one process: judging and consuming run without an await in between, so the event
loop cannot interleave two requests. Idle buckets are dropped by generation swap instead of a
sweep: a store keeps a `current` and an `old` dict and, at most once per `interval` (checked
only when a new bucket is made), the current one becomes old and the old one is dropped. A
dropped bucket was idle for at least `interval` >= the time it takes to become whole again, so
dropping it changes no decision.

Memory is bounded whatever clients send: a store holds at most `max_buckets` buckets (both
generations together). When the current generation reaches half of that, the generations swap
early: the buckets not used since the last swap are dropped even though they may not be whole
yet, so their clients start again with a full bucket (the limit errs towards admitting; a
bucket used at least once per `max_buckets / 2` new buckets survives a flood of new values).
Values come normalised (short, hashed when long) from `plan.dimension_value`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from .base import Limit, Verdict, pick
from .bucket import TOKEN_BUCKET, consume, judge, report
from .store import DEFAULT_MAX_BUCKETS, Bucket, Store

__all__ = ["DEFAULT_MAX_BUCKETS", "LocalLimiter", "Store", "StoreRegistry"]


class StoreRegistry:
    """Keeps local buckets across reloads: a new Runtime adopts the stores of unchanged limits."""

    def __init__(self) -> None:
        self._stores: dict[tuple[str, str, int, float], Store] = {}
        self._pending: dict[tuple[str, str, int, float], Store] = {}

    def store(
        self,
        id: str,
        algorithm: str,
        limit: int,
        window: float,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> Store:
        key = (id, algorithm, limit, window)
        store = self._pending.get(key)
        if store is None:
            store = self._stores.get(key)
        if store is None:
            store = Store(max(2.0 * window, 1.0), max_buckets)
        else:
            # An adopted store takes the new cap (a lower one applies at its next new bucket).
            store.max_buckets = max_buckets
        self._pending[key] = store
        return store

    def commit(self) -> None:
        """The stores requested since the last commit are the live set; forget the others."""
        self._stores, self._pending = self._pending, {}


class LocalLimiter:
    """Judges in process memory; also the Redis limiter's fallback."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock

    async def start(self) -> None:
        """Nothing to start."""

    async def acquire(self, limits: Sequence[Limit], values: Sequence[str]) -> Verdict:
        return self.acquire_now(limits, values)

    def acquire_now(self, limits: Sequence[Limit], values: Sequence[str]) -> Verdict:
        now = self._clock()
        if len(limits) == 1:
            return self._one(limits[0], values[0], now)
        states = []
        admitted = True
        for limit, value in zip(limits, values, strict=True):
            bucket = limit.store.get(value)
            state = None if bucket is None else (bucket.a, bucket.b, bucket.c)
            new, ok = judge(limit.algorithm, limit.local_limit, limit.window, state, now)
            states.append((new, ok, bucket))
            admitted = admitted and ok
        results = []
        effective = []
        for (limit, value), (judged, ok, bucket) in zip(
            zip(limits, values, strict=True), states, strict=True
        ):
            state = consume(limit.algorithm, judged) if admitted else judged
            if bucket is None:
                limit.store.put(value, Bucket(*state), now)
            else:
                bucket.a, bucket.b, bucket.c = state
            results.append(
                report(limit.algorithm, limit.local_limit, limit.window, state, now, admitted=ok)
            )
            effective.append(limit.local_limit)
        return pick(admitted, limits, effective, results)

    @staticmethod
    def _one(limit: Limit, value: str, now: float) -> Verdict:
        # The common case, kept short: one limit, no lists.
        n = limit.local_limit
        algorithm = limit.algorithm
        store = limit.store
        bucket = store.get(value)
        if algorithm == TOKEN_BUCKET and bucket is not None:
            # Inline token bucket: the hottest path of the limiter (same maths as bucket.py).
            elapsed = now - bucket.b
            if elapsed < 0:
                elapsed = 0.0
            tokens = bucket.a + elapsed * n / limit.window
            tokens = min(tokens, n)
            bucket.b = now
            ok = tokens >= 1
            if ok:
                tokens -= 1
            bucket.a = tokens
            window = limit.window
            remaining = int(tokens) if tokens > 0 else 0
            retry = 0.0 if ok else (1 - tokens) * window / n
            reset = (n - tokens) * window / n
            return Verdict(ok, limit, limit=n, remaining=remaining, reset=reset, retry_after=retry)
        state = None if bucket is None else (bucket.a, bucket.b, bucket.c)
        new, ok = judge(algorithm, n, limit.window, state, now)
        if ok:
            new = consume(algorithm, new)
        if bucket is None:
            store.put(value, Bucket(*new), now)
        else:
            bucket.a, bucket.b, bucket.c = new
        remaining, reset, retry = report(algorithm, n, limit.window, new, now, admitted=ok)
        return Verdict(ok, limit, limit=n, remaining=remaining, reset=reset, retry_after=retry)
