"""systemd's notify protocol against a real AF_UNIX datagram socket ($NOTIFY_SOCKET)."""

from __future__ import annotations

import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from backend import BackendThread
from gateway import Gateway
from gwconfigs import basic_config
from lifecycle_support import NotifySocket


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # a short directory: unix socket paths are limited to 108 bytes
    with tempfile.TemporaryDirectory(prefix="sdn-", dir="/tmp") as directory:
        sock = NotifySocket(Path(directory) / "notify")
        yield sock
        sock.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_reloading_stopping(
    backends: BackendThread,
    make_gateway: Callable[..., Gateway],
    notify_socket: NotifySocket,
    workers: int,
) -> None:
    config = basic_config(backends, server={"workers": workers})
    gw = make_gateway(config, env={"NOTIFY_SOCKET": str(notify_socket.path)})
    assert gw.proc is not None
    main_pid = gw.proc.pid

    ready = notify_socket.wait_for("READY", "1")
    assert ready.pid == main_pid  # the parent speaks for its workers (NotifyAccess=main)
    # exactly one READY=1 at start, even with two workers
    assert [n for n in notify_socket.pending() if "READY" in n.fields] == []

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    gw.signal(signal.SIGHUP)
    reloading = notify_socket.wait_for("RELOADING", "1")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading.pid == main_pid
    # systemd (>= 253) pairs RELOADING=1 with the reload job through MONOTONIC_USEC
    assert before <= int(reloading.fields["MONOTONIC_USEC"]) <= after
    ready_again = notify_socket.wait_for("READY", "1")
    assert ready_again.pid == main_pid
    assert ready_again.at >= reloading.at
    gw.wait_event("config_reloaded", workers)

    gw.signal(signal.SIGTERM)
    stopping = notify_socket.wait_for("STOPPING", "1")
    assert stopping.pid == main_pid
    assert gw.proc.wait(15) == 0
    # nobody but the main process ever wrote to systemd's socket
    assert all(n.pid == main_pid for n in notify_socket.pending(0.2))


def test_a_rejected_reload_still_reports_ready(
    backends: BackendThread, make_gateway: Callable[..., Gateway], notify_socket: NotifySocket
) -> None:
    """systemd waits for READY=1 after RELOADING=1: a rejected file must not leave it hanging."""
    gw = make_gateway(basic_config(backends), env={"NOTIFY_SOCKET": str(notify_socket.path)})
    notify_socket.wait_for("READY", "1")
    gw.path.write_text("server: {listen: [not, an, address]}\n")
    gw.signal(signal.SIGHUP)
    notify_socket.wait_for("RELOADING", "1")
    notify_socket.wait_for("READY", "1")
    gw.wait_event("config_rejected")


def test_an_unreachable_notify_socket_is_harmless(
    backends: BackendThread, make_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    gw = make_gateway(basic_config(backends), env={"NOTIFY_SOCKET": str(tmp_path / "absent")})
    gw.signal(signal.SIGHUP)
    gw.wait_event("config_reloaded")
    assert gw.stop() == 0
