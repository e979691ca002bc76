"""The auth stage: find the route's credential, verify it, apply the route's claim rules.

Missing or invalid credentials are 401 with `WWW-Authenticate: Bearer` (RFC 6750), a valid
token that lacks a required claim is 403, and an API-key store that cannot answer is 503
`auth_unavailable`. Every rejection is counted in `aiogate_auth_failures_total{route,reason}`
and logged as `auth_failed` with its reason; the credential itself is never logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Final
from urllib.parse import unquote_plus

from aiohttp import web
from prometheus_client import Counter

from .. import log
from ..auth import AuthFailure, AuthMethod, Consumer
from ..config import AuthConfig, RouteAuth, RouteConfig
from ..context import RequestContext
from ..errors import BadRequest, Forbidden, GatewayError, ServiceUnavailable, Unauthorized
from ..metrics import AUTH_FAILURES
from . import Next

if TYPE_CHECKING:
    from ..auth import AuthServices
    from .services import Services

__all__ = ["Authenticate", "claim_header_names"]

_MISSING: Final = "missing_credentials"


class Authenticate:
    name: ClassVar[str] = "auth"

    __slots__ = (
        "_challenge",
        "_claim_rules",
        "_drop",
        "_drop_cookie",
        "_failures",
        "_methods",
        "_required_claims",
        "_route",
        "_strip_cookie",
        "_strip_query",
    )

    def __init__(self, route: str, policy: RouteAuth, services: AuthServices) -> None:
        self._route = route
        self._challenge = f'Bearer realm="{services.config.realm}"'
        # In the route's `type` order; the config checks that each type is configured.
        self._methods: tuple[AuthMethod, ...] = tuple(
            services.methods[kind] for kind in policy.types if kind in services.methods
        )
        # forward_claims names are not here: the proxy drops them on every route, public ones
        # included (see claim_header_names).
        self._drop = frozenset().union(*(method.drop_headers for method in self._methods))
        self._drop_cookie = self._drop | {"cookie"}
        self._strip_query = frozenset().union(*(method.strip_query for method in self._methods))
        # The token's cookie, cut from the upstream's Cookie header (forward_token: false).
        self._strip_cookie = next(
            (method.strip_cookie for method in self._methods if method.strip_cookie), None
        )
        self._required_claims = policy.required_claims
        self._claim_rules: tuple[tuple[str, frozenset[str]], ...] = tuple(
            (claim, frozenset((rule,) if isinstance(rule, str) else rule))
            for claim, rule in policy.claims.items()
        )
        self._failures: dict[str, Counter] = {}

    async def __call__(self, ctx: RequestContext, call_next: Next) -> web.StreamResponse:
        try:
            consumer = await self._authenticate(ctx)
            if self._required_claims or self._claim_rules:
                self._authorize(consumer.claims)
        except AuthFailure as failure:
            raise self._reject(ctx, failure) from None
        ctx.consumer = consumer.name
        ctx.tier = consumer.tier
        ctx.api_key_id = consumer.key_id
        ctx.claims = consumer.claims
        ctx.upstream_drop = self._drop
        ctx.upstream_add = consumer.headers
        if self._strip_cookie is not None:
            self._drop_token_cookie(ctx, self._strip_cookie)
        if self._strip_query and ctx.query:
            ctx.query = _without_params(ctx.query, self._strip_query)
        return await call_next(ctx)

    async def _authenticate(self, ctx: RequestContext) -> Consumer:
        """The first credential present, in the route's `type` order, decides."""
        request = ctx.request
        query = ctx.query
        for method in self._methods:
            credential = method.find(request, query)
            if credential is not None:
                return await method.verify(credential)
        raise AuthFailure(_MISSING, "credentials are required")

    def _drop_token_cookie(self, ctx: RequestContext, name: str) -> None:
        """Forward the client's Cookie headers without the token's cookie.

        Like Authorization, whichever credential authenticated this request: a token that must
        not reach the upstream must not reach it as a cookie either.
        """
        values = ctx.request.headers.getall("Cookie", ())
        if not any(name in value for value in values):
            return
        rewritten = [_without_cookie(value, name) for value in values]
        ctx.upstream_drop = self._drop_cookie
        ctx.upstream_add = (
            *ctx.upstream_add,
            *(("Cookie", value) for value in rewritten if value),
        )

    def _authorize(self, claims: Mapping[str, Any]) -> None:
        # An API key carries no claims: on a route with claim rules it never passes them.
        for claim in self._required_claims:
            if claim not in claims:
                raise AuthFailure("missing_claim", f"a '{claim}' claim is required here", 403)
        for claim, allowed in self._claim_rules:
            if not _claim_values(claims.get(claim)) & allowed:
                raise AuthFailure(
                    "insufficient_claims", f"the '{claim}' claim does not allow this route", 403
                )

    def _reject(self, ctx: RequestContext, failure: AuthFailure) -> GatewayError:
        counter = self._failures.get(failure.reason)
        if counter is None:
            counter = self._failures[failure.reason] = AUTH_FAILURES.labels(
                self._route, failure.reason
            )
        counter.inc()
        log.get_logger("aiogate.auth").info(
            log.AUTH_FAILED, route=self._route, reason=failure.reason, status=failure.status,
            request_id=ctx.request_id, client_ip=ctx.client_ip,
        )  # fmt: skip
        if failure.status == 503:
            return ServiceUnavailable(failure.description, code="auth_unavailable")
        if failure.status == 400:
            return BadRequest(failure.description)
        if failure.status == 403:
            challenge = f'{self._challenge}, error="insufficient_scope"'
            return Forbidden(failure.description, headers={"WWW-Authenticate": challenge})
        if failure.reason == _MISSING:
            challenge = self._challenge
        else:
            challenge = (
                f'{self._challenge}, error="invalid_token", '
                f'error_description="{failure.description}"'
            )
        return Unauthorized(failure.description, headers={"WWW-Authenticate": challenge})


def claim_header_names(config: AuthConfig) -> frozenset[str]:
    """Lower-case names of the headers the gateway fills from JWT claims (`forward_claims`).

    Computed once per Runtime: the proxy drops these from every client request on every route,
    so an upstream never takes a client's `X-User-Id` for one the gateway vouched for, whether
    the route authenticates with a JWT, an API key or not at all.
    """
    if config.jwt is None:
        return frozenset()
    return frozenset(header.lower() for header in config.jwt.forward_claims.values())


def _without_cookie(header: str, name: str) -> str:
    """A Cookie header value minus every `name=` pair; the other pairs stay byte-exact."""
    kept = [pair for pair in header.split(";") if pair.partition("=")[0].strip() != name]
    return ";".join(kept).strip()


def _claim_values(value: Any) -> frozenset[str]:
    """A claim as a set of strings: lists item by item, a `scope` string word by word."""
    if isinstance(value, str):
        return frozenset((value, *value.split()))
    if isinstance(value, list):
        return frozenset(str(item) for item in value if isinstance(item, str | int))
    if isinstance(value, bool) or value is None:
        return frozenset()
    if isinstance(value, int):
        return frozenset((str(value),))
    return frozenset()


def _without_params(query: str, names: frozenset[str]) -> str:
    """The raw query minus the credential parameters (the rest is forwarded byte-exact)."""
    kept = [part for part in query.split("&") if unquote_plus(part.partition("=")[0]) not in names]
    return "&".join(kept)


def for_route(route: RouteConfig, services: Services) -> Authenticate | None:
    if route.auth is None:
        return None
    return Authenticate(route.label, route.auth, services.auth)
