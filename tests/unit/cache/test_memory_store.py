"""The memory store: LRU order, entry and byte bounds, expiry, the eviction and bytes metrics."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from aiogate.cache import Entry, MemoryStore
from aiogate.cache.entry import decode, encode


def entry(body: bytes = b"x" * 100, expires_at: float = 100.0) -> Entry:
    return Entry(200, "OK", (("Content-Type", "text/plain"),), body, 0.0, expires_at)


def evictions(route: str) -> float:
    return REGISTRY.get_sample_value("aiogate_cache_evictions_total", {"route": route}) or 0.0


def stored_bytes(route: str) -> float | None:
    return REGISTRY.get_sample_value("aiogate_cache_bytes", {"route": route})


def test_entry_bound_evicts_the_least_recently_used() -> None:
    store = MemoryStore("/lru-entries", max_entries=2, max_size=1 << 20)
    store.insert("a", entry())
    store.insert("b", entry())
    assert store.lookup("a", 1.0) is not None  # a is now the most recently used
    store.insert("c", entry())
    assert store.lookup("b", 1.0) is None
    assert store.lookup("a", 1.0) is not None
    assert store.lookup("c", 1.0) is not None
    assert len(store) == 2
    assert evictions("/lru-entries") == 1


def test_byte_bound_and_gauge() -> None:
    one = entry()
    store = MemoryStore("/lru-bytes", max_entries=100, max_size=one.size * 3)
    for key in "abc":
        store.insert(key, entry())
    assert store.bytes == one.size * 3
    assert stored_bytes("/lru-bytes") == one.size * 3
    store.insert("d", entry())
    assert len(store) == 3
    assert store.lookup("a", 1.0) is None
    assert evictions("/lru-bytes") == 1
    # Two smaller entries go to make room for a bigger one; one that can never fit is refused.
    store.insert("big", entry(b"x" * (one.size + 50)))
    assert len(store) == 2
    assert evictions("/lru-bytes") == 3
    store.insert("huge", entry(b"x" * one.size * 4))
    assert store.lookup("huge", 1.0) is None
    assert store.bytes <= store.max_size


def test_replacing_and_expiry_keep_the_byte_count_right() -> None:
    store = MemoryStore("/lru-expiry", max_entries=10, max_size=1 << 20)
    store.insert("a", entry(b"x" * 10))
    store.insert("a", entry(b"x" * 20, expires_at=5.0))
    assert store.bytes == entry(b"x" * 20).size
    assert store.lookup("a", 4.9) is not None
    assert store.lookup("a", 5.0) is None  # expired: dropped, not counted as an eviction
    assert store.bytes == 0
    assert stored_bytes("/lru-expiry") == 0
    assert evictions("/lru-expiry") == 0


def test_async_interface() -> None:
    store = MemoryStore("/lru-async", max_entries=10, max_size=1 << 20)

    async def run() -> Entry | None:
        await store.put("k", entry(), 0.0)
        return await store.get("k", 1.0)

    assert asyncio.run(run()) == entry()


def test_entry_framing_round_trip() -> None:
    original = Entry(203, "Non-Authoritative", (("A", "1"), ("a", "2")), b"\x00body", 1.5, 9.5, 3)
    assert decode(encode(original)) == original
    assert decode(b"garbage") is None
    assert decode(encode(original)[:12]) is None
    assert original.age(10.5) == 12
    assert original.fresh(9.4)
    assert not original.fresh(9.5)
