"""A WebSocket after its handshake: bytes spliced both ways between client and upstream.

The gateway does not parse or re-frame WebSocket messages (ADR 0016): whatever the two ends
negotiated (subprotocol, permessage-deflate) passes through unchanged. Each side's socket
feeds the other's directly from its protocol callback, with back-pressure (a side that cannot
keep up pauses reading on the other), and nothing here belongs to a Runtime, so a reload never
touches an open tunnel. It ends when either side closes, after `idle_timeout` without a byte
either way, or at shutdown (`close_going_away`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableSet
from typing import Final, Protocol, cast

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

from .metrics import WEBSOCKET_CONNECTIONS
from .websocket import GOING_AWAY, FrameBoundary, close_frame

#: How long a closing side may take to send what is queued for it: `close()` waits for the
#: send buffer to drain, which a peer that stops reading (a zero window) would never let
#: happen, keeping the socket, the connection slot and the gauge forever.
_CLOSE_GRACE: Final = 5.0

__all__ = ["Tunnel", "TunnelHost", "TunnelResponse"]


class TunnelHost(Protocol):
    """The client connection (`GatewayConnection`): hands its socket and buffered bytes over."""

    def start_tunnel(self, tunnel: Tunnel) -> None: ...


class Tunnel:
    """One spliced WebSocket connection; `wait()` returns when both sockets are closed."""

    __slots__ = (
        "_client",
        "_client_open",
        "_done",
        "_grace",
        "_idle_timeout",
        "_last",
        "_loop",
        "_registry",
        "_route",
        "_timer",
        "_to_client",
        "_to_upstream",
        "_upstream",
        "_upstream_open",
        "_upstream_tail",
        "bytes_in",
        "bytes_out",
    )

    def __init__(
        self,
        upstream: asyncio.Transport,
        upstream_tail: bytes,
        *,
        idle_timeout: float,
        route: str,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._upstream = upstream
        self._upstream_tail = upstream_tail
        self._client: asyncio.Transport | None = None
        self._client_open = False
        self._upstream_open = True
        self._idle_timeout = idle_timeout
        self._route = route
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        #: Armed once either side starts closing: what is still open then is aborted.
        self._grace: asyncio.TimerHandle | None = None
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._registry: MutableSet[Tunnel] | None = None
        # Where frames begin in each direction: a close frame of the gateway's own may only
        # go between two frames.
        self._to_client = FrameBoundary()
        self._to_upstream = FrameBoundary()
        #: Bytes after the handshake: from the client (in) and to it (out).
        self.bytes_in = 0
        self.bytes_out = 0

    def start(
        self, client: asyncio.Transport, client_tail: bytes, registry: MutableSet[Tunnel]
    ) -> None:
        """Splice from now on; called by the client connection once the 101 head is out."""
        self._client = client
        self._client_open = True
        self._registry = registry
        registry.add(self)
        WEBSOCKET_CONNECTIONS.labels(self._route).inc()
        upstream = self._upstream
        upstream.set_protocol(_UpstreamSide(self))
        if client_tail:
            self.from_client(client_tail)
        tail, self._upstream_tail = self._upstream_tail, b""
        if tail:
            self.from_upstream(tail)
        if upstream.is_closing():
            self.upstream_lost()  # gone before the hand-over: set_protocol came too late
            return
        upstream.resume_reading()
        self._timer = self._loop.call_later(self._idle_timeout, self._idle_check)

    async def wait(self) -> None:
        await asyncio.shield(self._done)

    # -- data, both ways -----------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if not self._upstream_open:
            return  # the upstream is gone: the client's side is closing too
        self.bytes_in += len(data)
        self._last = self._loop.time()
        self._to_upstream.feed(data)
        self._upstream.write(data)

    def from_upstream(self, data: bytes) -> None:
        client = self._client
        if client is None:
            self._upstream_tail += data
            return
        if not self._client_open:
            return
        self.bytes_out += len(data)
        self._last = self._loop.time()
        self._to_client.feed(data)
        client.write(data)

    # -- back-pressure: a side whose send buffer is full stops reading the other -------------

    def client_writing_paused(self) -> None:
        if self._upstream_open:
            self._upstream.pause_reading()

    def client_writing_resumed(self) -> None:
        if self._upstream_open:
            self._upstream.resume_reading()

    def upstream_writing_paused(self) -> None:
        if self._client is not None and self._client_open:
            self._client.pause_reading()

    def upstream_writing_resumed(self) -> None:
        if self._client is not None and self._client_open:
            self._client.resume_reading()

    # -- the end -------------------------------------------------------------------------------

    def client_lost(self) -> None:
        """The client's socket closed: the upstream's closes once its pending bytes are out."""
        self._client_open = False
        self._upstream.close()
        self._arm_grace()
        self._maybe_done()

    def upstream_lost(self) -> None:
        self._upstream_open = False
        if self._client is not None:
            self._client.close()
        self._arm_grace()
        self._maybe_done()

    def close_going_away(self) -> None:
        """Shutdown or idle: a 1001 close frame to each side (where no frame is cut in two,
        else the socket just closes), then both sockets close."""
        client = self._client
        if client is not None and self._client_open and self._to_client.at_boundary:
            client.write(close_frame(GOING_AWAY, masked=False))
        if self._upstream_open and self._to_upstream.at_boundary:
            self._upstream.write(close_frame(GOING_AWAY, masked=True))
        if client is not None:
            client.close()
        self._upstream.close()
        self._arm_grace()

    def _arm_grace(self) -> None:
        if self._grace is None and not self._done.done():
            self._grace = self._loop.call_later(_CLOSE_GRACE, self._drop_what_is_left)

    def _drop_what_is_left(self) -> None:
        """The grace is over: a side still open (its peer stopped reading) is dropped."""
        self._grace = None
        if self._client is not None and self._client_open:
            self._client.abort()
        if self._upstream_open:
            self._upstream.abort()

    def abort(self) -> None:
        """Both sockets dropped at once (its owner was cancelled); one already closing (a
        close frame on its way) is left to finish."""
        for transport in (self._client, self._upstream):
            if transport is not None and not transport.is_closing():
                transport.abort()

    def _idle_check(self) -> None:
        self._timer = None
        due = self._last + self._idle_timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._idle_check)
            return
        self.close_going_away()

    def _maybe_done(self) -> None:
        if self._client_open or self._upstream_open or self._done.done():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if self._registry is not None:
            self._registry.discard(self)
            WEBSOCKET_CONNECTIONS.labels(self._route).dec()
        self._done.set_result(None)


class _UpstreamSide(asyncio.Protocol):
    """The upstream socket's protocol once the tunnel owns it."""

    __slots__ = ("_tunnel",)

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel

    def data_received(self, data: bytes) -> None:
        self._tunnel.from_upstream(data)

    def eof_received(self) -> bool | None:
        return None  # close our side too: connection_lost ends the tunnel

    def pause_writing(self) -> None:
        self._tunnel.upstream_writing_paused()

    def resume_writing(self) -> None:
        self._tunnel.upstream_writing_resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        self._tunnel.upstream_lost()


