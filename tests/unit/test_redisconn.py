"""The Runtime's Redis client against a real redis-server."""

from __future__ import annotations

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from aiogate.config import RedisConfig
from aiogate.redisconn import make_redis
from redis_server import RedisServer


async def test_client_talks_to_a_real_server(redis_server: RedisServer) -> None:
    client = make_redis(RedisConfig(url=redis_server.url))
    try:
        assert await client.ping()
        await client.set("k", b"v")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()


async def test_a_dead_server_fails_fast_instead_of_hanging(redis_server: RedisServer) -> None:
    client = make_redis(RedisConfig(url=redis_server.url, timeout=0.2))
    try:
        assert await client.ping()
        redis_server.kill()
        with pytest.raises((RedisConnectionError, TimeoutError, OSError)):
            await client.ping()
        redis_server.start()
        assert await client.ping()  # reconnects by itself once the server is back
    finally:
        await client.aclose()
