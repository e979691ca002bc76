"""What a verifier returns (a Consumer) or raises (an AuthFailure)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

__all__ = ["AuthFailure", "Consumer", "Status"]

_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})

Status = Literal[400, 401, 403, 503]


@dataclass(frozen=True, slots=True)
class Consumer:
    """An authenticated caller; immutable, so one instance is shared by every cached hit."""

    #: JWT subject, the API key's consumer or the client certificate's subject (RFC 4514);
    #: None for a token without a subject.
    name: str | None
    method: Literal["jwt", "api_key", "mtls"]
    tier: str | None = None
    #: The verified JWT payload (empty for API keys).
    claims: Mapping[str, Any] = field(default_factory=lambda: _NO_CLAIMS)
    #: `forward_claims` headers, computed once at verification.
    headers: tuple[tuple[str, str], ...] = ()
    #: SHA-256 hex of the API key: a stable id for limits, never the key itself.
    key_id: str | None = None


class AuthFailure(Exception):
    """A credential was missing, invalid, not allowed here, or could not be checked.

    `reason` is a short stable label (metrics, logs); `description` is safe to show the
    client and never contains the credential.
    """

    def __init__(self, reason: str, description: str, status: Status = 401) -> None:
        super().__init__(description)
        self.reason = reason
        self.description = description
        self.status: Status = status
