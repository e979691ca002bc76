"""What one Runtime built from its config, handed to every stage factory (`for_route`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..config import RoutePolicy, route_policy

if TYPE_CHECKING:
    from ..auth import AuthServices
    from ..cache import CachePlan
    from ..config import GatewayConfig, RouteConfig
    from ..iprules import IpRulesPlan
    from ..metrics import RequestRecorder
    from ..ratelimit import RateLimitPlan
    from ..tracing import Tracing
    from ..upstream.pool import UpstreamPool
    from ..upstream.retry import RetryBudget

__all__ = ["Services"]


@dataclass(frozen=True, slots=True, eq=False)
class Services:
    """What one Runtime built from its config, handed to every stage factory."""

    config: GatewayConfig
    pools: dict[str, UpstreamPool]
    #: One retry budget per upstream, shared by the routes that use the upstream's retries.
    budgets: dict[str, RetryBudget]
    auth: AuthServices
    ratelimit: RateLimitPlan
    ip_rules: IpRulesPlan
    recorder: RequestRecorder
    tracing: Tracing | None
    #: Headers the gateway fills from JWT claims: never taken from a client, on any route.
    claim_headers: frozenset[str]
    #: Each cached route's store (memory stores survive a reload; see cache/plan.py).
    caches: CachePlan | None = None
    _policies: dict[int, RoutePolicy] = field(default_factory=dict)

    def policy(self, route: RouteConfig) -> RoutePolicy:
        """The route's settings in force (its own, else its upstream's, else the defaults),
        resolved once per Runtime by the config's one rule (`config/policy.py`)."""
        policy = self._policies.get(id(route))
        if policy is None:
            policy = self._policies[id(route)] = route_policy(route, self.config)
        return policy
