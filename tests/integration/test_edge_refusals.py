"""What a strict proxy refuses or ignores, over raw sockets against the real daemon.

Each case comes from an attack run against the daemon: an `Expect: 100-continue` whose declared
body is already too large, HTTP/1.0 with `Transfer-Encoding`, a non-WebSocket `Upgrade` followed
by a pipelined request, and a client that disconnects in the middle of its body.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway
from gwconfigs import wide_config
from metrics_support import scrape
from wire import (
    access_line,
    assert_gateway_error,
    connect,
    new_id,
    parse,
    read_reply,
    recv_all,
)


@pytest.fixture(scope="module")
def egw(
    backends: BackendThread, raw_backend: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = wide_config(backends, raw_backend.url, max_body_size="1KiB")
    gw = Gateway(config, tmp_path_factory.mktemp("edge")).start()
    yield gw
    gw.stop()


def _raw_seen(raw_backend: Any, rid: str) -> list[Any]:
    return raw_backend.log.with_id(rid)  # type: ignore[no-any-return]


# -- Expect: 100-continue with a body the gateway will refuse anyway -------------------------


def test_expect_continue_with_oversized_declared_body_is_413_without_100(
    egw: Gateway, raw_backend: Any
) -> None:
    """The client waits for `100 Continue` before sending; the declared length is already
    over max_body_size, so the answer must be the final 413, never a 100 first (which would
    invite the client to send the body the gateway then refuses)."""
    rid = new_id()
    head = (
        f"POST /raw/x HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n"
        "Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with connect(egw.port) as sock:
        sock.sendall(head)
        first = b""
        while b"\r\n\r\n" not in first:
            chunk = sock.recv(65536)
            if not chunk:
                break
            first += chunk
        assert not first.startswith(b"HTTP/1.1 100"), first[:200]
        first += recv_all(sock)
    assert_gateway_error(parse(first), 413, "body_too_large")
    assert _raw_seen(raw_backend, rid) == []


# -- HTTP/1.0 with Transfer-Encoding ----------------------------------------------------------


def test_http10_with_transfer_encoding_is_400(egw: Gateway, raw_backend: Any) -> None:
    """RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing; a
    server should treat it as such and close. An HTTP/1.0 hop in between never understood it,
    so the gateway refuses rather than re-frames it."""
    rid = new_id()
    hidden = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
    data = (
        f"POST /raw/s HTTP/1.0\r\nHost: x\r\nX-Request-ID: {rid}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode() + b"%x\r\n%s\r\n0\r\n\r\n" % (len(hidden), hidden)
    with connect(egw.port) as sock:
        sock.sendall(data)
        received = recv_all(sock)
    assert_gateway_error(parse(received), 400, "bad_request")
    assert _raw_seen(raw_backend, rid) == []


# -- Upgrade other than websocket --------------------------------------------------------------


_H2C = "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAoAAA\r\n"


@pytest.mark.parametrize(
    "upgrade",
    [
        _H2C,
        "Upgrade: foo/2\r\nConnection: upgrade\r\n",
        "UPGRADE: h2c\r\nCONNECTION: UPGRADE\r\n",
        "Upgrade: h2c\r\n",
    ],
    ids=["h2c", "other-protocol", "upper-case", "without-connection-upgrade"],
)
def test_non_websocket_upgrade_is_ignored_and_pipelining_continues(
    egw: Gateway, raw_backend: Any, upgrade: str
) -> None:
    """The upgrade is dropped as a hop-by-hop header, the request served as HTTP/1.1, and the
    request pipelined behind it in the same packet is served too, on the same connection."""
    one, two = new_id(), new_id()
    data = (
        f"GET /raw/u1 HTTP/1.1\r\nHost: x\r\nX-Request-ID: {one}\r\n{upgrade}\r\n"
        f"GET /raw/u2 HTTP/1.1\r\nHost: x\r\nX-Request-ID: {two}\r\n\r\n"
    ).encode()
    with connect(egw.port, timeout=5) as sock:
        sock.sendall(data)
        first = read_reply(sock)
        second = parse(first.extra) if b"\r\n\r\n" in first.extra else read_reply(sock)
        assert (first.status, second.status) == (200, 200), (first.raw[:300], second.raw[:300])
        assert (first.header("Connection") or "").lower() != "close"
        # ... and the connection is still open for a third request.
        sock.sendall(b"GET /raw/u3 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_reply(sock).status == 200
    (seen,) = _raw_seen(raw_backend, one)
    assert seen.target == "/raw/u1"
    assert b"upgrade" not in seen.head.lower()
    assert b"http2-settings" not in seen.head.lower()
    assert len(_raw_seen(raw_backend, two)) == 1


def test_upgrade_with_a_body_closes_after_the_answer(egw: Gateway, raw_backend: Any) -> None:
    """With a body, the parser stops after the body, and what was pipelined behind it in the
    same packet may be gone: the connection closes after the answer (the client resends)."""
    one = new_id()
    data = (
        f"POST /raw/b1 HTTP/1.1\r\nHost: x\r\nX-Request-ID: {one}\r\n{_H2C}"
        "Content-Length: 5\r\n\r\nhello"
        "GET /raw/b2 HTTP/1.1\r\nHost: x\r\n\r\n"
    ).encode()
    with connect(egw.port, timeout=5) as sock:
        sock.sendall(data)
        received = recv_all(sock)  # returns because the gateway closes (not after 75 s)
    first = parse(received)
    assert first.status == 200
    (seen,) = _raw_seen(raw_backend, one)
    assert seen.body == b"hello"


def test_upgrade_header_split_across_packets(egw: Gateway, raw_backend: Any) -> None:
    one, two = new_id(), new_id()
    with connect(egw.port, timeout=5) as sock:
        sock.sendall(f"GET /raw/s1 HTTP/1.1\r\nHost: x\r\nX-Request-ID: {one}\r\nUp".encode())
        time.sleep(0.05)  # pacing only: the rest must arrive in a later read
        sock.sendall(
            f"grade: h2c\r\nConnection: Upgrade\r\n\r\n"
            f"GET /raw/s2 HTTP/1.1\r\nHost: x\r\nX-Request-ID: {two}\r\n\r\n".encode()
        )
        first = read_reply(sock)
        if b"\r\n\r\n" in first.extra or (first.header("Connection") or "") != "close":
            second = parse(first.extra) if b"\r\n\r\n" in first.extra else read_reply(sock)
            assert second.status == 200
        else:
            assert recv_all(sock) == b""  # closed at once: the client resends
    assert first.status == 200
    assert len(_raw_seen(raw_backend, one)) == 1


# -- a client that goes away mid-body ----------------------------------------------------------


def _server_errors(gw: Gateway) -> float:
    return scrape(gw).value("aiogate_requests_total", status="500")


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_client_disconnect_mid_body_is_499_not_500(egw: Gateway, framing: str) -> None:
    """Anyone can open a request and hang up halfway: that is the client's doing (499, as
    nginx logs it), never an internal error that inflates the 5xx rate and fires alerts."""
    rid = new_id()
    before = _server_errors(egw)
    if framing == "length":
        head = f"Content-Length: 900\r\n\r\n{'a' * 100}"
    else:
        head = "Transfer-Encoding: chunked\r\n\r\n64\r\n" + "a" * 100 + "\r\n"
    sock = socket.create_connection(("127.0.0.1", egw.port))
    try:
        sock.sendall(f"POST /raw/d HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n{head}".encode())
        time.sleep(0.3)  # pacing: the gateway starts relaying before the client goes
    finally:
        sock.close()
    line = access_line(egw, rid)
    assert line["status"] == 499, line
    assert not [e for e in egw.events("internal_error") if e.get("request_id") == rid]
    assert _server_errors(egw) == before
    assert scrape(egw).value("aiogate_requests_total", status="499") >= 1
