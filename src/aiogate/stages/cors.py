"""CORS for one route: preflights answered here, CORS headers on every actual response.

Runs right after the IP rules and before auth (a browser never sends credentials on a
preflight). A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is never
forwarded: an allowed origin gets 204 with the policy; any other origin gets a 403 JSON error
without CORS headers, which the browser treats as a failed preflight (Kong answers those
without CORS headers, Envoy forwards them; a 403 tells a human what went wrong).

A WebSocket handshake from an origin not allowed is refused (403): browsers leave that
decision to the server.

An actual request from an allowed origin gets `Access-Control-Allow-Origin` (+ Credentials,
Expose-Headers) through `ctx.response_headers`, so the proxied response and any gateway error
carry it alike. The upstream's own `Access-Control-*` headers are never relayed on a route with
a policy: the gateway's policy is the one answer (two `Allow-Origin` values fail in browsers).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar, Final

from aiohttp import web

from ..config import CorsConfig, RouteConfig
from ..context import RequestContext
from ..errors import Forbidden
from . import Next

if TYPE_CHECKING:
    from .services import Services

__all__ = ["Cors", "OriginMatcher", "is_preflight"]

_DEFAULT_METHODS: Final = ("GET", "HEAD", "PUT", "PATCH", "POST", "DELETE")
_UPSTREAM_CORS: Final = frozenset(
    {
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-expose-headers",
        "access-control-max-age",
    }
)
_REQUEST_METHOD: Final = "Access-Control-Request-Method"
_REQUEST_HEADERS: Final = "Access-Control-Request-Headers"


def is_preflight(request: web.BaseRequest) -> bool:
    headers = request.headers
    return request.method == "OPTIONS" and "Origin" in headers and _REQUEST_METHOD in headers


class OriginMatcher:
    """Exact origins, `*`, and `scheme://*.domain[:port]` (one or more labels), precompiled."""

    __slots__ = ("_exact", "_wildcards", "any")

    def __init__(self, origins: Iterable[str]) -> None:
        self.any = False
        exact: set[str] = set()
        wildcards: list[tuple[str, str]] = []
        for origin in origins:
            if origin == "*":
                self.any = True
                continue
            scheme, _, host = origin.lower().partition("://")
            if host.startswith("*."):
                wildcards.append((f"{scheme}://", host[1:]))  # ("https://", ".example.com")
            else:
                exact.add(f"{scheme}://{host}")
        self._exact = frozenset(exact)
        self._wildcards = tuple(wildcards)

    def __call__(self, origin: str) -> bool:
        if self.any:
            return True
        origin = origin.lower()
        if origin in self._exact:
            return True
        for prefix, suffix in self._wildcards:
            if origin.startswith(prefix) and origin.endswith(suffix):
                label = origin[len(prefix) : -len(suffix)]
                # Only subdomain labels: no port, path, userinfo or scheme trickery in between.
                if label and label[0] != "." and all(c.isalnum() or c in "-." for c in label):
                    return True
        return False


class Cors:
    name: ClassVar[str] = "cors"

    __slots__ = (
        "_actual_extra",
        "_allow_headers",
        "_credentials",
        "_matches",
        "_preflight_extra",
        "_reflect_headers",
        "_star",
    )

    def __init__(self, config: CorsConfig, route_methods: Iterable[str] | None = None) -> None:
        self._matches = OriginMatcher(config.allowed_origins)
        self._credentials = config.allow_credentials
        #: `*` literally (no credentials, any origin): the answer does not vary by origin.
        self._star = self._matches.any and not config.allow_credentials
        methods = config.allowed_methods or tuple(route_methods or ()) or _DEFAULT_METHODS
        headers = config.allowed_headers
        # With credentials a `*` is a header literally named "*": reflect what was asked.
        self._reflect_headers = "*" in headers and config.allow_credentials
        self._allow_headers = ", ".join(headers) if headers and not self._reflect_headers else None
        actual: list[tuple[str, str]] = []
        if config.allow_credentials:
            actual.append(("Access-Control-Allow-Credentials", "true"))
        if config.exposed_headers:
            actual.append(("Access-Control-Expose-Headers", ", ".join(config.exposed_headers)))
        if not self._star:
            actual.append(("Vary", "Origin"))
        self._actual_extra = tuple(actual)
        preflight: list[tuple[str, str]] = [("Access-Control-Allow-Methods", ", ".join(methods))]
        if self._allow_headers is not None:
            preflight.append(("Access-Control-Allow-Headers", self._allow_headers))
        if config.max_age is not None:
            preflight.append(("Access-Control-Max-Age", str(int(config.max_age))))
        if config.allow_credentials:
            preflight.append(("Access-Control-Allow-Credentials", "true"))
        if not self._star:
            preflight.append(("Vary", "Origin"))
        self._preflight_extra = tuple(preflight)

    async def __call__(self, ctx: RequestContext, call_next: Next) -> web.StreamResponse:
        drop = ctx.response_drop
        ctx.response_drop = drop | _UPSTREAM_CORS if drop else _UPSTREAM_CORS
        request = ctx.request
        origin = request.headers.get("Origin")
        if origin is None:
            if not self._star:
                # A cache must not hand this answer to a cross-origin request (Fetch §3.2.5).
                ctx.response_headers.append(("Vary", "Origin"))
            return await call_next(ctx)
        if ctx.method == "OPTIONS" and _REQUEST_METHOD in request.headers:
            return self._preflight(ctx, origin)
        if self._matches(origin):
            ctx.response_headers.append(
                ("Access-Control-Allow-Origin", "*" if self._star else origin)
            )
            ctx.response_headers.extend(self._actual_extra)
        elif ctx.websocket:
            # Browsers do not apply CORS to WebSockets (they send Origin and let the server
            # decide): without this, any site could open one with the user's cookies.
            raise Forbidden(
                f"WebSocket from origin {origin!r} is not allowed",
                code="cors_origin_not_allowed",
            )
        elif not self._star:
            ctx.response_headers.append(("Vary", "Origin"))
        return await call_next(ctx)

    def _preflight(self, ctx: RequestContext, origin: str) -> web.StreamResponse:
        if not self._matches(origin):
            ctx.response_headers.append(("Vary", "Origin"))
            raise Forbidden(
                f"CORS preflight from origin {origin!r} is not allowed",
                code="cors_origin_not_allowed",
            )
        headers: list[tuple[str, str]] = [
            ("Access-Control-Allow-Origin", "*" if self._star else origin),
            *self._preflight_extra,
        ]
        if self._reflect_headers:
            asked = ctx.request.headers.get(_REQUEST_HEADERS)
            if asked:
                headers.append(("Access-Control-Allow-Headers", _tokens(asked)))
            headers.append(("Vary", _REQUEST_HEADERS))
        headers.append(("X-Request-ID", ctx.request_id))
        headers += ctx.response_headers
        return web.Response(status=204, headers=headers)


def _tokens(value: str) -> str:
    """The requested header names, only the well-formed ones (they are echoed back)."""
    names = (n.strip() for n in value.split(","))
    return ", ".join(n for n in names if n and all(c.isalnum() or c in "-_" for c in n))


def for_route(route: RouteConfig, services: Services) -> Cors | None:
    policy = services.policy(route).cors
    return Cors(policy, route.methods) if policy is not None else None
