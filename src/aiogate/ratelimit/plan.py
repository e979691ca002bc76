"""From config to per-route limits: built once per Runtime, never on the request path."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from .base import Limit, Limiter
from .local import LocalLimiter, StoreRegistry
from .redis import RedisLimiter

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from ..config import GatewayConfig, RateLimitRule, RouteConfig
    from ..context import RequestContext

__all__ = ["RateLimitPlan", "ValueOf", "bucket_key", "dimension_value"]

ValueOf = Callable[["RequestContext"], str]

# Values up to this long (ASCII) are keys as they are; longer ones are hashed. A Redis key and
# a local bucket's dict key stay small whatever a client sends.
_MAX_PLAIN: Final = 64

# Survives reloads: an unchanged limit keeps its local buckets when a new Runtime replaces one.
_REGISTRY = StoreRegistry()


def dimension_value(dimension: str, route_label: str) -> ValueOf:
    """How a request's value for `dimension` is found, with the documented fallback.

    The one place dimension values are made, for the local and the Redis backend alike. A
    request that lacks the value (no consumer on a public route, no such header, no verified
    API key) is counted under its client IP, prefixed so it can never share a bucket with a
    real value. Every value is normalised by `bucket_key`: short ASCII as it is,
    anything else hashed, so a client cannot make a key that is large or not encodable.
    """
    if dimension == "ip":
        return _ip
    if dimension == "route":
        value = bucket_key("", route_label)
        return lambda ctx: value
    if dimension == "user":
        return _user
    if dimension == "api_key":
        return _api_key
    header = dimension.partition(":")[2]
    return lambda ctx: _header(ctx, header)


def bucket_key(prefix: str, value: str) -> str:
    """`prefix + value` for a short ASCII value, else `prefix` + "#" + a hash of it.

    Header values reach here as aiohttp decoded them: obs-text bytes (0x80-0xFF) become lone
    surrogates ("\\udce9"), which `str.encode()` refuses. They are encoded back to the bytes
    that came in (surrogateescape); other lone surrogates, which only a decoder other than
    aiohttp's can produce, are encoded with surrogatepass. The "#" form never equals a plain
    value of the same prefix: a plain value with "#" in front of it is hashed, too.
    """
    if len(value) <= _MAX_PLAIN and value.isascii() and not value.startswith("#"):
        return prefix + value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    return prefix + "#" + hashlib.blake2b(raw, digest_size=16).hexdigest()


def _ip(ctx: RequestContext) -> str:
    # A socket peer is always a short ASCII address, but a trusted proxy's X-Forwarded-For
    # can bring anything: normalised like any other value.
    return bucket_key("", ctx.client_ip)


def _fallback(ctx: RequestContext) -> str:
    return bucket_key("ip:", ctx.client_ip)


def _user(ctx: RequestContext) -> str:
    consumer = ctx.consumer
    return _fallback(ctx) if consumer is None else bucket_key("u:", consumer)


def _api_key(ctx: RequestContext) -> str:
    # Only a key the auth stage verified counts as a key. An unverified one (a public route,
    # or a request authenticated another way) is anything the client cares to send: a fresh
    # random key per request would get a fresh bucket each time. The client IP counts instead.
    key_id = ctx.api_key_id
    return _fallback(ctx) if key_id is None else bucket_key("k:", key_id)


def _header(ctx: RequestContext, name: str) -> str:
    value = ctx.request.headers.get(name)
    return _fallback(ctx) if not value else bucket_key("h:", value)


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

    async def start(self) -> None:
        # This Runtime's limits are now the live ones: stores of dropped limits are forgotten.
        self._registry.commit()
        await self.limiter.start()

    def route_limits(
        self, route: RouteConfig
    ) -> tuple[tuple[Limit, ...], Mapping[str, tuple[Limit, ...]]] | None:
        """The route's limits (default, per tier); None when no limit can apply to it."""
        default, tiers = self._route(route)
        if not default and not any(tiers.values()):
            return None
        return default, tiers

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
                    value=dimension_value(rule.dimension, route_label),
                    store=self._registry.store(
                        limit_id,
                        rule.algorithm,
                        rule.limit,
                        rule.window,
                        self._config.rate_limiting.local_max_buckets,
                    ),
                )
            )
        return tuple(out)
