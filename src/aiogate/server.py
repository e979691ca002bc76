"""The proxy listener: one catch-all handler in front of the current Runtime's chain.

aiohttp's low-level `web.Server` is used instead of an `Application`: there is exactly one
handler, and the router/middleware machinery of an Application would only add per-request cost
(and is frozen at startup, so it could not be swapped on reload anyway).
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from . import log
from .accesslog import write_access
from .connection import ConnectionFactory
from .context import RequestContext
from .errors import (
    BadRequest,
    GatewayError,
    InternalError,
    UpstreamBodyBroken,
    render_error,
)
from .pathnorm import InvalidPath, normalize_path
from .requestcheck import check_request_head
from .requestid import request_id_from
from .runtime import Runtime, RuntimeHolder
from .tunnel import TunnelResponse
from .websocket import is_websocket_request

__all__ = ["GatewayServer"]

_HEALTHZ_BODY: Final = b'{"status":"ok"}'


class GatewayServer:
    """Owns the handler; reads the current Runtime once per request."""

    def __init__(self, holder: RuntimeHolder) -> None:
        self._holder = holder
        self._loop = asyncio.get_running_loop()

    def make_server(self) -> web.Server:
        server = self._holder.current.config.server
        return ConnectionFactory(
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
        request_id = request_id_from(request.headers.get("X-Request-ID"))
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
            websocket=is_websocket_request(request),
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
        if isinstance(response, TunnelResponse):
            # A WebSocket: recorded when it ends, with its duration and bytes.
            tunnel = response
            tunnel.on_end = lambda: self._record_tunnel(runtime, ctx, tunnel)
            return tunnel
        self._record(runtime, ctx, response.status, now=time.perf_counter())
        return response

    @classmethod
    def _record_tunnel(
        cls, runtime: Runtime, ctx: RequestContext, response: TunnelResponse
    ) -> None:
        ctx.bytes_in = response.tunnel.bytes_in
        ctx.bytes_out = response.tunnel.bytes_out
        cls._record(runtime, ctx, 101, now=time.perf_counter())

    @staticmethod
    def _record(runtime: Runtime, ctx: RequestContext, status: int, *, now: float) -> None:
        duration = now - ctx.started
        route = ctx.route_label
        runtime.recorder.request(route, ctx.method, status, duration)
        if runtime.tracing is not None:
            runtime.tracing.end_request(ctx, status)
        write_access(
            request_id=ctx.request_id,
            method=ctx.method,
            path=ctx.path,
            route=route,
            status=status,
            duration=duration,
            upstream=ctx.upstream,
            backend=ctx.backend,
            client_ip=ctx.client_ip,
            consumer=ctx.consumer,
            bytes_in=ctx.bytes_in,
            bytes_out=ctx.bytes_out,
            trace_id=ctx.trace_id,
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


def _origin_form(raw_path: str) -> str:
    """The path of an absolute-form target (`GET http://host/p`) or the target itself."""
    if raw_path.startswith("/"):
        return raw_path
    scheme, sep, rest = raw_path.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        slash = rest.find("/")
        return rest[slash:] if slash >= 0 else "/"
    raise InvalidPath("request target must be a path")
