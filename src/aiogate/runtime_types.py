"""Types shared by the runtime and the stages (kept apart to avoid an import cycle)."""

from __future__ import annotations

from dataclasses import dataclass

from .config import RouteConfig
from .stages import Next

__all__ = ["CompiledRoute"]


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRoute:
    #: The `route` label of metrics and access lines: the route's name, else its path.
    label: str
    config: RouteConfig
    #: This route's stages composed around the proxy, once per Runtime.
    handler: Next
    #: The route has a CORS policy: a preflight is routed by the method it asks about.
    cors: bool = False
