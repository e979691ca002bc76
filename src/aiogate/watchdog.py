"""systemd's watchdog: `WATCHDOG=1` pings sent from the event loop itself.

With `WatchdogSec=` in the unit, systemd sets `WATCHDOG_USEC` (and `WATCHDOG_PID`) and kills
and restarts the service when no ping arrives in time. The pings come from a task on the event
loop, so a loop that hangs (a blocking call, a busy loop) stops them, and systemd restarts
the process; a thread could keep pinging for a dead loop.

With workers, the supervisor passes its interval on: each worker pings the supervisor (through
the notify relay) and the supervisor pings systemd from its own loop; a worker whose pings stop
is killed and restarted by the supervisor (see supervisor.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping

from . import sdnotify
from .tasks import BackgroundTask

__all__ = [
    "PING",
    "WATCHDOG_USEC",
    "Watchdog",
    "pinging_worker",
    "watchdog_timeout",
    "worker_ping",
]

WATCHDOG_USEC = "WATCHDOG_USEC"
PING = "WATCHDOG=1"
#: A worker's ping names it, so the supervisor knows which worker is alive (systemd ignores
#: `X_` variables; a worker's pings only ever reach the supervisor anyway).
_WORKER_PID = "X_AIOGATE_PID="


def worker_ping(pid: int) -> str:
    return f"{PING}\n{_WORKER_PID}{pid}"


def pinging_worker(message: str) -> int | None:
    """The pid of the worker that sent this ping, or None when it is not a worker's ping."""
    lines = message.splitlines()
    if PING not in lines:
        return None
    for line in lines:
        if line.startswith(_WORKER_PID) and line[len(_WORKER_PID) :].isdigit():
            return int(line[len(_WORKER_PID) :])
    return None


def watchdog_timeout(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds when it is meant for this process, else None."""
    env = os.environ if env is None else env
    usec = env.get(WATCHDOG_USEC, "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None  # meant for another process (our parent, say)
    return int(usec) / 1_000_000


class Watchdog:
    """Pings `WATCHDOG=1` every half timeout while `healthy()` says so."""

    def __init__(
        self,
        timeout: float,
        healthy: Callable[[], bool] = lambda: True,
        *,
        message: str = PING,
    ) -> None:
        self.interval = timeout / 2
        self._healthy = healthy
        self._message = message
        self._task = BackgroundTask("aiogate-watchdog")

    def start(self) -> None:
        self._task.start(self._run())

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        while True:
            if self._healthy():
                sdnotify.notify(self._message)
            await asyncio.sleep(self.interval)
