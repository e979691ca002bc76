"""HTTP/1.1 on the wire, upstream side: one keep-alive connection as an asyncio Protocol.

`Http1Connection` runs one exchange at a time (no pipelining): it writes the request, parses the
response with httptools (llhttp, strict mode) and hands the body to an `UpstreamResponse`. The
pool in `forward.py` owns the connections; this module knows nothing of pooling beyond the
two `_Owner` callbacks.

Hot-path rules this module keeps: no task per request, no `wait_for` per read (one deadline
timer per exchange fails whatever is pending), the request head goes out in one
`transport.write`, and the parser is reused across the exchanges of a connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Final, Protocol, cast

import httptools

from .errors import (
    UpstreamClosedError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
    _StaleConnectionError,
)
from .head import BodyChunks, RequestBody

__all__ = ["Http1Connection", "UpstreamResponse"]


# Unread response body above this pauses the socket; consuming it resumes. Together with the
# transport's own read size this bounds memory per connection whatever the body size.
_PAUSE_READING_ABOVE: Final = 256 * 1024
# Data bodies up to this size share the head's write (one syscall); larger ones are written
# separately so they are not copied just to be concatenated.
_COALESCE_BODY_UPTO: Final = 16 * 1024
# A hostile or broken upstream must not make us buffer an unbounded head.
_MAX_HEAD_BYTES: Final = 64 * 1024
_MAX_HEADERS: Final = 256

# Exchange states.
_IDLE: Final = 0  # no exchange: any byte received is a protocol violation
_HEAD: Final = 1  # request (being) sent, waiting for the final response head
_BODY: Final = 2  # final head received, body streaming
_DONE: Final = 3  # response complete, request possibly still being sent
_UPGRADED: Final = 4  # a 101 to an upgrade request: the connection left the pool for a tunnel


# --- response ---------------------------------------------------------------------------------


class UpstreamResponse:
    """A response head plus its body as it arrives.

    `headers` are as received: in order, duplicates kept, names as sent, hop-by-hop headers
    included (the caller filters). `content_length` is the number of body bytes that follow:
    0 for HEAD / 204 / 304 (whose Content-Length header, if any, stays in `headers`), None for
    chunked or read-until-close bodies.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_done",
        "_exc",
        "_waiter",
        "content_length",
        "headers",
        "http_version",
        "reason",
        "status",
        "upgraded",
    )

    def __init__(
        self,
        status: int,
        reason: str,
        http_version: str,
        headers: list[tuple[str, str]],
        content_length: int | None,
        *,
        conn: Http1Connection | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.http_version = http_version
        self.headers = headers
        self.content_length = content_length
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = conn is None
        self._exc: BaseException | None = None
        # Set while the exchange is in progress; None once the connection was handed back.
        self._conn = conn
        self._waiter: asyncio.Future[None] | None = None
        #: A `101` to an upgrade request: the connection, out of the pool, to `take_over`.
        self.upgraded: Http1Connection | None = None

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} {self.reason!r} done={self._done}>"

    async def read(self) -> bytes:
        """The whole body. Only for bodies known to be small."""
        if self._done and self._exc is None:
            data = b"".join(self._chunks)
            self._chunks.clear()
            self._buffered = 0
            return data
        parts = [chunk async for chunk in self]
        return b"".join(parts)

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; ends at the end of the message, raises if it cannot get there."""
        return self

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        while True:
            # An error (the deadline, a premature close) wins over buffered bytes: a truncated
            # body must never look complete, and reads after the deadline must fail.
            if self._exc is not None:
                raise self._exc
            chunks = self._chunks
            if chunks:
                data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                self._buffered = 0
                conn = self._conn
                if conn is not None and conn._read_paused:
                    conn._resume_reading()
                return data
            if self._done:
                raise StopAsyncIteration
            conn = self._conn
            assert conn is not None  # not done and no error: the exchange is still running
            waiter = conn._loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    def release(self) -> None:
        """Give the connection back: to the pool if the message is complete and keep-alive
        holds (already done automatically at completion), otherwise it is aborted. Idempotent,
        safe at any point."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if not self._done and self._exc is None:
            self._exc = UpstreamError("response released before its body was read")
        conn._abandon(self)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


