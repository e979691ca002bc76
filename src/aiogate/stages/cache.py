"""The response cache stage: answer from the route's store, or fetch once and keep the answer.

It sits last before the proxy, after auth and rate limits (a hit is still authorised and
counted) and after transform. The stored response is the upstream's own (end-to-end headers,
body as received); a hit is then built like a relayed response: the route's response edits
(`ctx.response_drop`, `ctx.response_headers`, `ctx.response_edits`, registered by the stages
before this one) run on it, and the transform stage's JSON body edit sees the returned
`WireResponse` as it sees a relayed one. Request-side edits only shape what goes upstream.

A miss asks the relay for a copy of the response (`ctx.capture`) no larger than
`max_entry_size`; concurrent misses of one key wait for the first one's answer (coalescing).
A store that cannot answer (Redis down) makes the request pass through (`X-Cache: BYPASS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, ClassVar, Final

from aiohttp import web

from ..cache import Entry, Store, StoreUnavailable, cache_key, directives, freshness
from ..context import RequestContext, ResponseCapture
from ..metrics import CACHE_REQUESTS
from . import Next
from .relay import SERVER, apply_response_edits, filter_response_headers
from .services import Services
from .wire import WireResponse

if TYPE_CHECKING:
    from ..config import CacheConfig, RouteConfig

__all__ = ["Cache", "for_route"]

#: A vary header the client did not send is keyed apart from any value it could send.
_ABSENT: Final = "\0"


class Cache:
    name: ClassVar[str] = "cache"

    __slots__ = (
        "_bypass",
        "_config",
        "_hit",
        "_inflight",
        "_label",
        "_miss",
        "_server",
        "_store",
        "_vary",
    )

    def __init__(
        self, route: RouteConfig, config: CacheConfig, store: Store, *, server: str | None = SERVER
    ) -> None:
        self._label = route.label
        self._server = server
        self._config = config
        self._store = store
        self._vary = config.vary  # lower-case names, as `freshness` compares them
        #: Keys being fetched now, and the entry their fetch will give (None: not storable).
        self._inflight: dict[str, asyncio.Future[Entry | None]] = {}
        self._hit = CACHE_REQUESTS.labels(route.label, "hit")
        self._miss = CACHE_REQUESTS.labels(route.label, "miss")
        self._bypass = CACHE_REQUESTS.labels(route.label, "bypass")

    async def __call__(self, ctx: RequestContext, call_next: Next) -> web.StreamResponse:
        if ctx.method not in self._config.methods or ctx.websocket:
            return await call_next(ctx)  # a WebSocket handshake is never a cacheable GET
        headers = ctx.request.headers
        client = directives([("cache-control", v) for v in headers.getall("Cache-Control", ())])
        if client.no_store or not self._may_cache(ctx):
            return await self._pass(ctx, call_next, "BYPASS")
        key = self._key(ctx)
        if not client.no_cache:  # no-cache: the client wants the upstream's answer
            try:
                entry = await self._store.get(key, time.time())
            except StoreUnavailable:
                return await self._pass(ctx, call_next, "BYPASS")
            if entry is None and (waiting := self._inflight.get(key)) is not None:
                # Someone is fetching this key now: share their answer (shielded, so a client
                # that leaves while waiting does not cancel the fetch for the others).
                entry = await asyncio.shield(waiting)
            if entry is not None:
                return self._answer(ctx, entry, time.time())
        if ctx.method != "GET":  # a HEAD miss has no body to keep
            return await self._pass(ctx, call_next, "MISS")
        return await self._fetch(ctx, call_next, key)

    def _may_cache(self, ctx: RequestContext) -> bool:
        """Requests with credentials are personal: cached only when the route says so, and
        then only those whose consumer is known (it is part of the key)."""
        if ctx.consumer is None and "Authorization" not in ctx.request.headers:
            return True
        return self._config.authenticated and ctx.consumer is not None

    def _key(self, ctx: RequestContext) -> str:
        headers = ctx.request.headers
        vary = [
            (name, "\n".join(values) if (values := headers.getall(name, ())) else _ABSENT)
            for name in self._vary
        ]
        consumer = ctx.consumer if self._config.authenticated else None
        return cache_key(
            self._label,
            ctx.method,
            headers.get("Host", ""),
            ctx.path,
            ctx.query,
            vary=vary,
            consumer=consumer,
        )

    async def _pass(self, ctx: RequestContext, call_next: Next, result: str) -> web.StreamResponse:
        (self._miss if result == "MISS" else self._bypass).inc()
        ctx.response_headers.append(("X-Cache", result))
        return await call_next(ctx)

    async def _fetch(self, ctx: RequestContext, call_next: Next, key: str) -> web.StreamResponse:
        """Go upstream with a capture; lead the key's waiters unless someone else already is
        (a client's no-cache fetch beside a running one)."""
        future: asyncio.Future[Entry | None] | None = None
        if key not in self._inflight:
            future = self._inflight[key] = asyncio.get_running_loop().create_future()
        entry = None
        capture = ctx.capture = ResponseCapture(self._config.max_entry_size)
        try:
            response = await self._pass(ctx, call_next, "MISS")
            entry = self._entry(capture, time.time())
        finally:
            if future is not None:
                del self._inflight[key]
                future.set_result(entry)  # an error upstream: None, and each waiter goes itself
        if entry is not None:
            with contextlib.suppress(StoreUnavailable):  # logged by the store; just not kept
                await self._store.put(key, entry, time.time())
        return response

    def _entry(self, capture: ResponseCapture, now: float) -> Entry | None:
        """The entry to keep for a captured response, or None when it must not be kept."""
        if capture.body is None:
            return None
        fresh = freshness(
            capture.status, capture.headers, default_ttl=self._config.ttl, now=now, vary=self._vary
        )
        if fresh is None:
            return None
        headers = tuple(
            (name, value)
            for name, value in filter_response_headers(capture.headers)
            if name.lower() != "age"  # a hit sends its own
        )
        return Entry(
            status=capture.status,
            reason=capture.reason,
            headers=headers,
            body=capture.body,
            stored_at=now,
            expires_at=now + fresh.remaining,
            initial_age=fresh.age,
        )

    def _answer(self, ctx: RequestContext, entry: Entry, now: float) -> web.StreamResponse:
        """A hit, pre-serialised, with the same response edits a relayed answer gets."""
        self._hit.inc()
        drop = ctx.response_drop
        if drop or self._server is not None:
            pairs = filter_response_headers(list(entry.headers), drop, server=self._server)
        else:
            pairs = list(entry.headers)
        pairs.append(("X-Request-ID", ctx.request_id))
        pairs += ctx.response_headers
        pairs += (("X-Cache", "HIT"), ("Age", str(entry.age(now))))
        status, reason = entry.status, entry.reason or None
        if ctx.response_edits:
            status = apply_response_edits(ctx, status, pairs)
            if status != entry.status:
                reason = None
        head = ctx.method == "HEAD"
        if not head:
            ctx.bytes_out = len(entry.body)
        return WireResponse(status, reason, pairs, entry.body, send_body=not head)


def for_route(route: RouteConfig, services: Services) -> Cache | None:
    if route.cache is None or services.caches is None:
        return None
    store = services.caches.store_for(route)
    if store is None:
        return None
    server = SERVER if services.config.server.server_header == "replace" else None
    return Cache(route, route.cache, store, server=server)
