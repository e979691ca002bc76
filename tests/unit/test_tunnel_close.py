"""A WebSocket tunnel never outlives its close by more than a grace: `close()` waits for the
send buffer to drain, which a peer that stopped reading never lets happen."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aiogate import tunnel as tunnel_module
from aiogate.tunnel import Tunnel


class StuckTransport(asyncio.Transport):
    """close() is accepted but the socket never goes (its peer reads nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.closing = False
        self.aborted = False
        self.protocol: Any = None

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = True
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def write(self, data: Any) -> None:
        pass

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_a_side_that_never_drains_is_aborted_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tunnel_module, "_CLOSE_GRACE", 0.05)
    upstream, client = StuckTransport(), StuckTransport()
    tunnel = Tunnel(upstream, b"", idle_timeout=3600.0, route="/ws")
    tunnel.start(client, b"", set())
    tunnel.close_going_away()  # idle timeout or shutdown
    assert (client.closing, client.aborted) == (True, False)
    await asyncio.sleep(0.2)
    assert client.aborted
    assert upstream.aborted


async def test_no_abort_when_both_sides_closed_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tunnel_module, "_CLOSE_GRACE", 0.05)
    upstream, client = StuckTransport(), StuckTransport()
    tunnel = Tunnel(upstream, b"", idle_timeout=3600.0, route="/ws")
    tunnel.start(client, b"", set())
    tunnel.client_lost()
    tunnel.upstream_lost()  # both gone: the tunnel is done, nothing left to drop
    await asyncio.sleep(0.2)
    assert not client.aborted
    assert not upstream.aborted
