"""Authentication settings: JWT verification and API keys."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from ._base import (
    HeaderName,
    Model,
    ReadableFile,
    StrList,
    check_header_name,
    describe,
    fail,
    one_or_many,
    string_list,
)
from ._secrets import check_hmac_secret, check_not_published, published_sha256
from .units import Duration, Size

__all__ = ["ApiKeyConfig", "ApiKeyEntry", "AuthConfig", "JwtConfig", "public_key_type"]

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
    # Readable at load time; the content is parsed when the Runtime is built: a file that is not
    # a PEM public key leaves the asymmetric algorithms without a key (401 `no_key`, logged).
    public_key_file: ReadableFile | None = None
    jwks_url: str | None = None
    issuer: str | None = None
    audience: Annotated[str | tuple[str, ...] | None, BeforeValidator(_audience)] = None
    leeway: Annotated[Duration, Field(ge=0)] = 0.0
    required_claims: StrList = ()
    require_exp: bool = True
    forward_claims: Mapping[str, HeaderName] = Field(default_factory=dict)
    #: Where else a token may come from (besides `Authorization: Bearer`).
    cookie: str | None = Field(default=None, min_length=1)
    query_param: str | None = Field(default=None, min_length=1)
    #: Send the client's `Authorization` header upstream too (default: stripped).
    forward_token: bool = False
    #: The claims naming the consumer and its tier (rate-limit tiers, logs).
    subject_claim: str = Field(default="sub", min_length=1)
    tier_claim: str | None = Field(default=None, min_length=1)
    #: Longer tokens are rejected before any parsing.
    max_token_size: Annotated[Size, Field(gt=0)] = 8192
    #: Verified tokens are cached until their `exp`, but never longer than `cache_ttl`.
    cache_size: Annotated[int, Field(ge=0)] = 10_000
    cache_ttl: Annotated[Duration, Field(ge=0)] = 300.0
    #: JWKS: refreshed every `jwks_refresh`; an unknown `kid` refetches at most once per
    #: `jwks_cooldown`; one fetch may take `jwks_timeout`.
    jwks_refresh: Annotated[Duration, Field(gt=0)] = 300.0
    jwks_cooldown: Annotated[Duration, Field(ge=0)] = 30.0
    jwks_timeout: Annotated[Duration, Field(gt=0)] = 5.0

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

    @field_validator("public_key")
    @classmethod
    def _pem(cls, value: str | None) -> str | None:
        if value is not None:
            public_key_type(value.encode(), "public_key")
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
        if self.public_key is not None and self.public_key_file is not None:
            fail("give either 'public_key' or 'public_key_file', not both", "public_key_file")
        if self.secret is not None and HMAC_ALGORITHMS & set(self.algorithms):
            check_hmac_secret(self.secret.get_secret_value(), "secret")
        return self

    def pem(self) -> bytes | None:
        """The configured PEM public key (inline or from its file), if any."""
        if self.public_key is not None:
            return self.public_key.encode()
        if self.public_key_file is not None:
            with open(self.public_key_file, "rb") as file:
                return file.read()
        return None


def public_key_type(pem: bytes, what: str) -> Literal["RSA", "EC", "OKP"]:
    """The key family of a PEM public key; a config error when it is not one."""
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        fail(f"{what} is not a PEM public key: {exc}")
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return "EC"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "OKP"
    return fail(f"{what}: unsupported key type {type(key).__name__}")


class ApiKeyEntry(Model):
    key: SecretStr | None = None
    key_sha256: str | None = None
    consumer: str = Field(min_length=1)
    tier: str | None = Field(default=None, min_length=1)

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
        if self.key is not None:
            check_not_published(self.key.get_secret_value(), "key")
        if self.key_sha256 is not None and published_sha256(self.key_sha256):
            fail("this is the digest of a key published in aiogate's documentation", "key_sha256")
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
    #: Also accept the key from this query parameter (removed before forwarding).
    query_param: str | None = Field(default=None, min_length=1)
    keys: tuple[ApiKeyEntry, ...] = ()
    store: Literal["memory", "redis"] = "memory"
    #: Redis store: how long a found / not-found answer is reused before asking Redis again.
    cache_ttl: Annotated[Duration, Field(ge=0)] = 30.0
    negative_cache_ttl: Annotated[Duration, Field(ge=0)] = 5.0
    cache_size: Annotated[int, Field(ge=0)] = 10_000

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
    #: The realm named in `WWW-Authenticate`.
    realm: str = Field(default="aiogate", pattern=r'^[^"\\\x00-\x1f\x7f]+$')
    jwt: JwtConfig | None = None
    api_key: ApiKeyConfig | None = None
