"""IP allow/deny rules compiled once per Runtime: the global sets, and each route's own."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from typing import Literal

from .config import IpRulesConfig, RouteConfig
from .netmatch import NetworkSet

__all__ = ["CompiledRules", "IpRulesPlan", "Scope"]

Scope = Literal["global", "route"]
#: Network sets in the order they are checked, each with where it was configured.
CompiledRules = tuple[tuple[NetworkSet, Scope], ...]


class IpRulesPlan:
    """The global rules compiled once; each route's rules are the global ones plus its own."""

    __slots__ = ("_allow", "_deny")

    def __init__(self, rules: IpRulesConfig) -> None:
        self._deny = _compiled(rules.deny, "global")
        self._allow = _compiled(rules.allow, "global")

    def rules_for(self, route: RouteConfig) -> tuple[CompiledRules, CompiledRules]:
        """(deny, allow) for this route: the global sets, then the route's own; empty tuples
        when neither says anything (the route then needs no IP-rules stage)."""
        own = route.ip_rules
        deny = self._deny + (_compiled(own.deny, "route") if own is not None else ())
        allow = self._allow + (_compiled(own.allow, "route") if own is not None else ())
        return deny, allow


def _compiled(networks: tuple[IPv4Network | IPv6Network, ...], scope: Scope) -> CompiledRules:
    return ((NetworkSet(networks), scope),) if networks else ()
