"""sdnotify: the NOTIFY_SOCKET datagram protocol, against real unix sockets."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiogate import sdnotify


def fields(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().splitlines())


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"aiogate-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        yield "@" + name, sock


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        yield path, sock


def test_notify_to_an_abstract_socket(abstract_socket: tuple[str, socket.socket]) -> None:
    address, sock = abstract_socket
    assert sdnotify.notify("READY=1\nSTATUS=hi", env={"NOTIFY_SOCKET": address}) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=hi"


def test_notify_to_a_path_socket(path_socket: tuple[str, socket.socket]) -> None:
    address, sock = path_socket
    assert sdnotify.notify("STATUS=x", env={"NOTIFY_SOCKET": address}) is True
    assert sock.recv(4096) == b"STATUS=x"


def test_without_a_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.notify("READY=1", env={}) is False
    assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False
    assert sdnotify.ready() is False


def test_an_unreachable_socket_is_not_an_error(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}
    assert sdnotify.notify("READY=1", env=env) is False
    env = {"NOTIFY_SOCKET": f"@aiogate-absent-{uuid.uuid4().hex}"}
    assert sdnotify.notify("READY=1", env=env) is False


def test_the_helpers_use_the_environment(
    monkeypatch: pytest.MonkeyPatch, abstract_socket: tuple[str, socket.socket]
) -> None:
    address, sock = abstract_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)

    assert sdnotify.ready()
    assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "serving"}

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = fields(sock.recv(4096))
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= after

    assert sdnotify.stopping()
    assert fields(sock.recv(4096))["STOPPING"] == "1"

    assert sdnotify.status("draining 3 requests")
    assert sock.recv(4096) == b"STATUS=draining 3 requests"


def test_a_workers_reload_outcome_round_trips() -> None:
    ok = sdnotify.reload_status(41, 3, True)
    assert ok == "reload:41:3:ok"
    assert sdnotify.parse_reload_status(f"READY=1\nSTATUS={ok}") == (41, 3, True, "ok")
    rejected = sdnotify.reload_status(41, 4, False, ["a.yaml: bad\nPEM: x", "second"])
    report = sdnotify.parse_reload_status(f"READY=1\nSTATUS={rejected}")
    assert report == (41, 4, False, "a.yaml: bad PEM: x | second")  # one line, colons kept
    assert sdnotify.parse_reload_status("READY=1\nSTATUS=serving") is None
    assert sdnotify.parse_reload_status("STATUS=reload:x:1:ok") is None
