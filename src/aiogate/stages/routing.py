"""The head of every chain: match the route, then run that route's own composed chain."""

from __future__ import annotations

from aiohttp import web

from ..context import RequestContext
from ..errors import MethodNotAllowed, NoRoute
from ..router import Match, Router
from ..runtime_types import CompiledRoute

__all__ = ["Routing"]


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
