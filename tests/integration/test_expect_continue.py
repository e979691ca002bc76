"""`Expect: 100-continue` against the real daemon, with a client that really waits for the 100.

The client sends the head, waits for `100 Continue`, and only then sends its body (what curl
and most HTTP libraries do for large uploads). The 100 comes once the route's checks have
passed, so a refused request never costs its body; the upstream never sees `Expect`.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway
from gwconfigs import basic_config
from wire import (
    assert_gateway_error,
    connect,
    new_id,
    parse,
    read_reply,
    recv_all,
    seen_with,
)

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.fixture(scope="module")
def xgw(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = basic_config(backends)
    config["auth"] = {"api_key": {"keys": [{"key": "k-123", "consumer": "demo"}]}}
    config["routes"] = [
        *config["routes"],
        {"path": "/keyed", "upstream": "user-service", "name": "keyed",
         "auth": {"type": "api_key"}},
        {"path": "/json", "upstream": "user-service", "name": "json", "transformations": {
            "request": {"json_body": {"add": {"source": "gateway"}, "max_size": "4KiB"}}}},
    ]  # fmt: skip
    gw = Gateway(config, tmp_path_factory.mktemp("expect")).start()
    yield gw
    gw.stop()


def _head(target: str, rid: str, length: int, *extra: str, method: str = "POST") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gw.test", f"X-Request-ID: {rid}",
             f"Content-Length: {length}", *extra, "", ""]  # fmt: skip
    return "\r\n".join(lines).encode()


def _interim(sock: socket.socket) -> bytes:
    """The first response head the gateway sends (before any body was sent)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("size", [5, 200 * 1024])  # read whole / streamed
def test_client_waiting_for_100_continue_gets_it_then_sends_the_body(
    xgw: Gateway, backends: BackendThread, size: int
) -> None:
    rid = new_id()
    body = b"x" * size
    with connect(xgw.port, timeout=5) as sock:
        sock.sendall(_head("/api/users/up", rid, size, "Expect: 100-continue"))
        assert _interim(sock) == _CONTINUE  # before the fix: nothing, until the timeout
        sock.sendall(body)
        reply = read_reply(sock)
    assert reply.status == 200, reply.body[:300]
    assert reply.json()["body_len"] == size
    (seen,) = seen_with(backends, rid)
    assert seen["body_len"] == size
    assert "Expect" not in seen["headers"]  # the gateway answered it; the upstream never sees it


def test_json_body_transform_sends_100_continue_before_reading(
    xgw: Gateway, backends: BackendThread
) -> None:
    rid = new_id()
    body = json.dumps({"a": 1}).encode()
    with connect(xgw.port, timeout=5) as sock:
        sock.sendall(_head("/json/up", rid, len(body), "Expect: 100-continue",
                           "Content-Type: application/json"))  # fmt: skip
        assert _interim(sock) == _CONTINUE
        sock.sendall(body)
        reply = read_reply(sock)
    assert reply.status == 200, reply.body[:300]
    (seen,) = seen_with(backends, rid)
    assert seen["body_len"] == len(b'{"a":1,"source":"gateway"}')


def test_refused_request_gets_its_answer_instead_of_100_continue(
    xgw: Gateway, backends: BackendThread
) -> None:
    rid = new_id()
    with connect(xgw.port, timeout=5) as sock:
        sock.sendall(_head("/keyed/up", rid, 1000, "Expect: 100-continue"))
        reply = parse(_interim(sock) + recv_all(sock))
    assert_gateway_error(reply, 401, "unauthorized")
    assert not seen_with(backends, rid)


@pytest.mark.parametrize("expect", ["something-else", "100-continue, foo"])
def test_unknown_expectation_is_417(xgw: Gateway, backends: BackendThread, expect: str) -> None:
    rid = new_id()
    with connect(xgw.port, timeout=5) as sock:
        sock.sendall(_head("/api/users/up", rid, 3, f"Expect: {expect}") + b"abc")
        reply = read_reply(sock)
    body: dict[str, Any] = assert_gateway_error(reply, 417, "expectation_failed")
    assert body["request_id"] == rid
    assert not seen_with(backends, rid)


def test_http10_expectation_is_ignored(xgw: Gateway, backends: BackendThread) -> None:
    """RFC 9110 §10.1.1: an HTTP/1.0 client cannot take a 1xx; the body just follows."""
    rid = new_id()
    head = _head("/api/users/up", rid, 3, "Expect: 100-continue").replace(b"HTTP/1.1", b"HTTP/1.0")
    with connect(xgw.port, timeout=5) as sock:
        sock.sendall(head + b"abc")
        data = _interim(sock) + recv_all(sock)
    assert data.startswith(b"HTTP/1.0 200"), data[:200]
    (seen,) = seen_with(backends, rid)
    assert seen["body_len"] == 3
