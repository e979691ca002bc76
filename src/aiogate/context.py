"""Per-request state: one typed, slotted object instead of string-keyed dicts.

It knows nothing of the Runtime or of tracing (a leaf of the import graph): stages that need a
service get it when their chain is built, not through the request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from aiohttp import web

__all__ = ["RequestContext", "ResponseCapture", "ResponseEdit"]

_NO_PARAMS: Mapping[str, str] = MappingProxyType({})
#: (ctx, status, header pairs) -> the status to send; may edit the pairs in place.
ResponseEdit = Callable[["RequestContext", int, list[tuple[str, str]]], int]
_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


class ResponseCapture:
    """A copy of the upstream response for a stage that keeps it (the cache).

    The relay fills it when the response arrives complete, of known length up to `limit`
    bytes: the status, reason and headers as received, and the whole body. A response
    larger than `limit`, of unknown length, or broken mid-body leaves it empty.
    """

    __slots__ = ("body", "headers", "limit", "reason", "status")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[str, str]] = []
        self.body: bytes | None = None

    def fill(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.reason, self.headers, self.body = status, reason, headers, body


@dataclass(slots=True, eq=False)
class RequestContext:
    request: web.BaseRequest
    request_id: str
    method: str
    #: Normalised path: what was routed is exactly what is forwarded.
    path: str
    #: Raw query string without the '?', forwarded verbatim ("" when absent).
    query: str
    client_ip: str
    #: The X-Forwarded-For value to send upstream (the peer appended to a trusted chain).
    forwarded_for: str
    started: float
    #: The socket peer is a trusted proxy: its X-Forwarded-Proto/Host are believed too.
    via_trusted_proxy: bool = False
    #: The matched route's `route` label (its name, else its path); "" until routed.
    route_label: str = ""
    params: Mapping[str, str] = field(default_factory=lambda: _NO_PARAMS)
    upstream: str = ""
    backend: str = ""
    #: Who the auth stage recognised (consumer name or JWT subject), for limits and logs.
    consumer: str | None = None
    #: The consumer's tier (API key record or JWT claim): selects a `rate_limit_tiers` set.
    tier: str | None = None
    #: A stable id of the verified API key (SHA-256 hex), for `api_key` rate limits.
    api_key_id: str | None = None
    #: The verified JWT's claims (empty for API keys and public routes).
    claims: Mapping[str, Any] = field(default_factory=lambda: _NO_CLAIMS)
    #: Set by auth: client headers (lower-case names) never forwarded, and headers to add.
    upstream_drop: frozenset[str] = frozenset()
    upstream_add: tuple[tuple[str, str], ...] = ()
    bytes_in: int = 0
    bytes_out: int = 0
    #: Headers a stage wants on the response, whoever writes it (proxy or error renderer).
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    #: Set by transform: the path and body forwarded instead of `path` and the client's body.
    upstream_path: str | None = None
    upstream_body: bytes | None = None
    #: Upstream response headers (lower-case names) never relayed (CORS, transform).
    response_drop: frozenset[str] = frozenset()
    #: Edits of the relayed response head, one per stage that wants one, in chain order. The
    #: relay runs them in reverse (the stage nearest the proxy first, as a response travels
    #: back through the chain) before the head is sent, streamed or not; each may edit the
    #: header pairs in place and returns the status to send.
    response_edits: tuple[ResponseEdit, ...] = ()
    #: Set by the cache on a miss: the relay copies a complete, small response into it.
    capture: ResponseCapture | None = None
    #: Set only when tracing is on: the request span and its trace id.
    span: Any = None
    #: The request asks for a WebSocket (`Upgrade: websocket`): proxied as a tunnel.
    websocket: bool = False
    trace_id: str = ""
