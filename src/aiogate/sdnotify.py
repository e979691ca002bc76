"""systemd's notify protocol (sd_notify(3)): one datagram to the socket in $NOTIFY_SOCKET.

Small enough to write here rather than depend on a binding: the protocol is "send a
newline-separated `KEY=VALUE` datagram to a unix socket", with `@` meaning the abstract namespace.
Workers of a multi-process gateway send to their parent, which speaks to systemd for all.
"""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "ready", "reloading", "status", "stopping"]


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


def ready() -> bool:
    return notify("READY=1\nSTATUS=serving")


def reloading() -> bool:
    # systemd >= 253 requires MONOTONIC_USEC with RELOADING=1 to match it to the reload job.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading")


def stopping() -> bool:
    return notify("STOPPING=1\nSTATUS=draining")


def status(text: str) -> bool:
    return notify(f"STATUS={text}")
