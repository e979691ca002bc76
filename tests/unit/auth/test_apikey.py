"""ApiKeyVerifier: memory keys, the Redis store's cache, and the outage path (fake store)."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from aiogate.auth import AuthFailure
from aiogate.auth.apikey import ApiKeyVerifier, StoreUnavailable
from aiogate.config import ApiKeyConfig


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class FakeStore:
    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.down = False
        self.calls = 0

    async def get(self, d: str) -> bytes | None:
        self.calls += 1
        await asyncio.sleep(0)
        if self.down:
            raise StoreUnavailable("connection refused")
        return self.data.get(d)


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


async def failure(v: ApiKeyVerifier, key: str) -> AuthFailure:
    with pytest.raises(AuthFailure) as info:
        await v.verify(key)
    return info.value


async def test_memory_keys_plain_and_digest() -> None:
    config = ApiKeyConfig.model_validate(
        {"keys": [{"key": "k-alice", "consumer": "alice", "tier": "gold"},
                  {"key_sha256": digest("k-bob"), "consumer": "bob"}]}
    )  # fmt: skip
    v = ApiKeyVerifier(config)
    alice = await v.verify("k-alice")
    assert (alice.name, alice.tier, alice.key_id) == ("alice", "gold", digest("k-alice"))
    assert (await v.verify("k-bob")).name == "bob"
    unknown, wrong = await failure(v, "nope"), await failure(v, "k-alice2")
    assert unknown.description == wrong.description
    assert unknown.status == wrong.status == 401


async def test_redis_store_caches_hits_and_misses() -> None:
    store, clock = FakeStore(), Clock()
    store.data[digest("r1")] = json.dumps({"consumer": "carol", "tier": "free"}).encode()
    store.data[digest("off")] = json.dumps({"consumer": "dan", "disabled": True}).encode()
    config = ApiKeyConfig(store="redis", cache_ttl=30, negative_cache_ttl=5)
    v = ApiKeyVerifier(config, store=store, clock=clock)
    for _ in range(5):
        assert (await v.verify("r1")).name == "carol"
        assert (await failure(v, "unknown")).reason == "invalid_api_key"
    assert store.calls == 2
    assert (await failure(v, "off")).description == (await failure(v, "unknown")).description
    clock.now += 31
    await v.verify("r1")
    assert store.calls == 4  # r1 asked again once its entry expired


async def test_concurrent_lookups_share_one_round_trip() -> None:
    store = FakeStore()
    store.data[digest("r1")] = b'{"consumer": "carol"}'
    v = ApiKeyVerifier(ApiKeyConfig(store="redis"), store=store)
    names = await asyncio.gather(*(v.verify("r1") for _ in range(50)))
    assert {c.name for c in names} == {"carol"}
    assert store.calls == 1


async def test_outage_cached_keys_work_unknown_keys_503() -> None:
    store, clock = FakeStore(), Clock()
    store.data[digest("r1")] = b'{"consumer": "carol"}'
    v = ApiKeyVerifier(ApiKeyConfig(store="redis", cache_ttl=1), store=store, clock=clock)
    await v.verify("r1")
    store.down = True
    clock.now += 10  # the cache entry is past its TTL: Redis is asked, fails, stale is used
    assert (await v.verify("r1")).name == "carol"
    unknown = await failure(v, "never-seen")
    assert (unknown.status, unknown.reason) == (503, "store_unavailable")
    calls = store.calls
    await failure(v, "never-seen-2")  # within the backoff: Redis is not even asked
    assert store.calls == calls
    store.down = False
    clock.now += 2
    assert (await failure(v, "never-seen")).status == 401


async def test_malformed_record_is_no_key() -> None:
    store = FakeStore()
    for key, raw in {
        "a": b"not json",
        "b": b'{"tier": "x"}',
        "c": b'{"consumer": 5}',
        "d": b'{"consumer": "x", "disabled": "yes"}',
        "e": b"[1]",
    }.items():
        store.data[digest(key)] = raw
    v = ApiKeyVerifier(ApiKeyConfig(store="redis"), store=store)
    for key in "abcde":
        assert (await failure(v, key)).reason == "invalid_api_key"


async def test_a_reloaded_verifier_keeps_what_redis_answered() -> None:
    # A reload during a Redis outage must not turn keys that worked into 503s.
    store, clock = FakeStore(), Clock()
    store.data[digest("r1")] = b'{"consumer": "carol"}'
    config = ApiKeyConfig(store="redis", cache_ttl=1)
    old = ApiKeyVerifier(config, store=store, clock=clock)
    await old.verify("r1")
    store.down = True
    new = ApiKeyVerifier(config, store=store, clock=clock)
    new.adopt(old)
    assert (await new.verify("r1")).name == "carol"
    assert (await failure(new, "never-seen")).status == 503
