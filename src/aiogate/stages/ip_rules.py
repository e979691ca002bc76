"""The IP rules stage: the first stage of a route, so a denied client costs nothing more.

It runs before auth, so a denied address cannot probe credentials, and before rate limiting,
so it spends no tokens. The rules are compiled when the Runtime is built (`iprules.py`): the
global sets once, each route's own once; a route with no rules, global or own, gets no stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Final, Literal

from aiohttp import web

from .. import log
from ..config import RouteConfig
from ..context import RequestContext
from ..errors import Forbidden
from ..iprules import Scope
from ..metrics import IP_REJECTIONS
from ..netmatch import NetworkSet, parse_ip
from . import Next

if TYPE_CHECKING:
    from .services import Services

__all__ = ["IpRules", "for_route"]

# The message names the kind of rule, never the list: a client learns nothing about ranges.
_DENIED: Final = "client address is denied by an IP deny rule"
_NOT_ALLOWED: Final = "client address is not in the IP allow list"


class IpRules:
    name: ClassVar[str] = "ip_rules"

    __slots__ = ("_allow", "_deny", "_rejections", "_route")

    def __init__(
        self,
        route_label: str,
        deny: tuple[tuple[NetworkSet, Scope], ...],
        allow: tuple[tuple[NetworkSet, Scope], ...],
    ) -> None:
        self._route = route_label
        self._deny = deny
        self._allow = allow
        self._rejections = IP_REJECTIONS.labels(route_label)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> web.StreamResponse:
        parsed = parse_ip(ctx.client_ip)
        if parsed is None:  # not an IP literal: no deny rule matches it, no allow list holds it
            if self._allow:
                self._reject(ctx, "allow", self._allow[0][1])
            return await call_next(ctx)
        for networks, scope in self._deny:  # deny wins: checked first
            if networks.contains_parsed(parsed):
                self._reject(ctx, "deny", scope)
        for networks, scope in self._allow:
            if not networks.contains_parsed(parsed):
                self._reject(ctx, "allow", scope)
        return await call_next(ctx)

    def _reject(self, ctx: RequestContext, rule: Literal["allow", "deny"], scope: Scope) -> None:
        self._rejections.inc()
        log.get_logger("aiogate.ip_rules").info(
            log.IP_REJECTED,
            request_id=ctx.request_id,
            route=self._route,
            client_ip=ctx.client_ip,
            rule=rule,
            scope=scope,
        )
        raise Forbidden(_DENIED if rule == "deny" else _NOT_ALLOWED)


def for_route(route: RouteConfig, services: Services) -> IpRules | None:
    """The route's IP-rules stage (global rules, then its own); None when none apply."""
    deny, allow = services.ip_rules.rules_for(route)
    if not deny and not allow:
        return None
    return IpRules(route.label, deny, allow)
