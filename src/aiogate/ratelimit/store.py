"""The local buckets of one limit: a bounded two-generation dict keyed by dimension value."""

from __future__ import annotations

__all__ = ["DEFAULT_MAX_BUCKETS", "Bucket", "Store"]

#: Buckets one limit keeps per process (`rate_limiting.local_max_buckets`): a bucket with its
#: key is about 300 bytes, so 100 000 is about 30 MB at most per limit.
DEFAULT_MAX_BUCKETS = 100_000


class Bucket:
    __slots__ = ("a", "b", "c")

    def __init__(self, a: float, b: float, c: float) -> None:
        self.a = a
        self.b = b
        self.c = c


class Store:
    """The buckets of one limit, keyed by dimension value."""

    __slots__ = ("_current", "_old", "_rotate_at", "interval", "max_buckets")

    def __init__(self, interval: float, max_buckets: int = DEFAULT_MAX_BUCKETS) -> None:
        self.interval = interval
        self.max_buckets = max_buckets
        self._current: dict[str, Bucket] = {}
        self._old: dict[str, Bucket] = {}
        self._rotate_at = 0.0

    def get(self, key: str) -> Bucket | None:
        bucket = self._current.get(key)
        if bucket is None and self._old:
            bucket = self._old.pop(key, None)
            if bucket is not None:
                self._current[key] = bucket
        return bucket

    def put(self, key: str, bucket: Bucket, now: float) -> None:
        # Full: swap now rather than grow (a flood of distinct values must not grow memory).
        # A generation takes half the cap, so under a flood of new values a bucket used once
        # per half-cap new buckets survives; the total is checked too, as `get` moves buckets
        # into `current`.
        size = len(self._current)
        if (
            now >= self._rotate_at
            or 2 * size >= self.max_buckets
            or size + len(self._old) >= self.max_buckets
        ):
            self._old = self._current
            self._current = {}
            self._rotate_at = now + self.interval
        self._current[key] = bucket

    def __len__(self) -> int:
        return len(self._current) + len(self._old)
