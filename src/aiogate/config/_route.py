"""Routes: path patterns, methods, and the per-route auth, limit, transform and CORS policy."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, BeforeValidator, Field, field_validator, model_validator

from .. import jsonpointer
from ..headers import GATEWAY_REQUEST_HEADERS, GATEWAY_RESPONSE_HEADERS, HOP_BY_HOP
from ..pathnorm import ALLOW_PATH_PARAMETERS, InvalidPath, normalize_path
from ..template import REQUEST_VARIABLES, VARIABLES, TemplateError
from ..template import parse as parse_template
from ._access import IpRulesConfig
from ._base import (
    IDENTIFIER,
    HeaderName,
    HeaderNames,
    HeaderValue,
    Methods,
    Model,
    NonEmptyStr,
    StrList,
    describe,
    fail,
    one_or_many,
)
from ._ratelimit import RateLimitRules, RouteRateLimit, check_dimension
from ._upstream import RetriesConfig
from .units import Duration, Size

__all__ = [
    "CacheConfig",
    "CorsConfig",
    "HeaderTransform",
    "JsonBodyTransform",
    "PathRewrite",
    "RequestTransform",
    "ResponseTransform",
    "RouteAuth",
    "RouteConfig",
    "RouteRateLimit",
    "Transformations",
    "check_dimension",
]

# RFC 3986 pchar: what a normalised static path segment may contain.
_STATIC_SEGMENT = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%]+")
_PARAM_SEGMENT = re.compile(r"\{(\*?)([^{}]*)\}")


class RouteAuth(Model):
    types: Annotated[
        tuple[Literal["jwt", "api_key", "mtls"], ...], BeforeValidator(one_or_many)
    ] = Field(alias="type", min_length=1)
    required_claims: StrList = ()
    claims: Mapping[str, str | tuple[str, ...]] = Field(default_factory=dict)

    @field_validator("claims", mode="before")
    @classmethod
    def _claim_rules(cls, value: Any) -> Any:
        # Lists are normalised here so a bad rule is reported once, not once per union member.
        if isinstance(value, dict):
            return {claim: _claim_rule(claim, rule) for claim, rule in value.items()}
        return value


def _claim_rule(claim: str, rule: Any) -> Any:
    if isinstance(rule, list):
        for index, item in enumerate(rule):
            if not isinstance(item, str):
                fail(f"expected a string, got {describe(item)}", claim, index)
        return tuple(rule)
    if not isinstance(rule, str):
        fail(f"expected a string or a list of strings, got {describe(rule)}", claim)
    return rule


# Headers a transformation may never add, remove or rename: hop-by-hop fields (RFC 9110
# §7.6.1) and those the gateway owns (framing, X-Forwarded-*, X-Request-ID).
_REQUEST_OWNED = HOP_BY_HOP | GATEWAY_REQUEST_HEADERS
_RESPONSE_OWNED = HOP_BY_HOP | GATEWAY_RESPONSE_HEADERS
_MAX_REWRITE_PATTERN = 256
_REWRITE_GROUP_REF = re.compile(r"\\(\d+)|\\g<([^>]*)>")
_REWRITE_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*")
_REWRITE_LITERAL = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@%/\\<>]*")


def _check_owned(names: Any, owned: frozenset[str], verb: str) -> None:
    for index, name in enumerate(names):
        if isinstance(name, str) and name.lower() in owned:
            where = name if isinstance(names, Mapping) else index
            fail(f"'{name}' is a hop-by-hop or gateway-owned header and cannot be {verb}", where)


def _plain_json(value: Any, *at: str | int) -> Any:
    """YAML mappings and lists as plain JSON values (orjson serialises only exact dicts)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain_json(v, *at, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_json(v, *at, i) for i, v in enumerate(value)]
    return fail(f"expected a JSON value, got {describe(value)}", *at)


