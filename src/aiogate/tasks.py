"""`BackgroundTask`: the one way a component owns a long-running asyncio task.

Health checks, the JWKS refresh, the config watcher and discovery each run one task for as
long as their owner lives. They all need the same three things: start it under a name, stop it
by cancelling and awaiting it (so nothing outlives its owner), and hear about a crash: a task
that dies with an exception nobody awaits would otherwise vanish without a word until shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from . import log

__all__ = ["BackgroundTask"]


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
        if task.cancelled():
            return
        error = task.exception()  # retrieved: asyncio no longer reports it as lost at exit
        if error is not None:
            log.get_logger("aiogate.tasks").error(
                log.TASK_FAILED, task=self.name, error=repr(error), exc_info=error
            )
