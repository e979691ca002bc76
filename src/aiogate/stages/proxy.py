"""The terminal stage: forward the request to a backend and relay its answer.

Bodies stream both ways: small bodies of known length are read whole (one write, replayable on
a stale keep-alive connection); everything else is relayed chunk by chunk with back-pressure, so
a 200 MiB upload or download runs in flat memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict

from .. import log
from ..context import RequestContext
from ..errors import (
    BadGateway,
    BadRequest,
    GatewayError,
    GatewayTimeout,
    PayloadTooLarge,
    ServiceUnavailable,
)
from ..metrics import RequestRecorder
from ..upstream.forward import (
    RequestBody,
    UpstreamConnectError,
    UpstreamResponse,
    UpstreamTimeoutError,
)
from ..upstream.pool import Backend, NoBackendAvailable, UpstreamPool

__all__ = ["ClientBodyError", "Proxy", "filter_request_headers", "filter_response_headers"]

#: Bodies up to this size are read whole: cheaper than streaming, and replayable.
_BUFFER_LIMIT: Final = 64 * 1024

# RFC 9110 §7.6.1 hop-by-hop fields, plus the legacy ones real clients still send.
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Headers the gateway sets itself upstream: whatever the client sent under these names is
# replaced, and naming them in `Connection` cannot make the gateway drop its own values.
_GATEWAY_SET: Final = frozenset(
    {"host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
     "x-request-id"}
)  # fmt: skip
_REQUEST_DROP: Final = _HOP_BY_HOP | _GATEWAY_SET
_RESPONSE_DROP: Final = _HOP_BY_HOP | {"content-length", "x-request-id"}

_Prepare = Callable[[], Awaitable[None]]


class ClientBodyError(ConnectionResetError):
    """The client's connection broke while its body was being relayed (the server logs 499)."""


def _connection_tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def filter_request_headers(
    headers: CIMultiDict[str] | web.BaseRequest, drop: frozenset[str] = _REQUEST_DROP
) -> list[tuple[str, str]]:
    """End-to-end request headers: hop-by-hop ones and those named in Connection removed."""
    source = headers.headers if isinstance(headers, web.BaseRequest) else headers
    named = source.getall(hdrs.CONNECTION, ())
    if named:
        extra = set().union(*(_connection_tokens(v) for v in named)) - _GATEWAY_SET
        drop = drop | extra
    return [(name, value) for name, value in source.items() if name.lower() not in drop]


def filter_response_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """End-to-end response headers, as pairs (aiohttp builds its multidict from them once)."""
    kept = []
    named: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered in _RESPONSE_DROP:
            if lowered == "connection":
                named.append(value)
            continue
        kept.append((lowered, name, value))
    if named:
        extra = set().union(*(_connection_tokens(v) for v in named))
        return [(name, value) for lowered, name, value in kept if lowered not in extra]
    return [(name, value) for _, name, value in kept]


async def _prepare_relayed_headers(response: web.StreamResponse, prepare: _Prepare) -> None:
    """Let aiohttp frame the response, then take back the defaults it invented.

    aiohttp fills in `Content-Type: application/octet-stream` and its own `Server` when they are
    missing; a proxy relays what the upstream sent and must not invent either (RFC 9110 §8.3
    leaves guessing a missing type to the recipient).
    """
    headers = response.headers
    had_type = hdrs.CONTENT_TYPE in headers
    had_server = hdrs.SERVER in headers
    await prepare()
    if not had_type:
        headers.popall(hdrs.CONTENT_TYPE, None)
    if not had_server:
        headers.popall(hdrs.SERVER, None)


class _Relayed(web.StreamResponse):
    __slots__ = ()

    async def _prepare_headers(self) -> None:
        await _prepare_relayed_headers(self, super()._prepare_headers)


class _RelayedWhole(web.Response):
    __slots__ = ()

    async def _prepare_headers(self) -> None:
        await _prepare_relayed_headers(self, super()._prepare_headers)


