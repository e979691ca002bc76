"""The client connection: aiohttp's connection handler plus slow-client deadlines, a
connection cap, and the contract's JSON errors for requests that cannot be parsed.

This module and `aiohttp_compat.py` are the only places that rely on aiohttp internals: this one
subclasses aiohttp's `RequestHandler` (and reads its state), `aiohttp_compat.py` holds every
import of a private aiohttp name. `setup.cfg` pins aiohttp below its next minor release for that
reason.
"""

from __future__ import annotations

import asyncio
from itertools import islice
from typing import Any, Final

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from . import log
from .accesslog import write_access
from .aiohttp_compat import ErrInfo, reader_is_waiting, set_exception
from .bodywatch import BodyWatch
from .errors import (
    BadRequest,
    BodyTimeout,
    GatewayError,
    HeaderFieldsTooLarge,
    InternalError,
    error_body,
    render_error,
)
from .metrics import ACTIVE_CONNECTIONS, CONNECTIONS_REFUSED
from .requestid import new_request_id
from .runtime import RuntimeHolder
from .tunnel import Tunnel

__all__ = ["ConnectionFactory", "GatewayConnection"]

_LINGER_AFTER_408: Final = 1.0
#: The most pieces one read is cut into around request heads (see `data_received`).
_MAX_PIECES: Final = 17
# Created up front so the series exists (at 0) before the first refusal: rate() needs it.
_REFUSED_MAX_CONNECTIONS: Final = CONNECTIONS_REFUSED.labels("max_connections")


