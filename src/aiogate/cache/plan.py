"""Each cached route's store, built once per Runtime.

Memory stores outlive a reload when the route keeps its label and its `cache:` settings (as
local rate-limit buckets do): a reload does not empty a warm cache. A route whose settings
changed gets a new, empty store. Redis-backed routes share one `RedisStore` on the Runtime's
Redis client (its outage back-off starts afresh with each Runtime).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from ..config import CacheConfig, RouteConfig
from .store import MemoryStore, RedisStore, Store

__all__ = ["CachePlan"]

_MemoryKey = tuple[str, CacheConfig]


class CachePlan:
    __slots__ = ("_memory", "_redis")

    def __init__(
        self,
        routes: Sequence[RouteConfig],
        redis: aioredis.Redis | None,
        previous: CachePlan | None = None,
    ) -> None:
        kept = previous._memory if previous is not None else {}
        self._memory: dict[_MemoryKey, MemoryStore] = {}
        self._redis: RedisStore | None = None
        for route in routes:
            cache = route.cache
            if cache is None:
                continue
            if cache.store == "redis":
                if self._redis is None and redis is not None:
                    self._redis = RedisStore(redis)
                continue
            key = (route.label, cache)
            store = kept.get(key)
            if store is None:
                store = MemoryStore(
                    route.label, max_entries=cache.max_entries, max_size=cache.max_size
                )
            self._memory[key] = store

    def store_for(self, route: RouteConfig) -> Store | None:
        """The route's store; None when it has no cache (or, impossible after validation,
        a Redis store without a `redis:` section)."""
        cache = route.cache
        if cache is None:
            return None
        if cache.store == "redis":
            return self._redis
        return self._memory.get((route.label, cache))
