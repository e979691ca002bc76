"""Authentication against the real daemon: JWT and API keys, every rejection case."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway, wait_until
from gwconfigs import basic_config
from wire import Reply, access_line, assert_gateway_error, new_id, request, seen_with

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "auth"))
from keys import SECRET, claims, public_pem, rsa_key, token, unsigned

ISSUER = "https://issuer.test"


def auth_config(backends: BackendThread, **auth: Any) -> dict[str, Any]:
    config = basic_config(backends)
    config["auth"] = {
        "jwt": {
            "algorithms": ["HS256", "RS256"],
            "secret": "${env:TEST_JWT_SECRET}",
            "public_key": public_pem(rsa_key()),
            "issuer": ISSUER,
            "audience": "aiogate-tests",
            "forward_claims": {"sub": "X-User-Id", "role": "X-User-Role"},
            "tier_claim": "plan",
            "max_token_size": "4KiB",
            "query_param": "access_token",
            "cookie": "gw_jwt",
        },
        "api_key": {
            "keys": [{"key": "${env:TEST_DEMO_KEY}", "consumer": "demo", "tier": "gold"}],
            "query_param": "api_key",
        },
        **auth,
    }
    config["routes"] = [
        *config["routes"],
        {"path": "/api/protected", "upstream": "user-service", "name": "protected",
         "auth": {"type": ["jwt", "api_key"]}},
        {"path": "/api/admin", "upstream": "user-service", "name": "admin",
         "auth": {"type": "jwt", "claims": {"role": "admin"}, "required_claims": ["email"]}},
        {"path": "/api/keys-only", "upstream": "user-service", "name": "keys-only",
         "auth": {"type": "api_key"}},
    ]  # fmt: skip
    return config


@pytest.fixture(scope="module")
def agw(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = {"TEST_JWT_SECRET": SECRET, "TEST_DEMO_KEY": "demo-key-123"}
    gw = Gateway(auth_config(backends), tmp_path_factory.mktemp("auth"), env).start()
    yield gw
    gw.stop()


def good(**extra: Any) -> dict[str, Any]:
    return claims(iss=ISSUER, aud="aiogate-tests", **extra)


def get(gw: Gateway, path: str, *headers: tuple[str, str]) -> tuple[Reply, str]:
    rid = new_id()
    return request(gw.port, "GET", path, [("X-Request-ID", rid), *headers]), rid


def bearer(tok: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {tok}")


def rejected(gw: Gateway, tok: str, reason: str, path: str = "/api/protected") -> Reply:
    reply, rid = get(gw, path, bearer(tok))
    assert_gateway_error(reply, 401, "unauthorized")
    challenge = reply.header("WWW-Authenticate") or ""
    assert challenge.startswith('Bearer realm="aiogate", error="invalid_token"'), challenge
    assert "error_description=" in challenge
    wait_until(lambda: any(e.get("request_id") == rid for e in gw.events("auth_failed")))
    event = next(e for e in gw.events("auth_failed") if e.get("request_id") == rid)
    assert event["reason"] == reason, event
    assert tok not in json.dumps(event)
    return reply


def test_missing_credentials_401(agw: Gateway) -> None:
    reply, _ = get(agw, "/api/protected")
    assert_gateway_error(reply, 401)
    assert reply.header("WWW-Authenticate") == 'Bearer realm="aiogate"'
    reply, _ = get(agw, "/api/protected", ("Authorization", "Basic dXNlcjpwYXNz"))
    assert reply.status == 401


def test_public_routes_and_healthz_stay_public(agw: Gateway) -> None:
    assert get(agw, "/api/users")[0].status == 200
    assert get(agw, "/healthz")[0].status == 200


def test_valid_jwt_forwards_claims_and_strips_credentials(
    agw: Gateway, backends: BackendThread
) -> None:
    tok = token(good(sub="alice", role="user", plan="gold"))
    reply, rid = get(agw, "/api/protected/x", bearer(tok), ("X-User-Id", "mallory"),
                     ("X-User-Role", "admin"))  # fmt: skip
    assert reply.status == 200, reply.body
    seen = backends.seen.find(rid)["headers"]
    assert isinstance(seen, dict)
    assert seen["X-User-Id"] == "alice"
    assert seen["X-User-Role"] == "user"
    assert "Authorization" not in seen
    names = [name.lower() for name, _ in backends.seen.find(rid)["header_list"]]  # type: ignore[attr-defined]
    assert names.count(b"x-user-id") + names.count("x-user-id") == 1
    line = access_line(agw, rid)
    assert line["consumer"] == "alice"


@pytest.mark.parametrize(
    ("path", "credential"),
    [
        ("/api/users", ()),  # public
        ("/api/keys-only", (("X-API-Key", "demo-key-123"),)),  # api_key only
        ("/api/protected", (("X-API-Key", "demo-key-123"),)),  # jwt or api_key, by key
    ],
)
def test_client_cannot_forge_forwarded_claim_headers_on_any_route(
    agw: Gateway, backends: BackendThread, path: str, credential: tuple[tuple[str, str], ...]
) -> None:
    """X-User-Id / X-User-Role are the gateway's word about a verified token: a client's own
    never reaches an upstream, whatever the route's auth (issue 3: "always removed first")."""
    reply, rid = get(agw, path, *credential, ("X-User-Id", "admin"), ("x-user-role", "admin"),
                     ("X-Other", "kept"))  # fmt: skip
    assert reply.status == 200, reply.body
    names = [name.lower() for name, _ in backends.seen.find(rid)["header_list"]]  # type: ignore[attr-defined]
    assert b"x-user-id" not in names
    assert b"x-user-role" not in names
    assert b"x-other" in names


