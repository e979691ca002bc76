"""JwtVerifier: every acceptance and rejection rule, without a server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from keys import SECRET, claims, ec_key, jwk, public_pem, rsa_key, token, unsigned

from aiogate.auth import AuthFailure, JwksKeySet, JwtVerifier
from aiogate.config import JwtConfig


def verifier(jwks: JwksKeySet | None = None, **config: Any) -> JwtVerifier:
    config.setdefault("secret", SECRET)
    return JwtVerifier(JwtConfig.model_validate(config), jwks=jwks)


async def reason(v: JwtVerifier, tok: str) -> str:
    with pytest.raises(AuthFailure) as info:
        await v.verify(tok)
    return info.value.reason


async def test_hs256_accepts_and_names_the_subject() -> None:
    consumer = await verifier().verify(token(claims(sub="bob")))
    assert consumer.name == "bob"
    assert consumer.method == "jwt"
    assert consumer.claims["sub"] == "bob"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (claims(exp=int(time.time()) - 10), "token_expired"),
        (claims(nbf=int(time.time()) + 3600), "token_not_yet_valid"),
        (claims(iat=int(time.time()) + 3600), "token_not_yet_valid"),
        ({"sub": "x"}, "missing_claim"),
    ],
)
async def test_time_claims(payload: dict[str, Any], expected: str) -> None:
    assert await reason(verifier(), token(payload)) == expected


async def test_leeway_admits_recently_expired() -> None:
    tok = token(claims(exp=int(time.time()) - 5))
    assert (await verifier(leeway="30s").verify(tok)).name == "alice"


async def test_exp_optional_when_configured() -> None:
    assert (await verifier(require_exp=False).verify(token({"sub": "a"}))).name == "a"


async def test_issuer_and_audience() -> None:
    v = verifier(issuer="https://issuer.example", audience=["api", "other"])
    ok = claims(iss="https://issuer.example", aud="api")
    assert (await v.verify(token(ok))).name == "alice"
    assert await reason(v, token(claims(iss="https://evil", aud="api"))) == "invalid_issuer"
    assert await reason(v, token(claims(iss="https://issuer.example", aud="x"))) == (
        "invalid_audience"
    )
    assert await reason(v, token(claims(iss="https://issuer.example"))) == "missing_claim"


async def test_audience_not_checked_when_unconfigured() -> None:
    assert (await verifier().verify(token(claims(aud="whatever")))).name == "alice"


async def test_bad_signature_and_malformed() -> None:
    v = verifier()
    assert await reason(v, token(key="another-secret-" + "x" * 64)) == ("invalid_signature")
    assert await reason(v, "not.a.jwt") == "malformed_token"
    assert await reason(v, "garbage") == "malformed_token"
    tok = token()
    assert await reason(v, tok[:-3] + ("AAA" if not tok.endswith("AAA") else "BBB")) == (
        "invalid_signature"
    )


async def test_alg_none_and_unlisted_algorithms_rejected() -> None:
    v = verifier()
    for alg in ("none", "None", "NONE", ""):
        assert await reason(v, unsigned(claims(), {"alg": alg, "typ": "JWT"})) == (
            "algorithm_not_allowed"
        )
    assert await reason(v, unsigned(claims(), {"typ": "JWT"})) == "algorithm_not_allowed"
    assert await reason(v, token(alg="HS512")) == "algorithm_not_allowed"


def _hs_with(key: bytes, payload: dict[str, Any]) -> str:
    """HS256 signed by hand with arbitrary bytes (PyJWT refuses PEM as an HMAC secret)."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload).encode())
    sig = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


async def test_algorithm_confusion_rejected() -> None:
    pem = public_pem(rsa_key())
    forged = _hs_with(pem.encode(), claims())
    # RS256 only: HS256 is not on the list at all.
    rs_only = JwtVerifier(JwtConfig(algorithms=("RS256",), public_key=pem))
    assert await reason(rs_only, forged) == "algorithm_not_allowed"
    # Both listed: HS verifies only with the secret, never with the public key.
    both = JwtVerifier(
        JwtConfig.model_validate({"algorithms": ["HS256", "RS256"], "secret": SECRET,
                                  "public_key": pem})
    )  # fmt: skip
    assert await reason(both, forged) == "invalid_signature"
    assert (await both.verify(token(key=rsa_key(), alg="RS256"))).name == "alice"


