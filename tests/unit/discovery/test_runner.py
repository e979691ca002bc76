"""SourceRunner, the loop every discovery source runs in, driven by a fake source."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import pytest
from log_testing import events, log_to_file

from aiogate import log
from aiogate.config import BackendConfig, EtcdDiscoveryConfig
from aiogate.discovery.runner import SourceRunner
from aiogate.discovery.source import Backends, Source

A = BackendConfig(url="http://10.0.0.1")
B = BackendConfig(url="http://10.0.0.2")


class Retry(Exception):
    """Raised by the fake source to ask for an immediate retry."""


class FakeSource:
    """A source the test scripts: each `watch()` plays the next list of sets, then raises."""

    def __init__(self, script: list[list[Backends] | Exception]) -> None:
        # Each entry is one watch(): the sets it yields (then it blocks until told to fail),
        # or an exception it raises at once (the source is down).
        self.script = list(script)
        self.fail_now = asyncio.Event()
        self.fail_with: Exception = ConnectionError("link lost")
        self.endpoint = "fake://one"
        self.watches = 0
        self.closed = False

    def describe(self) -> Mapping[str, object]:
        return {"prefix": "/fake/", "revision": self.watches}

    async def watch(self) -> AsyncIterator[Backends]:
        self.watches += 1
        step = self.script.pop(0) if self.script else ConnectionError("script over")
        if isinstance(step, Exception):
            raise step
        for backends in step:
            yield backends
        self.fail_now.clear()
        await self.fail_now.wait()
        raise self.fail_with

    def failed(self, error: Exception) -> bool:
        self.endpoint = "fake://two" if self.endpoint == "fake://one" else "fake://one"
        return isinstance(error, Retry)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture(autouse=True)
def out(tmp_path: Path) -> Iterator[TextIO]:
    with log_to_file(tmp_path / "stdout", level="debug") as stream:
        yield stream


async def until(predicate: object, within: float = 5.0) -> None:
    assert callable(predicate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


class Recorder:
    def __init__(self) -> None:
        self.changes: list[Backends] = []
        self.status: list[bool] = []

    def runner(self, source: Source, **settings: Any) -> SourceRunner:
        config = EtcdDiscoveryConfig.model_validate({"prefix": "/fake/", **settings})
        return SourceRunner(
            "svc",
            config,
            source,
            lambda _, backends: self.changes.append(backends),
            lambda _, connected: self.status.append(connected),
            rng=lambda low, high: high,  # no jitter: the delays are exact
        )


async def test_publishes_changes_only_and_keeps_the_last_set_while_down(out: TextIO) -> None:
    source = FakeSource([[(A,), (A,), (A, B)], ConnectionError("refused"), [(A, B)]])
    seen = Recorder()
    runner = seen.runner(source, backoff="10ms", max_backoff="10ms")
    runner.start()
    try:
        await asyncio.wait_for(runner.first_attempt.wait(), 5)
        await until(lambda: len(seen.changes) == 2)
        assert seen.changes == [(A,), (A, B)]  # the repeated (A,) was not published again
        assert runner.connected
        assert seen.status == [True]

        source.fail_now.set()  # link lost, the next attempt is refused, then it comes back
        await until(lambda: source.watches == 3 and runner.connected)
        # Down and back with the same set: nothing was published, the set was kept throughout.
        assert seen.changes == [(A,), (A, B)]
        assert runner.backends == (A, B)
        assert seen.status == [True, False, True]
    finally:
        await runner.close()
    assert source.closed

    changed = events(out, log.DISCOVERY_BACKENDS_CHANGED)
    assert [(e["added"], e["removed"]) for e in changed] == [
        (["http://10.0.0.1"], []),
        (["http://10.0.0.2"], []),
    ]
    connected = events(out, log.DISCOVERY_CONNECTED)
    assert [(e["endpoint"], e["prefix"], e["backends"]) for e in connected] == [
        ("fake://one", "/fake/", 1),
        ("fake://one", "/fake/", 2),  # after two failures the endpoint switched twice
    ]
    down = events(out, log.DISCOVERY_DISCONNECTED)
    # The endpoint logged is the one that failed, before the source switched away from it.
    assert [(e["endpoint"], e["error"], e["backends"]) for e in down] == [
        ("fake://one", "link lost", 2),
        ("fake://two", "refused", 2),
    ]
    # Warning once per outage, the outage's later attempts at debug.
    assert [e["level"] for e in down] == ["warning", "debug"]


async def test_backoff_doubles_up_to_the_cap_and_resets_after_a_good_read(out: TextIO) -> None:
    down = [ConnectionError(f"refused {i}") for i in range(4)]
    source = FakeSource([*down, [(A,)], ConnectionError("refused again")])
    seen = Recorder()
    runner = seen.runner(source, backoff="10ms", max_backoff="40ms")
    runner.start()
    try:
        await until(lambda: runner.connected)
        source.fail_now.set()
        await until(lambda: source.watches >= 7)
    finally:
        await runner.close()
    delays = [e["retry_in"] for e in events(out, log.DISCOVERY_DISCONNECTED)]
    # 10, 20, 40, 40 (capped) while never connected. The link that then worked for a while
    # fails: that retry still waits the delay reached so far, the next one starts over at 10.
    assert delays[:6] == [0.01, 0.02, 0.04, 0.04, 0.04, 0.01]


async def test_the_source_may_ask_for_an_immediate_retry(out: TextIO) -> None:
    source = FakeSource([[(A,)], [(A,)]])
    seen = Recorder()
    runner = seen.runner(source, backoff="10s", max_backoff="10s")
    runner.start()
    try:
        await until(lambda: runner.connected)
        source.fail_with = Retry("compacted")
        source.fail_now.set()
        # A 10 s back-off would outlast this wait: only the immediate retry gets here.
        await until(lambda: source.watches == 2 and runner.connected)
    finally:
        await runner.close()
    delays = [e["retry_in"] for e in events(out, log.DISCOVERY_DISCONNECTED)]
    assert delays == [0.0]
    assert seen.changes == [(A,)]


async def test_the_first_attempt_is_signalled_even_when_it_fails() -> None:
    source = FakeSource([ConnectionError("refused")])
    runner = Recorder().runner(source, backoff="10s", max_backoff="10s")
    runner.start()
    try:
        await asyncio.wait_for(runner.first_attempt.wait(), 5)
        assert not runner.connected
        assert runner.backends == ()
    finally:
        await runner.close()
    assert source.closed
