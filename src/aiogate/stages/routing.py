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
        found = self._router.match(ctx.method, ctx.path)
        if isinstance(found, Match):
            route = found.target
            ctx.route = route
            ctx.params = found.params
            return await route.handler(ctx)
        if found.allowed:
            allow = ", ".join(sorted(found.allowed))
            raise MethodNotAllowed(
                f"method {ctx.method} is not allowed here (allowed: {allow})",
                headers={"Allow": allow},
            )
        raise NoRoute(f"no route for {ctx.path}")
