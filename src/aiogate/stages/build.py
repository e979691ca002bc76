"""The one place that turns a route into its chain of stages.

The stage order is one tuple. Each stage module offers a `for_route(route, services)` that
returns its stage, or None when the route does not use it (so a route pays only for what it
configures). Adding a stage is one module and one line in `STAGE_ORDER`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from . import Next, Stage, compose
from . import auth as auth_stage
from . import cache as cache_stage
from . import cors as cors_stage
from . import ip_rules as ip_rules_stage
from . import proxy as proxy_stage
from . import ratelimit as ratelimit_stage
from . import transform as transform_stage
from .services import Services

if TYPE_CHECKING:
    from ..config import RouteConfig

__all__ = ["STAGE_ORDER", "Services", "StageFactory", "build_chain"]


StageFactory = Callable[["RouteConfig", Services], "Stage | None"]

#: The order a request meets the stages in; the proxy is always last (the terminal).
STAGE_ORDER: tuple[StageFactory, ...] = (
    ip_rules_stage.for_route,  # first: a denied client reaches nothing else
    cors_stage.for_route,  # before auth: preflights carry no credentials
    auth_stage.for_route,
    ratelimit_stage.for_route,
    transform_stage.for_route,
    # Last before the proxy: a hit is authorised and counted, and gets every response edit
    # of the stages above (they register them before calling on); it stores the upstream's
    # own response, never an edited one.
    cache_stage.for_route,
)


def route_stages(
    route: RouteConfig, services: Services, order: Sequence[StageFactory] = STAGE_ORDER
) -> list[Stage]:
    """The stages this route uses, in chain order."""
    return [stage for factory in order if (stage := factory(route, services)) is not None]


def build_chain(
    route: RouteConfig,
    services: Services,
    *,
    wrap: Callable[[Stage, Next], Next] | None = None,
) -> Next:
    """The route's stages composed around its proxy, once per Runtime."""
    terminal = proxy_stage.for_route(route, services)
    return compose(route_stages(route, services), terminal, wrap=wrap)