def test_token_from_cookie_is_cut_from_the_forwarded_cookies(
    agw: Gateway, backends: BackendThread
) -> None:
    """forward_token is false: the token does not reach the upstream as a cookie either, and
    the other cookies pass byte-exact."""
    tok = token(good(sub="carol"))
    reply, rid = get(agw, "/api/protected/c", ("Cookie", f'a=1; gw_jwt={tok}; b="x y";c=3'))
    assert reply.status == 200, reply.body
    seen = backends.seen.find(rid)
    cookies = [v for k, v in seen["header_list"] if k.lower() == b"cookie"]  # type: ignore[attr-defined]
    assert cookies == [b'a=1; b="x y";c=3']
    assert seen["headers"]["X-User-Id"] == "carol"  # type: ignore[index]
    # The token as the only cookie: no Cookie header at all goes out.
    reply, rid = get(agw, "/api/protected/c", ("Cookie", f"gw_jwt={tok}"))
    assert reply.status == 200, reply.body
    assert "Cookie" not in backends.seen.find(rid)["headers"]  # type: ignore[operator]


def test_claim_with_no_utf8_form_is_401_and_reaches_no_backend(
    agw: Gateway, backends: BackendThread
) -> None:
    """A lone surrogate in a forwarded claim cannot be sent: the token is refused, rather
    than each attempt failing as a 502 that opens the backends' circuits."""
    tok = token(good(sub="\ud800"))
    for _ in range(6):  # more than failure_threshold (5)
        reply = rejected(agw, tok, "invalid_claim")
        assert not seen_with(backends, reply.json()["request_id"])
    assert get(agw, "/api/protected", bearer(token(good())))[0].status == 200


def test_token_from_query_param_is_removed_before_forwarding(
    agw: Gateway, backends: BackendThread
) -> None:
    tok = token(good())
    reply, rid = get(agw, f"/api/protected?a=1&access_token={tok}&b=2")
    assert reply.status == 200
    assert backends.seen.find(rid)["raw_path"] == "/api/protected?a=1&b=2"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (lambda: good(exp=int(time.time()) - 60), "token_expired"),
        (lambda: good(nbf=int(time.time()) + 3600), "token_not_yet_valid"),
        (lambda: {**good(), "iss": "https://evil.test"}, "invalid_issuer"),
        (lambda: {**good(), "aud": "someone-else"}, "invalid_audience"),
        (lambda: {k: v for k, v in good().items() if k != "exp"}, "missing_claim"),
    ],
    ids=["expired", "nbf", "wrong-iss", "wrong-aud", "no-exp"],
)
def test_claim_rejections(agw: Gateway, payload: Any, reason: str) -> None:
    rejected(agw, token(payload()), reason)


