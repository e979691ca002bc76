"""BackgroundTask and TaskSet: start, stop (cancel and await), a crash logged with the name."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
from log_testing import events, log_to_file

from aiogate import log
from aiogate.tasks import BackgroundTask, TaskSet


@pytest.fixture(autouse=True)
def out(tmp_path: Path) -> Iterator[TextIO]:
    with log_to_file(tmp_path / "stdout", level="debug") as stream:
        yield stream


async def test_stop_cancels_and_waits_for_the_task() -> None:
    entered, cleaned_up = asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        entered.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits still completes before stop returns
            cleaned_up.set()

    task = BackgroundTask("test-forever")
    assert (task.started, task.running) == (False, False)
    task.start(forever())
    await entered.wait()
    assert (task.started, task.running) == (True, True)
    await task.stop()
    assert cleaned_up.is_set()
    assert (task.started, task.running) == (False, False)
    await task.stop()  # stopping again (or never started) does nothing


async def test_a_crash_is_logged_once_with_the_name_and_stop_does_not_raise(
    out: TextIO,
) -> None:
    async def crash() -> None:
        raise ValueError("boom")

    task = BackgroundTask("test-crash")
    task.start(crash())
    await asyncio.sleep(0.01)
    assert (task.started, task.running) == (True, False)
    await task.stop()
    failed = events(out, log.TASK_FAILED)
    assert len(failed) == 1
    assert failed[0]["task"] == "test-crash"
    assert "boom" in failed[0]["error"]


async def test_a_cancelled_or_finished_task_logs_nothing(out: TextIO) -> None:
    async def quick() -> None:
        return None

    finished = BackgroundTask("test-quick")
    finished.start(quick())
    await asyncio.sleep(0.01)
    await finished.stop()
    cancelled = BackgroundTask("test-cancelled")
    cancelled.start(asyncio.sleep(3600))
    await asyncio.sleep(0)
    await cancelled.stop()
    assert events(out, log.TASK_FAILED) == []


async def test_the_task_carries_its_name_and_knows_itself() -> None:
    seen: list[tuple[str, bool]] = []
    task = BackgroundTask("test-named")

    async def look() -> None:
        current = asyncio.current_task()
        assert current is not None
        seen.append((current.get_name(), task.is_current()))

    task.start(look())
    await asyncio.sleep(0.01)
    assert seen == [("test-named", True)]
    assert not task.is_current()  # the test's own task is not the owned one
    await task.stop()


async def test_starting_twice_while_running_is_refused() -> None:
    task = BackgroundTask("test-twice")
    task.start(asyncio.sleep(3600))
    second = asyncio.sleep(3600)
    with pytest.raises(RuntimeError, match="test-twice"):
        task.start(second)
    await task.stop()
    # A finished task may be replaced by a new start (the config watcher restarts this way).
    task.start(asyncio.sleep(0))
    await asyncio.sleep(0.01)
    task.start(asyncio.sleep(3600))
    await task.stop()


async def test_a_task_set_keeps_its_tasks_until_they_finish(out: TextIO) -> None:
    tasks = TaskSet()
    release = asyncio.Event()
    finished: list[str] = []

    async def work(name: str) -> None:
        await release.wait()
        finished.append(name)

    async def crash() -> None:
        raise KeyError("lost")

    tasks.spawn(work("a"), name="test-a")
    tasks.spawn(work("b"), name="test-b")
    tasks.spawn(crash(), name="test-crash")
    await asyncio.sleep(0.01)
    assert len(tasks) == 2  # the crashed one left the set, logged
    release.set()
    await tasks.wait()  # waits, raises nothing
    assert sorted(finished) == ["a", "b"]
    assert len(tasks) == 0
    failed = events(out, log.TASK_FAILED)
    assert [(e["task"], "lost" in e["error"]) for e in failed] == [("test-crash", True)]


async def test_cancelling_a_task_set_waits_for_every_task(out: TextIO) -> None:
    tasks = TaskSet()
    cleaned: list[int] = []

    async def forever(index: int) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)
            cleaned.append(index)

    for index in range(3):
        tasks.spawn(forever(index), name=f"test-{index}")
    await asyncio.sleep(0.01)
    await tasks.cancel()
    assert sorted(cleaned) == [0, 1, 2]
    assert len(tasks) == 0
    await tasks.cancel()  # an empty set: nothing to do
    assert events(out, log.TASK_FAILED) == []
