"""Header names with a fixed meaning to the gateway, defined once.

The proxy drops them when relaying, and the config refuses transformations that would add,
remove or rename them: both must agree, so both read these sets.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "GATEWAY_REQUEST_HEADERS",
    "GATEWAY_RESPONSE_HEADERS",
    "HOP_BY_HOP",
    "connection_tokens",
]

#: RFC 9110 §7.6.1 hop-by-hop fields, plus the legacy ones real clients still send.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
#: Set by the gateway on the upstream request: whatever the client sent under these names is
#: replaced, and naming them in `Connection` cannot make the gateway drop its own values.
GATEWAY_REQUEST_HEADERS: Final = frozenset(
    {"host", "content-length", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
     "x-request-id", "x-real-ip", "forwarded"}
)  # fmt: skip
#: Set by the gateway on the response to the client (framing and the request id).
GATEWAY_RESPONSE_HEADERS: Final = frozenset({"content-length", "x-request-id"})


def connection_tokens(value: str) -> set[str]:
    """The lower-case header names one `Connection` value lists (hop-by-hop for this message)."""
    return {token.strip().lower() for token in value.split(",") if token.strip()}