class ConnectionFactory(web.Server):
    """Hands out :class:`GatewayConnection` handlers instead of aiohttp's default one."""

    def __init__(self, handler: Any, *, holder: RuntimeHolder, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._holder = holder
        #: Connections being served (refused ones never count): `server.max_connections`.
        self.open_connections = 0
        #: Open WebSocket tunnels: shutdown closes them with 1001 (`close_tunnels`).
        self.tunnels: set[Tunnel] = set()

    def close_tunnels(self) -> None:
        """Close every open WebSocket with 1001 (going away): the end of the shutdown grace."""
        for tunnel in list(self.tunnels):
            tunnel.close_going_away()

    def __call__(self) -> RequestHandler:
        return GatewayConnection(self, holder=self._holder, loop=self._loop, **self._kwargs)


class GatewayConnection(RequestHandler):
    """aiohttp's connection handler plus slow-client deadlines, a connection cap and JSON
    protocol errors.

    aiohttp bounds idle keep-alive time but not how long a client may take to send a request
    head or body, so a slowloris client could hold a connection open forever by trickling bytes.
    The head timer runs from the first byte of each request head (and from connection start) to
    the moment the parser has the full head; if it fires first the client gets 408 and is closed.
    The body timer runs while a request body is on its way (see bodywatch.py): a body that
    stalls, or crawls, fails its reader with BodyTimeout, so the client gets 408, the upstream
    request is aborted, and the connection is closed.
    """

    __slots__ = (
        "_body",
        "_body_timed_out",
        "_body_timer",
        "_body_watch",
        "_head_count",
        "_head_timer",
        "_header_timeout",
        "_holder",
        "_lingering",
        "_listener",
        "_refused",
        "_seen_bytes",
        "_tunnel",
    )

    def __init__(self, manager: ConnectionFactory, *, holder: RuntimeHolder, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._holder = holder
        self._listener = manager
        self._header_timeout = holder.current.config.server.header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_count = 0
        self._seen_bytes = False
        self._lingering = False
        self._refused = False
        # The body being received (the newest request's, until its end) and its clock.
        self._body: StreamReader | None = None
        self._body_watch: BodyWatch | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_timed_out = False
        # Set once a WebSocket handshake succeeded: every later byte is the tunnel's.
        self._tunnel: Tunnel | None = None

    def start_tunnel(self, tunnel: Tunnel) -> None:
        """Hand this connection's bytes to `tunnel` (the 101 head is already written): those
        aiohttp buffered after the handshake head, and every later read."""
        transport = self.transport
        assert transport is not None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._stop_body_watch()
        tail, self._message_tail = self._message_tail, b""
        self._tunnel = tunnel
        tunnel.start(transport, tail, self._listener.tunnels)
        if self._buffer_paused:  # aiohttp stopped reading while the tail grew
            self._resume_reading_for_buffer()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._tunnel is not None:
            self._tunnel.client_writing_paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._tunnel is not None:
            self._tunnel.client_writing_resumed()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self._listener
        # Read per connection, so a reload that changes the cap applies at once.
        if listener.open_connections >= self._holder.current.config.server.max_connections:
            # Over the cap: closed at once, nothing read or written, before aiohttp sets up
            # anything for it. Accepting and closing (rather than leaving it in the listen
            # backlog) frees the descriptor at once and tells the client straight away.
            self._refused = True
            _REFUSED_MAX_CONNECTIONS.inc()
            transport.close()
            return
        listener.open_connections += 1
        super().connection_made(transport)
        ACTIVE_CONNECTIONS.inc()
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return  # aiohttp never knew this connection
        if self._tunnel is not None:
            self._tunnel.client_lost()
        self._listener.open_connections -= 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._stop_body_watch()
        ACTIVE_CONNECTIONS.dec()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.from_client(data)
            return
        if self._lingering:
            return  # after a 408 nothing more is parsed: the rest is drained and dropped
        if (
            self._head_timer is None
            and self._request_count == self._head_count
            and not self._request_in_progress
        ):
            # First bytes of a new request head on a kept-alive connection.
            self._arm_head_timer()
        if data:
            self._seen_bytes = True
        body = self._body
        if body is not None and self._body_watch is not None:
            # Before parsing: these bytes are (mostly) the body's, and parsing may end it.
            self._body_watch.arrived(self._loop.time())
        queued = len(self._messages)
        split = b"pgrade" in data or b"PGRADE" in data
        if split:
            # An `Upgrade` header or `Connection: upgrade` may be here. llhttp stops at the
            # end of such a request and aiohttp drops the rest of the bytes it was given, so a
            # request pipelined behind it would be lost: feed the parser one head at a time.
            # Bounded: a read full of blank lines (a body, say) is cut at most
            # `_MAX_PIECES - 1` times; past that nothing is promised, and an upgrade found
            # there closes the connection after its answer (see below).
            pieces = after_each_head(data, _MAX_PIECES)
            split = len(pieces) < _MAX_PIECES
            for piece in pieces:
                super().data_received(piece)
        else:
            super().data_received(data)
        if len(self._messages) > queued:
            self._close_if_pipelining_was_lost(queued, split)
        if body is not None and (body.is_eof() or body.exception() is not None):
            self._stop_body_watch()
        if len(self._messages) > queued:
            message, payload = self._messages[-1]
            if isinstance(message, ErrInfo):
                self._fail_current_body(message)
            elif not payload.is_eof() and not self._upgraded:
                # A new request whose body is still on its way (costs nothing otherwise).
                self._watch_body(payload)
        if self._request_count != self._head_count:
            self._head_count = self._request_count
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

    def _close_if_pipelining_was_lost(self, queued: int, split: bool) -> None:
        """After a request that llhttp treats as an upgrade (an `Upgrade` header and
        `upgrade` in `Connection`, not a WebSocket handshake, which aiohttp handles), bytes
        pipelined behind it may have been dropped: when the request has a body, or was fed
        whole (an odd letter case escaped the check above). Then the connection closes after
        the answers already parsed, which tells the client at once to resend the rest on a
        new connection (RFC 9112 §9.3.2) instead of waiting for the idle timeout.
        """
        for message, _ in islice(self._messages, queued, None):
            if (
                isinstance(message, RawRequestMessage)
                and message.upgrade
                and (
                    not split
                    or message.chunked
                    or message.headers.get("Content-Length", "0") != "0"
                )
                and message.headers.get("Upgrade", "").strip().lower() != "websocket"
            ):
                self.close()

    def _fail_current_body(self, error: ErrInfo) -> None:
        """A parse error inside the body of the request being handled (a bad chunk size).

        aiohttp queues the error as the *next* message but leaves the current request's body
        stream waiting for bytes that will never be parsed, so the proxy would hang until
        the upstream timeout. Fail the stream instead: the proxy aborts the upstream request
        (never completed) and answers 400.
        """
        request = self._current_request
        if request is None:
            return
        content = request.content
        if not content.is_eof() and content.exception() is None:
            exc = error.exc
            if not isinstance(exc, BadHttpMessage):
                exc = BadHttpMessage(error.message)
            set_exception(content, exc)

    def _watch_body(self, payload: StreamReader) -> None:
        """Start the body clock; the settings are read now, so a reload applies at once."""
        server = self._holder.current.config.server
        if self._body_timer is not None:
            self._body_timer.cancel()
        watch = BodyWatch(
            server.body_timeout, server.body_min_rate, self._loop.time(), payload.total_bytes
        )
        self._body = payload
        self._body_watch = watch
        self._body_timer = self._loop.call_at(watch.next_check(), self._body_tick)

    def _stop_body_watch(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._body = None
        self._body_watch = None

    def _body_tick(self) -> None:
        self._body_timer = None
        body, watch = self._body, self._body_watch
        if body is None or watch is None or body.is_eof() or body.exception() is not None:
            self._stop_body_watch()
            return
        now = self._loop.time()
        received = body.total_bytes
        # A reader blocked on the stream is the gateway waiting for the client. Nobody
        # waiting: the body is buffered unread (the upstream takes it slowly, reading is
        # paused) or no stage reads it yet (a request queued behind another, 100-continue
        # not sent yet): the client is not the one holding things up.
        if not reader_is_waiting(body):
            self._body_timer = self._loop.call_at(watch.busy(now, received), self._body_tick)
            return
        reason = watch.expired(now, received)
        if reason is None:
            self._body_timer = self._loop.call_at(watch.next_check(), self._body_tick)
            return
        self._body = None
        self._body_watch = None
        # The reader gets the error from its read: the request's handler answers 408 (if no
        # response has started) and an upstream request streaming this body is aborted.
        self._body_timed_out = True
        set_exception(body, BodyTimeout(reason))

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if self._body_timed_out:
            # aiohttp would next read the rest of the body to linger, and get the timeout
            # error again: this connection is done, close it our way instead.
            self._force_close = True
            self._linger_close()
        return result

    def _linger_close(self) -> None:
        """Lingering close, as nginx does: the slow client may still be sending, and closing
        on unread bytes makes the kernel send RST, which can destroy the 408 before the
        client reads it. Half-close, discard what still arrives, close a moment later."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._lingering = True
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(_LINGER_AFTER_408, self.force_close)

    def _arm_head_timer(self) -> None:
        self._seen_bytes = False
        self._head_timer = self._loop.call_later(self._header_timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self._seen_bytes:
            request_id = new_request_id()
            body = error_body("request_timeout", "request headers not received in time", request_id)
            transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                b"X-Request-ID: %s\r\nServer: aiogate\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (request_id.encode(), len(body), body)
            )
            self._holder.current.recorder.error("request_timeout")
            self._record_unparsed(408, request_id)
            self._linger_close()
            return
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Malformed requests get the contract's JSON error; nothing reaches a backend."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        if isinstance(exc, ConnectionError):
            # The client went away (mid-body, say): the handler already logged and counted
            # the request as 499. Not an internal error: anyone could inflate the 5xx rate.
            response = web.Response(status=499)
            response.force_close()
            return response
        error: GatewayError
        if isinstance(exc, LineTooLong) or (
            isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)
        ):
            error = HeaderFieldsTooLarge("request header fields too large")
        elif status == 400 or isinstance(exc, BadHttpMessage):
            error = BadRequest("malformed HTTP request")
        else:
            log.get_logger("aiogate.server").error(
                log.INTERNAL_ERROR, error=repr(exc), status=status
            )
            error = InternalError("internal gateway error")
        request_id = new_request_id()
        self._holder.current.recorder.error(error.code)
        response = render_error(error, request_id)
        response.force_close()
        self._record_unparsed(error.status, request_id)
        return response

    def _record_unparsed(self, status: int, request_id: str) -> None:
        """Access line and metrics for a request refused before it could be parsed.

        Method and path are unknown (or untrustworthy) here, so they are logged as "-".
        """
        peer = self.transport.get_extra_info("peername") if self.transport else None
        self._holder.current.recorder.request("", "-", status, 0.0)
        write_access(
            request_id=request_id,
            status=status,
            duration=0.0,
            client_ip=peer[0] if isinstance(peer, tuple) else "",
        )


def after_each_head(data: bytes, most: int = 1 << 30) -> list[bytes]:
    """`data` cut right after every blank line that may end a request head, into at most
    `most` pieces (any split is valid input for an incremental parser; these make a request
    that stops llhttp end a piece, so nothing after it is dropped)."""
    pieces: list[bytes] = []
    start = 0
    while len(pieces) < most - 1 and (end := data.find(b"\r\n\r\n", start)) >= 0:
        pieces.append(data[start : end + 4])
        start = end + 4
    if start < len(data):
        pieces.append(data[start:])
    return pieces
