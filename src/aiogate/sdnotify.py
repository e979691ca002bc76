"""systemd's notify protocol (sd_notify(3)): one datagram to the socket in $NOTIFY_SOCKET.

Small enough to write here rather than depend on a binding: the protocol is "send a
newline-separated `KEY=VALUE` datagram to a unix socket", with `@` meaning the abstract namespace.
Workers of a multi-process gateway send to their parent, which speaks to systemd for all.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from typing import NamedTuple

__all__ = [
    "ReloadReport",
    "notify",
    "parse_reload_status",
    "ready",
    "reload_status",
    "reloading",
    "status",
    "stopping",
]

_RELOAD_PREFIX = "reload:"
#: A worker's reasons are cut to this much: a datagram has to carry them.
_REASON_LIMIT = 8192


def notify(message: str, *, env: dict[str, str] | None = None) -> bool:
    """Send `message`; False (and no error) when not run under a notify socket."""
    path = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False  # the notify socket is advisory: never fail the gateway over it
    return True


def ready(status: str = "serving") -> bool:
    return notify(f"READY=1\nSTATUS={status}")


class ReloadReport(NamedTuple):
    """A worker's answer to one reload: `number` counts the reloads that worker was asked for."""

    pid: int
    number: int
    applied: bool
    reason: str


def reload_status(pid: int, number: int, applied: bool, errors: Sequence[str] = ()) -> str:
    """The STATUS text a worker sends with READY=1 after a reload: `reload:<pid>:<n>:ok` or
    `reload:<pid>:<n>:rejected:<errors, one line>`."""
    if applied:
        return f"{_RELOAD_PREFIX}{pid}:{number}:ok"
    reason = " | ".join(" ".join(e.split()) for e in errors)[:_REASON_LIMIT]
    return f"{_RELOAD_PREFIX}{pid}:{number}:rejected:{reason}"


def parse_reload_status(message: str) -> ReloadReport | None:
    """The reload outcome in a notify datagram, if it carries one."""
    for line in message.splitlines():
        key, _, value = line.partition("=")
        if key != "STATUS" or not value.startswith(_RELOAD_PREFIX):
            continue
        parts = value[len(_RELOAD_PREFIX) :].split(":", 3)
        try:
            pid, number = int(parts[0]), int(parts[1])
        except (IndexError, ValueError):
            return None
        verdict = parts[2] if len(parts) > 2 else ""
        reason = parts[3] if len(parts) > 3 else ""
        return ReloadReport(pid, number, verdict == "ok", reason or verdict)
    return None


def reloading() -> bool:
    # systemd >= 253 requires MONOTONIC_USEC with RELOADING=1 to match it to the reload job.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading")


def stopping() -> bool:
    return notify("STOPPING=1\nSTATUS=draining")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
