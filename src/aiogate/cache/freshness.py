"""The response cache's rules as pure functions: a subset of RFC 9111 for a shared cache.

What is kept, for how long, and under which key. No clock, no I/O: callers pass `now` (wall
clock seconds, since entries are shared between gateways through Redis).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Final

__all__ = [
    "STORABLE_STATUSES",
    "Directives",
    "Freshness",
    "cache_key",
    "directives",
    "freshness",
    "parse_http_date",
]

#: Statuses a cache may keep (RFC 9110 §15.1 "heuristically cacheable", less those whose
#: meaning depends on the request: 204, 206, 405, 414, 501; 308 left out as rarely useful).
STORABLE_STATUSES: Final = frozenset({200, 203, 301, 404, 410})

Headers = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Directives:
    """The `Cache-Control` directives the cache acts on (lower-case names)."""

    no_store: bool = False
    no_cache: bool = False
    private: bool = False
    max_age: int | None = None
    s_maxage: int | None = None


_NONE: Final = Directives()


def directives(headers: Headers) -> Directives:
    """Every `Cache-Control` field of `headers`, combined. An unparsable `max-age` counts as 0
    (RFC 9111 §4.2.1: an invalid freshness directive makes the response stale)."""
    values = [value for name, value in headers if name.lower() == "cache-control"]
    if not values:
        return _NONE
    seen: dict[str, str | None] = {}
    for value in values:
        for item in value.split(","):
            name, sep, argument = item.strip().partition("=")
            name = name.strip().lower()
            if name and name not in seen:  # the first occurrence wins (RFC 9111 §4.2.1)
                seen[name] = argument.strip().strip('"') if sep else None
    return Directives(
        no_store="no-store" in seen,
        no_cache="no-cache" in seen,
        private="private" in seen,
        max_age=_seconds(seen, "max-age"),
        s_maxage=_seconds(seen, "s-maxage"),
    )


def _seconds(seen: Mapping[str, str | None], name: str) -> int | None:
    if name not in seen:
        return None
    argument = seen[name]
    if argument is None or not argument.isdigit():
        return 0
    return int(argument)


def parse_http_date(value: str) -> float | None:
    """An HTTP date as POSIX seconds; None when it is not a date."""
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class Freshness:
    """How long a stored response stays fresh: `lifetime` seconds from its origin, of which
    `age` had passed upstream (its `Age` header) when it arrived."""

    lifetime: float
    age: float

    @property
    def remaining(self) -> float:
        return self.lifetime - self.age


def freshness(
    status: int,
    headers: Headers,
    *,
    default_ttl: float,
    now: float,
    vary: Iterable[str] = (),
) -> Freshness | None:
    """How long this upstream response may be served from the cache; None: do not store it.

    Not stored: a status outside `STORABLE_STATUSES`; `no-store`, `private` or `no-cache`
    (every use would need revalidation, which this cache does not do); a `Set-Cookie`; a
    `Vary` of `*` or of a request header not in `vary` (lower-case names: the key would not
    tell those variants apart); a response already stale on arrival.
    """
    if status not in STORABLE_STATUSES:
        return None
    found = directives(headers)
    if found.no_store or found.private or found.no_cache:
        return None
    date = expires = None
    age = 0.0
    for name, value in headers:
        lowered = name.lower()
        if lowered == "set-cookie":
            return None
        if lowered == "vary" and not _varies_within(value, vary):
            return None
        if lowered == "date" and date is None:
            date = parse_http_date(value)
        elif lowered == "expires" and expires is None:
            # An invalid Expires (often "0") means already expired (RFC 9111 §5.3).
            expires = parse_http_date(value) or 0.0
        elif lowered == "age" and value.strip().isdigit():
            age = float(value.strip())
    lifetime = _lifetime(found, expires, date if date is not None else now, default_ttl)
    result = Freshness(lifetime=lifetime, age=age)
    return result if result.remaining > 0 else None


def _lifetime(found: Directives, expires: float | None, date: float, default_ttl: float) -> float:
    """RFC 9111 §4.2.1, shared cache: s-maxage, then max-age, then Expires - Date."""
    if found.s_maxage is not None:
        return float(found.s_maxage)
    if found.max_age is not None:
        return float(found.max_age)
    if expires is not None:
        return max(0.0, expires - date)
    return default_ttl


def _varies_within(value: str, vary: Iterable[str]) -> bool:
    allowed = set(vary)
    for token in value.split(","):
        name = token.strip().lower()
        if name == "*" or (name and name not in allowed):
            return False
    return True


def cache_key(
    route: str,
    method: str,
    host: str,
    path: str,
    query: str,
    *,
    vary: Sequence[tuple[str, str]] = (),
    consumer: str | None = None,
) -> str:
    """The key of a response: SHA-256 hex of method, host, path, query, the values of the
    route's `vary` headers (name, value pairs) and, for an authenticated route, the consumer.

    The route's label comes first: two routes that match the same request by other
    conditions (a header) and share one Redis must not answer with each other's responses.
    A HEAD shares the GET's key: a cached GET answers it. Fields are length-prefixed, so no
    value can be crafted to look like two others.
    """
    if method == "HEAD":
        method = "GET"
    parts = [route, method, host.lower(), path, query]
    for name, value in vary:
        parts += (name, value)
    if consumer is not None:
        parts += ("\0consumer", consumer)
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogateescape")
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return digest.hexdigest()
