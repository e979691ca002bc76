"""Upstream failures become the contract's JSON errors; broken streams are never made whole."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.request import urlopen

import pytest
from backend import BackendThread
from gateway import Gateway, free_port
from gwconfigs import wide_config
from wire import (
    access_line,
    assert_gateway_error,
    assert_no_traceback,
    connect,
    exchange,
    new_id,
    recv_all,
    request,
)


@pytest.fixture(scope="module")
def egw(
    backends: BackendThread, raw_backend: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = wide_config(backends, raw_backend.url)
    # The raw backend breaks on purpose, test after test: its circuit must stay closed here.
    for upstream in config["upstreams"]:
        if upstream["name"] == "raw":
            upstream["circuit_breaker"] = {"failure_threshold": 1000}
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config["upstreams"] = [*config["upstreams"], {"name": "dead", "backends": [{"url": dead}]}]
    config["routes"] = [
        *config["routes"],
        {"path": "/dead", "upstream": "dead", "name": "dead"},
        {"path": "/slow", "upstream": "user-service", "name": "slow", "timeout": "500ms"},
    ]
    gw = Gateway(config, tmp_path_factory.mktemp("errors")).start()
    yield gw
    gw.stop()


def test_backend_down_is_502(egw: Gateway) -> None:
    rid = new_id()
    reply = request(egw.port, "GET", "/dead/x", [("X-Request-ID", rid)])
    body = assert_gateway_error(reply, 502, "upstream_unreachable")
    assert body["request_id"] == rid
    assert reply.header("X-Request-ID") == rid
    line = access_line(egw, rid)
    assert (line["status"], line["route"], line["upstream"]) == (502, "dead", "dead")


def test_backend_down_with_a_streamed_body_is_502(egw: Gateway) -> None:
    reply = request(egw.port, "POST", "/dead/upload", body=b"b" * (300 * 1024))
    assert_gateway_error(reply, 502, "upstream_unreachable")


def test_slow_backend_is_504(egw: Gateway) -> None:
    rid = new_id()
    started = time.monotonic()
    reply = request(egw.port, "GET", "/slow/3", [("X-Request-ID", rid)])
    took = time.monotonic() - started
    body = assert_gateway_error(reply, 504, "upstream_timeout")
    assert body["request_id"] == rid
    assert took < 2.5, took  # the route's 0.5 s, not the backend's 3 s
    assert access_line(egw, rid)["status"] == 504


def test_fast_enough_backend_is_not_cut(egw: Gateway) -> None:
    assert request(egw.port, "GET", "/slow/0.05").status == 200


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/raw/close-early", "bad_upstream_response"),
        ("/raw/garbage", "bad_upstream_response"),
        ("/raw/close-small", "bad_upstream_response"),
    ],
)
def test_broken_upstream_before_the_response_started_is_502(
    egw: Gateway, path: str, code: str
) -> None:
    rid = new_id()
    reply = request(egw.port, "GET", path, [("X-Request-ID", rid)])
    assert_gateway_error(reply, 502, code)
    assert reply.json()["request_id"] == rid


def test_upstream_closing_mid_body_truncates_the_response(egw: Gateway) -> None:
    """Content-Length 100000, 1000 bytes, close: the client must see fewer bytes than
    announced and a closed connection, never a complete-looking response."""
    reply = exchange(
        egw.port, b"GET /raw/close-mid HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert reply.status == 200
    assert reply.header("Content-Length") == "100000"
    assert not reply.complete
    assert len(reply.body) < 100000


def test_upstream_closing_mid_chunked_body_truncates_the_response(egw: Gateway) -> None:
    reply = exchange(
        egw.port, b"GET /raw/close-mid-chunk HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert reply.status == 200
    te = (reply.header("Transfer-Encoding") or "").lower()
    if te == "chunked":
        assert not reply.complete  # no terminating 0-chunk
    else:  # close-delimited would be indistinguishable from complete: not acceptable
        pytest.fail(f"a broken stream was relayed with framing {reply.headers}")
    assert len(reply.body) < 2048


def test_upstream_breaking_mid_body_is_a_502_against_the_backend(
    backends: BackendThread, raw_backend: Any, make_gateway: Callable[..., Gateway]
) -> None:
    """A body that breaks after the head went out is the upstream's failure: access log and
    metrics say 502 (not the client's 499), and the backend's breaker counts it."""
    config = wide_config(backends, raw_backend.url)
    config["circuit_breaker"] = {"failure_threshold": 2, "timeout": "1h"}
    gw = make_gateway(config)
    rid = new_id()
    reply = exchange(
        gw.port,
        f"GET /raw/close-mid HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n\r\n".encode(),
    )
    assert (reply.status, reply.complete) == (200, False)
    line = access_line(gw, rid)
    assert (line["status"], line["upstream"]) == (502, "raw"), line
    # The buffered path (a small Content-Length body) is a rendered 502: the second failure.
    assert_gateway_error(request(gw.port, "GET", "/raw/close-small"), 502, "bad_upstream_response")
    reply = request(gw.port, "GET", "/raw/ok")
    assert_gateway_error(reply, 503)  # two failures in a row: the circuit is open
    metrics = urlopen(f"{gw.admin_url}/metrics", timeout=5).read().decode()
    assert 'aiogate_requests_total{method="GET",route="raw",status="502"} 2.0' in metrics
    assert 'route="raw",status="499"' not in metrics


def test_keepalive_client_connection_is_not_reused_after_truncation(egw: Gateway) -> None:
    with connect(egw.port) as sock:
        sock.sendall(b"GET /raw/close-mid HTTP/1.1\r\nHost: x\r\n\r\n")
        received = recv_all(sock)  # returns because the gateway closes the connection
    assert received.startswith(b"HTTP/1.1 200")
    assert len(received.partition(b"\r\n\r\n")[2]) < 100000


def test_client_abort_mid_upload_is_not_blamed_on_the_upstream(egw: Gateway) -> None:
    rid = new_id()
    with connect(egw.port) as sock:
        sock.sendall(
            f"POST /upload HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n"
            f"Content-Length: {10 * 1024 * 1024}\r\n\r\n".encode()
            + b"u" * (512 * 1024)
        )
        # The upstream exchange has begun once part of the body was relayed.
    line = access_line(egw, rid)
    assert line["status"] == 499, line  # client closed request, not a 502
    assert not [e for e in egw.events("upstream_error") if e.get("request_id") == rid], (
        "a client abort was logged as an upstream error"
    )


def test_no_traceback_in_gateway_error_bodies(egw: Gateway) -> None:
    for method, target in [
        ("GET", "/dead"),
        ("GET", "/raw/garbage"),
        ("GET", "/slow/2"),
        ("GET", "/api/users/%00"),
        ("GET", "/raw/close-early"),
    ]:
        reply = request(egw.port, method, target)
        assert reply.status >= 400
        assert_no_traceback(reply.body)
