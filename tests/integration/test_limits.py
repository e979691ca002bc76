"""Body size, header deadline, header size/count and idle limits, against the real daemon."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway
from gwconfigs import wide_config
from wire import (
    assert_gateway_error,
    connect,
    new_id,
    parse,
    read_reply,
    request,
    seen_count,
    seen_with,
    wait_closed,
)

LIMIT = 1024 * 1024
HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 2.5
SLACK = 2.5  # shared 2-core machine


@pytest.fixture(scope="module")
def lgw(
    backends: BackendThread, raw_backend: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = wide_config(
        backends,
        raw_backend.url,
        max_body_size="1MiB",
        header_timeout="1s",
        idle_timeout="2500ms",
        max_header_size="4KiB",
        max_headers=30,
    )
    gw = Gateway(config, tmp_path_factory.mktemp("limits")).start()
    yield gw
    gw.stop()


# -- max_body_size ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/upload", "/raw/upload"])
def test_declared_length_over_limit_is_413_before_the_body(
    lgw: Gateway, backends: BackendThread, raw_backend: Any, path: str
) -> None:
    rid = new_id()
    before = seen_count(backends)
    with connect(lgw.port) as sock:
        # Only the head: the answer must not wait for 2 MiB that will never come.
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n"
            f"Content-Length: {2 * LIMIT}\r\n\r\n".encode()
        )
        reply = read_reply(sock)
    body = assert_gateway_error(reply, 413, "body_too_large")
    assert body["request_id"] == rid
    assert seen_count(backends) == before
    assert raw_backend.log.with_id(rid) == []


def test_body_at_the_limit_passes(lgw: Gateway, backends: BackendThread) -> None:
    rid = new_id()
    reply = request(lgw.port, "POST", "/upload", [("X-Request-ID", rid)], b"z" * LIMIT)
    assert reply.status == 200
    assert seen_with(backends, rid)[0]["body_len"] == LIMIT


def _send_chunked(port: int, path: str, rid: str, total: int) -> bytes:
    """Stream `total` bytes as chunks; stop when the gateway answers or cuts us off."""
    sock = connect(port)
    received = b""
    try:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        piece = b"c" * (64 * 1024)
        sent = 0
        sock.setblocking(False)
        while sent < total:
            with contextlib.suppress(BlockingIOError):
                received += sock.recv(65536)
            if received:
                break
            try:
                sock.setblocking(True)
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            finally:
                sock.setblocking(False)
        else:
            sock.setblocking(True)
            sock.sendall(b"0\r\n\r\n")
        sock.setblocking(True)
        sock.settimeout(10)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            received += data
            if b"\r\n\r\n" in received and parse(received).complete:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        sock.close()
    return received


def test_chunked_body_over_limit_is_413_and_never_complete_upstream(
    lgw: Gateway, backends: BackendThread
) -> None:
    rid = new_id()
    received = _send_chunked(lgw.port, "/upload", rid, 3 * LIMIT)
    reply = parse(received)
    assert_gateway_error(reply, 413, "body_too_large")
    assert reply.json()["request_id"] == rid
    # backend.py's /upload records a request only once its body ended cleanly.
    assert seen_with(backends, rid) == []


def test_chunked_body_over_limit_leaves_the_upstream_request_unterminated(
    lgw: Gateway, raw_backend: Any
) -> None:
    rid = new_id()
    received = _send_chunked(lgw.port, "/raw/upload", rid, 3 * LIMIT)
    assert_gateway_error(parse(received), 413)

    def recorded() -> bool:
        return bool(raw_backend.log.with_id(rid))

    # The upstream connection is aborted: the raw backend logs what it got at EOF.
    from gateway import wait_until

    wait_until(recorded, 10, "raw backend to see the aborted request")
    (seen,) = raw_backend.log.with_id(rid)
    assert not seen.complete, "the upstream saw a complete (truncated) request"
    assert not seen.body.endswith(b"0\r\n\r\n")
    assert len(seen.body) <= LIMIT + 64 * 1024  # nothing past the limit was relayed


def test_chunked_body_under_limit_passes(lgw: Gateway, backends: BackendThread) -> None:
    rid = new_id()
    received = _send_chunked(lgw.port, "/upload", rid, LIMIT - 64 * 1024)
    assert parse(received).status == 200
    assert seen_with(backends, rid)[0]["body_len"] == LIMIT - 64 * 1024


# -- header_timeout --------------------------------------------------------------------------


def test_slow_head_gets_408_and_is_closed(lgw: Gateway, backends: BackendThread) -> None:
    before = seen_count(backends)
    with connect(lgw.port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /api/users HTTP/1.1\r\n")
        sock.settimeout(0.2)
        received = b""
        closed = False
        # Trickle one header byte at a time, as a slowloris client does, reading between.
        for byte in b"Host: x\r\nX-Slow: " + b"a" * 100:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                data = None
            if data == b"":
                closed = True
                break
            if data:
                received += data
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        if not closed:
            rest, _ = wait_closed(sock, SLACK)
            received += rest
        took = time.monotonic() - started
    assert took < HEADER_TIMEOUT + SLACK, took
    reply = parse(received)
    assert_gateway_error(reply, 408, "request_timeout")
    assert reply.header("Connection") == "close"
    # Nothing of the half-sent request reached a backend (the backend is shared by the whole
    # session, so look for this request's own header rather than at the total count).
    with backends.seen.lock:
        later = backends.seen.requests[before:]
    assert not any("X-Slow" in entry["headers"] for entry in later)  # type: ignore[operator]


def test_silent_connection_is_closed(lgw: Gateway) -> None:
    with connect(lgw.port) as sock:
        received, took = wait_closed(sock, HEADER_TIMEOUT + SLACK)
    assert took < HEADER_TIMEOUT + SLACK
    assert received == b""  # nothing was asked, nothing is answered


def test_slow_head_on_a_kept_alive_connection_gets_408(lgw: Gateway) -> None:
    with connect(lgw.port) as sock:
        sock.sendall(b"GET /api/users HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(sock).status == 200
        sock.sendall(b"GET /api/users HTTP/1.1\r\nHost: x\r\n")  # never finished
        received, took = wait_closed(sock, HEADER_TIMEOUT + SLACK)
    assert took < HEADER_TIMEOUT + SLACK
    assert_gateway_error(parse(received), 408)


def test_slow_body_is_not_a_header_timeout(lgw: Gateway, backends: BackendThread) -> None:
    """The deadline covers the head only: a body may take longer than header_timeout."""
    rid = new_id()
    with connect(lgw.port) as sock:
        sock.sendall(
            f"POST /upload HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n"
            "Content-Length: 10\r\n\r\n12345".encode()
        )
        sock.settimeout(HEADER_TIMEOUT + 0.5)  # pacing: the body's second half comes late
        with contextlib.suppress(TimeoutError):
            assert sock.recv(100) == b"", "the gateway answered before the body was complete"
        sock.sendall(b"67890")
        sock.settimeout(10)
        reply = read_reply(sock)
    assert reply.status == 200
    assert seen_with(backends, rid)[0]["body_len"] == 10


# -- header size and count -------------------------------------------------------------------


def test_over_long_header_line_is_431(lgw: Gateway, backends: BackendThread) -> None:
    before = seen_count(backends)
    reply = request(lgw.port, "GET", "/api/users", [("X-Big", "v" * 5000)])
    assert_gateway_error(reply, 431)
    assert seen_count(backends) == before


def test_many_small_headers_under_the_count_pass(lgw: Gateway) -> None:
    headers = [(f"X-H{i}", "v") for i in range(20)]
    assert request(lgw.port, "GET", "/api/users", headers).status == 200


def test_too_many_headers_is_431(lgw: Gateway, backends: BackendThread) -> None:
    before = seen_count(backends)
    headers = [(f"X-H{i}", "v") for i in range(40)]
    reply = request(lgw.port, "GET", "/api/users", headers)
    assert_gateway_error(reply, 431)
    assert seen_count(backends) == before


def test_over_long_request_line_is_rejected(lgw: Gateway, backends: BackendThread) -> None:
    before = seen_count(backends)
    reply = request(lgw.port, "GET", "/api/users/" + "a" * 5000)
    assert reply.status in (400, 414, 431)
    assert_gateway_error(reply, reply.status)
    assert seen_count(backends) == before


# -- idle_timeout ----------------------------------------------------------------------------


def test_idle_keepalive_connection_is_closed(lgw: Gateway) -> None:
    with connect(lgw.port) as sock:
        sock.sendall(b"GET /api/users HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(sock).status == 200
        started = time.monotonic()
        received, took = wait_closed(sock, IDLE_TIMEOUT + SLACK)
    assert received == b""
    # Not the header deadline (1 s) but the idle timeout (2.5 s).
    assert took >= IDLE_TIMEOUT - 0.5, took
    assert time.monotonic() - started < IDLE_TIMEOUT + SLACK


def test_keepalive_connection_is_reused_before_idle_timeout(lgw: Gateway) -> None:
    with connect(lgw.port) as sock:
        for _ in range(3):
            sock.sendall(b"GET /api/users HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_reply(sock).status == 200
        # still open: one more exchange works on the same socket
        sock.sendall(b"GET /api/orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_reply(sock).status == 200