class HeaderTransform(Model):
    #: Set: the header ends up with exactly this value (a same-named one is replaced).
    add_headers: Mapping[HeaderName, HeaderValue] = Field(default_factory=dict)
    remove_headers: HeaderNames = ()
    #: old name -> new name; the value moves, the old name is gone.
    rename_headers: Mapping[HeaderName, HeaderName] = Field(default_factory=dict)

    # What this direction may not touch, and the variables its values may use.
    _owned: ClassVar[frozenset[str]] = _RESPONSE_OWNED
    _variables: ClassVar[frozenset[str]] = VARIABLES

    @field_validator("add_headers")
    @classmethod
    def _add(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        _check_owned(value, cls._owned, "added")
        for name, text in value.items():
            try:
                parse_template(text, cls._variables)
            except TemplateError as exc:
                fail(str(exc), name)
        return value

    @field_validator("remove_headers")
    @classmethod
    def _remove(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        _check_owned(value, cls._owned, "removed")
        return value

    @field_validator("rename_headers")
    @classmethod
    def _rename(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        _check_owned(value, cls._owned, "renamed")
        for old, new in value.items():
            if new.lower() in cls._owned:
                fail(f"'{new}' is a hop-by-hop or gateway-owned header", old)
        return value


class JsonBodyTransform(Model):
    """Fields of a JSON object body: top-level names or JSON Pointers (`/meta/source`);
    other bodies pass untouched."""

    add: Mapping[str, Any] = Field(default_factory=dict)
    remove: StrList = ()
    #: Bodies larger than this (or without a Content-Length) pass untouched, streamed.
    max_size: Annotated[Size, Field(gt=0)] = 64 * 1024

    @field_validator("add", mode="before")
    @classmethod
    def _json_values(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): _plain_json(v, str(k)) for k, v in value.items()}
        return value

    @field_validator("add")
    @classmethod
    def _add_pointers(cls, value: Mapping[str, Any]) -> Mapping[str, Any]:
        for key in value:
            _check_pointer(key, key)
        return value

    @field_validator("remove")
    @classmethod
    def _remove_pointers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for index, key in enumerate(value):
            _check_pointer(key, index)
        return value

    @model_validator(mode="after")
    def _something(self) -> JsonBodyTransform:
        if not self.add and not self.remove:
            fail("give `add` and/or `remove`")
        return self


def _check_pointer(key: str, at: str | int) -> None:
    try:
        jsonpointer.parse(key)
    except jsonpointer.PointerError as exc:
        fail(str(exc), at)


class PathRewrite(Model):
    """What is forwarded instead of the routed path (routing and auth saw the original).

    `prefix`: the part of the path the route's pattern matched is replaced by this (Envoy's
    `prefix_rewrite`). `regex` + `replacement`: the first match is substituted.
    """

    prefix: str | None = None
    regex: str | None = Field(default=None, min_length=1, max_length=_MAX_REWRITE_PATTERN)
    replacement: str | None = None

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and (
            not value.startswith("/") or not _REWRITE_PATH.fullmatch(value) or "//" in value
        ):
            fail(f"must be a path starting with '/', got '{value}'")
        if value is not None:
            _check_rewrite_text(value)
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> PathRewrite:
        if (self.prefix is None) == (self.regex is None):
            fail("give exactly one of `prefix` or `regex` (with `replacement`)")
        if self.regex is None:
            if self.replacement is not None:
                fail("only meaningful with `regex`", "replacement")
            return self
        try:
            pattern = re.compile(self.regex)
        except re.error as exc:
            fail(f"invalid regular expression: {exc}", "regex")
        if self.replacement is None:
            fail("`regex` needs a `replacement`", "regex")
        if not _REWRITE_LITERAL.fullmatch(self.replacement):
            fail("may hold path characters and group references only", "replacement")
        for number, name in _REWRITE_GROUP_REF.findall(self.replacement):
            index = number or name
            ok = name in pattern.groupindex or (index.isdigit() and int(index) <= pattern.groups)
            if not ok:
                fail(f"refers to a group the regex does not have: {number or name}", "replacement")
        _check_replacement(self.replacement)
        return self


def _check_rewrite_text(text: str, *at: str) -> None:
    """Refuse rewrite text that has no canonical path form (an encoded slash, a bad escape).

    The rewritten path is forwarded, so it must not bring back what request paths are refused
    for: an upstream would otherwise serve another resource than the one routed and authorised.
    """
    try:
        normalize_path(text, ALLOW_PATH_PARAMETERS)
    except InvalidPath as exc:
        fail(str(exc), *at)


def _check_replacement(replacement: str) -> None:
    """Check the literal text of a regex replacement, each piece between group references.

    Piece by piece, so that a `%` completed by a group (`%\\1`) is refused as malformed; and a
    backslash that starts no group reference would be a `re` escape (`\\n` is a newline).
    """
    for piece in _REWRITE_GROUP_REF.sub("\0", replacement).split("\0"):
        if "\\" in piece:
            fail("a backslash may only start a group reference (\\1, \\g<name>)", "replacement")
        _check_rewrite_text("/" + piece, "replacement")


def _status(code: int, *at: str | int) -> int:
    if not 200 <= code <= 599 or code in (204, 304):
        fail(f"status {code} cannot be mapped (200-599, not 204 or 304)", *at)
    return code


class RequestTransform(HeaderTransform):
    rewrite: PathRewrite | None = None
    #: Set: a same-named parameter the client sent is replaced.
    add_query: Mapping[NonEmptyStr, str] = Field(default_factory=dict)
    remove_query: StrList = ()
    json_body: JsonBodyTransform | None = None

    _owned: ClassVar[frozenset[str]] = _REQUEST_OWNED
    _variables: ClassVar[frozenset[str]] = REQUEST_VARIABLES


class ResponseTransform(HeaderTransform):
    #: upstream status -> status sent to the client, e.g. {502: 503}.
    status_map: Mapping[int, int] = Field(default_factory=dict)
    json_body: JsonBodyTransform | None = None

    @field_validator("status_map")
    @classmethod
    def _statuses(cls, value: Mapping[int, int]) -> Mapping[int, int]:
        for source, target in value.items():
            _status(source, source)
            _status(target, source)
        return value


class Transformations(Model):
    request: RequestTransform | None = None
    response: ResponseTransform | None = None


def _check_origin(origin: str, index: int) -> str:
    if origin == "*":
        return origin
    scheme, sep, host = origin.partition("://")
    if host.startswith("*."):
        host = host[2:]
    if (
        not sep
        or scheme.lower() not in ("http", "https")
        or not _ORIGIN_HOST.fullmatch(host)
        or "*" in host
    ):
        fail(
            f"invalid origin '{origin}' (expected '*', scheme://host[:port] or "
            "scheme://*.domain[:port], without a path)",
            index,
        )
    return origin


_ORIGIN_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)(:\d{1,5})?")


def _origins(value: Any) -> Any:
    value = one_or_many(value)
    if isinstance(value, tuple):
        for index, item in enumerate(value):
            if isinstance(item, str):
                _check_origin(item, index)
    return value


class CorsConfig(Model):
    #: Exact origins, '*', or wildcard subdomains such as 'https://*.example.com'.
    allowed_origins: Annotated[StrList, BeforeValidator(_origins)] = ()
    allowed_methods: Methods = ()
    allowed_headers: HeaderNames = ()
    exposed_headers: HeaderNames = ()
    allow_credentials: bool = False
    max_age: Annotated[Duration | None, Field(ge=0)] = None

    @model_validator(mode="after")
    def _no_wildcard_credentials(self) -> CorsConfig:
        # Browsers refuse credentialed responses with `*`; reflecting any origin would be unsafe.
        if self.allow_credentials and "*" in self.allowed_origins:
            fail("cannot be true while allowed_origins contains '*'", "allow_credentials")
        return self


_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_\-]{0,62})(\.[a-z0-9_][a-z0-9_\-]{0,62})*")
_IPV6_LITERAL = re.compile(r"\[[0-9a-f:.]+\]")


