"""The terminal stage: forward the request to a backend and relay its answer.

This module holds the stage and its attempt loop: pick a backend (an `Attempt`, which accounts
the outcome to it), send, judge the head, retry under the policy and the retry budget, all
within one deadline. What is sent is prepared by `forwarding.py` (headers, body, `Expect`);
the answer goes back through `relay.py`. Bodies stream both ways, so a 200 MiB upload or
download runs in flat memory.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import Counter

from .. import log
from ..config import FallbackResponseConfig, RetriesConfig
from ..context import RequestContext
from ..errors import BadGateway, GatewayError, GatewayTimeout, ServiceUnavailable
from ..metrics import UPSTREAM_RETRIES, RequestRecorder
from ..upstream.attempt import Attempt
from ..upstream.backend import Backend
from ..upstream.errors import UpstreamClosedError
from ..upstream.forward import (
    RequestBody,
    UpstreamConnectError,
    UpstreamResponse,
    UpstreamTimeoutError,
)
from ..upstream.pool import NoBackendAvailable, UpstreamPool
from ..upstream.retry import IDEMPOTENT_METHODS, RetryBudget, RetryLease, backoff_delay
from .forwarding import ClientBodyError, Forwarding
from .relay import SERVER, relay_response
from .websocket import handshake_head, open_tunnel

if TYPE_CHECKING:
    from ..config import RouteConfig
    from ..tracing import Tracing
    from .services import Services

__all__ = ["Proxy", "for_route"]


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
        server: str | None = SERVER,
        websocket: bool = True,
        websocket_idle_timeout: float = 3600.0,
    ) -> None:
        self._pool = pool
        #: The route proxies WebSocket handshakes (`websocket:`), and their idle timeout.
        self._websocket = websocket
        self._websocket_idle_timeout = websocket_idle_timeout
        #: The Runtime's tracing when it is on: a span (and traceparent) per upstream attempt.
        self._tracing = tracing
        self._forwarding = Forwarding(
            max_body_size=max_body_size, drop=drop, underscores=underscores
        )
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
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
        self._loop = loop = asyncio.get_running_loop()
        self._clock = loop.time  # bound once: the relay reads it per response
        #: The relayed `Server` header (None: the backend's passes, `server_header: pass`).
        self._server = server

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        forwarding = self._forwarding
        head, forwarded, target = forwarding.head(ctx)
        if ctx.websocket:
            head = handshake_head(ctx, head, allowed=self._websocket)
            body = None
        else:
            body = await forwarding.body(ctx)
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
        pool = self._pool
        loop = self._loop
        now = loop.time()
        deadline = now + self._timeout
        tried: list[Backend] = []
        failure: GatewayError | None = None
        number = 0
        while True:
            try:
                attempt = pool.pick(ctx.client_ip, now, tried)
            except NoBackendAvailable as exc:
                if failure is not None:
                    raise failure from None  # the last attempt's error says more than a 503
                return self._unavailable(ctx, exc)
            # From here the attempt holds its backend's in-flight place (and probe slot):
            # `close()` gives them back however this iteration ends, cancellation included.
            # A client at fault or gone (GatewayError, ClientBodyError, CancelledError) leaves
            # the attempt without a verdict, which `close()` takes as "cancelled".
            try:
                ctx.backend = attempt.backend.label
                number += 1
                sent_at = time.perf_counter()
                try:
                    upstream = await self._send(
                        ctx, attempt, head=head, forwarded=forwarded, target=target, body=body,
                        deadline=deadline, number=number, lease=lease,
                    )  # fmt: skip
                except (GatewayError, ClientBodyError):
                    raise  # the client's body was too large, malformed or cut off
                except Exception as exc:
                    attempt.failed(loop.time())
                    failure, reason, reached = self._classify(ctx, exc)
                    delay = self._retry_delay_if_allowed(
                        ctx, lease, body, number, reached=reached, reason=reason,
                        deadline=deadline,
                    )  # fmt: skip
                    if delay is None:
                        raise failure from None
                else:
                    seconds = time.perf_counter() - sent_at
                    self._recorder.upstream(ctx.upstream, ctx.backend, seconds)
                    delay = self._answered(
                        ctx, attempt, upstream, lease, body=body, number=number,
                        deadline=deadline,
                    )  # fmt: skip
                    if delay is None:
                        if upstream.status == 101:  # only ever the answer to a WebSocket handshake
                            return open_tunnel(
                                ctx, upstream, attempt, seconds, self._websocket_idle_timeout
                            )
                        # Below 500 the backend's verdict waits for the end of the body.
                        return await relay_response(
                            ctx, upstream, attempt, seconds, self._clock, server=self._server
                        )
                    failure = None  # a later 503 from the pool is then the honest answer
            finally:
                attempt.close()
            # The backoff is not the backend's load: it waits outside its in-flight count.
            if delay > 0:
                await asyncio.sleep(delay)
            tried.append(attempt.backend)
            now = loop.time()

    def _answered(
        self,
        ctx: RequestContext,
        attempt: Attempt,
        upstream: UpstreamResponse,
        lease: RetryLease,
        *,
        body: RequestBody | None,
        number: int,
        deadline: float,
    ) -> float | None:
        """Judge a 5xx head (a failure of its backend); the backoff delay if the response was
        released to be retried, None if it is the answer.

        Any other status is judged by the relay once the body is through: a backend whose
        bodies break after a good head would otherwise never open its circuit, each
        success resetting the count of consecutive failures.
        """
        status = upstream.status
        if status < 500:
            return None
        attempt.failed(self._loop.time(), passive=status in self._passive_statuses)
        if status not in self._retry_statuses:
            return None
        delay = self._retry_delay_if_allowed(
            ctx, lease, body, number, reached=True, reason="status", deadline=deadline
        )
        if delay is not None:
            upstream.release()
        return delay

    async def _send(
        self,
        ctx: RequestContext,
        attempt: Attempt,
        *,
        head: list[tuple[str, str]],
        forwarded: list[tuple[str, str]],
        target: str,
        body: RequestBody | None,
        deadline: float,
        number: int,
        lease: RetryLease,
    ) -> UpstreamResponse:
        """Send the request to the attempt's backend; return once its response head is in.

        `head` and `forwarded` are the request's headers before and after `Host`, built and
        checked once per request; each attempt gets its own list (the span edits it).
        """
        backend = attempt.backend
        headers = [*head, ("Host", backend.authority), *forwarded]
        target = backend.base_path + target
        # Each attempt is its own span (which also injects its traceparent) and is counted in
        # the backend's in-flight gauge, from sending until the response head is in.
        tracing = self._tracing
        span = tracing.start_attempt(ctx, headers, attempt=number) if tracing else None
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
                upgrade=ctx.websocket,
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
        if isinstance(exc, UpstreamClosedError):
            # Closed or reset before a single response byte: the backend died or restarted.
            return (
                BadGateway(
                    f"upstream {name!r} closed the connection before answering",
                    code="bad_upstream_response",
                ),
                "reset",
                True,
            )
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
            if reason == "reset":
                # A backend that died with requests in flight resets them all in the same
                # instant; an idempotent request is safe to repeat and its repeat goes to
                # another backend, so, like a connect failure, the budget never refuses it
                # (it still counts as a retry in flight; `attempts` still bounds it).
                lease.start_retry(force=True)
                return True
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
        server=SERVER if config.server.server_header == "replace" else None,
        websocket=route.websocket,
        websocket_idle_timeout=config.server.websocket_idle_timeout,
    )