async def test_rs256_es256_with_public_key_file(tmp_path: Path) -> None:
    path = tmp_path / "jwt.pub"
    path.write_text(public_pem(rsa_key()))
    v = JwtVerifier(JwtConfig(algorithms=("RS256", "PS256"), public_key_file=str(path)))
    assert (await v.verify(token(key=rsa_key(), alg="RS256"))).name == "alice"
    assert (await v.verify(token(key=rsa_key(), alg="PS256"))).name == "alice"
    ec_v = JwtVerifier(JwtConfig(algorithms=("ES256", "RS256"), public_key=public_pem(ec_key())))
    assert (await ec_v.verify(token(key=ec_key(), alg="ES256"))).name == "alice"
    # An RS token where only an EC key is configured: no key fits.
    assert await reason(ec_v, token(key=rsa_key(), alg="RS256")) == "no_key"


async def test_embedded_jwk_and_jku_are_ignored() -> None:
    attacker = rsa_key(1)
    pem = public_pem(rsa_key())
    v = JwtVerifier(JwtConfig(algorithms=("RS256",), public_key=pem))
    forged = token(key=attacker, alg="RS256", jwk=jwk(attacker, "k", "RS256"),
                   jku="http://evil.example/jwks", x5u="http://evil.example/x5")  # fmt: skip
    assert await reason(v, forged) == "invalid_signature"


async def test_huge_token_rejected_before_parsing() -> None:
    v = verifier(max_token_size="1KiB")
    assert await reason(v, token(claims(pad="x" * 2000))) == "token_too_large"


async def test_required_claims_are_403() -> None:
    v = verifier(required_claims=["role"])
    with pytest.raises(AuthFailure) as info:
        await v.verify(token())
    assert (info.value.reason, info.value.status) == ("missing_claim", 403)


async def test_forward_claims_and_control_characters() -> None:
    v = verifier(forward_claims={"sub": "X-User-Id", "roles": "X-Roles", "n": "X-N"},
                 tier_claim="plan")  # fmt: skip
    consumer = await v.verify(token(claims(roles=["a", "b"], n=3, plan="gold")))
    assert dict(consumer.headers) == {"X-User-Id": "alice", "X-Roles": "a,b", "X-N": "3"}
    assert consumer.tier == "gold"
    for bad in ("alice\r\nX-Admin: 1", "a\x00b", "tab\there", "del\x7f"):
        assert await reason(v, token(claims(sub=bad))) == "invalid_claim"
    assert await reason(v, token(claims(roles={"nested": 1}))) == "invalid_claim"


async def test_claims_with_no_utf8_form_are_refused() -> None:
    """JSON's "\\ud800" escape decodes to a lone surrogate: no header can carry it, so the
    token is refused here (401), not left to fail at the upstream as the backend's fault."""
    v = verifier(forward_claims={"sub": "X-User-Id", "roles": "X-Roles"})
    assert await reason(v, token(claims(sub="a\ud800b"))) == "invalid_claim"
    assert await reason(v, token(claims(roles=["ok", "\udfff"]))) == "invalid_claim"
    # Real non-ASCII text is fine.
    consumer = await v.verify(token(claims(sub="zoë 日本")))
    assert dict(consumer.headers)["X-User-Id"] == "zoë 日本"


async def test_cache_hits_until_exp() -> None:
    now = [time.time()]
    config = JwtConfig.model_validate({"secret": SECRET, "cache_ttl": "1h"})
    v = JwtVerifier(config, clock=lambda: now[0])
    tok = token(claims(exp=int(now[0]) + 60))
    first = await v.verify(tok)
    assert await v.verify(tok) is first  # a hit returns the very same Consumer
    now[0] += 61  # past exp (on our clock): the entry is gone, the token is verified again
    assert await v.verify(tok) is not first


async def test_cache_bounded_by_ttl_and_size() -> None:
    now = [time.time()]
    config = JwtConfig.model_validate({"secret": SECRET, "cache_ttl": "10s", "cache_size": 2})
    v = JwtVerifier(config, clock=lambda: now[0])
    tokens = [token(claims(n=i)) for i in range(3)]
    for tok in tokens:
        await v.verify(tok)
    assert len(v._cache) == 2
    first = await v.verify(tokens[2])
    now[0] += 11
    assert await v.verify(tokens[2]) is not first  # re-verified after cache_ttl


async def test_failures_are_not_cached() -> None:
    v = verifier()
    bad = token(claims(exp=int(time.time()) - 10))
    for _ in range(2):
        assert await reason(v, bad) == "token_expired"
    assert len(v._cache) == 0


def test_pyjwt_version_supports_iat_check() -> None:
    assert tuple(int(p) for p in jwt.__version__.split(".")[:2]) >= (2, 10)
