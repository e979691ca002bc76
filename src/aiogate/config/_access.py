"""IP allow/deny rules (`ip_rules:` at the top level and on a route)."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import BeforeValidator

from ._base import Model, describe, fail, one_or_many

__all__ = ["IpNetwork", "IpRulesConfig"]


def _network(value: Any) -> Any:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        fail(f"expected a CIDR or an IP address, got {describe(value)}")
    try:
        # strict, as for trusted_proxies: `10.0.0.1/8` is more likely a typo than 10.0.0.0/8,
        # and in a deny list a silently widened range is a security decision nobody made.
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        fail(f"invalid CIDR or IP address: {exc}")


IpNetwork = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]
_Networks = Annotated[tuple[IpNetwork, ...], BeforeValidator(one_or_many)]


class IpRulesConfig(Model):
    """`deny` wins over `allow`; a non-empty `allow` denies every address not in it."""

    allow: _Networks = ()
    deny: _Networks = ()

    @property
    def empty(self) -> bool:
        return not self.allow and not self.deny
