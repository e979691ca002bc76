"""When has a client's request body stalled? The pure bookkeeping behind `server.body_timeout`.

The connection (server.py) feeds it times and byte counts and owns the one timer; this module
decides. Only time the gateway spends *waiting* for the client counts: while nobody reads the
body (the upstream is slow to take it, a stage is busy before reading) the client cannot be
blamed, so that time restarts the clock (`busy`).

Two rules, checked by one rescheduled timer rather than by a timer per chunk:

- idle: no body bytes for `timeout` seconds while the gateway waits (nginx's
  client_body_timeout);
- rate (when `min_rate` > 0): each `timeout`-long window of waiting must bring at least
  `min_rate` bytes per second (Apache mod_reqtimeout's MinRate). The first window is the
  grace period: a body that completes within `timeout` is never rate-checked, and a trickle
  of one byte per second cannot hold a connection forever by staying under the idle rule.
"""

from __future__ import annotations

from typing import Final

__all__ = ["BodyWatch"]

#: While the gateway is busy elsewhere, look again after this share of `timeout`: the client
#: then has at least (1 - share) x timeout of real waiting before it can be blamed.
BUSY_POLL_SHARE: Final = 0.125


class BodyWatch:
    """The clock of one request body: last arrival, and the current rate window."""

    __slots__ = ("last", "min_rate", "timeout", "window_bytes", "window_start")

    def __init__(self, timeout: float, min_rate: int, now: float, received: int) -> None:
        self.timeout = timeout
        self.min_rate = min_rate
        self.last = now
        self.window_start = now
        self.window_bytes = received

    def arrived(self, now: float) -> None:
        """Body bytes came in (called per read from the socket: keep it this cheap)."""
        self.last = now

    def busy(self, now: float, received: int) -> float:
        """The gateway is not waiting for the client: nothing so far counts against it.

        Returns when to look again.
        """
        self.last = now
        self.window_start = now
        self.window_bytes = received
        return now + self.timeout * BUSY_POLL_SHARE

    def expired(self, now: float, received: int) -> str | None:
        """Why the body has failed (a message for the client), or None while it is in time.

        A rate window that has run its length and passed is rolled over here.
        """
        if now - self.last >= self.timeout:
            return f"request body stalled: no bytes for {self.timeout:g}s"
        if self.min_rate <= 0:
            return None
        elapsed = now - self.window_start
        if elapsed < self.timeout:
            return None
        if received - self.window_bytes < self.min_rate * elapsed:
            return f"request body arrived slower than {self.min_rate} bytes/s"
        self.window_start = now
        self.window_bytes = received
        return None

    def next_check(self) -> float:
        """The loop time at which `expired` can next give a different answer."""
        due = self.last + self.timeout
        if self.min_rate > 0:
            return min(due, self.window_start + self.timeout)
        return due
