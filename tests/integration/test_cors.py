"""CORS against the real daemon: preflights answered by the gateway, headers on every answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway, free_port
from gwconfigs import basic_config
from wire import assert_gateway_error, new_id, request, seen_with

ORIGIN = "https://app.example.com"
POLICY = {
    "allowed_origins": [ORIGIN, "https://*.example.org"],
    "allowed_methods": ["GET", "POST"],
    "allowed_headers": ["X-API-Key", "Content-Type"],
    "exposed_headers": ["X-Request-ID"],
    "allow_credentials": True,
    "max_age": "10m",
}


def cors_config(backends: BackendThread) -> dict[str, Any]:
    config = basic_config(backends)
    config["auth"] = {"api_key": {"keys": [{"key": "k-alice", "consumer": "alice"}]}}
    config["upstreams"] = [
        *config["upstreams"],
        {"name": "dead", "backends": [{"url": f"http://127.0.0.1:{free_port()}"}]},
    ]
    config["routes"] = [
        *config["routes"],
        {"path": "/cors", "methods": ["GET", "POST"], "upstream": "user-service",
         "name": "cors", "cors": POLICY},
        {"path": "/private", "methods": ["GET"], "upstream": "user-service",
         "auth": {"type": "api_key"}, "cors": POLICY},
        {"path": "/dead", "upstream": "dead", "cors": POLICY},
        {"path": "/star", "upstream": "user-service", "cors": {"allowed_origins": "*"}},
        {"path": "/plain", "methods": ["GET", "POST"], "upstream": "user-service"},
    ]  # fmt: skip
    return config


@pytest.fixture(scope="module")
def cgw(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(cors_config(backends), tmp_path_factory.mktemp("cors")).start()
    yield gw
    gw.stop()


def send(gw: Gateway, method: str, target: str, headers: list[tuple[str, str]]) -> tuple[Any, str]:
    rid = new_id()
    return request(gw.port, method, target, [("X-Request-ID", rid), *headers]), rid


def preflight(origin: str, method: str = "POST") -> list[tuple[str, str]]:
    return [("Origin", origin), ("Access-Control-Request-Method", method),
            ("Access-Control-Request-Headers", "content-type")]  # fmt: skip


def cors_headers(reply: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in reply.headers if k.lower().startswith("access-control-")]


def test_preflight_on_a_get_post_route_is_answered(cgw: Gateway, backends: BackendThread) -> None:
    reply, rid = send(cgw, "OPTIONS", "/cors/items", preflight(ORIGIN))
    assert reply.status == 204, reply.body
    assert cors_headers(reply) == [
        ("Access-Control-Allow-Origin", ORIGIN),
        ("Access-Control-Allow-Methods", "GET, POST"),
        ("Access-Control-Allow-Headers", "X-API-Key, Content-Type"),
        ("Access-Control-Max-Age", "600"),
        ("Access-Control-Allow-Credentials", "true"),
    ]
    assert reply.all("Vary") == ["Origin"]
    assert reply.header("X-Request-ID") == rid
    assert reply.body == b""
    assert seen_with(backends, rid) == []  # never forwarded
    line = next(r for r in cgw.wait_event("request") if r["request_id"] == rid)
    assert (line["status"], line["route"]) == (204, "cors")


def test_preflight_wildcard_subdomain(cgw: Gateway) -> None:
    reply, _ = send(cgw, "OPTIONS", "/cors", preflight("https://a.b.example.org", "GET"))
    assert reply.status == 204
    assert reply.header("Access-Control-Allow-Origin") == "https://a.b.example.org"


def test_preflight_from_disallowed_origin(cgw: Gateway, backends: BackendThread) -> None:
    reply, rid = send(cgw, "OPTIONS", "/cors", preflight("https://evil.example"))
    assert_gateway_error(reply, 403, "cors_origin_not_allowed")
    assert cors_headers(reply) == []
    assert seen_with(backends, rid) == []


def test_preflight_skips_auth(cgw: Gateway) -> None:
    reply, _ = send(cgw, "OPTIONS", "/private", preflight(ORIGIN, "GET"))
    assert reply.status == 204


def test_actual_request_gets_cors_headers(cgw: Gateway, backends: BackendThread) -> None:
    reply, rid = send(cgw, "GET", "/cors", [("Origin", ORIGIN)])
    assert reply.status == 200
    assert cors_headers(reply) == [
        ("Access-Control-Allow-Origin", ORIGIN),
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Expose-Headers", "X-Request-ID"),
    ]
    assert "Origin" in reply.all("Vary")
    assert seen_with(backends, rid)[0]["headers"]["Origin"] == ORIGIN  # forwarded as sent


def test_disallowed_origin_actual_request_has_no_cors_headers(cgw: Gateway) -> None:
    reply, _ = send(cgw, "GET", "/cors", [("Origin", "https://evil.example")])
    assert reply.status == 200
    assert cors_headers(reply) == []
    assert reply.all("Vary") == ["Origin"]


def test_gateway_errors_carry_cors_headers(cgw: Gateway) -> None:
    reply, _ = send(cgw, "GET", "/private", [("Origin", ORIGIN)])
    assert_gateway_error(reply, 401)
    assert reply.header("Access-Control-Allow-Origin") == ORIGIN
    assert reply.header("Access-Control-Allow-Credentials") == "true"
    reply, _ = send(cgw, "GET", "/dead", [("Origin", ORIGIN)])
    assert_gateway_error(reply, 502)
    assert reply.header("Access-Control-Allow-Origin") == ORIGIN


def test_star_policy(cgw: Gateway) -> None:
    reply, _ = send(cgw, "GET", "/star", [("Origin", "https://anyone.example")])
    assert reply.header("Access-Control-Allow-Origin") == "*"
    assert reply.header("Access-Control-Allow-Credentials") is None
    reply, _ = send(cgw, "OPTIONS", "/star", preflight("https://anyone.example", "DELETE"))
    assert reply.status == 204
    assert reply.header("Access-Control-Allow-Origin") == "*"
    assert reply.header("Access-Control-Allow-Methods") == "GET, HEAD, PUT, PATCH, POST, DELETE"


def test_route_without_cors_is_unaffected(cgw: Gateway, backends: BackendThread) -> None:
    reply, _ = send(cgw, "OPTIONS", "/plain", preflight(ORIGIN, "GET"))
    assert_gateway_error(reply, 405)
    assert cors_headers(reply) == []
    reply, _rid = send(cgw, "GET", "/plain", [("Origin", ORIGIN)])
    assert reply.status == 200
    assert cors_headers(reply) == []
    assert reply.all("Vary") == []
    # A method the CORS route does not serve is not reachable through a "preflight" either.
    reply, _ = send(cgw, "OPTIONS", "/cors", preflight(ORIGIN, "DELETE"))
    assert_gateway_error(reply, 405)


def test_global_default_policy(make_gateway: Any, backends: BackendThread) -> None:
    config = basic_config(backends)
    config["cors"] = {"allowed_origins": [ORIGIN]}
    config["routes"] = [
        *config["routes"],
        {"path": "/own", "upstream": "user-service", "cors": {"allowed_origins": "*"}},
    ]
    gw = make_gateway(config)
    reply, _ = send(gw, "OPTIONS", "/api/users", preflight(ORIGIN, "PUT"))
    assert reply.status == 204
    assert reply.header("Access-Control-Allow-Methods") == "GET, POST, PUT, DELETE, HEAD"
    reply, _ = send(gw, "GET", "/own", [("Origin", "https://other.example")])
    assert reply.header("Access-Control-Allow-Origin") == "*"  # the route's replaces the default
