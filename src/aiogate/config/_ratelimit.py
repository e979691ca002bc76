"""Rate-limit rules: global `rate_limits`, route `rate_limit`, `rate_limit_tiers`, and the
`rate_limiting` section (Redis call timeout, breaker back-off)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, field_validator

from ._base import HTTP_TOKEN, Model, fail
from .units import Duration

__all__ = [
    "RateLimitRule",
    "RateLimitRules",
    "RateLimitingConfig",
    "RouteRateLimit",
    "check_dimension",
]

_DIMENSIONS = ("ip", "user", "api_key", "route")

Algorithm = Literal["token_bucket", "sliding_window"]


def check_dimension(value: str) -> str:
    """``ip``, ``user``, ``api_key``, ``route`` or ``header:<Name>``."""
    prefix, _, header = value.partition(":")
    if value not in _DIMENSIONS and not (prefix == "header" and HTTP_TOKEN.fullmatch(header)):
        fail(f"unknown dimension '{value}' (use ip, user, api_key, route or header:<Name>)")
    return value


class RateLimitRule(Model):
    """N requests per window W, counted per value of `dimension`.

    The contract spells the count `limit` in `rate_limits:` and `requests` in a route's
    `rate_limit:`; both spellings are accepted in both places.
    """

    dimension: str = "ip"
    limit: int = Field(gt=0, validation_alias=AliasChoices("limit", "requests"))
    window: Annotated[Duration, Field(gt=0)]
    algorithm: Algorithm = "token_bucket"
    #: Optional stable name: the Redis key prefix and the RateLimit-Policy name.
    name: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$"
    )

    @field_validator("dimension")
    @classmethod
    def _dimension(cls, value: str) -> str:
        return check_dimension(value)

    @property
    def requests(self) -> int:
        """The route spelling of `limit`."""
        return self.limit


# The route-level rule is the same rule; the old name stays importable.
RouteRateLimit = RateLimitRule


def _one_or_many_rules(value: Any) -> Any:
    # `rate_limit: {requests: 10, window: 1m}` is a one-rule list.
    if isinstance(value, dict):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return value


RateLimitRules = Annotated[tuple[RateLimitRule, ...], BeforeValidator(_one_or_many_rules)]


class RateLimitingConfig(Model):
    """How the limiter uses Redis (when `redis:` is configured)."""

    #: `auto`: Redis when `redis:` is configured, else local. `local`: never Redis.
    backend: Literal["auto", "local"] = "auto"
    #: Per-call bound on the Redis round trip; past it the request is judged locally.
    timeout: Annotated[Duration, Field(gt=0)] = 0.05
    #: After a Redis failure, Redis is not called for `backoff` (doubling up to `max_backoff`).
    backoff: Annotated[Duration, Field(gt=0)] = 1.0
    max_backoff: Annotated[Duration, Field(gt=0)] = 30.0
    #: Buckets one limit keeps in a process's memory; past it the idlest are dropped early.
    local_max_buckets: Annotated[int, Field(ge=100)] = 100_000

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: float) -> float:
        if value > 5.0:
            fail("must be at most 5s (the limiter sits on every request's path)")
        return value
