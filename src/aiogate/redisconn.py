"""The Runtime's Redis client (redis-py's `redis.asyncio`, with hiredis for parsing).

One client per Runtime, shared by every feature that needs Redis (API-key store, distributed
rate limits). Its connection pool is lazy: building a Runtime never blocks on Redis, and a
Redis that is down at start is a degraded dependency, not a failed start.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from .config import RedisConfig

__all__ = ["make_redis"]


def make_redis(config: RedisConfig) -> aioredis.Redis:
    """A client whose every call is bounded by `redis.timeout` (connect and command alike)."""
    return aioredis.Redis.from_url(
        config.url,
        socket_timeout=config.timeout,
        socket_connect_timeout=config.timeout,
        # Retries would multiply the timeout on the request path; callers fall back instead.
        retry_on_timeout=False,
        health_check_interval=0,
        decode_responses=False,
    )
