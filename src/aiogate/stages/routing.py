"""The head of every chain: match the route, then run that route's own composed chain.

The Runtime decides once which matcher runs: a config without `hosts` and
`headers` gets the plain `Routing` (path and method only); otherwise `ConditionalRouting`,
which also reads the Host header and the headers routes ask for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from multidict import CIMultiDictProxy

from ..context import RequestContext
from ..errors import GatewayError, MethodNotAllowed, NoRoute
from ..router import ConditionalRouter, HeaderField, Match, NoMatch, Router, Rule, request_host
from ..runtime_types import CompiledRoute

__all__ = ["ConditionalRouting", "Routing", "rules"]


def rules(
    routes: Iterable[tuple[str, frozenset[str] | None, CompiledRoute]],
) -> Iterator[Rule[CompiledRoute]]:
    """The routes as `ConditionalRouter` rules, with their `hosts` and `headers`."""
    for pattern, methods, target in routes:
        config = target.config
        yield Rule(pattern, methods, target, config.hosts, tuple(config.headers.items()))


class Routing:
    name = "routing"

    __slots__ = ("_router",)

    def __init__(self, router: Router[CompiledRoute]) -> None:
        self._router = router

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        if ctx.method == "OPTIONS":
            preflight = self._preflight(ctx)
            if preflight is not None:
                return await preflight.handler(ctx)
        found = self._router.match(ctx.method, ctx.path)
        if isinstance(found, Match):
            route = found.target
            ctx.route_label = route.label
            ctx.params = found.params
            return await route.handler(ctx)
        if found.allowed:
            allow = ", ".join(sorted(found.allowed))
            raise MethodNotAllowed(
                f"method {ctx.method} is not allowed here (allowed: {allow})",
                headers={"Allow": allow},
            )
        raise NoRoute(f"no route for {ctx.path}")

    def _preflight(self, ctx: RequestContext) -> CompiledRoute | None:
        """A CORS preflight goes to the route serving the method it asks about, if that route
        has a CORS policy (which answers it); otherwise OPTIONS is routed like any method, so a
        route without CORS cannot be reached with a method it does not allow."""
        headers = ctx.request.headers
        asked = headers.get("Access-Control-Request-Method")
        if asked is None or "Origin" not in headers:
            return None
        found = self._router.match(asked.strip().upper(), ctx.path)
        if not isinstance(found, Match) or not found.target.cors:
            return None
        ctx.route_label = found.target.label
        ctx.params = found.params
        return found.target


class ConditionalRouting:
    """`Routing` for route tables with `hosts` or `headers`."""

    name = "routing"

    __slots__ = ("_router",)

    def __init__(self, router: ConditionalRouter[CompiledRoute]) -> None:
        self._router = router

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        headers = ctx.request.headers
        host = _host(ctx)
        field = _field(headers)
        if ctx.method == "OPTIONS":
            asked = headers.get("Access-Control-Request-Method")
            if asked is not None and "Origin" in headers:
                # As in Routing._preflight: the route serving the asked method answers it,
                # if it has a CORS policy; host and headers select it as for the real request.
                found = self._router.match(asked.strip().upper(), ctx.path, host, field)
                if isinstance(found, Match) and found.target.cors:
                    return await _serve(ctx, found)
        found = self._router.match(ctx.method, ctx.path, host, field)
        if isinstance(found, Match):
            return await _serve(ctx, found)
        raise _refusal(ctx, found)


def _host(ctx: RequestContext) -> str:
    # requestcheck made sure there is at most one valid Host, and that an absolute-form target
    # names the same authority; only an HTTP/1.0 request may have the target's alone.
    request = ctx.request
    host = request.headers.get(hdrs.HOST)
    if host is None and "://" in request.raw_path:
        host = urlsplit(request.raw_path).netloc
    return request_host(host)


def _field(headers: CIMultiDictProxy[str]) -> HeaderField:
    def field(name: str) -> str | None:
        # A field sent on several lines is one comma-joined value (RFC 9110 §5.3).
        values = headers.getall(name, ())
        if not values:
            return None
        return values[0] if len(values) == 1 else ", ".join(values)

    return field


async def _serve(ctx: RequestContext, found: Match[CompiledRoute]) -> web.StreamResponse:
    route = found.target
    ctx.route_label = route.label
    ctx.params = found.params
    return await route.handler(ctx)


def _refusal(ctx: RequestContext, found: NoMatch) -> GatewayError:
    if found.allowed:
        allow = ", ".join(sorted(found.allowed))
        return MethodNotAllowed(
            f"method {ctx.method} is not allowed here (allowed: {allow})",
            headers={"Allow": allow},
        )
    return NoRoute(f"no route for {ctx.path}")
