"""The terminal stage: forward the request to a backend and relay its answer.

Bodies stream both ways: small bodies of known length are read whole (one write, replayable on
a stale keep-alive connection); everything else is relayed chunk by chunk with back-pressure, so
a 200 MiB upload or download runs in flat memory.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from prometheus_client import Counter

from .. import log
from ..config import FallbackResponseConfig, RetriesConfig
from ..context import RequestContext
from ..errors import (
    BadGateway,
    BadRequest,
    GatewayError,
    GatewayTimeout,
    PayloadTooLarge,
    ServiceUnavailable,
)
from ..metrics import UPSTREAM_RETRIES, RequestRecorder
from ..upstream.forward import (
    RequestBody,
    UpstreamConnectError,
    UpstreamResponse,
    UpstreamTimeoutError,
)
from ..upstream.pool import Backend, NoBackendAvailable, UpstreamPool
from ..upstream.retry import IDEMPOTENT_METHODS, RetryBudget, backoff_delay
from .wire import WireResponse

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


def filter_response_headers(
    headers: list[tuple[str, str]], extra: frozenset[str] = frozenset()
) -> list[tuple[str, str]]:
    """End-to-end response headers, as pairs (aiohttp builds its multidict from them once).

    `extra`: lower-case names a stage replaces or removes (CORS, transform).
    """
    kept = []
    named: list[str] = []
    drop = _RESPONSE_DROP | extra if extra else _RESPONSE_DROP
    for name, value in headers:
        lowered = name.lower()
        if lowered in drop:
            if lowered == "connection":
                named.append(value)
            continue
        kept.append((lowered, name, value))
    if named:
        tokens = set().union(*(_connection_tokens(v) for v in named))
        return [(name, value) for lowered, name, value in kept if lowered not in tokens]
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
    """Forward to one backend of the route's upstream; map upstream failures to 502/503/504.

    Each attempt is accounted to its backend (circuit breaker, passive checks, latency). A
    failed attempt is retried on another backend when the policy allows it: connect errors
    always (nothing reached a backend), timeouts, broken responses and `on_statuses` only for
    idempotent methods with a replayable body; every retry spends from the upstream's budget
    and waits a full-jitter backoff, all within the one `timeout` of the whole exchange.
    """

    name = "proxy"

    def __init__(
        self,
        pool: UpstreamPool,
        *,
        timeout: float,
        max_body_size: int,
        recorder: RequestRecorder,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
        retries: RetriesConfig | None = None,
        budget: RetryBudget | None = None,
        fallback: FallbackResponseConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_body_size = max_body_size
        self._recorder = recorder
        self._retries = retries if retries is not None else pool.config.retries
        self._attempts = 1 + self._retries.attempts
        self._budget = budget if budget is not None else RetryBudget.from_config(self._retries)
        self._retry_statuses = frozenset(self._retries.on_statuses)
        passive = pool.config.passive_health_check
        self._passive_statuses = frozenset(passive.statuses) if passive is not None else frozenset()
        self._fallback = fallback
        self._random = rng or random.Random()
        self._retry_counters: dict[str, Counter] = {}
        self._loop = asyncio.get_running_loop()

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        request = ctx.request
        body = await self._request_body(ctx)
        pool = self._pool
        loop = self._loop
        ctx.upstream = pool.name
        now = loop.time()
        deadline = now + self._timeout
        self._budget.deposit()
        tried: list[Backend] = []
        failure: GatewayError | None = None
        attempt = 0
        while True:
            try:
                backend = pool.pick(ctx.client_ip, now, tried)
            except NoBackendAvailable as exc:
                if failure is not None:
                    raise failure from None  # the last attempt's error says more than a 503
                return self._unavailable(ctx, exc)
            ctx.backend = backend.label
            attempt += 1
            probe = backend.state.breaker.acquire()
            sent_at = time.perf_counter()
            backend.in_flight += 1
            try:
                # One upstream attempt (issue 6 hooks its per-attempt span around this call).
                upstream = await self._attempt(ctx, backend, body, deadline, attempt)
            except (GatewayError, ClientBodyError, asyncio.CancelledError):
                # The client's body was too large, malformed or cut off, or the client left:
                # not the backend's fault, no verdict on it.
                backend.in_flight -= 1
                backend.state.breaker.cancel(probe)
                raise
            except Exception as exc:
                backend.in_flight -= 1
                pool.failed(backend, loop.time(), probe)
                failure, reason, reached = self._classify(ctx, exc)
                if not (
                    self._may_retry(ctx, body, attempt, reached, reason)
                    and await self._backoff(ctx, attempt, deadline, reason)
                ):
                    raise failure from None
                tried.append(backend)
                now = loop.time()
                continue
            retry = await self._answered(
                ctx, backend, upstream, sent_at=sent_at, probe=probe, body=body,
                attempt=attempt, deadline=deadline,
            )  # fmt: skip
            if retry:
                backend.in_flight -= 1
                tried.append(backend)
                failure = None  # a later 503 from the pool is then the honest answer
                now = loop.time()
                continue
            try:
                return await self._relay(ctx, request, upstream)
            finally:
                backend.in_flight -= 1

    async def _answered(
        self,
        ctx: RequestContext,
        backend: Backend,
        upstream: UpstreamResponse,
        *,
        sent_at: float,
        probe: bool,
        body: RequestBody | None,
        attempt: int,
        deadline: float,
    ) -> bool:
        """Account a response head to its backend; True if it was released to retry."""
        seconds = time.perf_counter() - sent_at
        self._recorder.upstream(ctx.upstream, ctx.backend, seconds)
        status = upstream.status
        now = self._loop.time()
        if status < 500:
            self._pool.succeeded(backend, now, seconds, probe)
            return False
        self._pool.failed(backend, now, probe, status in self._passive_statuses)
        if status not in self._retry_statuses or not self._may_retry(
            ctx, body, attempt, True, "status"
        ):
            return False
        delay = self._retry_delay(ctx, attempt, deadline, "status")
        if delay is None:
            return False
        upstream.release()
        if delay > 0:
            await asyncio.sleep(delay)
        return True

    async def _attempt(
        self,
        ctx: RequestContext,
        backend: Backend,
        body: RequestBody | None,
        deadline: float,
        attempt: int = 1,
    ) -> UpstreamResponse:
        """Send the request to `backend`; return once its response head is in."""
        headers = self._upstream_headers(ctx, backend)
        path = ctx.path if ctx.upstream_path is None else ctx.upstream_path  # transform's rewrite
        target = backend.base_path + path
        if ctx.query:
            target = f"{target}?{ctx.query}"
        # Observability (issue 6): the attempt's span (which also injects its traceparent)
        # and the backend's in-flight gauge, from sending until the response head is in.
        tracing = ctx.tracing
        span = tracing.start_attempt(ctx, headers, attempt=attempt) if tracing else None
        in_flight = self._recorder.in_flight(ctx.upstream, ctx.backend)
        in_flight.inc()
        try:
            upstream = await backend.connections.request(
                ctx.method,
                target,
                headers,
                body,
                deadline=deadline,
                read_timeout=self._read_timeout,
                connect_timeout=self._connect_timeout,
            )
        except BaseException as exc:
            if tracing is not None:
                tracing.end_attempt(span, error=exc)
            raise
        finally:
            in_flight.dec()
        if tracing is not None:
            tracing.end_attempt(span, status=upstream.status)
        return upstream

    def _classify(self, ctx: RequestContext, exc: Exception) -> tuple[GatewayError, str, bool]:
        """(the error for the client, the retry reason, whether the request reached a backend)."""
        name = self._pool.name
        if isinstance(exc, UpstreamTimeoutError):
            return (
                GatewayTimeout(f"upstream {name!r} did not answer within {self._timeout:g}s"),
                "timeout",
                True,
            )
        log.get_logger("aiogate.proxy").warning(
            log.BACKEND_ERROR, upstream=ctx.upstream, backend=ctx.backend,
            request_id=ctx.request_id, error=str(exc) if isinstance(exc, UpstreamConnectError)
            else repr(exc),
        )  # fmt: skip
        if isinstance(exc, UpstreamConnectError):
            return BadGateway(f"upstream {name!r} is unreachable"), "connect", False
        # UpstreamProtocolError and socket errors mid-exchange
        return (
            BadGateway(f"upstream {name!r} sent an invalid response", code="bad_upstream_response"),
            "broken",
            True,
        )

    def _may_retry(
        self,
        ctx: RequestContext,
        body: RequestBody | None,
        attempt: int,
        reached: bool,
        reason: str,
    ) -> bool:
        if attempt >= self._attempts:
            return False
        if reached:
            # The backend may have acted on it: only a request that is safe to repeat, with a
            # body that can be sent again (a streamed one is gone once sent).
            if ctx.method not in IDEMPOTENT_METHODS or (body is not None and not body.replayable):
                return False
            if reason == "timeout" and not self._retries.on_timeout:
                return False
        if not self._budget.withdraw():
            self._count_retry("budget_exhausted")
            return False
        return True

    async def _backoff(
        self, ctx: RequestContext, attempt: int, deadline: float, reason: str
    ) -> bool:
        """Wait before retry number `attempt`; False if the deadline would pass meanwhile."""
        delay = self._retry_delay(ctx, attempt, deadline, reason)
        if delay is None:
            return False
        if delay > 0:
            await asyncio.sleep(delay)
        return True

    def _retry_delay(
        self, ctx: RequestContext, attempt: int, deadline: float, reason: str
    ) -> float | None:
        delay = backoff_delay(self._retries, attempt - 1, self._random)
        if self._loop.time() + delay >= deadline:
            return None
        self._count_retry(reason)
        log.get_logger("aiogate.proxy").info(
            log.RETRY, upstream=ctx.upstream, backend=ctx.backend, attempt=attempt,
            reason=reason, delay_ms=round(delay * 1000.0, 3),
        )  # fmt: skip
        return delay

    def _count_retry(self, reason: str) -> None:
        counter = self._retry_counters.get(reason)
        if counter is None:
            counter = self._retry_counters[reason] = UPSTREAM_RETRIES.labels(
                self._pool.name, reason
            )
        counter.inc()

    def _unavailable(self, ctx: RequestContext, exc: NoBackendAvailable) -> web.StreamResponse:
        fallback = self._fallback
        if exc.circuit_open and fallback is not None:
            headers = [*fallback.headers.items(), ("X-Request-ID", ctx.request_id)]
            headers += ctx.response_headers
            return web.Response(status=fallback.status, body=fallback.body, headers=headers)
        what = "every backend's circuit is open" if exc.circuit_open else "no healthy backend"
        raise ServiceUnavailable(f"upstream {self._pool.name!r}: {what}")

    async def _request_body(self, ctx: RequestContext) -> RequestBody | None:
        request = ctx.request
        if ctx.upstream_body is not None:  # a transformed body (read whole by the stage)
            return RequestBody(data=ctx.upstream_body, chunks=None, length=len(ctx.upstream_body))
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
        if ctx.upstream_drop:
            # Set by auth: the credential and the forwarded-claim names never pass from the client.
            headers = filter_request_headers(request, _REQUEST_DROP | ctx.upstream_drop)
        else:
            headers = filter_request_headers(request)
        headers += ctx.upstream_add
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
        headers = filter_response_headers(upstream.headers, ctx.response_drop)
        headers.append(("X-Request-ID", ctx.request_id))
        headers += ctx.response_headers
        status, reason = upstream.status, upstream.reason or None
        if ctx.response_edit is not None:  # transform: headers, status mapping
            status = ctx.response_edit(ctx, status, headers)
            if status != upstream.status:
                reason = None
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
                response = self._bodiless(ctx, upstream, headers)
                if status != upstream.status:
                    response.set_status(status)
                return response
            ctx.bytes_out = len(body)
            return WireResponse(status, reason, headers, body)
        return await self._stream(ctx, request, upstream, headers, status=status, reason=reason)

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
        *,
        status: int,
        reason: str | None,
    ) -> web.StreamResponse:
        response = _Relayed(status=status, reason=reason, headers=headers)
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
