"""The settings in force for one route, resolved in one place.

Timeouts, retries, the circuit breaker and CORS can be set on a route, on its upstream and at
the top level. Which one applies is decided here and nowhere else, so the proxy, the pool and
the CORS stage can never disagree about it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._route import CorsConfig, RouteConfig
from ._upstream import CircuitBreakerConfig, RetriesConfig, UpstreamConfig
from .model import GatewayConfig

__all__ = ["RoutePolicy", "breaker_for", "route_policy"]


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """What applies to one route: the route's own setting, else its upstream's, else the
    top-level default."""

    upstream: UpstreamConfig
    #: The whole upstream exchange (retries and backoff included); expiry is a 504.
    timeout: float
    connect_timeout: float
    #: Longest wait for a response head once the request is out; None = only `timeout`.
    read_timeout: float | None
    retries: RetriesConfig
    #: The route has its own `retries:`, so its own retry budget (else the upstream's, shared).
    own_retry_budget: bool
    breaker: CircuitBreakerConfig
    cors: CorsConfig | None


def breaker_for(upstream: UpstreamConfig, default: CircuitBreakerConfig) -> CircuitBreakerConfig:
    """The upstream's own circuit breaker settings, else the top-level `circuit_breaker`."""
    return upstream.circuit_breaker if upstream.circuit_breaker is not None else default


def route_policy(route: RouteConfig, config: GatewayConfig) -> RoutePolicy:
    upstream = config.upstream_by_name(route.upstream)
    return RoutePolicy(
        upstream=upstream,
        timeout=route.timeout if route.timeout is not None else upstream.timeout,
        connect_timeout=(
            route.connect_timeout if route.connect_timeout is not None else upstream.connect_timeout
        ),
        read_timeout=route.read_timeout
        if route.read_timeout is not None
        else upstream.read_timeout,
        retries=route.retries if route.retries is not None else upstream.retries,
        own_retry_budget=route.retries is not None,
        breaker=breaker_for(upstream, config.circuit_breaker),
        cors=route.cors if route.cors is not None else config.cors,
    )
