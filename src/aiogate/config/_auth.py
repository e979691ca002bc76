"""Authentication settings: JWT verification and API keys."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from ._base import (
    HeaderName,
    Model,
    StrList,
    check_header_name,
    describe,
    fail,
    one_or_many,
    string_list,
)
from .units import Duration

__all__ = ["ApiKeyConfig", "ApiKeyEntry", "AuthConfig", "JwtConfig"]

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"}
)
_ALGORITHM_ORDER = (
    *("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"),
    *("PS256", "PS384", "PS512", "EdDSA"),
)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _audience(value: Any) -> Any:
    # Normalised up front so a bad item is reported once, not once per union member.
    if value is None or isinstance(value, str):
        return value
    return string_list(value, "audience")


class JwtConfig(Model):
    algorithms: Annotated[tuple[str, ...], BeforeValidator(one_or_many)] = ("HS256",)
    secret: SecretStr | None = None
    public_key: str | None = None
    public_key_file: str | None = None
    jwks_url: str | None = None
    issuer: str | None = None
    audience: Annotated[str | tuple[str, ...] | None, BeforeValidator(_audience)] = None
    leeway: Annotated[Duration, Field(ge=0)] = 0.0
    required_claims: StrList = ()
    require_exp: bool = True
    forward_claims: Mapping[str, HeaderName] = Field(default_factory=dict)

    @field_validator("algorithms")
    @classmethod
    def _known_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            fail("must list at least one algorithm")
        for index, alg in enumerate(value):
            if alg not in HMAC_ALGORITHMS and alg not in PUBLIC_KEY_ALGORITHMS:
                fail(f"unknown algorithm '{alg}' (known: {', '.join(_ALGORITHM_ORDER)})", index)
        return tuple(dict.fromkeys(value))

    @field_validator("secret")
    @classmethod
    def _non_empty_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            fail("must not be empty")
        return value

    @field_validator("public_key_file")
    @classmethod
    def _readable_file(cls, value: str | None) -> str | None:
        # Checked at load time so a typo fails `aiogate check`, not the first request.
        if value is not None:
            try:
                with open(value, "rb"):
                    pass
            except OSError as exc:
                fail(f"cannot read '{value}': {exc.strerror or exc}")
        return value

    @field_validator("jwks_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            fail(f"must be an http:// or https:// URL, got {describe(value)}")
        return value

    @model_validator(mode="after")
    def _keys_for_algorithms(self) -> JwtConfig:
        for index, alg in enumerate(self.algorithms):
            if alg in HMAC_ALGORITHMS and self.secret is None:
                fail(f"algorithm {alg} needs 'secret'", "algorithms", index)
            if alg in PUBLIC_KEY_ALGORITHMS and not (
                self.public_key or self.public_key_file or self.jwks_url
            ):
                fail(
                    f"algorithm {alg} needs one of 'public_key', 'public_key_file' or 'jwks_url'",
                    "algorithms",
                    index,
                )
        return self


class ApiKeyEntry(Model):
    key: SecretStr | None = None
    key_sha256: str | None = None
    consumer: str = Field(min_length=1)

    @field_validator("key_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digest = value.strip().lower()
        if not _SHA256_HEX.fullmatch(digest):
            fail("must be 64 hex digits (the SHA-256 of the key)")
        return digest

    @model_validator(mode="after")
    def _exactly_one_key(self) -> ApiKeyEntry:
        if self.key is not None and self.key_sha256 is not None:
            fail("give either 'key' or 'key_sha256', not both", "key_sha256")
        if self.key is None and self.key_sha256 is None:
            fail("needs 'key' or 'key_sha256'")
        if self.key is not None and not self.key.get_secret_value():
            fail("must not be empty", "key")
        return self

    @property
    def digest(self) -> str:
        """The SHA-256 hex digest of the key, whichever way it was given."""
        if self.key_sha256 is not None:
            return self.key_sha256
        assert self.key is not None  # guaranteed by _exactly_one_key
        return hashlib.sha256(self.key.get_secret_value().encode()).hexdigest()


class ApiKeyConfig(Model):
    header: str = "X-API-Key"
    keys: tuple[ApiKeyEntry, ...] = ()
    store: Literal["memory", "redis"] = "memory"

    @field_validator("header")
    @classmethod
    def _token(cls, value: str) -> str:
        return check_header_name(value)

    @model_validator(mode="after")
    def _unique_keys(self) -> ApiKeyConfig:
        # The same key for two consumers would make attribution depend on list order.
        seen: dict[str, int] = {}
        for index, entry in enumerate(self.keys):
            first = seen.setdefault(entry.digest, index)
            if first != index:
                fail(f"duplicate API key (same as keys[{first}])", "keys", index)
        return self


class AuthConfig(Model):
    jwt: JwtConfig | None = None
    api_key: ApiKeyConfig | None = None