class TunnelResponse(web.StreamResponse):
    """What the proxy returns for an accepted WebSocket: the 101 is already on the wire and
    the tunnel running. aiohttp "sends" it after the request handler returned (so the request
    no longer counts against its Runtime's drain): `prepare` waits for the tunnel's end, then
    runs `on_end` (the access line and metrics, with the tunnel's duration and bytes)."""

    def __init__(self, tunnel: Tunnel) -> None:
        super().__init__(status=101)
        self.tunnel = tunnel
        #: Set by the server: records the request once the tunnel is over.
        self.on_end: Callable[[], None] | None = None
        self.force_close()

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        try:
            await self.tunnel.wait()
        except asyncio.CancelledError:
            self.tunnel.abort()
            raise
        finally:
            on_end, self.on_end = self.on_end, None
            if on_end is not None:
                on_end()
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None  # nothing of HTTP follows a 101 on this connection


def client_transport(request: web.BaseRequest) -> tuple[TunnelHost, asyncio.Transport] | None:
    """The client connection and its socket, or None if the client is gone already."""
    protocol = request.protocol
    transport = protocol.transport if protocol is not None else None
    if transport is None or transport.is_closing() or not hasattr(protocol, "start_tunnel"):
        return None
    return cast(TunnelHost, protocol), transport
