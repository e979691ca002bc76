"""systemd's watchdog (WatchdogSec): WATCHDOG=1 pings from the event loop; a hung worker is
killed and replaced by the supervisor."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backend import BackendThread
from gateway import Gateway, wait_until
from gwconfigs import basic_config
from lifecycle_support import NotifySocket
from wire import request


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    with tempfile.TemporaryDirectory(prefix="wdg-", dir="/tmp") as directory:
        sock = NotifySocket(Path(directory) / "notify")
        yield sock
        sock.close()


def _env(notify: NotifySocket, usec: int) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(usec)}


@pytest.mark.parametrize("workers", [1, 2])
def test_pings_arrive_from_the_main_process(
    backends: BackendThread,
    make_gateway: Callable[..., Gateway],
    notify_socket: NotifySocket,
    workers: int,
) -> None:
    gw = make_gateway(
        basic_config(backends, server={"workers": workers}), env=_env(notify_socket, 600_000)
    )
    assert gw.proc is not None
    first = notify_socket.wait_for("WATCHDOG", "1")
    second = notify_socket.wait_for("WATCHDOG", "1")
    assert first.pid == second.pid == gw.proc.pid
    assert second.at > first.at


def test_no_pings_without_watchdog_usec(
    backends: BackendThread, make_gateway: Callable[..., Gateway], notify_socket: NotifySocket
) -> None:
    make_gateway(basic_config(backends), env={"NOTIFY_SOCKET": str(notify_socket.path)})
    notify_socket.wait_for("READY", "1")
    assert not [n for n in notify_socket.pending(1.0) if "WATCHDOG" in n.fields]


def test_a_hung_worker_is_killed_and_replaced(
    backends: BackendThread, make_gateway: Callable[..., Gateway], notify_socket: NotifySocket
) -> None:
    gw = make_gateway(
        basic_config(backends, server={"workers": 2}), env=_env(notify_socket, 1_000_000)
    )
    started = gw.wait_event("worker_started", 2)
    hung = started[0]["pid"]
    os.kill(hung, signal.SIGSTOP)  # its event loop stops: no more pings
    try:
        (event,) = gw.wait_event("worker_hung", 1, timeout=15)
        assert event["pid"] == hung
        gw.wait_event("worker_started", 3, timeout=15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    # systemd kept hearing from the supervisor all along, and the gateway serves.
    notify_socket.wait_for("WATCHDOG", "1")
    wait_until(lambda: request(gw.port, "GET", "/api/users").status == 200, 10, "serving")
