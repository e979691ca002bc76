"""Malformed HTTP and request-smuggling shapes: answered 400 and never forwarded.

Every shape goes out over a raw socket exactly as written, to a route on the socket-level
backend (which records whatever arrives, complete or not) and to one on the aiohttp backend.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway, wait_until
from gwconfigs import wide_config
from wire import (
    assert_gateway_error,
    connect,
    exchange,
    new_id,
    parse,
    recv_all,
    seen_count,
)


@pytest.fixture(scope="module")
def sgw(
    backends: BackendThread, raw_backend: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gw = Gateway(wide_config(backends, raw_backend.url), tmp_path_factory.mktemp("smuggle"))
    gw.start()
    yield gw
    gw.stop()


def _counts(backends: BackendThread, raw_backend: Any) -> tuple[int, int]:
    with raw_backend.log.lock:
        raw = len(raw_backend.log.requests)
    return seen_count(backends), raw


def _raw_paths(raw_backend: Any) -> list[str]:
    with raw_backend.log.lock:
        return [r.target for r in raw_backend.log.requests]


POST = "POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n"

# name -> head lines after the request line's common prefix, and the bytes that follow.
SHAPES: dict[str, str] = {
    # CL.TE / TE.CL: the classic desync pair; the "body" hides a second request.
    "cl-and-te": "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
    "0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
    "te-and-cl": "Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n"
    "0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
    "two-content-lengths": "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "content-length-list": "Content-Length: 5, 6\r\n\r\nhello!",
    "same-content-length-twice": "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "content-length-plus": "Content-Length: +5\r\n\r\nhello",
    "content-length-negative": "Content-Length: -5\r\n\r\nhello",
    "content-length-hex": "Content-Length: 0x5\r\n\r\nhello",
    "te-chunked-identity": "Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-space-before-colon": "Transfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-xchunked": "Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-identity": "Transfer-Encoding: identity\r\n\r\nhello",
    "te-vertical-tab": "Transfer-Encoding: \x0bchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te-two-fields": "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
    "5\r\nhello\r\n0\r\n\r\n",
    "te-gzip-chunked": "Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "chunk-size-invalid": "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk-size-overflow": "Transfer-Encoding: chunked\r\n\r\n"
    "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "chunk-size-negative": "Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk-bare-lf": "Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    "chunk-data-overrun": "Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "nul-in-header": "X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "cr-in-header": "X-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "header-without-colon": "X-No-Colon\r\nContent-Length: 0\r\n\r\n",
    "space-in-header-name": "X Bad: 1\r\nContent-Length: 0\r\n\r\n",
    "obs-fold": "X-A: a\r\n folded\r\nContent-Length: 0\r\n\r\n",
    "two-hosts": "Host: other\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("path", ["/raw/s", "/upload"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_malformed_shapes_are_400_and_never_forwarded(
    sgw: Gateway, backends: BackendThread, raw_backend: Any, shape: str, path: str
) -> None:
    before = _counts(backends, raw_backend)
    rid = new_id()
    data = (POST.format(path=path, rid=rid) + SHAPES[shape]).encode("latin-1")
    reply = exchange(sgw.port, data)
    body = assert_gateway_error(reply, 400, "bad_request")
    assert body["request_id"]
    assert "admin" not in reply.raw.decode("latin-1").split("\r\n\r\n", 1)[1]
    assert _counts(backends, raw_backend) == before, shape
    assert "/admin" not in _raw_paths(raw_backend)


REQUEST_LINES: dict[str, bytes] = {
    "bare-lf-everywhere": b"GET /raw/s HTTP/1.1\nHost: x\n\n",
    "bare-lf-request-line": b"GET /raw/s HTTP/1.1\nHost: x\r\n\r\n",
    "space-in-target": b"GET /raw/s b HTTP/1.1\r\nHost: x\r\n\r\n",
    "control-in-target": b"GET /raw/s\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    "non-ascii-target": "GET /raw/é HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "http-0.9": b"GET /raw/s\r\n\r\n",
    "http-2.0": b"GET /raw/s HTTP/2.0\r\nHost: x\r\n\r\n",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "http-3.0": b"GET /raw/s HTTP/3.0\r\nHost: x\r\n\r\n",
    "http-1.2": b"GET /raw/s HTTP/1.2\r\nHost: x\r\n\r\n",
    "bad-version-token": b"GET /raw/s HTPT/1.1\r\nHost: x\r\n\r\n",
    "bad-method-token": b"G(T /raw/s HTTP/1.1\r\nHost: x\r\n\r\n",
    "missing-host": b"GET /raw/s HTTP/1.1\r\n\r\n",
    "leading-space-header": b"GET /raw/s HTTP/1.1\r\n Host: x\r\n\r\n",
    "fragment-in-target": b"GET /raw/s#frag HTTP/1.1\r\nHost: x\r\n\r\n",
    "asterisk-form": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    "connect-authority-form": b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
}


@pytest.mark.parametrize("name", list(REQUEST_LINES))
def test_malformed_request_lines_are_400_and_never_forwarded(
    sgw: Gateway, backends: BackendThread, raw_backend: Any, name: str
) -> None:
    before = _counts(backends, raw_backend)
    received = b""
    with connect(sgw.port) as sock:
        sock.sendall(REQUEST_LINES[name])
        received = recv_all(sock)
    if name == "http-0.9" and not received:
        pass  # closing without a response is a fine answer to HTTP/0.9 too
    else:
        assert_gateway_error(parse(received), 400)
    assert _counts(backends, raw_backend) == before, name


def test_bad_chunk_after_the_body_started_streaming(sgw: Gateway, raw_backend: Any) -> None:
    """The head and a first chunk are already on their way upstream when the broken chunk
    size arrives: the client gets a 400 at once and the upstream sees a request that never
    completes (no terminating chunk), never a complete one."""
    rid = new_id()
    with connect(sgw.port, timeout=10) as sock:
        sock.sendall(
            f"POST /raw/s HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n".encode()
        )
        # Let the gateway start the upstream exchange before the bad bytes arrive.
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            time.sleep(0.05)  # pacing only: the bytes must arrive in a later read
        started = time.monotonic()
        sock.sendall(b"zz\r\nhello\r\n0\r\n\r\n")
        received = recv_all(sock)
        took = time.monotonic() - started
    assert_gateway_error(parse(received), 400)
    assert took < 5, took  # not left hanging until the upstream timeout
    wait_until(lambda: bool(raw_backend.log.with_id(rid)), 10, "raw backend to log the abort")
    for seen in raw_backend.log.with_id(rid):
        assert not seen.complete
        assert b"zz" not in seen.body


def test_pipelined_requests_are_each_routed_once(
    sgw: Gateway, backends: BackendThread, raw_backend: Any
) -> None:
    """Well-framed pipelining is not smuggling: both requests arrive, each exactly once."""
    one, two = new_id(), new_id()
    data = (
        f"POST /raw/p1 HTTP/1.1\r\nHost: x\r\nX-Request-ID: {one}\r\nContent-Length: 5\r\n\r\nhello"
        f"GET /raw/p2 HTTP/1.1\r\nHost: x\r\nX-Request-ID: {two}\r\nConnection: close\r\n\r\n"
    ).encode()
    with connect(sgw.port) as sock:
        sock.sendall(data)
        received = recv_all(sock)
    first = parse(received)
    second = parse(first.extra)
    assert (first.status, second.status) == (200, 200)
    ((a,), (b,)) = raw_backend.log.with_id(one), raw_backend.log.with_id(two)
    assert (a.target, a.body, b.target, b.body) == ("/raw/p1", b"hello", "/raw/p2", b"")
