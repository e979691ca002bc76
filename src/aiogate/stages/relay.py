"""The relay of an upstream response to the client, and the verdict on its backend.

End-to-end headers only go back (hop-by-hop ones and those named in `Connection` dropped).
Bodies up to `BUFFER_LIMIT` of known length are read whole and sent as one `WireResponse`
write; anything else streams chunk by chunk with back-pressure, so a 200 MiB download runs in
flat memory. A status below 500 is judged by its body: the attempt succeeds once the body is
through and fails when it breaks (a 5xx was judged at its head already; `Attempt` ignores a
second verdict). A client that leaves gives no verdict: the proxy's `Attempt.close()` frees
the probe slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web

from .. import log
from ..context import RequestContext, ResponseCapture
from ..errors import BadGateway, GatewayTimeout, UpstreamBodyBroken
from ..headers import GATEWAY_RESPONSE_HEADERS, HOP_BY_HOP, connection_tokens
from ..upstream.attempt import Attempt
from ..upstream.forward import UpstreamResponse, UpstreamTimeoutError
from .wire import BUFFER_LIMIT, WireResponse

__all__ = ["SERVER", "Clock", "filter_response_headers", "relay_response"]

#: The `Server` value of relayed responses under `server.server_header: replace`.
SERVER: Final = "aiogate"

_RESPONSE_DROP: Final = HOP_BY_HOP | GATEWAY_RESPONSE_HEADERS
#: The same when the backend's `Server` is replaced (`server.server_header: replace`).
_RESPONSE_DROP_SERVER: Final = _RESPONSE_DROP | {"server"}

#: The event loop's clock (`loop.time`), the one the pool and its breakers run on.
Clock = Callable[[], float]
_Prepare = Callable[[], Awaitable[None]]


def filter_response_headers(
    headers: list[tuple[str, str]],
    extra: frozenset[str] = frozenset(),
    *,
    server: str | None = None,
) -> list[tuple[str, str]]:
    """End-to-end response headers, as pairs (aiohttp builds its multidict from them once).

    `extra`: lower-case names a stage replaces or removes (CORS, transform). `server`: the
    `Server` value that replaces the backend's (None: the backend's passes).
    """
    kept = []
    named: list[str] = []
    base = _RESPONSE_DROP if server is None else _RESPONSE_DROP_SERVER
    drop = base | extra if extra else base
    for name, value in headers:
        lowered = name.lower()
        if lowered in drop:
            if lowered == "connection":
                named.append(value)
            continue
        kept.append((lowered, name, value))
    if named:
        tokens = set().union(*(connection_tokens(v) for v in named))
        pairs = [(name, value) for lowered, name, value in kept if lowered not in tokens]
    else:
        pairs = [(name, value) for _, name, value in kept]
    if server is not None:
        pairs.append(("Server", server))
    return pairs


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


def apply_response_edits(ctx: RequestContext, status: int, headers: list[tuple[str, str]]) -> int:
    """Run the stages' response edits in reverse chain order (the stage nearest the proxy
    first, as the response travels back through the chain); each sees the previous one's
    status and headers. Returns the status to send."""
    for edit in reversed(ctx.response_edits):
        status = edit(ctx, status, headers)
    return status


async def relay_response(
    ctx: RequestContext,
    upstream: UpstreamResponse,
    attempt: Attempt,
    seconds: float,
    clock: Clock,
    *,
    server: str | None = SERVER,
) -> web.StreamResponse:
    """Send the upstream's response to the client and judge `attempt` by the body.

    `seconds` is the head's latency. A half-open probe thus holds its slot until its body is
    through.
    """
    request = ctx.request
    try:
        headers = filter_response_headers(upstream.headers, ctx.response_drop, server=server)
        headers.append(("X-Request-ID", ctx.request_id))
        headers += ctx.response_headers
        status, reason = upstream.status, upstream.reason or None
        if ctx.response_edits:  # transform: headers, status mapping
            status = apply_response_edits(ctx, status, headers)
            if status != upstream.status:
                reason = None
        length = upstream.content_length
        if length is None or length > BUFFER_LIMIT:
            response = _Relayed(status=status, reason=reason, headers=headers)
            if length is not None:
                response.content_length = length
            capture = ctx.capture
            if capture is not None and (length is None or length > capture.limit):
                capture = None  # too large to keep: stream in flat memory, copy nothing
            return await _stream(
                ctx, request, upstream, attempt, response, seconds=seconds, clock=clock,
                capture=capture,
            )  # fmt: skip
        try:
            body = await upstream.read()
        except UpstreamTimeoutError:
            _body_failed(ctx, attempt, clock(), "body timed out")
            raise GatewayTimeout("upstream response body timed out") from None
        except Exception as exc:
            _body_failed(ctx, attempt, clock(), f"body broken: {exc!r}")
            raise BadGateway(
                "upstream closed the connection mid-body", code="bad_upstream_response"
            ) from None
        upstream.release()
        attempt.succeeded(clock(), seconds)
        if ctx.capture is not None and length <= ctx.capture.limit:
            ctx.capture.fill(upstream.status, upstream.reason, upstream.headers, body)
        if ctx.method == "HEAD" or upstream.status in (204, 304):
            bodiless = _bodiless(ctx, upstream, headers)
            if status != upstream.status:
                bodiless.set_status(status)
            return bodiless
        ctx.bytes_out = len(body)
        return WireResponse(status, reason, headers, body)
    except BaseException:
        # Whatever broke (a stage's response edit included), the upstream connection must
        # go: it cannot be reused mid-message, and an unreleased one is never reaped early.
        upstream.release()
        raise


def _body_failed(ctx: RequestContext, attempt: Attempt, now: float, error: str) -> None:
    """The response body broke: the backend failed this request after all (a no-op for the
    attempt when its 5xx head was judged already; logged either way)."""
    attempt.failed(now)
    log.get_logger("aiogate.proxy").warning(
        log.BACKEND_ERROR, upstream=ctx.upstream, backend=ctx.backend,
        request_id=ctx.request_id, error=f"response {error}",
    )  # fmt: skip


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
    ctx: RequestContext,
    request: web.BaseRequest,
    upstream: UpstreamResponse,
    attempt: Attempt,
    response: _Relayed,
    *,
    seconds: float,
    clock: Clock,
    capture: ResponseCapture | None = None,
) -> web.StreamResponse:
    kept: list[bytes] | None = [] if capture is not None else None
    try:
        await response.prepare(request)
        sent = 0
        async for chunk in upstream.iter_chunks():
            await response.write(chunk)
            sent += len(chunk)
            if kept is not None:
                kept.append(chunk)
        ctx.bytes_out = sent
    except (ConnectionError, asyncio.CancelledError):
        # The client went away: the upstream connection is not reusable, and there is no
        # verdict on the backend (closing the attempt frees its probe slot).
        upstream.release()
        raise
    except Exception as exc:
        # Headers are out: all that is left is to cut the client's connection so it sees a
        # truncated response rather than a complete-looking one.
        upstream.release()
        _body_failed(ctx, attempt, clock(), f"body broken: {exc!r}")
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise UpstreamBodyBroken("upstream response broken mid-body") from exc
    upstream.release()
    attempt.succeeded(clock(), seconds)
    if capture is not None and kept is not None:
        capture.fill(upstream.status, upstream.reason, upstream.headers, b"".join(kept))
    return response
