"""Where cached responses live: a bounded in-process LRU, or Redis shared by every gateway.

Both answer `get`/`put` by key (the SHA-256 hex of `freshness.cache_key`). A store that cannot
answer raises `StoreUnavailable`; the cache stage then passes the request through.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .. import log
from ..metrics import CACHE_BYTES, CACHE_EVICTIONS
from .entry import Entry, decode, encode

__all__ = ["KEY_PREFIX", "MemoryStore", "RedisStore", "Store", "StoreUnavailable"]

#: Redis keys: `aiogate:cache:<key>` (the key already names the route).
KEY_PREFIX: Final = "aiogate:cache:"

Clock = Callable[[], float]


class StoreUnavailable(Exception):
    """The store cannot answer now (Redis down, or still in its back-off after a failure)."""


class Store(Protocol):
    async def get(self, key: str, now: float) -> Entry | None:
        """The fresh entry under `key`, or None."""
        ...

    async def put(self, key: str, entry: Entry, now: float) -> None: ...


class MemoryStore:
    """An LRU bounded by entry count and by bytes (bodies and headers); one per route.

    Expired entries are dropped when they are found; evictions (to make room) are counted
    in `aiogate_cache_evictions_total`, the bytes held are `aiogate_cache_bytes`.
    """

    __slots__ = ("_bytes", "_entries", "_evictions", "_gauge", "max_entries", "max_size")

    def __init__(self, route: str, *, max_entries: int, max_size: int) -> None:
        self.max_entries = max_entries
        self.max_size = max_size
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._evictions = CACHE_EVICTIONS.labels(route)
        self._gauge = CACHE_BYTES.labels(route)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    async def get(self, key: str, now: float) -> Entry | None:
        return self.lookup(key, now)

    async def put(self, key: str, entry: Entry, now: float) -> None:
        self.insert(key, entry)

    def lookup(self, key: str, now: float) -> Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not entry.fresh(now):
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def insert(self, key: str, entry: Entry) -> None:
        size = entry.size
        if size > self.max_size:
            return
        if key in self._entries:
            self._remove(key)
        while self._entries and (
            len(self._entries) >= self.max_entries or self._bytes + size > self.max_size
        ):
            self._remove(next(iter(self._entries)))
            self._evictions.inc()
        self._entries[key] = entry
        self._bytes += size
        self._gauge.set(self._bytes)

    def _remove(self, key: str) -> None:
        self._bytes -= self._entries.pop(key).size
        self._gauge.set(self._bytes)


class RedisStore:
    """Entries in Redis under `aiogate:cache:…`, expiring with their freshness (PX).

    When Redis fails, the store says so (`StoreUnavailable`) at once for a back-off period
    (1 s, doubling to 8 s) instead of making every request wait for a timeout; one warning
    is logged per outage, and one info line when Redis answers again.
    """

    __slots__ = ("_backoff", "_clock", "_redis", "_retry_at", "_up")

    FIRST_BACKOFF: Final = 1.0
    MAX_BACKOFF: Final = 8.0

    def __init__(self, client: aioredis.Redis, clock: Clock = time.monotonic) -> None:
        self._redis = client
        self._clock = clock
        self._up = True
        self._backoff = self.FIRST_BACKOFF
        self._retry_at = 0.0

    async def get(self, key: str, now: float) -> Entry | None:
        self._check()
        try:
            data = await self._redis.get(KEY_PREFIX + key)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise StoreUnavailable(str(exc)) from None
        self._answered()
        if not isinstance(data, bytes):
            return None
        entry = decode(data)
        return entry if entry is not None and entry.fresh(now) else None

    async def put(self, key: str, entry: Entry, now: float) -> None:
        self._check()
        milliseconds = math.ceil((entry.expires_at - now) * 1000)
        if milliseconds <= 0:
            return
        try:
            await self._redis.set(KEY_PREFIX + key, encode(entry), px=milliseconds)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise StoreUnavailable(str(exc)) from None
        self._answered()

    def _check(self) -> None:
        if not self._up and self._clock() < self._retry_at:
            raise StoreUnavailable("redis is down; retrying later")

    def _failed(self, exc: BaseException) -> None:
        if self._up:
            self._up = False
            self._backoff = self.FIRST_BACKOFF
            log.get_logger("aiogate.cache").warning(
                log.CACHE_STORE_UNAVAILABLE,
                store="redis",
                error=f"{type(exc).__name__}: {exc}",
                retry_in=self._backoff,
            )
        else:
            self._backoff = min(self._backoff * 2, self.MAX_BACKOFF)
        self._retry_at = self._clock() + self._backoff

    def _answered(self) -> None:
        if not self._up:
            self._up = True
            self._backoff = self.FIRST_BACKOFF
            log.get_logger("aiogate.cache").info(log.CACHE_STORE_RESTORED, store="redis")
