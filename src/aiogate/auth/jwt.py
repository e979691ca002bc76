"""JWT verification with PyJWT, restricted to the configured algorithm allow-list.

The token's `alg` picks the key *family*, never the key material: HS* verifies only with the
configured `secret`, asymmetric algorithms only with the configured public key or JWKS keys of
the matching type. So `alg: none`, an algorithm outside the list, and an HS token "signed" with
an RSA/EC public key all fail. `jku`, `x5u` and embedded `jwk` headers are never read.

Verified tokens are cached by their exact text until `exp` (plus leeway), but at most
`cache_ttl`: a hit costs a dict lookup instead of a signature check.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import jwt
import orjson
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt import exceptions as jwt_errors

from .. import log
from ..config import JwtConfig
from ..config._auth import HMAC_ALGORITHMS, public_key_type
from ._cache import ExpiringLru
from ._types import AuthFailure, Consumer
from .jwks import JwksKeySet, family_of_algorithm

__all__ = ["JwtVerifier", "claim_header_value"]

# C0 controls, DEL and C1 controls: never put into an upstream header.
_CONTROL: Final = frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))

# Most specific first: InvalidSignatureError is a DecodeError, ExpiredSignatureError an
# InvalidTokenError, and so on.
_REASONS: Final[tuple[tuple[type[Exception], str, str], ...]] = (
    (jwt_errors.ExpiredSignatureError, "token_expired", "the token has expired"),
    (jwt_errors.ImmatureSignatureError, "token_not_yet_valid", "the token is not valid yet"),
    (jwt_errors.InvalidAudienceError, "invalid_audience", "the token is not for this audience"),
    (jwt_errors.InvalidIssuerError, "invalid_issuer", "the token has the wrong issuer"),
    (jwt_errors.MissingRequiredClaimError, "missing_claim", "the token lacks a required claim"),
    (jwt_errors.InvalidSignatureError, "invalid_signature", "the token signature is invalid"),
    (jwt_errors.InvalidAlgorithmError, "algorithm_not_allowed", "algorithm not allowed"),
    (jwt_errors.DecodeError, "malformed_token", "the token is malformed"),
    (jwt_errors.PyJWTError, "invalid_token", "the token is invalid"),
)  # fmt: skip


class JwtVerifier:
    def __init__(
        self,
        config: JwtConfig,
        *,
        jwks: JwksKeySet | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._algorithms = frozenset(config.algorithms)
        self._secret = config.secret.get_secret_value().encode() if config.secret else None
        self._static_key: Any = None
        self._static_family: str | None = None
        try:
            pem = config.pem()
            if pem is not None:
                self._static_key = load_pem_public_key(pem)
                self._static_family = public_key_type(pem, "public key")
        except (OSError, ValueError, TypeError) as exc:
            # Fail closed: no static key means asymmetric tokens are refused (`no_key`).
            log.get_logger("aiogate.auth").error(
                log.AUTH_KEY_INVALID, source=config.public_key_file or "public_key", error=str(exc)
            )
            self._static_key = self._static_family = None
        self._jwks = jwks
        self._clock = clock
        self._max_size = config.max_token_size
        self._ttl = config.cache_ttl
        self._cache: ExpiringLru[str, Consumer] = ExpiringLru(config.cache_size)
        self._options: Any = {
            "require": ["exp"] if config.require_exp else [],
            # Without a configured audience, a token's `aud` is not the gateway's business.
            "verify_aud": config.audience is not None,
        }
        self._audience = (
            list(config.audience) if isinstance(config.audience, tuple) else config.audience
        )

    async def verify(self, token: str) -> Consumer:
        now = self._clock()
        cached = self._cache.get(token, now)
        if cached is not None:
            return cached
        if len(token) > self._max_size:
            raise AuthFailure("token_too_large", "the token is too large")
        header = _peek_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthFailure("algorithm_not_allowed", "the token algorithm is not allowed")
        kid = header.get("kid")
        keys = await self._keys(alg, kid if isinstance(kid, str) else None)
        payload = self._decode(token, alg, keys)
        consumer = self._consumer(payload)
        exp = payload.get("exp")
        expires = now + self._ttl
        if isinstance(exp, int | float):
            expires = min(expires, float(exp) + self._config.leeway)
        self._cache.put(token, consumer, expires)
        return consumer

    async def _keys(self, alg: str, kid: str | None) -> list[Any]:
        if alg in HMAC_ALGORITHMS:
            return [self._secret] if self._secret is not None else []
        family = family_of_algorithm(alg)
        keys: list[Any] = []
        if self._static_key is not None and self._static_family == family:
            keys.append(self._static_key)
        if self._jwks is not None and (kid is not None or not keys):
            keys += await self._jwks.keys_for(kid, alg)
        if not keys:
            if kid is not None and self._jwks is not None:
                raise AuthFailure("unknown_kid", "the token's signing key is unknown")
            raise AuthFailure("no_key", "no key can verify this token's algorithm")
        return keys

    def _decode(self, token: str, alg: str, keys: list[Any]) -> dict[str, Any]:
        config = self._config
        failure: Exception | None = None
        for key in keys:
            try:
                payload: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    options=self._options,
                    audience=self._audience,
                    issuer=config.issuer,
                    leeway=config.leeway,
                )
                return payload
            except jwt_errors.InvalidSignatureError as exc:
                failure = exc  # another candidate key (no kid) may still fit
            except (jwt_errors.PyJWTError, ValueError, TypeError) as exc:
                failure = exc
                break
        raise _failure(failure)

    def _consumer(self, payload: Mapping[str, Any]) -> Consumer:
        config = self._config
        for claim in config.required_claims:
            if claim not in payload:
                raise AuthFailure(
                    "missing_claim", f"the token lacks the required claim '{claim}'", 403
                )
        subject = payload.get(config.subject_claim)
        tier = payload.get(config.tier_claim) if config.tier_claim is not None else None
        headers = []
        for claim, header in config.forward_claims.items():
            if claim in payload:
                headers.append((header, claim_header_value(claim, payload[claim])))
        return Consumer(
            name=subject if isinstance(subject, str) else None,
            method="jwt",
            tier=tier if isinstance(tier, str) else None,
            claims=payload,
            headers=tuple(headers),
        )


def claim_header_value(claim: str, value: Any) -> str:
    """A claim as a header value: scalars as text, lists comma-joined; else AuthFailure."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    elif isinstance(value, list) and all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in value
    ):
        text = ",".join(str(v) for v in value)
    else:
        raise AuthFailure("invalid_claim", f"claim '{claim}' cannot be forwarded as a header")
    if any(c in _CONTROL for c in text):
        raise AuthFailure("invalid_claim", f"claim '{claim}' contains control characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # JSON's \ud800 escapes decode to lone surrogates, which have no UTF-8 form: such a
        # header could not be sent, and must fail here, as the token's fault.
        raise AuthFailure("invalid_claim", f"claim '{claim}' is not valid Unicode") from None
    return text


def _failure(exc: Exception | None) -> AuthFailure:
    for kind, reason, description in _REASONS:
        if isinstance(exc, kind):
            return AuthFailure(reason, description)
    return AuthFailure("invalid_token", "the token is invalid")


def _peek_header(token: str) -> dict[str, Any]:
    """The JOSE header, only to pick the key: PyJWT parses and checks it again when it verifies.

    `jwt.get_unverified_header` costs about as much as half a verification (it validates the
    whole token's encoding); the key choice needs only the first segment.
    """
    segment, dot, _ = token.partition(".")
    if not dot or not segment:
        raise AuthFailure("malformed_token", "the token is malformed")
    try:
        header = orjson.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):  # orjson.JSONDecodeError is a ValueError
        raise AuthFailure("malformed_token", "the token is malformed") from None
    if not isinstance(header, dict):
        raise AuthFailure("malformed_token", "the token is malformed")
    return header
