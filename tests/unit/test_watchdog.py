from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from aiogate.watchdog import PING, Watchdog, pinging_worker, watchdog_timeout, worker_ping


def test_timeout_from_systemds_variables() -> None:
    pid = str(os.getpid())
    assert watchdog_timeout({}) is None
    assert watchdog_timeout({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_timeout({"WATCHDOG_USEC": "junk"}) is None
    assert watchdog_timeout({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_timeout({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": pid}) == 2.0
    assert watchdog_timeout({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None


def test_worker_pings_name_the_worker() -> None:
    assert pinging_worker(worker_ping(1234)) == 1234
    assert pinging_worker(PING) is None
    assert pinging_worker("READY=1\nX_AIOGATE_PID=5") is None


async def test_pings_go_to_the_notify_socket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "n"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    alive = [True]
    dog = Watchdog(0.1, lambda: alive[0])
    dog.start()
    try:
        loop = asyncio.get_running_loop()
        assert (await asyncio.wait_for(loop.sock_recv(sock, 100), 5)) == PING.encode()
        alive[0] = False  # unhealthy from the next tick on: no more pings
        await asyncio.sleep(0.15)
        _drain(sock)
        await asyncio.sleep(0.35)
        assert _drain(sock) == 0
    finally:
        await dog.stop()
        sock.close()


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(100)
        except BlockingIOError:
            return count
        count += 1
