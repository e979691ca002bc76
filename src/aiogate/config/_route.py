"""Routes: path patterns, methods, and the per-route auth, limit, transform and CORS policy."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, field_validator, model_validator

from ._base import (
    IDENTIFIER,
    HeaderName,
    HeaderNames,
    HeaderValue,
    Methods,
    Model,
    StrList,
    describe,
    fail,
    one_or_many,
)
from ._ratelimit import RateLimitRules, RouteRateLimit, check_dimension
from ._upstream import RetriesConfig
from .units import Duration

__all__ = [
    "CorsConfig",
    "HeaderTransform",
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
    types: Annotated[tuple[Literal["jwt", "api_key"], ...], BeforeValidator(one_or_many)] = Field(
        alias="type", min_length=1
    )
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


class HeaderTransform(Model):
    add_headers: Mapping[HeaderName, HeaderValue] = Field(default_factory=dict)
    remove_headers: HeaderNames = ()


class Transformations(Model):
    request: HeaderTransform | None = None
    response: HeaderTransform | None = None


class CorsConfig(Model):
    allowed_origins: StrList = ()
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

    @field_validator("path")
    @classmethod
    def _path_pattern(cls, value: str) -> str:
        return _check_path(value)

    @property
    def label(self) -> str:
        """The route's name in metrics and logs: its ``name``, else its path."""
        return self.name if self.name is not None else self.path
