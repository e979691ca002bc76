"""The distributed limiter: one Lua script on Redis, with the local limiter as fallback.

Every instance that shares the Redis shares the buckets, and Redis `TIME` is the one clock.
The script is loaded once (at start, or again on NOSCRIPT after a Redis restart) and run with
EVALSHA: one round trip per request, however many limits it has.

Redis is a dependency that may fail; the limiter must not. Each call is bounded by
`rate_limiting.timeout`; on any error the request is judged by the local limiter at once, and a
breaker keeps further requests off Redis for a back-off (doubling up to `max_backoff`). After
the back-off one request probes Redis (the others stay local); its success closes the breaker.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, Final

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from .. import log
from ..metrics import RATELIMIT_BACKEND_UP
from .base import Limit, Verdict, pick
from .local import LocalLimiter

__all__ = ["SCRIPT", "RedisLimiter"]

SCRIPT: Final = resources.files(__package__).joinpath("token_bucket.lua").read_text()
_SHA: Final = hashlib.sha1(SCRIPT.encode()).hexdigest()
# What a Redis call may raise when Redis (or the way to it) fails: trips the breaker.
_FAILURES: Final = (RedisError, OSError, TimeoutError)


def redis_key(limit: Limit, value: str) -> str:
    """`aiogate:rl:<limit id>:<value>`: values come normalised (short ASCII) from the plan."""
    return limit.prefix + value


class RedisLimiter:
    def __init__(
        self,
        client: aioredis.Redis,
        fallback: LocalLimiter,
        *,
        timeout: float,
        backoff: float,
        max_backoff: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self._fallback = fallback
        self._timeout = timeout
        self._first_backoff = backoff
        self._max_backoff = max_backoff
        self._backoff = backoff
        self._clock = clock
        self._up = True
        self._retry_at = 0.0
        self._probing = False
        self._gauge = RATELIMIT_BACKEND_UP.labels("redis")

    @property
    def up(self) -> bool:
        return self._up

    async def start(self) -> None:
        """Load the script, bounded by the timeout; a Redis down at start is a degraded start."""
        try:
            async with asyncio.timeout(max(self._timeout, 1.0)):
                await self._redis.script_load(SCRIPT)
        except _FAILURES as exc:
            self._failed(exc)
        else:
            self._gauge.set(1)

    async def acquire(self, limits: Sequence[Limit], values: Sequence[str]) -> Verdict:
        probe = False
        if not self._up:
            if self._probing or self._clock() < self._retry_at:
                return self._fallback.acquire_now(limits, values)
            self._probing = probe = True
        try:
            reply = await self._call(limits, values)
        except _FAILURES as exc:
            self._failed(exc, probe)
            return self._fallback.acquire_now(limits, values)
        except ValueError:
            # Something in this one request Redis cannot take (an unencodable value, say,
            # from a caller that did not normalise it): a fault of the request, not of Redis,
            # so it is judged locally without tripping the breaker. The limiter never raises.
            return self._fallback.acquire_now(limits, values)
        finally:
            if probe:
                self._probing = False
        if not self._up:
            self._restored()
        return _verdict(limits, reply)

    async def _call(self, limits: Sequence[Limit], values: Sequence[str]) -> list[Any]:
        keys = [redis_key(limit, value) for limit, value in zip(limits, values, strict=True)]
        args: list[str | int | float] = [""]
        for limit in limits:
            args += (limit.algorithm, limit.limit, repr(limit.window))
        async with asyncio.timeout(self._timeout):
            try:
                reply = await self._redis.evalsha(_SHA, len(keys), *keys, *args)
            except NoScriptError:
                # Redis restarted (or flushed its scripts): load once more and retry.
                await self._redis.script_load(SCRIPT)
                reply = await self._redis.evalsha(_SHA, len(keys), *keys, *args)
        return reply  # type: ignore[no-any-return]

    def _failed(self, exc: BaseException, probe: bool = False) -> None:
        if self._up:
            self._up = False
            self._backoff = self._first_backoff
            self._gauge.set(0)
            log.get_logger("aiogate.ratelimit").warning(
                log.RATELIMIT_BACKEND_DEGRADED,
                backend="redis",
                error=f"{type(exc).__name__}: {exc}",
                retry_in=self._backoff,
            )
        elif probe:
            self._backoff = min(self._backoff * 2, self._max_backoff)
        else:
            return  # a call that was already in flight when Redis failed: no new information
        self._retry_at = self._clock() + self._backoff

    def _restored(self) -> None:
        self._up = True
        self._backoff = self._first_backoff
        self._gauge.set(1)
        log.get_logger("aiogate.ratelimit").info(log.RATELIMIT_BACKEND_RESTORED, backend="redis")


def _verdict(limits: Sequence[Limit], reply: list[Any]) -> Verdict:
    admitted = reply[0] == 1
    results = [
        (int(reply[i]), float(reply[i + 1]), float(reply[i + 2])) for i in range(1, len(reply), 3)
    ]
    return pick(admitted, limits, [limit.limit for limit in limits], results)