def _check_host(host: str, index: int) -> str:
    """A route host as requests are compared with it: lower-case, no trailing dot, no port."""
    name = host.strip().lower()
    name = name[:-1] if name.endswith(".") else name
    bare = name[2:] if name.startswith("*.") else name
    if not (_HOST_NAME.fullmatch(bare) or (bare == name and _IPV6_LITERAL.fullmatch(name))):
        fail(
            f"invalid host '{host}' (expected a host name such as api.example.com or a"
            " wildcard such as *.example.com, without a port)",
            index,
        )
    return name


def _check_segment_escapes(segment: str, path: str) -> None:
    """Refuse what the router would: escapes no request path can match (`%2F`, `%2e%2e`, `%zz`).

    `check` must report it with its line, not the daemon when it builds the router.
    """
    try:
        canonical = normalize_path("/" + segment, ALLOW_PATH_PARAMETERS)
    except InvalidPath as exc:
        fail(f"invalid segment '{segment}' in '{path}': {exc}")
    if canonical == "/":
        fail(f"invalid segment '{segment}' in '{path}': '.' and '..' segments are not allowed")


def _check_path(path: str) -> str:
    if not path.startswith("/"):
        fail(f"must start with '/', got '{path}'")
    if path == "/":
        return path
    segments = path[1:].split("/")
    names: set[str] = set()
    for index, segment in enumerate(segments):
        if not segment:
            fail(f"empty segment in '{path}' (no '//' and no trailing '/')")
        param = _PARAM_SEGMENT.fullmatch(segment)
        if param is None:
            if "{" in segment or "}" in segment:
                fail(f"segment '{segment}' must be plain text, {{name}} or {{*name}}")
            if not _STATIC_SEGMENT.fullmatch(segment) or segment in (".", ".."):
                fail(f"invalid segment '{segment}' in '{path}'")
            if "%" in segment:
                _check_segment_escapes(segment, path)
            continue
        rest, name = param.groups()
        if not IDENTIFIER.fullmatch(name):
            fail(f"parameter name '{name}' in '{path}' is not an identifier")
        if name in names:
            fail(f"parameter '{name}' appears twice in '{path}'")
        names.add(name)
        if rest and index != len(segments) - 1:
            fail(f"'{segment}' must be the last segment of '{path}'")
    return path