def test_bad_signature(agw: Gateway) -> None:
    rejected(agw, token(good(), key="wrong-secret-" + "x" * 64), "invalid_signature")
    rejected(agw, token(good(), key=rsa_key(1), alg="RS256"), "invalid_signature")


def test_alg_none(agw: Gateway) -> None:
    rejected(agw, unsigned(good(), {"alg": "none", "typ": "JWT"}), "algorithm_not_allowed")


def test_alg_not_in_allow_list(agw: Gateway) -> None:
    rejected(agw, token(good(), alg="HS512"), "algorithm_not_allowed")


def test_algorithm_confusion(agw: Gateway) -> None:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(b'{"alg":"HS256","typ":"JWT"}')
    body = b64(json.dumps(good(sub="root")).encode())
    pem = public_pem(rsa_key()).encode()
    sig = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    rejected(agw, f"{head}.{body}.{b64(sig)}", "invalid_signature")


def test_huge_and_malformed_tokens(agw: Gateway) -> None:
    rejected(agw, token(good(pad="x" * 5000)), "token_too_large")
    for bad in ("abc", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.%%%.sig", "...."):
        rejected(agw, bad, "malformed_token")


def test_claim_rules_are_403(agw: Gateway) -> None:
    ok = token(good(role="admin", email="a@x"))
    assert get(agw, "/api/admin", bearer(ok))[0].status == 200
    for tok, _reason in [(token(good(role="user", email="a@x")), "insufficient_claims"),
                        (token(good(role="admin")), "missing_claim")]:  # fmt: skip
        reply, _ = get(agw, "/api/admin", bearer(tok))
        assert_gateway_error(reply, 403, "forbidden")
        assert 'error="insufficient_scope"' in (reply.header("WWW-Authenticate") or "")
    # An API key has no claims: it never satisfies a claim rule (and is not accepted here).
    assert get(agw, "/api/admin", ("X-API-Key", "demo-key-123"))[0].status == 401


def test_api_key_header_and_query(agw: Gateway, backends: BackendThread) -> None:
    reply, rid = get(agw, "/api/protected", ("X-API-Key", "demo-key-123"))
    assert reply.status == 200
    seen = backends.seen.find(rid)
    assert "X-API-Key" not in seen["headers"]  # type: ignore[operator]
    assert access_line(agw, rid)["consumer"] == "demo"
    reply, rid = get(agw, "/api/keys-only?api_key=demo-key-123&q=1")
    assert reply.status == 200
    assert backends.seen.find(rid)["raw_path"] == "/api/keys-only?q=1"


def test_unknown_and_wrong_key_bodies_identical(agw: Gateway) -> None:
    unknown, _ = get(agw, "/api/keys-only", ("X-API-Key", "no-such-key"))
    wrong, _ = get(agw, "/api/keys-only", ("X-API-Key", "demo-key-124"))
    a, b = assert_gateway_error(unknown, 401), assert_gateway_error(wrong, 401)
    a.pop("request_id"), b.pop("request_id")
    assert a == b
    assert unknown.header("WWW-Authenticate") == wrong.header("WWW-Authenticate")


def test_failures_are_counted(agw: Gateway) -> None:
    get(agw, "/api/keys-only", ("X-API-Key", "nope"))
    with urllib.request.urlopen(f"{agw.admin_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'aiogate_auth_failures_total{reason="invalid_api_key",route="keys-only"}' in text
    assert 'reason="missing_credentials",route="protected"' in text
