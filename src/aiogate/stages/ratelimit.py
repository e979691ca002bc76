"""The rate-limit stage: every applicable limit must admit the request.

The limits of a route are resolved at Runtime build (global `rate_limits` plus the route's
`rate_limit`, or the consumer's tier set in place of the latter). Per request this stage only
reads the dimension values, asks the limiter once, and records the headers of the most
restrictive limit in `ctx.response_headers`, so the proxied response and any error alike
carry them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from aiohttp import web
from prometheus_client import Counter

from .. import log
from ..context import RequestContext
from ..errors import TooManyRequests
from ..metrics import RATELIMIT_REJECTIONS
from ..ratelimit.base import Limit, Limiter
from . import Next

if TYPE_CHECKING:
    from ..config import RouteConfig
    from .services import Services

__all__ = ["RateLimit"]


def _policy(limits: tuple[Limit, ...], shared: bool) -> str:
    # draft-ietf-httpapi-ratelimit-headers: one item per policy, quota q per window w.
    return ", ".join(
        f'"{_sf(limit.id)}";q={limit.limit if shared else limit.local_limit};'
        f"w={math.ceil(limit.window)}"
        for limit in limits
    )


def _ceil(seconds: float) -> int:
    """Whole seconds, rounded up, ignoring float noise: the bucket maths turn an exact 11 s
    into 11.000000000000004, which a bare ceil would report as 12."""
    return math.ceil(seconds - 1e-6)


def _sf(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


class RateLimit:
    name: ClassVar[str] = "ratelimit"

    __slots__ = ("_default", "_limiter", "_policies", "_rejections", "_route", "_tiers")

    def __init__(
        self,
        route_label: str,
        default: tuple[Limit, ...],
        tiers: Mapping[str, tuple[Limit, ...]],
        limiter: Limiter,
        *,
        shared: bool,
    ) -> None:
        self._route = route_label
        self._default = default
        self._tiers = dict(tiers)
        self._limiter = limiter
        sets = [default, *self._tiers.values()]
        self._policies = {id(limits): _policy(limits, shared) for limits in sets}
        self._rejections: dict[str, Counter] = {
            limit.id: RATELIMIT_REJECTIONS.labels(route_label, limit.dimension)
            for limits in sets
            for limit in limits
        }

    async def __call__(self, ctx: RequestContext, call_next: Next) -> web.StreamResponse:
        limits = self._default
        if self._tiers and ctx.tier is not None:
            limits = self._tiers.get(ctx.tier, limits)
        if not limits:
            return await call_next(ctx)
        if len(limits) == 1:
            values = [limits[0].value(ctx)]
        else:
            values = [limit.value(ctx) for limit in limits]
        verdict = await self._limiter.acquire(limits, values)
        reported = verdict.reported
        reset = _ceil(verdict.reset)
        remaining = str(verdict.remaining)
        ctx.response_headers += (
            ("X-RateLimit-Limit", str(verdict.limit)),
            ("X-RateLimit-Remaining", remaining),
            ("X-RateLimit-Reset", str(reset)),
            ("RateLimit-Policy", self._policies[id(limits)]),
            ("RateLimit", f'"{_sf(reported.id)}";r={remaining};t={reset}'),
        )
        if verdict.admitted:
            return await call_next(ctx)
        retry = max(1, _ceil(verdict.retry_after))
        self._rejections[reported.id].inc()
        # Debug, not info: the access line (status 429, always written) already records the
        # refusal; this line only adds which limit refused, for `levels: {aiogate.ratelimit:
        # debug}`. A flood of 429s must not double the log volume of the flood.
        log.get_logger("aiogate.ratelimit").debug(
            log.RATELIMIT_REJECTED,
            request_id=ctx.request_id,
            route=self._route,
            limit=reported.id,
            dimension=reported.dimension,
            client_ip=ctx.client_ip,
            retry_after=retry,
        )
        raise TooManyRequests(
            f"rate limit exceeded; retry in {retry} s", headers={"Retry-After": str(retry)}
        )


def for_route(route: RouteConfig, services: Services) -> RateLimit | None:
    """The route's rate-limit stage; None when no limit can apply to it."""
    plan = services.ratelimit
    limits = plan.route_limits(route)
    if limits is None:
        return None
    default, tiers = limits
    return RateLimit(route.label, default, tiers, plan.limiter, shared=plan.shared)
