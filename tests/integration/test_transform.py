"""Route transformations against the real daemon and real backends."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from backend import BackendThread
from gateway import Gateway
from gwconfigs import basic_config
from wire import assert_gateway_error, new_id, request, seen_with


def transform_config(backends: BackendThread) -> dict[str, Any]:
    config = basic_config(backends)
    config["auth"] = {"api_key": {"keys": [{"key": "k-alice", "consumer": "alice"}]}}
    config["routes"] = [
        *config["routes"],
        {"path": "/v1", "upstream": "user-service", "name": "v1", "transformations": {
            "request": {
                "add_headers": {"X-Gateway": "aiogate", "X-Via-Route": "${route}",
                                "X-Client": "${client_ip}"},
                "remove_headers": ["X-Internal"],
                "rename_headers": {"X-Old-Name": "X-New-Name"},
                "rewrite": {"prefix": "/"},
                "add_query": {"added": "yes"},
                "remove_query": ["secret"],
            },
            "response": {
                "add_headers": {"X-Response-Time": "${latency}", "X-Backend": "${backend}",
                                "X-Upstream": "${upstream}"},
                "remove_headers": ["X-End-To-End"],
            },
        }},
        {"path": "/rx", "upstream": "user-service", "name": "rx", "transformations": {
            "request": {"rewrite": {"regex": "^/rx/(\\w+)/(\\w+)", "replacement": "/\\2/\\1"}},
        }},
        {"path": "/who", "upstream": "user-service", "auth": {"type": "api_key"},
         "transformations": {"request": {"add_headers": {"X-Consumer": "${consumer}"}}}},
        {"path": "/json", "upstream": "user-service", "name": "json", "transformations": {
            "request": {"json_body": {"add": {"source": "gateway", "tags": ["a", 1]},
                                      "remove": ["password"], "max_size": "4KiB"}},
            "response": {"json_body": {"add": {"via": "aiogate"}, "remove": ["headers"]}},
        }},
        {"path": "/json-large", "upstream": "user-service", "name": "json-large",
         "transformations": {"request": {"json_body": {"add": {"source": "gateway"},
                                                       "max_size": "4MiB"}}}},
        {"path": "/mapped", "upstream": "user-service", "name": "mapped", "transformations": {
            "request": {"rewrite": {"prefix": "/status"}},
            "response": {"status_map": {502: 503, 404: 410},
                         "add_headers": {"X-Mapped": "yes"}},
        }},
        {"path": "/big", "upstream": "user-service", "name": "big", "transformations": {
            "request": {"rewrite": {"prefix": "/download"}},
            "response": {"add_headers": {"X-Streamed": "${request_id}"},
                         "status_map": {200: 203}},
        }},
    ]  # fmt: skip
    return config


@pytest.fixture(scope="module")
def tgw(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(transform_config(backends), tmp_path_factory.mktemp("transform")).start()
    yield gw
    gw.stop()


def send(gw: Gateway, method: str, target: str, headers: list[tuple[str, str]] | None = None,
         body: bytes = b"") -> tuple[Any, str]:  # fmt: skip
    rid = new_id()
    return request(gw.port, method, target, [("X-Request-ID", rid), *(headers or [])], body), rid


def test_request_headers_rewrite_and_query(tgw: Gateway, backends: BackendThread) -> None:
    reply, rid = send(tgw, "GET", "/v1/users/42?secret=s3&keep=1&added=no", [
        ("X-Internal", "leak"), ("X-Gateway", "spoofed"), ("X-Old-Name", "moved"),
    ])  # fmt: skip
    assert reply.status == 200, reply.body
    (seen,) = seen_with(backends, rid)
    assert seen["raw_path"] == "/users/42?keep=1&added=yes"
    headers = seen["headers"]
    assert "X-Internal" not in headers
    assert [v for k, v in seen["header_list"] if k.lower() == b"x-gateway"] == [b"aiogate"]
    assert headers["X-Via-Route"] == "v1"
    assert headers["X-Client"] == "127.0.0.1"
    assert headers["X-New-Name"] == "moved"
    assert "X-Old-Name" not in headers
    # Gateway-owned headers are still the gateway's.
    assert headers["X-Request-ID"] == rid
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    # Logged as routed, not as rewritten.
    line = next(r for r in tgw.wait_event("request") if r["request_id"] == rid)
    assert line["path"] == "/v1/users/42"
    assert line["route"] == "v1"


def test_response_headers_added_and_removed(tgw: Gateway, backends: BackendThread) -> None:
    reply, _ = send(tgw, "GET", "/v1/hop")
    assert reply.status == 200
    assert reply.body == b"hop"
    assert reply.header("X-End-To-End") is None
    latency = reply.header("X-Response-Time")
    assert latency is not None
    assert float(latency) >= 0.0
    assert reply.header("X-Backend") == backends.url("backend-1")
    assert reply.header("X-Upstream") == "user-service"


def test_regex_rewrite(tgw: Gateway, backends: BackendThread) -> None:
    reply, rid = send(tgw, "GET", "/rx/a/b/c?q=1")
    assert reply.status == 200
    assert seen_with(backends, rid)[0]["raw_path"] == "/b/a/c?q=1"


def test_consumer_variable_after_auth(tgw: Gateway, backends: BackendThread) -> None:
    reply, rid = send(tgw, "GET", "/who", [("X-API-Key", "k-alice")])
    assert reply.status == 200
    assert seen_with(backends, rid)[0]["headers"]["X-Consumer"] == "alice"
    reply, _ = send(tgw, "GET", "/who")
    assert_gateway_error(reply, 401)


def test_json_request_body(tgw: Gateway, backends: BackendThread) -> None:
    body = b'{"user": "bob", "password": "hunter2", "n": 1}'
    reply, rid = send(tgw, "POST", "/json/upload", [("Content-Type", "application/json")], body)
    assert reply.status == 200, reply.body
    expected = orjson.dumps({"user": "bob", "n": 1, "source": "gateway", "tags": ["a", 1]})
    (seen,) = seen_with(backends, rid)
    assert seen["body_len"] == len(expected)
    assert seen["sha256"] == hashlib.sha256(expected).hexdigest()
    assert seen["headers"]["Content-Length"] == str(len(expected))


def test_json_body_over_one_mib_is_edited_not_a_500(tgw: Gateway, backends: BackendThread) -> None:
    # Under json_body.max_size (4 MiB) and server.max_body_size (10 MiB), over aiohttp's
    # default client_max_size (1 MiB): read whole and edited like any other.
    body = orjson.dumps({"blob": "x" * (2 * 1024 * 1024)})
    reply, rid = send(tgw, "POST", "/json-large/up", [("Content-Type", "application/json")], body)
    assert reply.status == 200, reply.body[:200]
    expected = orjson.dumps({"blob": "x" * (2 * 1024 * 1024), "source": "gateway"})
    (seen,) = seen_with(backends, rid)
    assert seen["sha256"] == hashlib.sha256(expected).hexdigest()


def test_non_json_and_large_bodies_pass_untouched(tgw: Gateway, backends: BackendThread) -> None:
    text = b'{"password": "x"}'
    reply, rid = send(tgw, "POST", "/json/upload", [("Content-Type", "text/plain")], text)
    assert reply.status == 200
    assert seen_with(backends, rid)[0]["sha256"] == hashlib.sha256(text).hexdigest()
    big = b'{"password": "' + b"x" * 5000 + b'"}'  # over max_size: streamed as is
    reply, rid = send(tgw, "POST", "/json/upload", [("Content-Type", "application/json")], big)
    assert reply.status == 200
    assert seen_with(backends, rid)[0]["sha256"] == hashlib.sha256(big).hexdigest()


def test_json_response_body(tgw: Gateway) -> None:
    reply, _ = send(tgw, "GET", "/json/thing")
    assert reply.status == 200
    data = reply.json()
    assert data["via"] == "aiogate"
    assert "headers" not in data
    assert data["backend"] == "backend-1"
    assert reply.header("Content-Length") == str(len(reply.body))


def test_status_mapping(tgw: Gateway) -> None:
    reply, _ = send(tgw, "GET", "/mapped/502")
    assert reply.status == 503
    assert reply.body == b"status 502"
    assert reply.header("X-Mapped") == "yes"
    reply, _ = send(tgw, "GET", "/mapped/404")
    assert reply.status == 410
    reply, _ = send(tgw, "GET", "/mapped/200")
    assert reply.status == 200


def test_streamed_response_is_edited_too(tgw: Gateway) -> None:
    reply, rid = send(tgw, "GET", "/big/200000")
    assert reply.status == 203
    assert len(reply.body) == 200000
    assert reply.complete
    assert reply.header("X-Streamed") == rid


def test_route_without_transformations_is_unaffected(tgw: Gateway, backends: BackendThread) -> None:
    reply, rid = send(tgw, "GET", "/api/users?secret=1", [("X-Internal", "kept")])
    assert reply.status == 200
    assert reply.header("X-Response-Time") is None
    (seen,) = seen_with(backends, rid)
    assert seen["raw_path"] == "/api/users?secret=1"
    assert seen["headers"]["X-Internal"] == "kept"
