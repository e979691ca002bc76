"""Auth methods: how a route finds a credential, verifies it, and what it keeps from upstreams.

The auth stage knows methods only through :class:`AuthMethod`, held by name (the route's
`auth: {type: ...}`), so a new method (mTLS next) is one class here and one entry in
`AuthServices.methods`. A method never sees the rest of the chain: it reads the request, and
answers with a :class:`Consumer` or raises :class:`AuthFailure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Final, Protocol
from urllib.parse import unquote_plus

from ..tls import client_subject
from ._types import AuthFailure, Consumer

if TYPE_CHECKING:
    from aiohttp import web

    from ..config import ApiKeyConfig, JwtConfig
    from .apikey import ApiKeyVerifier
    from .jwt import JwtVerifier

__all__ = ["DUPLICATE", "ApiKeyMethod", "AuthMethod", "JwtMethod", "MtlsMethod"]

DUPLICATE: Final = "duplicate_credentials"


class AuthMethod(Protocol):
    #: The route's `auth: {type: NAME}`.
    name: ClassVar[str]
    #: Lower-case client headers never forwarded on a route that uses this method.
    drop_headers: frozenset[str]
    #: Query parameters cut from the forwarded query string.
    strip_query: frozenset[str]
    #: A cookie cut from the forwarded Cookie header (None: none).
    strip_cookie: str | None

    def find(self, request: web.BaseRequest, query: str) -> str | None:
        """The credential this method reads, or None when the request carries none.
        Raises AuthFailure for a malformed or ambiguous one (two of them: 400)."""

    async def verify(self, credential: str) -> Consumer:
        """The consumer the credential belongs to; AuthFailure when it is not valid."""


class JwtMethod:
    """A bearer token: `Authorization: Bearer`, else the configured cookie or query parameter."""

    name: ClassVar[str] = "jwt"

    __slots__ = ("_cookie", "_query", "_verifier", "drop_headers", "strip_cookie", "strip_query")

    def __init__(self, config: JwtConfig, verifier: JwtVerifier) -> None:
        self._verifier = verifier
        self._cookie = config.cookie
        self._query = config.query_param
        forward = config.forward_token
        self.drop_headers = frozenset() if forward else frozenset({"authorization"})
        self.strip_cookie = None if forward else config.cookie
        self.strip_query = frozenset({self._query}) if self._query is not None else frozenset()

    def find(self, request: web.BaseRequest, query: str) -> str | None:
        headers = request.headers
        value = headers.get("Authorization")
        if value is not None and value[:7].lower() == "bearer ":
            token = value[7:].strip()
            if not token:
                raise AuthFailure("malformed_token", "the bearer token is empty")
            return token
        if self._cookie is not None:
            cookie = request.cookies.get(self._cookie)
            if cookie:
                if _cookie_count(headers.getall("Cookie", ()), self._cookie) > 1:
                    # The cookie parser keeps one of them; an upstream may read the other.
                    raise AuthFailure(DUPLICATE, "more than one token cookie", 400)
                return cookie
        if self._query is not None and query:
            return query_value(query, self._query)
        return None

    async def verify(self, credential: str) -> Consumer:
        return await self._verifier.verify(credential)


class ApiKeyMethod:
    """An API key in the configured header, else in the configured query parameter."""

    name: ClassVar[str] = "api_key"

    __slots__ = ("_header", "_query", "_verifier", "drop_headers", "strip_cookie", "strip_query")

    def __init__(self, config: ApiKeyConfig, verifier: ApiKeyVerifier) -> None:
        self._verifier = verifier
        self._header = config.header
        self._query = config.query_param
        self.drop_headers = frozenset({config.header.lower()})
        self.strip_cookie: str | None = None
        self.strip_query = frozenset({self._query}) if self._query is not None else frozenset()

    def find(self, request: web.BaseRequest, query: str) -> str | None:
        keys = request.headers.getall(self._header, ())
        if len(keys) > 1:
            # The gateway would check the first while an upstream may read another.
            raise AuthFailure(DUPLICATE, f"more than one {self._header} header", 400)
        key = keys[0] if keys else None
        if key:
            return key.strip()
        if self._query is not None and query:
            return query_value(query, self._query)
        return None

    async def verify(self, credential: str) -> Consumer:
        return await self._verifier.verify(credential)


class MtlsMethod:
    """The client certificate the TLS listener verified; its subject is the consumer.

    The credential is found on the connection, not in the request: the handshake has already
    checked it against `server.tls.client_ca_file` (an untrusted or expired certificate never
    gets this far), so `verify` only names the consumer. A request without a certificate on a
    listener where presenting one is optional has no credential: 401.
    """

    name: ClassVar[str] = "mtls"

    __slots__ = ("drop_headers", "strip_cookie", "strip_query")

    def __init__(self) -> None:
        self.drop_headers: frozenset[str] = frozenset()
        self.strip_cookie: str | None = None
        self.strip_query: frozenset[str] = frozenset()

    def find(self, request: web.BaseRequest, query: str) -> str | None:
        return client_subject(request.transport)

    async def verify(self, credential: str) -> Consumer:
        return Consumer(name=credential, method="mtls")


def query_value(query: str, name: str) -> str | None:
    """The first non-empty value of `name` in a raw query string, decoded."""
    for part in query.split("&"):
        key, sep, value = part.partition("=")
        if sep and unquote_plus(key) == name and value:
            return unquote_plus(value)
    return None


def _cookie_count(headers: Sequence[str], name: str) -> int:
    """How many `name=` pairs the Cookie headers hold (a substring test first: cheap)."""
    return sum(
        1
        for header in headers
        if name in header
        for pair in header.split(";")
        if pair.partition("=")[0].strip() == name
    )
