"""Owned asyncio tasks: `BackgroundTask` (one long-running task) and `TaskSet` (many short ones).

Health checks, the JWKS refresh, the config watcher and discovery each run one task for as
long as their owner lives. They all need the same three things: start it under a name, stop it
by cancelling and awaiting it (so nothing outlives its owner), and hear about a crash: a task
that dies with an exception nobody awaits would otherwise vanish without a word until shutdown.
Reloads in flight and replaced Runtimes draining are sets of such tasks, owned the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from . import log

__all__ = ["BackgroundTask", "TaskSet"]


class BackgroundTask:
    """Owns at most one named task at a time: `start(coro)`, then `await stop()`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._task: asyncio.Task[Any] | None = None

    @property
    def started(self) -> bool:
        """Started and not stopped since (it may have finished on its own meanwhile)."""
        return self._task is not None

    @property
    def running(self) -> bool:
        """Started and not finished yet (a task that returned or crashed is not running)."""
        return self._task is not None and not self._task.done()

    def is_current(self) -> bool:
        """True when called from inside the owned task itself (it must not await its own stop)."""
        return self._task is not None and self._task is asyncio.current_task()

    def start(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` as the owned task; starting while one still runs is a programming error."""
        if self.running:
            coro.close()  # never awaited: close it so Python does not warn about it
            raise RuntimeError(f"background task {self.name!r} is already running")
        task = asyncio.create_task(coro, name=self.name)
        task.add_done_callback(self._report)
        self._task = task

    async def stop(self) -> None:
        """Cancel the task and wait until it has finished; a no-op when none was started.

        An exception it crashed with earlier is not raised again (`_report` logged it when it
        happened): stopping an owner never fails on its task's behalf. A CancelledError that
        reaches the caller while it waits is suppressed too, as the owners did by hand before
        this helper existed, so the owner's cleanup after `stop()` still runs.
        """
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait((task,))  # unlike `await task`, never re-raises its exception

    def _report(self, task: asyncio.Task[Any]) -> None:
        _report(task, self.name)


class TaskSet:
    """Tasks started one at a time and owned together until each finishes (or is cancelled)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)  # a strong reference: the loop itself keeps only a weak one
        task.add_done_callback(self._done)
        return task

    async def wait(self) -> None:
        """Wait until every task has finished; their failures were logged, none is raised."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def cancel(self) -> None:
        """Cancel every task, then wait until each has finished."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        _report(task, task.get_name())


def _report(task: asyncio.Task[Any], name: str) -> None:
    if task.cancelled():
        return
    error = task.exception()  # retrieved: asyncio no longer reports it as lost at exit
    if error is not None:
        log.get_logger("aiogate.tasks").error(
            log.TASK_FAILED, task=name, error=repr(error), exc_info=error
        )
