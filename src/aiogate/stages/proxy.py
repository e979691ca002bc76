"""The terminal stage: forward the request to a backend and relay its answer.

Bodies stream both ways: small bodies of known length are read whole (one write, replayable on
a stale keep-alive connection); everything else is relayed chunk by chunk with back-pressure, so
a 200 MiB upload or download runs in flat memory.
"""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from prometheus_client import Counter

from .. import log
from ..config import FallbackResponseConfig, RetriesConfig
from ..context import RequestContext
from ..errors import (
    BadGateway,
    BadRequest,
    BodyTimeout,
    ExpectationFailed,
    GatewayError,
    GatewayTimeout,
    PayloadTooLarge,
    ServiceUnavailable,
    UpstreamBodyBroken,
)
from ..headers import GATEWAY_REQUEST_HEADERS, GATEWAY_RESPONSE_HEADERS, HOP_BY_HOP
from ..metrics import UPSTREAM_RETRIES, RequestRecorder
from ..upstream.forward import (
    RequestBody,
    UpstreamConnectError,
    UpstreamResponse,
    UpstreamTimeoutError,
)
from ..upstream.head import check_head
from ..upstream.pool import Backend, NoBackendAvailable, UpstreamPool
from ..upstream.retry import IDEMPOTENT_METHODS, RetryBudget, RetryLease, backoff_delay
from .wire import WireResponse

if TYPE_CHECKING:
    from ..config import RouteConfig
    from ..tracing import Tracing
    from .services import Services

__all__ = [
    "ClientBodyError",
    "Proxy",
    "answer_expectation",
    "filter_request_headers",
    "filter_response_headers",
    "forwarded_element",
    "spellings",
]

#: Bodies up to this size are read whole: cheaper than streaming, and replayable.
_BUFFER_LIMIT: Final = 64 * 1024

# `Expect` is answered by the gateway itself (`answer_expectation`): an upstream asked to send
# `100 Continue` would only delay the exchange, the body being on its way already.
_REQUEST_DROP: Final = HOP_BY_HOP | GATEWAY_REQUEST_HEADERS | {"expect"}
_RESPONSE_DROP: Final = HOP_BY_HOP | GATEWAY_RESPONSE_HEADERS

_Prepare = Callable[[], Awaitable[None]]
_MERGED_LIMIT: Final = 256
# RFC 7230 tchar: a Forwarded parameter value made only of these needs no quotes.
_TCHAR: Final = frozenset("!#$%&'*+-.^_`|~" + string.digits + string.ascii_letters)


class ClientBodyError(ConnectionResetError):
    """The client's connection broke while its body was being relayed (the server logs 499)."""


_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


async def answer_expectation(request: web.BaseRequest) -> None:
    """Meet the client's `Expect` before its body is read (RFC 9110 §10.1.1).

    Called by whichever stage is about to read the body, so only once routing, IP rules, auth
    and rate limits have passed: a client waiting for `100 Continue` learns about a refusal
    before sending a byte of its body. Any expectation other than 100-continue is 417.
    """
    values = request.headers.getall(hdrs.EXPECT, ())
    if not values:
        return
    for value in values:
        for token in value.split(","):
            if token.strip().lower() != "100-continue":
                raise ExpectationFailed("only the 100-continue expectation is supported")
    content = request.content
    # An HTTP/1.0 client cannot take a 1xx (the RFC says to ignore the expectation), and a
    # client that already started sending its body is not waiting for one.
    if (
        request.version == HttpVersion11
        and request.body_exists
        and content.total_bytes == 0
        and not content.is_eof()
    ):
        writer = request.writer
        await writer.write(_CONTINUE)
        # The interim response is not the start of the real one (aiohttp does the same).
        writer.output_size = 0


def forwarded_element(peer: str, proto: str, host: str) -> str:
    """One RFC 7239 `Forwarded` element: `for=...;proto=...[;host=...]`.

    An IPv6 `for` is bracketed and quoted (`for="[::1]"`), an unknown peer is `for=unknown`,
    and a host with a port is quoted (`:` is not a token character). `host` must be a valid
    host[:port] (no `"` or `\\` to escape).
    """
    if not peer:
        node = "unknown"
    elif ":" in peer:
        node = f'"[{peer}]"'
    else:
        node = peer
    element = f"for={node};proto={proto}"
    if host:
        element += f";host={host}" if _TCHAR.issuperset(host) else f';host="{host}"'
    return element