class Proxy:
    """Forward to one backend of the route's upstream; map upstream failures to 502/503/504."""

    name = "proxy"

    def __init__(
        self,
        pool: UpstreamPool,
        *,
        timeout: float,
        max_body_size: int,
        recorder: RequestRecorder,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._max_body_size = max_body_size
        self._recorder = recorder
        self._loop = asyncio.get_running_loop()

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        request = ctx.request
        body = await self._request_body(ctx)
        try:
            backend = self._pool.pick(ctx.client_ip)
        except NoBackendAvailable:
            raise ServiceUnavailable(
                f"no healthy backend in upstream {self._pool.name!r}"
            ) from None
        ctx.upstream = self._pool.name
        ctx.backend = backend.label
        headers = self._upstream_headers(ctx, backend)
        target = backend.base_path + ctx.path
        if ctx.query:
            target = f"{target}?{ctx.query}"
        sent_at = time.perf_counter()
        backend.in_flight += 1
        try:
            try:
                upstream = await backend.connections.request(
                    ctx.method, target, headers, body, deadline=self._loop.time() + self._timeout
                )
            except UpstreamTimeoutError:
                raise GatewayTimeout(
                    f"upstream {self._pool.name!r} did not answer within {self._timeout:g}s"
                ) from None
            except UpstreamConnectError as exc:
                log.get_logger("aiogate.proxy").warning(
                    log.BACKEND_ERROR, upstream=ctx.upstream, backend=ctx.backend,
                    request_id=ctx.request_id, error=str(exc),
                )  # fmt: skip
                raise BadGateway(f"upstream {self._pool.name!r} is unreachable") from None
            except (GatewayError, ClientBodyError):
                raise  # the client's body was too large, malformed or cut off: not upstream's fault
            except Exception as exc:  # UpstreamProtocolError and socket errors mid-exchange
                log.get_logger("aiogate.proxy").warning(
                    log.BACKEND_ERROR, upstream=ctx.upstream, backend=ctx.backend,
                    request_id=ctx.request_id, error=repr(exc),
                )  # fmt: skip
                raise BadGateway(
                    f"upstream {self._pool.name!r} sent an invalid response",
                    code="bad_upstream_response",
                ) from None
            self._recorder.upstream(ctx.upstream, ctx.backend, time.perf_counter() - sent_at)
            return await self._relay(ctx, request, upstream)
        finally:
            backend.in_flight -= 1

    async def _request_body(self, ctx: RequestContext) -> RequestBody | None:
        request = ctx.request
        if not request.body_exists:
            if ctx.method in ("POST", "PUT", "PATCH"):
                return RequestBody(data=b"", chunks=None, length=0)
            return None
        length = request.content_length
        if length is not None:
            if length > self._max_body_size:
                raise PayloadTooLarge(
                    f"request body of {length} bytes exceeds the limit of "
                    f"{self._max_body_size} bytes"
                )
            if length <= _BUFFER_LIMIT:
                data = await request.read()
                ctx.bytes_in = len(data)
                return RequestBody(data=data, chunks=None, length=len(data))
        return RequestBody(data=None, chunks=self._stream_body(ctx), length=length)

    async def _stream_body(self, ctx: RequestContext) -> AsyncIterator[bytes]:
        """The client's body, counted: over the limit raises mid-stream (chunked uploads too)."""
        limit = self._max_body_size
        total = 0
        chunks = ctx.request.content.iter_any()
        while True:
            # Errors reading the client are told apart from upstream errors here: they pass
            # through the upstream exchange, which must not report them as a 502.
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
            except HttpProcessingError:
                ctx.bytes_in = total
                raise BadRequest("malformed request body") from None
            except ConnectionError as exc:
                ctx.bytes_in = total
                raise ClientBodyError("the client went away while sending the body") from exc
            total += len(chunk)
            if total > limit:
                ctx.bytes_in = total
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            yield chunk
        ctx.bytes_in = total

    def _upstream_headers(self, ctx: RequestContext, backend: Backend) -> list[tuple[str, str]]:
        request = ctx.request
        headers = filter_request_headers(request)
        # The Host header as sent (none from an HTTP/1.0 client: then no X-Forwarded-Host).
        host = request.headers.get("Host", "")
        proto = request.scheme
        if ctx.via_trusted_proxy:
            # A trusted proxy in front (e.g. a TLS terminator) knows the original scheme/host.
            incoming = request.headers
            proto = incoming.get("X-Forwarded-Proto", proto)
            host = incoming.get("X-Forwarded-Host", host)
        headers.append(("Host", backend.authority))
        headers.append(("X-Forwarded-For", ctx.forwarded_for))
        headers.append(("X-Forwarded-Proto", proto))
        if host:
            headers.append(("X-Forwarded-Host", host))
        headers.append(("X-Request-ID", ctx.request_id))
        return headers

    async def _relay(
        self, ctx: RequestContext, request: web.BaseRequest, upstream: UpstreamResponse
    ) -> web.StreamResponse:
        headers = filter_response_headers(upstream.headers)
        headers.append(("X-Request-ID", ctx.request_id))
        headers += ctx.response_headers
        length = upstream.content_length
        if length is not None and length <= _BUFFER_LIMIT:
            try:
                body = await upstream.read()
            except UpstreamTimeoutError:
                upstream.release()
                raise GatewayTimeout("upstream response body timed out") from None
            except Exception:
                upstream.release()
                raise BadGateway(
                    "upstream closed the connection mid-body", code="bad_upstream_response"
                ) from None
            upstream.release()
            if ctx.method == "HEAD" or upstream.status in (204, 304):
                return self._bodiless(ctx, upstream, headers)
            ctx.bytes_out = len(body)
            return _RelayedWhole(
                status=upstream.status, reason=upstream.reason, headers=headers, body=body
            )
        return await self._stream(ctx, request, upstream, headers)

    @staticmethod
    def _bodiless(
        ctx: RequestContext, upstream: UpstreamResponse, headers: list[tuple[str, str]]
    ) -> web.StreamResponse:
        """HEAD, 204, 304: no body follows, but a HEAD's Content-Length describes the resource."""
        response = _RelayedWhole(status=upstream.status, reason=upstream.reason, headers=headers)
        if ctx.method == "HEAD" and upstream.status not in (204, 304):
            for name, value in upstream.headers:
                if name.lower() == "content-length":
                    response.headers[hdrs.CONTENT_LENGTH] = value
                    break
        return response

    async def _stream(
        self,
        ctx: RequestContext,
        request: web.BaseRequest,
        upstream: UpstreamResponse,
        headers: list[tuple[str, str]],
    ) -> web.StreamResponse:
        response = _Relayed(status=upstream.status, reason=upstream.reason, headers=headers)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        try:
            await response.prepare(request)
            sent = 0
            async for chunk in upstream.iter_chunks():
                await response.write(chunk)
                sent += len(chunk)
            ctx.bytes_out = sent
        except (ConnectionError, asyncio.CancelledError):
            upstream.release()  # the client went away: the upstream connection is not reusable
            raise
        except Exception as exc:
            # Headers are out: all that is left is to cut the client's connection so it sees a
            # truncated response rather than a complete-looking one.
            upstream.release()
            log.get_logger("aiogate.proxy").warning(
                log.BACKEND_ERROR, upstream=ctx.upstream, backend=ctx.backend,
                request_id=ctx.request_id, error=f"response body broken: {exc!r}",
            )  # fmt: skip
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise ConnectionResetError("upstream response broken mid-body") from exc
        upstream.release()
        return response
