"""The proxy listener: one catch-all handler in front of the current Runtime's chain.

aiohttp's low-level `web.Server` is used instead of an `Application`: there is exactly one
handler, and the router/middleware machinery of an Application would only add per-request cost
(and is frozen at startup, so it could not be swapped on reload anyway).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from typing import Any, Final

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import set_exception
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from . import log
from .bodywatch import BodyWatch
from .context import RequestContext
from .errors import (
    BadRequest,
    BodyTimeout,
    GatewayError,
    HeaderFieldsTooLarge,
    InternalError,
    UpstreamBodyBroken,
    error_body,
    render_error,
)
from .metrics import ACTIVE_CONNECTIONS, CONNECTIONS_REFUSED
from .pathnorm import InvalidPath, normalize_path
from .requestcheck import check_request_head
from .runtime import Runtime, RuntimeHolder

__all__ = ["GatewayServer"]

# A client's X-Request-ID is echoed only when it is short and made of safe characters: it lands
# in logs and upstream headers, so anything else is replaced by a fresh id.
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")
_HEALTHZ_BODY: Final = b'{"status":"ok"}'
_LINGER_AFTER_408: Final = 1.0
# Created up front so the series exists (at 0) before the first refusal: rate() needs it.
_REFUSED_MAX_CONNECTIONS: Final = CONNECTIONS_REFUSED.labels("max_connections")


# Request ids correlate logs; they are not secrets. A PRNG seeded from the OS avoids a
# getrandom() system call per request (os.urandom showed up at 3% of a profile).
_ids = random.Random(os.urandom(32))


def new_request_id() -> str:
    """128 random bits as 32 hex digits, as unique as a uuid4."""
    return f"{_ids.getrandbits(128):032x}"


class GatewayServer:
    """Owns the handler; reads the current Runtime once per request."""

    def __init__(self, holder: RuntimeHolder) -> None:
        self._holder = holder
        self._loop = asyncio.get_running_loop()

    def make_server(self) -> web.Server:
        server = self._holder.current.config.server
        return _Server(
            self.handle,
            holder=self._holder,
            # Limits of the request head; aiohttp enforces them while parsing.
            max_line_size=server.max_header_size,
            max_field_size=server.max_header_size,
            max_headers=server.max_headers,
            keepalive_timeout=server.idle_timeout,
            # The body is relayed byte-exact: never decompress it.
            auto_decompress=False,
            access_log=None,
            lingering_time=2.0,
            request_factory=self._make_request,
        )

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        # aiohttp's default client_max_size (1 MiB) would make `request.read()` of a body the
        # gateway admits (up to server.max_body_size; a json_body transform reads it whole)
        # raise HTTPRequestEntityTooLarge inside a stage: a 500. Read per request, so a reload
        # that changes max_body_size applies at once. 0 would mean "no limit" to aiohttp, and
        # bodies are refused earlier then anyway.
        return web.BaseRequest(
            message,
            payload,
            protocol,
            writer,
            task,
            self._loop,
            client_max_size=max(1, self._holder.current.config.server.max_body_size),
        )

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        runtime = self._holder.current
        runtime.enter()
        try:
            return await self._handle(request, runtime, started)
        finally:
            runtime.leave()

    async def _handle(
        self, request: web.BaseRequest, runtime: Runtime, started: float
    ) -> web.StreamResponse:
        headers = request.headers
        request_id = headers.get("X-Request-ID")
        if request_id is None or not _REQUEST_ID.fullmatch(request_id):
            request_id = new_request_id()
        method = request.method
        raw_path, _, query = request.raw_path.partition("?")
        if method == "GET" and raw_path == "/healthz":
            return web.Response(
                body=_HEALTHZ_BODY,
                content_type="application/json",
                headers={"X-Request-ID": request_id},
            )
        client_ip, forwarded_for, via_trusted_proxy = runtime.client_address(request)
        ctx = RequestContext(
            request=request,
            request_id=request_id,
            method=method,
            path=raw_path,
            query=query,
            client_ip=client_ip,
            forwarded_for=forwarded_for,
            started=started,
            via_trusted_proxy=via_trusted_proxy,
        )
        tracing = runtime.tracing
        if tracing is not None:
            tracing.start_request(ctx)
        # Every line logged while serving carries the ids (the request runs in its own task).
        log.bind_request(request_id, ctx.trace_id)
        try:
            _check_framing(request)
            check_request_head(request, runtime.config.server)
            try:
                ctx.path = normalize_path(_origin_form(raw_path), runtime.config.server.path_flags)
            except InvalidPath as exc:
                raise BadRequest(f"invalid request path: {exc}") from None
            response = await runtime.entry(ctx)
        except GatewayError as err:
            runtime.recorder.error(err.code)
            response = render_error(err, request_id, ctx.response_headers)
            if err.status in (400, 408, 413):
                # The rest of the request cannot be trusted (or is not wanted): close.
                response.force_close()
        except UpstreamBodyBroken as broken:
            # The upstream broke after the response had started (the proxy cut the client
            # off): its failure, not the client's, so a 502 in the metrics and access log.
            runtime.recorder.error(broken.code)
            self._record(runtime, ctx, broken.status, now=time.perf_counter())
            raise
        except (ConnectionError, asyncio.CancelledError):
            # The client went away: nothing can be sent any more, only recorded.
            self._record(runtime, ctx, 499, now=time.perf_counter())
            raise
        except Exception:
            log.get_logger("aiogate.server").exception(
                log.INTERNAL_ERROR, request_id=request_id, path=ctx.path
            )
            runtime.recorder.error(InternalError.code)
            response = render_error(InternalError("internal gateway error"), request_id)
        if request.message.upgrade:
            _close_after_unsupported_upgrade(request, response)
        self._record(runtime, ctx, response.status, now=time.perf_counter())
        return response

    @staticmethod
    def _record(runtime: Runtime, ctx: RequestContext, status: int, *, now: float) -> None:
        duration = now - ctx.started
        route = ctx.route_label
        runtime.recorder.request(route, ctx.method, status, duration)
        if runtime.tracing is not None:
            runtime.tracing.end_request(ctx, status)
        log.access(
            {
                "request_id": ctx.request_id,
                "method": ctx.method,
                "path": ctx.path,
                "route": route,
                "status": status,
                "duration_ms": round(duration * 1000.0, 3),
                "upstream": ctx.upstream,
                "backend": ctx.backend,
                "client_ip": ctx.client_ip,
                "consumer": ctx.consumer,
                "bytes_in": ctx.bytes_in,
                "bytes_out": ctx.bytes_out,
                "trace_id": ctx.trace_id,
            }
        )


_VERSIONS: Final = frozenset({HttpVersion10, HttpVersion11})


def _check_framing(request: web.BaseRequest) -> None:
    """Refuse what aiohttp's parser lets through but a proxy must not relay.

    aiohttp accepts an HTTP/0.9-style `GET /path` line and any `HTTP/x.y` version; the
    request would go upstream as HTTP/1.1 and its answer come back labelled `HTTP/0.9` or
    `HTTP/2.0`. And a transfer coding before `chunked` (`gzip, chunked`) is not decoded by
    aiohttp while the gateway re-frames the body, so the coding would be silently dropped and
    the upstream would take coded bytes for the content (RFC 9112 §6.1: reject what is not
    understood). HTTP/1.0 with Transfer-Encoding is refused too (same section).
    """
    version = request.version
    if version not in _VERSIONS:
        raise BadRequest("unsupported HTTP version")
    te = request.headers.get(hdrs.TRANSFER_ENCODING)
    if te is not None:
        # RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing (a 1.0
        # hop on the way never understood it), so it is refused rather than re-framed.
        if version == HttpVersion10:
            raise BadRequest("Transfer-Encoding is not allowed in an HTTP/1.0 request")
        if te.strip().lower() != "chunked":
            raise BadRequest("unsupported transfer coding")


def _close_after_unsupported_upgrade(
    request: web.BaseRequest, response: web.StreamResponse
) -> None:
    """Close the connection after a request that asked to switch to another protocol.

    The `Upgrade` itself is ignored (dropped as hop-by-hop, the request is served as plain
    HTTP/1.1), as RFC 9110 §7.8 allows. But when the head also names `upgrade` in
    `Connection`, aiohttp's parser (llhttp) stops at the end of that request and discards
    whatever the client pipelined after it in the same read, so those requests would never be
    answered and the client would wait for the idle timeout. Closing after the response tells
    the client at once to send them again on a new connection (RFC 9112 §9.3.2), which every
    pipelining client must be ready to do. WebSocket upgrades are handled by aiohttp itself.
    """
    upgrade = request.headers.get(hdrs.UPGRADE, "")
    if upgrade.strip().lower() != "websocket":
        response.force_close()


def _origin_form(raw_path: str) -> str:
    """The path of an absolute-form target (`GET http://host/p`) or the target itself."""
    if raw_path.startswith("/"):
        return raw_path
    scheme, sep, rest = raw_path.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else "/"
    raise InvalidPath("request target must be a path")


class _Server(web.Server):
    """Hands out :class:`_Protocol` connections instead of aiohttp's default handler."""

    def __init__(self, handler: Any, *, holder: RuntimeHolder, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._holder = holder
        #: Connections being served (refused ones never count): `server.max_connections`.
        self.open_connections = 0

    def __call__(self) -> RequestHandler:
        return _Protocol(self, holder=self._holder, loop=self._loop, **self._kwargs)


class _Protocol(RequestHandler):
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
    )

    def __init__(self, manager: _Server, *, holder: RuntimeHolder, **kwargs: Any) -> None:
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
        self._listener.open_connections -= 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._stop_body_watch()
        ACTIVE_CONNECTIONS.dec()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
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
        super().data_received(data)
        if body is not None and (body.is_eof() or body.exception() is not None):
            self._stop_body_watch()
        if len(self._messages) > queued:
            message, payload = self._messages[-1]
            if isinstance(message, _ErrInfo):
                self._fail_current_body(message)
            elif not payload.is_eof() and not self._upgraded:
                # A new request whose body is still on its way (costs nothing otherwise).
                self._watch_body(payload)
        if self._request_count != self._head_count:
            self._head_count = self._request_count
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

    def _fail_current_body(self, error: _ErrInfo) -> None:
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
        if body._waiter is None:
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
        log.access(
            {
                "request_id": request_id,
                "method": "-",
                "path": "-",
                "route": "",
                "status": status,
                "duration_ms": 0.0,
                "upstream": "",
                "backend": "",
                "client_ip": peer[0] if isinstance(peer, tuple) else "",
                "bytes_in": 0,
                "bytes_out": 0,
                "trace_id": "",
            }
        )