def _connection_tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def spellings(names: frozenset[str]) -> frozenset[str]:
    """`names` plus each one with `_` read as `-`, the way CGI, PHP, Django and others do.

    A drop set passed through this matches a client header whatever `_`/`-` spelling either
    side uses: the gateway's `X_User` (from config) drops the client's `X-User` too.
    """
    if not any("_" in name for name in names):
        return names
    return names | {name.replace("_", "-") for name in names}


def filter_request_headers(
    headers: CIMultiDict[str] | web.BaseRequest,
    drop: frozenset[str] = _REQUEST_DROP,
    *,
    underscores: bool = False,
) -> list[tuple[str, str]]:
    """End-to-end request headers: hop-by-hop ones and those named in Connection removed.

    Names with `_` are dropped too (`server.underscore_headers: drop`), unless `underscores`
    (`allow`): then one is dropped when its `-` spelling is in `drop`, so `X_Forwarded_For`
    or `X_User_Id` can never stand in for the gateway's own header upstream. `drop` holds
    lower-case names in their `-` spelling (see `spellings`).
    """
    source = headers.headers if isinstance(headers, web.BaseRequest) else headers
    named = source.getall(hdrs.CONNECTION, ())
    if named:
        extra = set().union(*(_connection_tokens(v) for v in named)) - GATEWAY_REQUEST_HEADERS
        drop = drop | extra
    if underscores:
        return [
            (name, value)
            for name, value in source.items()
            if (lowered := name.lower()) not in drop
            and ("_" not in lowered or lowered.replace("_", "-") not in drop)
        ]
    return [
        (name, value)
        for name, value in source.items()
        if "_" not in name and name.lower() not in drop
    ]


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
    idempotent methods with a replayable body, and only while the upstream's retry budget has
    room for one more retry in flight (retries of connect errors are never refused by it);
    every retry waits a full-jitter backoff, all within the one `timeout` of the whole exchange.
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
        drop: frozenset[str] = frozenset(),
        tracing: Tracing | None = None,
        underscores: bool = False,
    ) -> None:
        self._pool = pool
        #: The Runtime's tracing when it is on: a span (and traceparent) per upstream attempt.
        self._tracing = tracing
        # `drop`: lower-case client headers never forwarded on any route (the names the
        # gateway fills from JWT claims: a public route's upstream must not take a client's
        # X-User-Id for one the gateway vouched for).
        self._drop = spellings(_REQUEST_DROP | drop)
        # `server.underscore_headers: allow`: client header names with `_` are forwarded.
        self._underscores = underscores
        # The route's drop set merged with what a stage adds (auth, transform): a handful of
        # distinct sets per route, so merged once each rather than once per request.
        self._merged: dict[frozenset[str], frozenset[str]] = {}
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
        head, forwarded, target = self._request_head(ctx)
        body = await self._request_body(ctx)
        ctx.upstream = self._pool.name
        # The request counts as in flight for the retry budget until its answer is relayed,
        # and gives back any retry slot it holds, however it ends (the client leaving too).
        lease = RetryLease(self._budget)
        try:
            return await self._forward(
                ctx, lease, head=head, forwarded=forwarded, target=target, body=body
            )
        finally:
            lease.close()

    async def _forward(
        self,
        ctx: RequestContext,
        lease: RetryLease,
        *,
        head: list[tuple[str, str]],
        forwarded: list[tuple[str, str]],
        target: str,
        body: RequestBody | None,
    ) -> web.StreamResponse:
        """The attempts, all under one deadline, then the relay of the answer."""
        request = ctx.request
        pool = self._pool
        loop = self._loop
        now = loop.time()
        deadline = now + self._timeout
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
            delay: float | None
            backend.in_flight += 1
            try:
                try:
                    upstream = await self._attempt(
                        ctx, backend, head=head, forwarded=forwarded, target=target, body=body,
                        deadline=deadline, attempt=attempt, lease=lease,
                    )  # fmt: skip
                except (GatewayError, ClientBodyError, asyncio.CancelledError):
                    # The client's body was too large, malformed or cut off, or the client
                    # left: not the backend's fault, no verdict on it.
                    backend.state.breaker.cancel(probe)
                    raise
                except Exception as exc:
                    pool.failed(backend, loop.time(), probe)
                    failure, reason, reached = self._classify(ctx, exc)
                    delay = self._retry_delay_if_allowed(
                        ctx, lease, body, attempt, reached=reached, reason=reason,
                        deadline=deadline,
                    )  # fmt: skip
                    if delay is None:
                        raise failure from None
                else:
                    seconds = time.perf_counter() - sent_at
                    self._recorder.upstream(ctx.upstream, ctx.backend, seconds)
                    delay = self._answered(
                        ctx, backend, upstream, lease, probe=probe, body=body, attempt=attempt,
                        deadline=deadline,
                    )  # fmt: skip
                    if delay is None:
                        # Below 500 the backend's verdict waits for the end of the body.
                        return await self._relay(
                            ctx, request, upstream, backend, probe=probe,
                            seconds=seconds if upstream.status < 500 else None,
                        )  # fmt: skip
                    failure = None  # a later 503 from the pool is then the honest answer
            finally:
                # Whatever happened (cancellation included), the attempt is over.
                backend.in_flight -= 1
            # The backoff is not the backend's load: it waits outside its in-flight count.
            if delay > 0:
                await asyncio.sleep(delay)
            tried.append(backend)
            now = loop.time()

    def _answered(
        self,
        ctx: RequestContext,
        backend: Backend,
        upstream: UpstreamResponse,
        lease: RetryLease,
        *,
        probe: bool,
        body: RequestBody | None,
        attempt: int,
        deadline: float,
    ) -> float | None:
        """Judge a 5xx head (a failure of its backend); the backoff delay if the response was
        released to be retried, None if it is the answer.

        Any other status is judged by `_relay` once the body is through: a backend whose
        bodies break after a good head would otherwise never open its circuit, each
        success resetting the count of consecutive failures.
        """
        status = upstream.status
        if status < 500:
            return None
        self._pool.failed(backend, self._loop.time(), probe, status in self._passive_statuses)
        if status not in self._retry_statuses:
            return None
        delay = self._retry_delay_if_allowed(
            ctx, lease, body, attempt, reached=True, reason="status", deadline=deadline
        )
        if delay is not None:
            upstream.release()
        return delay

    def _request_head(
        self, ctx: RequestContext
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]], str]:
        """(headers before Host, headers after it, target without the backend's base path).

        Built and checked once per request, before any backend is picked: a head that cannot
        be framed (a lone surrogate in a forwarded claim, a control character in the target)
        is the request's fault, so it is a 400 that never counts against a backend nor is
        retried on another one.
        """
        head, forwarded = self._upstream_headers(ctx)
        path = ctx.path if ctx.upstream_path is None else ctx.upstream_path  # transform's rewrite
        target = f"{path}?{ctx.query}" if ctx.query else path
        try:
            check_head(ctx.method, target, [*head, *forwarded])
        except ValueError as exc:
            raise BadRequest(f"the request cannot be forwarded: {exc}") from None
        return head, forwarded, target

    async def _attempt(
        self,
        ctx: RequestContext,
        backend: Backend,
        *,
        head: list[tuple[str, str]],
        forwarded: list[tuple[str, str]],
        target: str,
        body: RequestBody | None,
        deadline: float,
        attempt: int,
        lease: RetryLease,
    ) -> UpstreamResponse:
        """Send the request to `backend`; return once its response head is in.

        `head` and `forwarded` are the request's headers before and after `Host`, built and
        checked once per request; each attempt gets its own list (the span edits it).
        """
        headers = [*head, ("Host", backend.authority), *forwarded]
        target = backend.base_path + target
        # Each attempt is its own span (which also injects its traceparent) and is counted in
        # the backend's in-flight gauge, from sending until the response head is in.
        tracing = self._tracing
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
            # A retry is over with its attempt, whatever the outcome: its budget slot is free
            # before the next retry is decided (as in Envoy), so a request holds one at most.
            lease.end_retry()
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
        lease: RetryLease,
        body: RequestBody | None,
        attempt: int,
        *,
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
            if not lease.start_retry():
                self._count_retry("budget_exhausted")
                return False
            return True
        # It never reached a backend (refused, unreachable, connect timeout; or a stale
        # keep-alive connection whose replay could not connect): retrying it moves the request
        # to another backend without adding work anywhere, so the budget never refuses it. It
        # still counts as a retry in flight.
        lease.start_retry(force=True)
        return True

    def _retry_delay_if_allowed(
        self,
        ctx: RequestContext,
        lease: RetryLease,
        body: RequestBody | None,
        attempt: int,
        *,
        reached: bool,
        reason: str,
        deadline: float,
    ) -> float | None:
        """The backoff before retry number `attempt`, or None: no retry (the policy or the
        budget says no, or the deadline would pass meanwhile). A delay comes with a slot of the
        retry budget, held by `lease` until the retry's attempt is over."""
        if not self._may_retry(ctx, lease, body, attempt, reached=reached, reason=reason):
            return None
        delay = self._retry_delay(ctx, attempt, deadline, reason)
        if delay is None:
            lease.end_retry()
        return delay

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
        length = request.content_length
        # A declared length over the limit is refused before `100 Continue`: a client waiting
        # for it must get the final 413, not an invitation to send what will be refused.
        if length is not None and length > self._max_body_size:
            raise PayloadTooLarge(
                f"request body of {length} bytes exceeds the limit of {self._max_body_size} bytes"
            )
        await answer_expectation(request)
        if not request.body_exists:
            if ctx.method in ("POST", "PUT", "PATCH"):
                return RequestBody(data=b"", chunks=None, length=0)
            return None
        if length is not None and length <= _BUFFER_LIMIT:
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
            except BodyTimeout:
                # Set on the stream by the connection's body timer: already the client's 408.
                ctx.bytes_in = total
                raise
            total += len(chunk)
            if total > limit:
                ctx.bytes_in = total
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            yield chunk
        ctx.bytes_in = total

    def _upstream_headers(
        self, ctx: RequestContext
    ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The upstream request's headers that go before `Host` and those after it."""
        request = ctx.request
        drop = self._drop
        if ctx.upstream_drop:
            # Set by auth (the credential) and transform: never passed on from the client.
            drop = self._merged_drop(ctx.upstream_drop)
        headers = filter_request_headers(request, drop, underscores=self._underscores)
        headers += ctx.upstream_add
        incoming = request.headers
        # The Host header as sent (none from an HTTP/1.0 client: then no X-Forwarded-Host).
        # Checked by requestcheck: a valid host[:port], so it needs no escaping below.
        received_host = host = incoming.get("Host", "")
        scheme = proto = request.scheme
        # This hop, as RFC 7239 describes it: who connected, over what, asking for which host.
        hop = forwarded_element(request.remote or "", scheme, received_host)
        real_ip: str | None = ctx.client_ip
        if ctx.via_trusted_proxy:
            # A trusted proxy in front (e.g. a TLS terminator) knows the original scheme/host,
            # and its Forwarded and X-Real-IP are believed: this hop is appended to them.
            proto = incoming.get("X-Forwarded-Proto", proto)
            host = incoming.get("X-Forwarded-Host", host)
            real_ip = incoming.get("X-Real-IP") or real_ip
            chain = incoming.getall("Forwarded", ())
            if chain:
                hop = f"{', '.join(chain)}, {hop}"
        forwarded = [("X-Forwarded-For", ctx.forwarded_for), ("X-Forwarded-Proto", proto)]
        if host:
            forwarded.append(("X-Forwarded-Host", host))
        if real_ip:
            forwarded.append(("X-Real-IP", real_ip))
        forwarded.append(("Forwarded", hop))
        forwarded.append(("X-Request-ID", ctx.request_id))
        return headers, forwarded

    def _merged_drop(self, extra: frozenset[str]) -> frozenset[str]:
        merged = self._merged.get(extra)
        if merged is None:
            if len(self._merged) >= _MERGED_LIMIT:  # a safety net: stages reuse their sets
                self._merged.clear()
            merged = self._merged[extra] = spellings(self._drop | extra)
        return merged

    async def _relay(
        self,
        ctx: RequestContext,
        request: web.BaseRequest,
        upstream: UpstreamResponse,
        backend: Backend,
        *,
        probe: bool,
        seconds: float | None,
    ) -> web.StreamResponse:
        """Send the upstream's response to the client and judge its backend by the body.

        `seconds` (the head's latency) is None when the head was judged already (a 5xx).
        A half-open probe thus holds its slot until its body is through.
        """
        judged = seconds is None
        try:
            headers = filter_response_headers(upstream.headers, ctx.response_drop)
            headers.append(("X-Request-ID", ctx.request_id))
            headers += ctx.response_headers
            status, reason = upstream.status, upstream.reason or None
            if ctx.response_edit is not None:  # transform: headers, status mapping
                status = ctx.response_edit(ctx, status, headers)
                if status != upstream.status:
                    reason = None
            length = upstream.content_length
            if length is None or length > _BUFFER_LIMIT:
                response = _Relayed(status=status, reason=reason, headers=headers)
                if length is not None:
                    response.content_length = length
                judged = True  # from here on, by _stream
                return await self._stream(
                    ctx, request, upstream, backend, response, probe=probe, seconds=seconds
                )
            try:
                body = await upstream.read()
            except UpstreamTimeoutError:
                self._body_failed(ctx, backend, None if judged else probe, "body timed out")
                judged = True
                raise GatewayTimeout("upstream response body timed out") from None
            except Exception as exc:
                self._body_failed(ctx, backend, None if judged else probe, f"body broken: {exc!r}")
                judged = True
                raise BadGateway(
                    "upstream closed the connection mid-body", code="bad_upstream_response"
                ) from None
            upstream.release()
            if seconds is not None:
                self._pool.succeeded(backend, self._loop.time(), seconds, probe)
                judged = True
            if ctx.method == "HEAD" or upstream.status in (204, 304):
                bodiless = self._bodiless(ctx, upstream, headers)
                if status != upstream.status:
                    bodiless.set_status(status)
                return bodiless
            ctx.bytes_out = len(body)
            return WireResponse(status, reason, headers, body)
        except BaseException:
            # Whatever broke (a stage's response_edit included), the upstream connection must
            # go: it cannot be reused mid-message, and an unreleased one is never reaped early.
            upstream.release()
            if not judged:
                backend.state.breaker.cancel(probe)  # nothing was learnt about the backend
            raise

    def _body_failed(
        self, ctx: RequestContext, backend: Backend, probe: bool | None, error: str
    ) -> None:
        """The response body broke: the backend failed this request after all (`probe`: its
        verdict is still to be given; None: it was given at the head, a 5xx)."""
        if probe is not None:
            self._pool.failed(backend, self._loop.time(), probe)
        log.get_logger("aiogate.proxy").warning(
            log.BACKEND_ERROR, upstream=ctx.upstream, backend=ctx.backend,
            request_id=ctx.request_id, error=f"response {error}",
        )  # fmt: skip

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
        backend: Backend,
        response: _Relayed,
        *,
        probe: bool,
        seconds: float | None,
    ) -> web.StreamResponse:
        try:
            await response.prepare(request)
            sent = 0
            async for chunk in upstream.iter_chunks():
                await response.write(chunk)
                sent += len(chunk)
            ctx.bytes_out = sent
        except (ConnectionError, asyncio.CancelledError):
            upstream.release()  # the client went away: the upstream connection is not reusable
            if seconds is not None:
                backend.state.breaker.cancel(probe)  # no verdict on the backend
            raise
        except Exception as exc:
            # Headers are out: all that is left is to cut the client's connection so it sees a
            # truncated response rather than a complete-looking one.
            upstream.release()
            self._body_failed(
                ctx, backend, None if seconds is None else probe, f"body broken: {exc!r}"
            )
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise UpstreamBodyBroken("upstream response broken mid-body") from exc
        upstream.release()
        if seconds is not None:
            self._pool.succeeded(backend, self._loop.time(), seconds, probe)
        return response


def for_route(route: RouteConfig, services: Services) -> Proxy:
    """The route's terminal stage, with the route's settings over its upstream's."""
    pool = services.pools[route.upstream]
    policy = services.policy(route)
    config = services.config
    breaker = policy.breaker
    return Proxy(
        pool,
        timeout=policy.timeout,
        max_body_size=config.server.max_body_size,
        recorder=services.recorder,
        connect_timeout=policy.connect_timeout,
        read_timeout=policy.read_timeout,
        retries=policy.retries,
        budget=None if policy.own_retry_budget else services.budgets[pool.name],
        fallback=breaker.fallback if breaker.enabled else None,
        drop=services.claim_headers,
        tracing=services.tracing,
        underscores=config.server.underscore_headers == "allow",
    )
