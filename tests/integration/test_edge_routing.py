"""Host and header routing, request templates and JSON Pointer bodies on the real daemon.

Raw sockets throughout: the Host header (and its absence) must go out exactly as written.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from backend import BackendThread
from gateway import Gateway
from gwconfigs import basic_config
from wire import Reply, assert_gateway_error, exchange, new_id, request, seen_with

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "auth"))
from keys import SECRET, claims, token

ADMIN_TOKEN = "edge-admin-token"
ENV = {"EDGE_JWT_SECRET": SECRET, "EDGE_ADMIN_TOKEN": ADMIN_TOKEN}


def edge_config(backends: BackendThread) -> dict[str, Any]:
    config = basic_config(backends)
    config["admin"] = {"token": "${env:EDGE_ADMIN_TOKEN}"}
    config["auth"] = {"jwt": {"algorithms": ["HS256"], "secret": "${env:EDGE_JWT_SECRET}"}}
    request_templates = {
        "X-Sub": "${claims.sub}",
        "X-Org": "org=${claims.org}",
        "X-Level": "${claims.level}",
        "X-Asked-Version": "${header.X-Version}",
        "X-Page": "${query.page}",
    }
    config["routes"] = [
        *config["routes"],
        {"path": "/h", "upstream": "user-service", "hosts": ["api.example.com"]},
        {"path": "/h", "upstream": "order-service", "hosts": ["*.example.com"]},
        {"path": "/only", "upstream": "user-service", "hosts": ["only.test"],
         "methods": ["GET"]},
        {"path": "/hv", "upstream": "order-service", "headers": {"X-Version": "2"}},
        {"path": "/hv", "upstream": "user-service"},
        {"path": "/c", "upstream": "user-service", "hosts": ["cors.test"], "methods": ["GET"],
         "cors": {"allowed_origins": ["https://app.test"], "allowed_methods": ["GET"]}},
        {"path": "/c", "upstream": "user-service", "methods": ["GET"]},
        {"path": "/tpl", "upstream": "user-service", "auth": {"type": "jwt"},
         "transformations": {"request": {"add_headers": request_templates},
                             "response": {"add_headers": {"X-Back-Sub": "${claims.sub}"}}}},
        {"path": "/jp", "upstream": "user-service", "transformations": {"request": {
            "json_body": {"add": {"/meta/source": "gw", "/items/-": 9, "/new/deep/x": True},
                          "remove": ["/meta/secret", "/a~1b"]}}}},
    ]  # fmt: skip
    return config


@pytest.fixture(scope="module")
def egw(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(edge_config(backends), tmp_path_factory.mktemp("edge"), env=ENV).start()
    yield gw
    gw.stop()


def send(gw: Gateway, target: str, host: str = "gw.test", *, method: str = "GET",
         headers: list[tuple[str, str]] | None = None,
         body: bytes = b"") -> tuple[Reply, str]:  # fmt: skip
    rid = new_id()
    reply = request(gw.port, method, target, [("X-Request-ID", rid), *(headers or [])], body,
                    host=host)  # fmt: skip
    return reply, rid


def served_by(backends: BackendThread, rid: str) -> str:
    (entry,) = seen_with(backends, rid)
    return str(entry["backend"])


# -- hosts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "backend"),
    [
        ("api.example.com", "backend-1"),  # exact beats the wildcard
        ("API.EXAMPLE.COM:8080", "backend-1"),  # case and port do not matter
        ("www.example.com", "backend-2"),
        ("a.b.example.com", "backend-2"),
    ],
)
def test_host_routing(egw: Gateway, backends: BackendThread, host: str, backend: str) -> None:
    reply, rid = send(egw, "/h/x", host)
    assert reply.status == 200, reply.body
    assert served_by(backends, rid) == backend


@pytest.mark.parametrize("host", ["example.com", "other.test", "gw.test"])
def test_unknown_host_is_404(egw: Gateway, backends: BackendThread, host: str) -> None:
    reply, rid = send(egw, "/h", host)
    assert_gateway_error(reply, 404, "no_route")
    assert seen_with(backends, rid) == []


def test_405_allow_is_per_host(egw: Gateway) -> None:
    reply, _ = send(egw, "/only", "only.test", method="POST")
    assert_gateway_error(reply, 405)
    assert reply.header("Allow") == "GET, HEAD"
    reply, _ = send(egw, "/only", "elsewhere.test", method="POST")
    assert_gateway_error(reply, 404, "no_route")


def test_http10_absolute_form_without_host_routes_by_the_target(
    egw: Gateway, backends: BackendThread
) -> None:
    rid = new_id()
    reply = exchange(
        egw.port,
        f"GET http://api.example.com/h HTTP/1.0\r\nX-Request-ID: {rid}\r\n\r\n".encode(),
    )
    assert reply.status == 200, reply.body
    assert served_by(backends, rid) == "backend-1"


def test_routes_without_hosts_serve_every_host(egw: Gateway, backends: BackendThread) -> None:
    for host in ("gw.test", "api.example.com"):
        reply, rid = send(egw, "/api/users", host)
        assert reply.status == 200
        assert served_by(backends, rid) == "backend-1"


# -- headers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "backend"),
    [
        ([("X-Version", "2")], "backend-2"),
        ([("x-version", "2")], "backend-2"),
        ([("X-Version", "3")], "backend-1"),
        ([], "backend-1"),
        # Sent twice, the field's value is "2, 2": not the exact value.
        ([("X-Version", "2"), ("X-Version", "2")], "backend-1"),
    ],
)
def test_header_routing(
    egw: Gateway, backends: BackendThread, headers: list[tuple[str, str]], backend: str
) -> None:
    reply, rid = send(egw, "/hv", headers=headers)
    assert reply.status == 200
    assert served_by(backends, rid) == backend


def test_cors_preflight_respects_hosts(egw: Gateway) -> None:
    preflight = [("Origin", "https://app.test"), ("Access-Control-Request-Method", "GET")]
    reply, _ = send(egw, "/c", "cors.test", method="OPTIONS", headers=preflight)
    assert reply.status == 204, reply.body
    assert reply.header("Access-Control-Allow-Origin") == "https://app.test"
    # Another host's /c has no CORS policy: OPTIONS is routed as a method, which it refuses.
    reply, _ = send(egw, "/c", "other.test", method="OPTIONS", headers=preflight)
    assert_gateway_error(reply, 405)
    assert reply.header("Access-Control-Allow-Origin") is None


# -- templates -------------------------------------------------------------------------------


def test_claims_header_and_query_templates(egw: Gateway, backends: BackendThread) -> None:
    tok = token(claims(org="acme", level=3))
    reply, rid = send(
        egw, "/tpl?page=7&page=8", headers=[("Authorization", f"Bearer {tok}"),
                                            ("X-Version", "2")],
    )  # fmt: skip
    assert reply.status == 200, reply.body
    (entry,) = seen_with(backends, rid)
    forwarded = entry["headers"]
    assert forwarded["X-Sub"] == "alice"
    assert forwarded["X-Org"] == "org=acme"
    assert forwarded["X-Level"] == "3"
    assert forwarded["X-Asked-Version"] == "2"
    assert forwarded["X-Page"] == "7"
    assert reply.header("X-Back-Sub") == "alice"


def test_template_values_cannot_inject_headers(egw: Gateway, backends: BackendThread) -> None:
    tok = token(claims(sub="eve\r\nX-Evil: 1", org=["a", "b"]))
    reply, rid = send(egw, "/tpl?page=%0D%0AX-Evil:%202", headers=[
        ("Authorization", f"Bearer {tok}")])  # fmt: skip
    assert reply.status == 200, reply.body
    (entry,) = seen_with(backends, rid)
    forwarded = entry["headers"]
    assert "X-Evil" not in forwarded
    assert forwarded["X-Sub"] == "eveX-Evil: 1"
    assert forwarded["X-Page"] == "X-Evil: 2"
    assert forwarded["X-Org"] == "org="  # a list claim renders empty
    assert forwarded["X-Asked-Version"] == ""


# -- JSON Pointer ----------------------------------------------------------------------------


def test_json_pointer_body_edits(egw: Gateway, backends: BackendThread) -> None:
    body = {"meta": {"secret": "s", "keep": 1}, "items": [1], "a/b": 0, "z": None}
    expected = {"meta": {"keep": 1, "source": "gw"}, "items": [1, 9], "z": None,
                "new": {"deep": {"x": True}}}  # fmt: skip
    for _ in range(2):  # the second request must not see the first one's edits
        reply, rid = send(egw, "/jp", method="POST", body=json.dumps(body).encode(),
                          headers=[("Content-Type", "application/json")])  # fmt: skip
        assert reply.status == 200, reply.body
        (entry,) = seen_with(backends, rid)
        assert entry["sha256"] == hashlib.sha256(orjson.dumps(expected)).hexdigest()


# -- admin -----------------------------------------------------------------------------------


def test_admin_config_shows_hosts_and_headers(egw: Gateway) -> None:
    reply = request(egw.admin_port, "GET", "/admin/config",
                    [("Authorization", f"Bearer {ADMIN_TOKEN}")])  # fmt: skip
    assert reply.status == 200
    routes = reply.json()["routes"]
    by_hosts = [r for r in routes if r["path"] == "/h"]
    assert [r["hosts"] for r in by_hosts] == [["api.example.com"], ["*.example.com"]]
    hv = [r for r in routes if r["path"] == "/hv"]
    assert [r["headers"] for r in hv] == [{"X-Version": "2"}, {}]
