"""Helpers shared by the lifecycle tests (signals, workers, sd_notify, CLI)."""

from __future__ import annotations

import array
import asyncio
import os
import re
import socket
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import Gateway

SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


async def async_wait_until(
    predicate: Callable[[], bool], within: float = 10.0, what: str = ""
) -> None:
    """`wait_until` for async tests: polls without blocking the event loop."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status of GET `url`; None when the connection fails."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def metrics_text(gw: Gateway) -> str:
    with urllib.request.urlopen(f"{gw.admin_url}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def metric_values(text: str, name: str) -> list[tuple[str, float]]:
    """(labels, value) of every sample of `name` in a Prometheus exposition."""
    out = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and match["name"] == name:
            out.append((match["labels"] or "", float(match["value"])))
    return out


def metric_sum(gw: Gateway, name: str) -> float:
    return sum(value for _, value in metric_values(metrics_text(gw), name))


def refused(port: int) -> bool:
    """True when a new TCP connection to 127.0.0.1:port is refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of the (already exited) supervisor is reaped by init: check its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def routes_with(config: dict[str, Any], *extra: dict[str, Any]) -> dict[str, Any]:
    """A copy of a (listen-augmented) gateway config with routes appended."""
    return {**config, "routes": [*config["routes"], *extra]}


@dataclass(frozen=True)
class Notification:
    """One sd_notify datagram: its KEY=VALUE fields and the sender's pid."""

    fields: dict[str, str]
    pid: int
    at: float


class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        # Ask the kernel for the sender's credentials, as systemd does (NotifyAccess=main).
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.received: list[Notification] = []

    def close(self) -> None:
        self.sock.close()

    def _drain(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        creds_size = struct.calcsize("3i")
        while True:
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds_size))
            except (TimeoutError, BlockingIOError):
                return
            pid = 0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = array.array("i", payload[:creds_size])[0]
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.received.append(Notification(fields, pid, time.monotonic()))
            self.sock.settimeout(0)

    def wait_for(self, key: str, value: str | None = None, timeout: float = 15.0) -> Notification:
        """The first not-yet-consumed message carrying `key` (=`value`), in arrival order."""
        deadline = time.monotonic() + timeout
        while True:
            for index, note in enumerate(self.received):
                if key in note.fields and (value is None or note.fields[key] == value):
                    del self.received[: index + 1]
                    return note
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {key}={value} notification; got {self.received}")
            self._drain(min(remaining, 0.2))

    def pending(self, settle: float = 0.3) -> list[Notification]:
        """Whatever else arrives within `settle` seconds (for "nothing more" assertions)."""
        self._drain(settle)
        return list(self.received)


def established_on(pid: int, port: int) -> int:
    """How many ESTABLISHED TCP connections to local `port` process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            cols = row.split()
            local_port = int(cols[1].rsplit(":", 1)[1], 16)
            if local_port == port and cols[3] == "01" and cols[9] in inodes:
                count += 1
    return count
