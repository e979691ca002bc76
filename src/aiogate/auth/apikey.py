"""API keys, looked up by the SHA-256 digest of the presented key.

Keys from the config live in memory; with `store: redis` a key K is also looked up at
`aiogate:apikey:<sha256 hex of K>` (JSON: `consumer`, optional `tier` and `disabled`). Redis
answers are cached, found and not-found alike, so Redis is not asked per request. When Redis
is down, keys seen before keep working from the cache (even past its TTL) and unknown keys get
503 `auth_unavailable`: never a 200, never a traceback.

Unknown, wrong and disabled keys fail with the same reason text shown to the client, so the
answer does not tell a guessed key from a revoked one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, Protocol

import orjson

from .. import log
from ..config import ApiKeyConfig
from ._cache import ExpiringLru
from ._types import AuthFailure, Consumer

__all__ = ["ApiKeyVerifier", "KeyRecord", "KeyStore", "RedisKeyStore", "redis_key"]

REDIS_PREFIX: Final = "aiogate:apikey:"
#: After a Redis error, unknown keys fail at once for this long instead of each waiting for
#: the Redis timeout (keys in the cache are not affected).
_REDIS_BACKOFF: Final = 1.0
_INVALID: Final = "invalid API key"


def redis_key(digest: str) -> str:
    return REDIS_PREFIX + digest


@dataclass(frozen=True, slots=True)
class KeyRecord:
    digest: str
    consumer: Consumer
    disabled: bool = False


class KeyStore(Protocol):
    """Where keys live besides the config: raises StoreUnavailable when it cannot answer."""

    async def get(self, digest: str) -> bytes | None: ...


class StoreUnavailable(Exception):
    pass


class RedisKeyStore:
    """`KeyStore` over a redis.asyncio client (the Runtime's shared one)."""

    __slots__ = ("_redis",)

    def __init__(self, redis: _RedisLike) -> None:
        self._redis = redis

    async def get(self, digest: str) -> bytes | None:
        try:
            value = await self._redis.get(redis_key(digest))
        except Exception as exc:  # ConnectionError, TimeoutError, RedisError, OSError alike
            raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
        if value is None or isinstance(value, bytes):
            return value
        return str(value).encode()


class _RedisLike(Protocol):
    def get(self, name: str) -> Awaitable[object]: ...


class ApiKeyVerifier:
    def __init__(
        self,
        config: ApiKeyConfig,
        *,
        store: KeyStore | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._memory = {
            entry.digest: KeyRecord(
                entry.digest,
                Consumer(
                    name=entry.consumer, method="api_key", tier=entry.tier, key_id=entry.digest
                ),
            )
            for entry in config.keys
        }
        self._store = store
        self._clock = clock
        self._ttl = config.cache_ttl
        self._negative_ttl = config.negative_cache_ttl
        # Values are 1-tuples so that a cached "no such key" (None) differs from a cache miss.
        self._cache: ExpiringLru[str, tuple[KeyRecord | None]] = ExpiringLru(config.cache_size)
        self._pending: dict[str, asyncio.Future[KeyRecord | None]] = {}
        self._down_until = -math.inf
        #: Redis lookups so far (tests: the cache really spares Redis).
        self.store_lookups = 0

    def adopt(self, previous: ApiKeyVerifier) -> None:
        """Keep a replaced verifier's store lookups: what Redis answered before a reload still
        answers during an outage after it. Only records from the store are cached, never the
        config's own keys, so nothing stale from the old config survives."""
        if previous._store is not None and previous._cache.capacity == self._cache.capacity:
            self._cache = previous._cache

    async def verify(self, key: str) -> Consumer:
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        record = self._memory.get(digest)
        if record is None and self._store is not None:
            record = await self._from_store(digest)
        # The dict lookup already matched the digest; comparing again in constant time keeps
        # the final decision free of early-exit timing whatever the lookup structure becomes.
        if record is None or not hmac.compare_digest(record.digest, digest):
            raise AuthFailure("invalid_api_key", _INVALID)
        if record.disabled:
            raise AuthFailure("disabled_api_key", _INVALID)
        return record.consumer

    async def _from_store(self, digest: str) -> KeyRecord | None:
        now = self._clock()
        cached = self._cache.get(digest, now)
        if cached is not None:
            return cached[0]
        pending = self._pending.get(digest)
        if pending is not None:
            try:
                return await asyncio.shield(pending)  # one Redis round trip per key
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # The request that started the lookup went away: do our own.
        future: asyncio.Future[KeyRecord | None] = asyncio.get_running_loop().create_future()
        self._pending[digest] = future
        try:
            record = await self._lookup(digest, now)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        else:
            future.set_result(record)
            return record
        finally:
            del self._pending[digest]

    async def _lookup(self, digest: str, now: float) -> KeyRecord | None:
        assert self._store is not None
        if now >= self._down_until:
            try:
                raw = await self._store.get(digest)
            except StoreUnavailable as exc:
                self._down_until = self._clock() + _REDIS_BACKOFF
                log.get_logger("aiogate.auth").warning(
                    log.AUTH_STORE_UNAVAILABLE, store="redis", error=str(exc)
                )
            else:
                self.store_lookups += 1
                record = _parse(digest, raw)
                ttl = self._ttl if record is not None else self._negative_ttl
                self._cache.put(digest, (record,), now + ttl)
                return record
        # Redis cannot answer: a key seen before keeps working, an unknown one cannot be judged.
        stale = self._cache.get_stale(digest)
        if stale is not None and stale[0] is not None:
            return stale[0]
        raise AuthFailure("store_unavailable", "API keys cannot be checked right now", 503)


def _parse(digest: str, raw: bytes | None) -> KeyRecord | None:
    """The record stored for a key; malformed JSON counts as no key (and is logged)."""
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
        consumer = data["consumer"]
        tier = data.get("tier")
        disabled = data.get("disabled", False)
        if not isinstance(consumer, str) or not consumer:
            raise ValueError("'consumer' must be a non-empty string")
        if tier is not None and not isinstance(tier, str):
            raise ValueError("'tier' must be a string")
        if not isinstance(disabled, bool):
            raise ValueError("'disabled' must be true or false")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        log.get_logger("aiogate.auth").warning(
            log.AUTH_STORE_BAD_RECORD, store="redis", key=redis_key(digest)[:31] + "…",
            error=str(exc),
        )  # fmt: skip
        return None
    return KeyRecord(
        digest,
        Consumer(name=consumer, method="api_key", tier=tier, key_id=digest),
        disabled=disabled,
    )