# --- connection -------------------------------------------------------------------------------


class _Owner(Protocol):
    def _exchange_done(self, conn: Http1Connection, reusable: bool) -> None: ...
    def _connection_lost(self, conn: Http1Connection) -> None: ...


def _wake(fut: asyncio.Future[None] | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


class Http1Connection(asyncio.Protocol):
    """One upstream TCP connection; one exchange at a time."""

    __slots__ = (
        "_conn_tokens",
        "_content_length",
        "_drain_waiter",
        "_exc",
        "_exchanges",
        "_field_bytes",
        "_got_bytes",
        "_head_bytes",
        "_head_waiter",
        "_headers",
        "_interim",
        "_is_head",
        "_keep_alive",
        "_loop",
        "_lost",
        "_lost_waiter",
        "_owner",
        "_parser",
        "_parser_stale",
        "_read_paused",
        "_reason",
        "_req_done",
        "_resp",
        "_state",
        "_stop_sending",
        "_te",
        "_timer",
        "_transport",
        "_until_close",
        "_upgrade",
        "_upgrade_tail",
        "_write_paused",
        "idle_since",
    )

    def __init__(self, owner: _Owner, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._parser_stale = False
        self._lost = False
        self._lost_waiter: asyncio.Future[None] | None = None
        self._exchanges = 0
        self.idle_since = 0.0
        self._state = _IDLE
        self._is_head = False
        self._got_bytes = False
        self._req_done = False
        self._stop_sending = False
        self._keep_alive = False
        self._until_close = False
        self._exc: UpstreamError | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head_waiter: asyncio.Future[UpstreamResponse | None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._resp: UpstreamResponse | None = None
        self._interim = False
        self._reason = b""
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._field_bytes = 0
        self._content_length: int | None = None
        self._te: bytes | None = None
        self._conn_tokens = b""
        self._upgrade = False
        self._upgrade_tail = b""

    # -- pool-facing ---------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Open and between exchanges."""
        t = self._transport
        return not self._lost and t is not None and not t.is_closing() and self._state == _IDLE

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def wait_closed(self) -> None:
        if self._lost:
            return
        if self._lost_waiter is None:
            self._lost_waiter = self._loop.create_future()
        await self._lost_waiter

    async def exchange(
        self,
        head: bytes,
        body: RequestBody | None,
        is_head: bool,
        deadline: float,
        read_timeout: float | None = None,
        *,
        upgrade: bool = False,
    ) -> UpstreamResponse:
        """Send one request and return the response once its head is in.

        `read_timeout` bounds the wait for the response head once the request is out.
        `upgrade`: the request asks to switch protocols; a `101` answer then hands this
        connection over (`take_over`) instead of failing the exchange.
        """
        transport = self._transport
        assert transport is not None
        self._begin(is_head, deadline)
        self._upgrade = upgrade
        try:
            if body is None:
                transport.write(head)
            elif body.data is not None:
                data = body.data
                if len(data) <= _COALESCE_BODY_UPTO:
                    transport.write(head + data)
                else:
                    transport.write(head)
                    transport.write(data)
            else:
                transport.write(head)
                assert body.chunks is not None
                await self._send_chunks(transport, body.chunks, body.length)
            self._req_done = True
            if self._exc is not None:
                raise self._exc
            resp = self._resp
            if resp is None:
                waiter: asyncio.Future[UpstreamResponse | None] = self._loop.create_future()
                self._head_waiter = waiter
                if read_timeout is None:
                    resp = await waiter
                else:
                    timer = self._loop.call_later(read_timeout, self._on_read_timeout, waiter)
                    try:
                        resp = await waiter
                    finally:
                        timer.cancel()
                if resp is None:
                    assert self._exc is not None
                    raise self._exc
            elif self._state == _DONE:
                # The whole response arrived while the body was still going out.
                self._finish(True)
            return resp
        except BaseException:
            # Whatever went wrong (the body stream raised, cancellation, the deadline, a
            # broken response), the upstream must not see a request that looks complete and
            # the connection's framing is unknown: abort, never reuse.
            self._abort_exchange()
            raise

    def _begin(self, is_head: bool, deadline: float) -> None:
        assert self._state == _IDLE
        if self._parser_stale:
            # After a HEAD response llhttp still expects the body its Content-Length announced.
            self._parser = httptools.HttpResponseParser(self)
            self._parser_stale = False
        self._exchanges += 1
        self._state = _HEAD
        self._is_head = is_head
        self._got_bytes = False
        self._req_done = False
        self._stop_sending = False
        self._exc = None
        self._resp = None
        self._interim = False
        self._head_bytes = 0
        self._timer = self._loop.call_at(deadline, self._on_deadline)

    async def _send_chunks(
        self, transport: asyncio.Transport, chunks: BodyChunks, length: int | None
    ) -> None:
        sent = 0
        async for chunk in chunks:
            if self._exc is not None:
                raise self._exc
            if self._cut_short():
                return
            if not chunk:
                continue  # an empty chunk on the wire would end a chunked body early
            size = len(chunk)
            sent += size
            if length is None:
                transport.writelines((b"%x\r\n" % size, chunk, b"\r\n"))
            elif sent > length:
                raise ValueError(f"request body is longer than its declared length {length}")
            else:
                transport.write(chunk)
            if self._write_paused:
                waiter = self._loop.create_future()
                self._drain_waiter = waiter
                try:
                    await waiter
                finally:
                    self._drain_waiter = None
                if self._exc is not None:
                    raise self._exc
                if self._cut_short():
                    return
        if self._exc is not None:
            raise self._exc
        if self._cut_short():
            return
        if length is None:
            transport.write(b"0\r\n\r\n")
        elif sent != length:
            raise ValueError(f"request body is shorter ({sent}) than its declared length {length}")

    def _cut_short(self) -> bool:
        """Whether to stop sending the body: the upstream closed, or already gave a final
        answer that is an error or announces it will close (RFC 9112 §9.5). The request is
        then left incomplete on the wire, so the connection is never reused."""
        resp = self._resp
        t = self._transport
        if (
            self._lost
            or t is None
            or t.is_closing()
            or (resp is not None and (resp.status >= 400 or not self._keep_alive))
        ):
            self._stop_sending = True
            return True
        return False

    def _abandon(self, resp: UpstreamResponse) -> None:
        if self._resp is resp:
            self._abort_exchange()

    def _abort_exchange(self) -> None:
        if self._state == _UPGRADED:
            self.close()  # already handed back to the pool: only the socket is left
            return
        if self._state != _IDLE:
            if self._transport is not None:
                self._transport.abort()
            self._finish(False)

    def _finish(self, reusable: bool) -> None:
        """End the exchange: detach the response and hand the connection back to the owner."""
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        resp = self._resp
        if resp is not None:
            resp._conn = None
            self._resp = None
        self._head_waiter = None
        self._state = _IDLE
        reusable = (
            reusable
            and self._keep_alive
            and not self._stop_sending
            and not self._lost
            and self._exc is None
        )
        if reusable:
            if self._read_paused:
                self._resume_reading()
        elif self._transport is not None:
            self._transport.close()
        self._owner._exchange_done(self, reusable)

    def _fail(self, exc: UpstreamError) -> None:
        if self._state == _IDLE:
            if self._transport is not None:
                self._transport.abort()
            return
        if self._exc is None:
            self._exc = exc
        resp = self._resp
        if resp is not None and not resp._done:
            resp._exc = exc
            resp._wake()
        head_waiter = self._head_waiter
        if head_waiter is not None and not head_waiter.done():
            head_waiter.set_result(None)
        _wake(self._drain_waiter)
        if self._transport is not None:
            self._transport.abort()
        self._finish(False)

    def _on_read_timeout(self, waiter: asyncio.Future[UpstreamResponse | None]) -> None:
        if self._head_waiter is waiter and not waiter.done():
            self._fail(UpstreamTimeoutError("upstream sent no response head within read_timeout"))

    def _on_deadline(self) -> None:
        self._timer = None
        self._fail(UpstreamTimeoutError("upstream exchange exceeded its deadline"))

    def _resume_reading(self) -> None:
        self._read_paused = False
        if self._transport is not None and not self._lost:
            self._transport.resume_reading()

    def take_over(self) -> tuple[asyncio.Transport, bytes] | None:
        """After a `101`: the transport and the bytes the upstream sent after the head, for
        whoever speaks the new protocol (reading is paused until they resume it). None when
        the connection is already gone."""
        transport = self._transport
        if self._state != _UPGRADED or transport is None or self._lost or transport.is_closing():
            self.close()
            return None
        tail, self._upgrade_tail = self._upgrade_tail, b""
        return transport, tail

    def _switched(self, tail: bytes) -> None:
        """The upstream accepted the upgrade: the connection leaves the pool (it never
        comes back), its timers stop, and reading pauses until the tunnel takes it over."""
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        self._upgrade_tail = tail
        self._resp = None
        self._head_waiter = None
        if self._transport is not None:
            self._read_paused = True
            self._transport.pause_reading()
        self._owner._exchange_done(self, False)

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not registered as asyncio.Transport subclasses: no isinstance.
        self._transport = cast(asyncio.Transport, transport)

    def attach(self, transport: asyncio.BaseTransport) -> None:
        """Called with create_connection's result: uvloop returns from create_connection
        before it has called connection_made."""
        self._transport = cast(asyncio.Transport, transport)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        _wake(self._drain_waiter)

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state == _UPGRADED:
            self._upgrade_tail += data  # read before the pause took effect: the tunnel's
            return
        if state in (_IDLE, _DONE):
            # Bytes that no request asked for: the stream's framing cannot be trusted.
            self._stop_sending = True
            if self._transport is not None:
                self._transport.abort()
            return
        self._got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgraded:
            if self._state == _UPGRADED:
                self._switched(data[upgraded.args[0] :])
            else:
                self._fail(UpstreamProtocolError("upstream switched protocols; not supported"))
            return
        except httptools.HttpParserError as exc:
            if self._state == _DONE:
                # Garbage after a complete response: that response stands, the connection not.
                self._stop_sending = True
                if self._transport is not None:
                    self._transport.abort()
                if self._req_done:
                    self._finish(False)
                return
            cause = exc.__context__
            if isinstance(cause, UpstreamProtocolError):
                self._fail(cause)
            else:
                self._fail(UpstreamProtocolError(f"malformed upstream response: {exc}"))
            return
        state = self._state
        if state == _DONE:
            if self._req_done:
                self._finish(True)
        elif state == _HEAD:
            # httptools buffers a header line until it is complete, so bound the head here,
            # by raw bytes, rather than per parsed header.
            self._head_bytes += len(data)
            if self._head_bytes > _MAX_HEAD_BYTES:
                self._fail(UpstreamProtocolError("upstream response head too large"))

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost does the bookkeeping

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        _wake(self._lost_waiter)
        _wake(self._drain_waiter)
        state = self._state
        if state in (_IDLE, _UPGRADED):
            if state == _IDLE:
                self._owner._connection_lost(self)
        elif state == _BODY and self._until_close and self._exc is None:
            # The close is what delimits this body.
            self._message_done()
            if self._req_done:
                self._finish(False)
        elif state == _DONE:
            if self._req_done:
                self._finish(False)
        elif self._exchanges > 1 and not self._got_bytes:
            self._fail(_StaleConnectionError("reused upstream connection closed before answering"))
        elif not self._got_bytes:
            detail = f": {exc}" if exc is not None else ""
            self._fail(
                UpstreamClosedError(f"upstream closed the connection before answering{detail}")
            )
        else:
            detail = f": {exc}" if exc is not None else ""
            self._fail(
                UpstreamProtocolError(f"upstream closed the connection mid-response{detail}")
            )

    # -- httptools callbacks (raising here makes feed_data raise HttpParserCallbackError) ---

    def on_message_begin(self) -> None:
        if self._state != _HEAD:
            raise UpstreamProtocolError("upstream sent more than one response")
        self._reason = b""
        self._headers = []
        self._field_bytes = 0
        self._content_length = None
        self._te = None
        self._conn_tokens = b""

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._state != _HEAD:
            return  # trailers: dropped, the gateway does not forward them
        self._field_bytes += len(name) + len(value)
        if self._field_bytes > _MAX_HEAD_BYTES:
            raise UpstreamProtocolError("upstream response head too large")
        if len(self._headers) >= _MAX_HEADERS:
            raise UpstreamProtocolError("upstream response has too many header fields")
        value = value.rstrip(b" \t")  # llhttp strips leading OWS only
        # Filter on length first so the common headers cost no lower().
        size = len(name)
        if size == 14 and name.lower() == b"content-length":
            # llhttp already rejected duplicates and non-digits; int() cannot fail here.
            self._content_length = int(value)
        elif size == 17 and name.lower() == b"transfer-encoding":
            self._te = value if self._te is None else self._te + b"," + value
        elif size == 10 and name.lower() == b"connection":
            self._conn_tokens += b"," + value
        self._headers.append((name.decode("ascii"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                if self._upgrade and self._state == _HEAD:
                    self._upgraded(status)
                    return
                raise UpstreamProtocolError("upstream answered 101 to a request without Upgrade")
            if status < 100:
                raise UpstreamProtocolError(f"invalid upstream status {status}")
            self._interim = True  # 100 / 103 / ...: dropped, the final response follows
            return
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise UpstreamProtocolError(f"unsupported upstream HTTP version {version}")
        te = self._te
        content_length = self._content_length
        if te is not None and content_length is not None:
            raise UpstreamProtocolError("upstream response has both Content-Length and chunked")
        self._until_close = False
        if self._is_head or status in (204, 304):
            content_length = 0
            # llhttp decides HEAD keep-alive as if a body of Content-Length bytes followed.
            self._keep_alive = (
                parser.should_keep_alive()
                if not self._is_head
                else _keep_alive(version, self._conn_tokens)
            )
        else:
            if te is not None:
                content_length = None
                if te.strip().lower() != b"chunked":
                    # `gzip, chunked` (or read-until-close with a coding): the body is relayed
                    # re-framed as plain chunked, so the coding would be silently dropped and
                    # the client would take coded bytes for the content. Refused like the
                    # same request from a client (RFC 9112 §6.1: reject what is not understood).
                    raise UpstreamProtocolError(
                        "upstream response uses a transfer coding other than chunked"
                    )
            elif content_length is None:
                self._until_close = True
            # llhttp's view also covers read-until-close (never keep-alive).
            self._keep_alive = parser.should_keep_alive() and not self._until_close
        resp = UpstreamResponse(
            status,
            self._reason.decode("utf-8", "surrogateescape"),
            version,
            self._headers,
            content_length,
            conn=self,
        )
        self._resp = resp
        self._state = _BODY
        if self._is_head:
            # httptools cannot tell llhttp "this answers a HEAD", so we end the message here
            # and give the next exchange a fresh parser.
            self._parser_stale = True
            self._message_done()
        head_waiter = self._head_waiter
        if head_waiter is not None and not head_waiter.done():
            head_waiter.set_result(resp)
        # A sender blocked on drain must get the chance to stop early.
        _wake(self._drain_waiter)

    def _upgraded(self, status: int) -> None:
        """A `101` to an upgrade request: its head is the answer; what follows is not HTTP."""
        resp = UpstreamResponse(
            status,
            self._reason.decode("utf-8", "surrogateescape"),
            self._parser.get_http_version(),
            self._headers,
            0,
            conn=None,
        )
        resp.upgraded = self
        self._resp = resp
        self._state = _UPGRADED
        head_waiter = self._head_waiter
        if head_waiter is not None and not head_waiter.done():
            head_waiter.set_result(resp)

    def on_body(self, body: bytes) -> None:
        if self._state != _BODY:
            raise UpstreamProtocolError("upstream sent body bytes where none belong")
        resp = self._resp
        assert resp is not None
        resp._chunks.append(body)
        resp._buffered += len(body)
        if resp._buffered > _PAUSE_READING_ABOVE and not self._read_paused:
            self._read_paused = True
            assert self._transport is not None
            self._transport.pause_reading()
        resp._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._state == _BODY:
            self._message_done()

    def _message_done(self) -> None:
        self._state = _DONE
        resp = self._resp
        assert resp is not None
        resp._done = True
        resp._wake()


def _keep_alive(version: str, conn_tokens: bytes) -> bool:
    tokens = {t.strip().lower() for t in conn_tokens.split(b",")}
    if version == "1.1":
        return b"close" not in tokens
    return b"keep-alive" in tokens