#: Methods whose answers the cache may keep: the safe ones with a body worth keeping. A HEAD
#: is answered from the GET entry; other methods change state and are never cached.
_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})


class CacheConfig(Model):
    """A route's response cache (`cache:`): see docs/cache.md."""

    #: Freshness of a response whose upstream gives none (no max-age, s-maxage or Expires).
    ttl: Annotated[Duration, Field(gt=0)] = 30.0
    methods: Methods = ("GET", "HEAD")
    #: Request headers whose values are part of the key.
    vary: HeaderNames = ()
    store: Literal["memory", "redis"] = "memory"
    #: Larger responses (and those of unknown length) pass through uncached.
    max_entry_size: Annotated[Size, Field(gt=0)] = 1024 * 1024
    #: Memory store: at most this many entries, and this many bytes, least recently used out.
    max_entries: Annotated[int, Field(gt=0)] = 10_000
    max_size: Annotated[Size, Field(gt=0)] = 64 * 1024 * 1024
    #: Cache requests that carry credentials too, with the consumer in the key.
    authenticated: bool = False

    @field_validator("methods")
    @classmethod
    def _safe_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for index, method in enumerate(value):
            if method not in _CACHEABLE_METHODS:
                fail(f"only GET and HEAD responses can be cached, not {method}", index)
        return value

    @field_validator("vary")
    @classmethod
    def _unique_vary(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(name.lower() for name in value))

    @model_validator(mode="after")
    def _entry_fits(self) -> CacheConfig:
        if self.store == "memory" and self.max_entry_size > self.max_size:
            fail("must not exceed max_size", "max_entry_size")
        return self


class RouteConfig(Model):
    name: str | None = Field(default=None, min_length=1)
    path: str
    methods: Methods | None = None
    # The roadmap spells it `upstreams:`; both spellings mean the one upstream. Giving both is
    # rejected by extra="forbid" (the loader words that error).
    upstream: str = Field(validation_alias=AliasChoices("upstream", "upstreams"), min_length=1)
    auth: RouteAuth | None = None
    #: One rule or a list of rules; every one must admit the request.
    rate_limit: RateLimitRules = ()
    transformations: Transformations | None = None
    cors: CorsConfig | None = None
    timeout: Annotated[Duration | None, Field(gt=0)] = None
    # Per-route overrides of the upstream's settings (None: the upstream's).
    connect_timeout: Annotated[Duration | None, Field(gt=0)] = None
    read_timeout: Annotated[Duration | None, Field(gt=0)] = None
    retries: RetriesConfig | None = None
    #: Checked after the global `ip_rules`, before anything else on the route.
    ip_rules: IpRulesConfig | None = None
    #: Host names (lower-cased, no port) or `*.domain` wildcards; empty: every host.
    hosts: Annotated[tuple[str, ...], BeforeValidator(one_or_many)] = ()
    #: Request headers that must have exactly these values.
    headers: Mapping[HeaderName, HeaderValue] = Field(default_factory=dict)
    #: The response cache; None: off.
    cache: CacheConfig | None = None
    #: `Upgrade: websocket` handshakes are proxied (false: refused with 400).
    websocket: bool = True

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(_check_host(host, index) for index, host in enumerate(value)))

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: Mapping[str, str]) -> Mapping[str, str]:
        seen: set[str] = set()
        for name in value:
            if name.lower() == "host":
                fail("match hosts with the route's `hosts`, not a Host header", name)
            if name.lower() in seen:
                fail(f"header '{name}' is given twice (names are case-insensitive)", name)
            seen.add(name.lower())
        return value

    @field_validator("path")
    @classmethod
    def _path_pattern(cls, value: str) -> str:
        return _check_path(value)

    @property
    def label(self) -> str:
        """The route's name in metrics and logs: its ``name``, else its path."""
        return self.name if self.name is not None else self.path
