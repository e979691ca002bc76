"""The etcd config source's loop, driven by a scripted fake etcd client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

from aiogate.admin import ReloadOutcome
from aiogate.config import EtcdConfigSource, SourceValue
from aiogate.configsource import EtcdConfigWatcher
from aiogate.discovery.etcd import EtcdClient, EtcdError, KeyValue, WatchCompacted, WatchEvent

SETTINGS = EtcdConfigSource(key="/k", backoff=0.01, max_backoff=0.02, keepalive=60)
KV1 = KeyValue("/k", b"routes: []\n", 5)
KV2 = KeyValue("/k", b"upstreams: []\n", 7)


class FakeClient:
    """Each `get()` answers the next scripted value; each watch plays its batches, then fails."""

    endpoint = "http://fake:2379"

    def __init__(self, reads: list[KeyValue | None], watches: list[list[list[WatchEvent]]]):
        self.reads = list(reads)
        self.watches = list(watches)
        self.rotations = 0

    async def get(self, key: str) -> tuple[int, KeyValue | None]:
        if not self.reads:
            await asyncio.Event().wait()  # no more script: hang like a quiet etcd
        return 10, self.reads.pop(0)

    async def watch_key(self, key: str, start: int) -> AsyncIterator[list[WatchEvent]]:
        for batch in self.watches.pop(0) if self.watches else []:
            yield batch
        raise EtcdError("link lost")

    async def status(self) -> None:
        return None

    def rotate(self) -> None:
        self.rotations += 1

    async def close(self) -> None:
        return None


class Applier:
    def __init__(self) -> None:
        self.applied: list[SourceValue | None] = []

    async def apply_source(self, value: SourceValue | None) -> ReloadOutcome:
        self.applied.append(value)
        return ReloadOutcome(True, len(self.applied))


async def run(client: FakeClient, running: SourceValue | None = None) -> list[Any]:
    watcher = EtcdConfigWatcher(SETTINGS, running=running, client=cast(EtcdClient, client))
    applier = Applier()
    watcher.start(applier)
    for _ in range(200):
        await asyncio.sleep(0.005)
        if not client.reads:
            break
    await asyncio.sleep(0.05)
    await watcher.close()
    return [None if v is None else v.raw for v in applier.applied]


def test_the_same_value_after_a_reconnect_is_not_applied_again() -> None:
    client = FakeClient([KV1, KV1, KV1], [])
    running = SourceValue(SETTINGS.name, KV1.value)
    assert asyncio.run(run(client, running)) == []
    assert client.rotations >= 2  # each failed watch moved to the next endpoint


def test_changes_and_a_deletion_are_applied_in_order() -> None:
    put = WatchEvent("PUT", KV2)
    gone = WatchEvent("DELETE", KeyValue("/k", b"", 8))
    client = FakeClient([KV1, None], [[[put], [put, gone]]])
    assert asyncio.run(run(client)) == [KV1.value, KV2.value, None]


def test_absent_at_start_and_still_absent_applies_nothing() -> None:
    assert asyncio.run(run(FakeClient([None, None], []))) == []


def test_a_compaction_rereads_at_once_without_rotating() -> None:
    client = FakeClient([KV1, KV2], [])

    async def compacted(key: str, start: int) -> AsyncIterator[list[WatchEvent]]:
        batches: list[list[WatchEvent]] = []  # none: the start revision is gone
        for batch in batches:
            yield batch
        raise WatchCompacted("gone")

    client.watch_key = compacted  # type: ignore[method-assign]
    assert asyncio.run(run(client)) == [KV1.value, KV2.value]
    assert client.rotations == 0
