"""From config to per-route limits: built once per Runtime, never on the request path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from ..stages.ratelimit import RateLimit
from .base import Limit, Limiter
from .local import LocalLimiter, StoreRegistry
from .redis import RedisLimiter

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ..config import GatewayConfig, RateLimitRule, RouteConfig
    from ..context import RequestContext

__all__ = ["RateLimitPlan", "ValueOf", "dimension_value"]

ValueOf = Callable[["RequestContext"], str]

# Survives reloads: an unchanged limit keeps its local buckets when a new Runtime replaces one.
_REGISTRY = StoreRegistry()


def dimension_value(dimension: str, route_label: str, api_key_header: str) -> ValueOf:
    """How a request's value for `dimension` is found, with the documented fallback.

    A request that lacks the value (no consumer on a public route, no such header) is counted
    under its client IP, prefixed so it can never share a bucket with a real value.
    """
    if dimension == "ip":
        return _ip
    if dimension == "route":
        return lambda ctx: route_label
    if dimension == "user":
        return _user
    if dimension == "api_key":
        return lambda ctx: _api_key(ctx, api_key_header)
    header = dimension.partition(":")[2]
    return lambda ctx: _header(ctx, header)


def _ip(ctx: RequestContext) -> str:
    return ctx.client_ip


def _user(ctx: RequestContext) -> str:
    consumer = ctx.consumer
    return "ip:" + ctx.client_ip if consumer is None else "u:" + consumer


def _api_key(ctx: RequestContext, header: str) -> str:
    if ctx.api_key_id is not None:
        return "k:" + ctx.api_key_id
    # A public route sees the key unverified: count it (hashed: a key is a secret) anyway.
    key = ctx.request.headers.get(header)
    if key:
        return "k:" + hashlib.sha256(key.encode()).hexdigest()
    return "ip:" + ctx.client_ip


def _header(ctx: RequestContext, name: str) -> str:
    value = ctx.request.headers.get(name)
    return "ip:" + ctx.client_ip if not value else "h:" + value


class RateLimitPlan:
    """The limiter of one Runtime and the limits of each route (global + route or tier)."""

    def __init__(
        self,
        config: GatewayConfig,
        client: aioredis.Redis | None,
        *,
        registry: StoreRegistry | None = None,
        local: LocalLimiter | None = None,
    ) -> None:
        self._registry = _REGISTRY if registry is None else registry
        self._workers = config.server.workers
        local = LocalLimiter() if local is None else local
        settings = config.rate_limiting
        self.limiter: Limiter = local
        self.shared = client is not None and settings.backend == "auto"
        if client is not None and self.shared:
            self.limiter = RedisLimiter(
                client,
                local,
                timeout=settings.timeout,
                backoff=settings.backoff,
                max_backoff=settings.max_backoff,
            )
        self._config = config
        api_key = config.auth.api_key
        self._api_key_header = api_key.header if api_key is not None else "X-API-Key"

    async def start(self) -> None:
        # This Runtime's limits are now the live ones: stores of dropped limits are forgotten.
        self._registry.commit()
        await self.limiter.start()

    def stage(self, route: RouteConfig) -> RateLimit | None:
        """The route's rate-limit stage; None when no limit can apply to it."""
        default, tiers = self._route(route)
        if not default and not any(tiers.values()):
            return None
        return RateLimit(route.label, default, tiers, self.limiter, shared=self.shared)

    def _route(
        self, route: RouteConfig
    ) -> tuple[tuple[Limit, ...], Mapping[str, tuple[Limit, ...]]]:
        config = self._config
        label = route.label
        common = self._limits(config.rate_limits, "global", label)
        default = common + self._limits(route.rate_limit, f"route.{label}", label)
        tiers = {
            tier: common + self._limits(rules, f"tier.{tier}", label)
            for tier, rules in config.rate_limit_tiers.items()
        }
        return default, tiers

    def _limits(
        self, rules: Sequence[RateLimitRule], scope: str, route_label: str
    ) -> tuple[Limit, ...]:
        out = []
        for index, rule in enumerate(rules):
            limit_id = rule.name if rule.name is not None else f"{scope}.{index}"
            out.append(
                Limit(
                    id=limit_id,
                    dimension=rule.dimension,
                    algorithm=rule.algorithm,
                    limit=rule.limit,
                    window=rule.window,
                    # Without a shared store each worker process judges alone: it takes its
                    # share so that the whole server admits about N (docs/rate-limiting.md).
                    local_limit=max(1, rule.limit // self._workers),
                    value=dimension_value(rule.dimension, route_label, self._api_key_header),
                    store=self._registry.store(limit_id, rule.algorithm, rule.limit, rule.window),
                )
            )
        return tuple(out)
