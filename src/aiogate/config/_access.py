"""IP allow/deny rules (`ip_rules:` at the top level and on a route)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator

from ._base import IpNetwork, Model, one_or_many

__all__ = ["IpNetwork", "IpRulesConfig"]


_Networks = Annotated[tuple[IpNetwork, ...], BeforeValidator(one_or_many)]


class IpRulesConfig(Model):
    """`deny` wins over `allow`; a non-empty `allow` denies every address not in it."""

    allow: _Networks = ()
    deny: _Networks = ()

    @property
    def empty(self) -> bool:
        return not self.allow and not self.deny
