"""Key material for the auth tests (generated once per session: RSA is slow to make)."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

SECRET = "s3cret-for-tests-only-" + "0123456789abcdef" * 4


@functools.cache
def rsa_key(n: int = 0) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(n: int = 0) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str, alg: str) -> dict[str, Any]:
    algo = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    data: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    data.update(kid=kid, alg=alg, use="sig")
    return data


def claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "iat": now, "exp": now + 300, **extra}


def token(
    payload: dict[str, Any] | None = None, key: Any = SECRET, alg: str = "HS256", **headers: Any
) -> str:
    return jwt.encode(payload if payload is not None else claims(), key, algorithm=alg,
                      headers=headers or None)  # fmt: skip


def unsigned(payload: dict[str, Any], header: dict[str, Any]) -> str:
    """A token with any header, e.g. alg none (PyJWT refuses to mint those)."""
    import base64

    def b64(data: dict[str, Any]) -> str:
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{b64(header)}.{b64(payload)}."
