"""Slow request bodies (server.body_timeout, body_min_rate) and the connection cap
(server.max_connections), over raw sockets against the real daemon.

The daemon's timeouts are short; the tests' own waits are generous (a shared 2-core machine),
and nothing here asserts on speed.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway, wait_until
from gwconfigs import wide_config
from metrics_support import scrape
from wire import (
    access_line,
    assert_gateway_error,
    connect,
    new_id,
    parse,
    read_reply,
    seen_with,
    wait_closed,
)

BODY_TIMEOUT = 0.5
MIN_RATE = 1000  # bytes/s: at least 500 bytes in each half second of waiting
SLACK = 10.0  # the tests' own patience


@pytest.fixture(scope="module")
def sgw(
    backends: BackendThread, raw_backend: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = wide_config(
        backends,
        raw_backend.url,
        body_timeout="500ms",
        body_min_rate=MIN_RATE,
        max_body_size="128MiB",
    )
    config["routes"].append(
        {
            "path": "/json",
            "upstream": "user-service",
            "name": "json",
            "transformations": {"request": {"json_body": {"add": {"via": "gateway"}}}},
        }
    )
    gw = Gateway(config, tmp_path_factory.mktemp("slow")).start()
    yield gw
    gw.stop()


def _head(path: str, rid: str, framing: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {rid}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


def _stall(gw: Gateway, path: str, framing: str, sent: bytes) -> tuple[Any, str]:
    """Send a head and the first body bytes, then nothing: (the reply, its request id)."""
    rid = new_id()
    with connect(gw.port) as sock:
        sock.sendall(_head(path, rid, framing) + sent)
        received, _ = wait_closed(sock, SLACK)
    return parse(received), rid


def _assert_408(gw: Gateway, reply: Any, rid: str) -> None:
    body = assert_gateway_error(reply, 408, "request_timeout")
    assert body["request_id"] == rid
    assert reply.header("Connection") == "close"
    assert access_line(gw, rid)["status"] == 408
    logged = "\n".join([*gw.lines, *gw.stderr])
    assert "Traceback" not in logged
    assert "Unhandled exception" not in logged


def _assert_aborted_upstream(raw_backend: Any, rid: str) -> Any:
    """The raw backend logs a request when its connection ends: it must not be complete."""
    wait_until(lambda: bool(raw_backend.log.with_id(rid)), SLACK, "raw backend sees the abort")
    (seen,) = raw_backend.log.with_id(rid)
    assert not seen.complete, "the upstream saw a complete request"
    return seen


# -- body_timeout: a body that stops --------------------------------------------------------


def test_body_that_stops_after_one_byte_gets_408_and_is_closed(
    sgw: Gateway, backends: BackendThread
) -> None:
    reply, rid = _stall(sgw, "/upload", "Content-Length: 100", b"x")
    _assert_408(sgw, reply, rid)
    assert seen_with(backends, rid) == []


def test_head_without_any_body_byte_gets_408(sgw: Gateway, backends: BackendThread) -> None:
    reply, rid = _stall(sgw, "/upload", "Content-Length: 100", b"")
    _assert_408(sgw, reply, rid)
    assert seen_with(backends, rid) == []


def test_streamed_body_over_64k_that_stalls_aborts_the_upstream_request(
    sgw: Gateway, raw_backend: Any
) -> None:
    reply, rid = _stall(sgw, "/raw/upload", "Content-Length: 200000", b"s" * 100_000)
    _assert_408(sgw, reply, rid)
    seen = _assert_aborted_upstream(raw_backend, rid)
    assert len(seen.body) <= 100_000


def test_chunked_body_that_stalls_aborts_the_upstream_request(
    sgw: Gateway, raw_backend: Any
) -> None:
    chunk = b"c" * 1000
    reply, rid = _stall(
        sgw, "/raw/upload", "Transfer-Encoding: chunked", b"%x\r\n%s\r\n" % (len(chunk), chunk)
    )
    _assert_408(sgw, reply, rid)
    seen = _assert_aborted_upstream(raw_backend, rid)
    assert not seen.body.endswith(b"0\r\n\r\n")


def test_json_body_read_by_a_transform_that_stalls_gets_408(
    sgw: Gateway, backends: BackendThread
) -> None:
    reply, rid = _stall(sgw, "/json", "Content-Length: 40", b'{"a": ')
    _assert_408(sgw, reply, rid)
    assert seen_with(backends, rid) == []


# -- body_min_rate: a body that crawls ------------------------------------------------------


def _trickle(sock: socket.socket, piece: bytes, gap: float, budget: float) -> bytes:
    """Send `piece` every `gap` seconds until the gateway answers or `budget` runs out."""
    received = b""
    sock.settimeout(gap)
    until = time.monotonic() + budget
    while time.monotonic() < until:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not data:
            break
        received += data
    rest, _ = wait_closed(sock, SLACK)
    return received + rest


def test_body_trickled_below_the_min_rate_gets_408(sgw: Gateway, raw_backend: Any) -> None:
    # 5 bytes every 50 ms: never idle for body_timeout, but 100 bytes/s < 1000 bytes/s.
    rid = new_id()
    with connect(sgw.port) as sock:
        sock.sendall(_head("/raw/upload", rid, "Content-Length: 200000"))
        received = _trickle(sock, b"t" * 5, 0.05, SLACK)
    assert received, "the gateway let a body crawl for the whole test"
    _assert_408(sgw, parse(received), rid)
    _assert_aborted_upstream(raw_backend, rid)


# -- what must still pass -------------------------------------------------------------------


@pytest.fixture(scope="module")
def relaxed(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Limits a steady slow client stays well within, however loaded the machine."""
    config = wide_config(backends, body_timeout="3s", body_min_rate=500)
    gw = Gateway(config, tmp_path_factory.mktemp("relaxed")).start()
    yield gw
    gw.stop()


@pytest.mark.parametrize("chunked", [False, True], ids=["length", "chunked"])
def test_slow_but_steady_body_passes(
    relaxed: Gateway, backends: BackendThread, chunked: bool
) -> None:
    # 1000 bytes every 250 ms for 4.5 s: longer than a rate window, at ~8x the min rate.
    piece, count = b"p" * 1000, 18
    rid = new_id()
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(piece) * count}"
    with connect(relaxed.port) as sock:
        sock.sendall(_head("/upload", rid, framing))
        for _ in range(count):
            time.sleep(0.25)
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        sock.settimeout(SLACK)
        reply = read_reply(sock)
    assert reply.status == 200, reply.body
    assert seen_with(backends, rid)[0]["body_len"] == len(piece) * count


def test_a_body_the_gateway_is_slow_to_take_is_not_a_timeout(
    sgw: Gateway, backends: BackendThread
) -> None:
    """Time the gateway spends not reading (the upstream reads late) is not the client's."""
    rid = new_id()
    # Well past what the socket buffers on the way hold (loopback's autotuned buffers take
    # tens of MiB): the client is held back while the backend does not read.
    size = 96 * 1024 * 1024
    with connect(sgw.port) as sock:
        sock.sendall(_head("/upload-late/2", rid, f"Content-Length: {size}"))
        sock.sendall(b"u" * size)
        sock.settimeout(SLACK)
        reply = read_reply(sock)
    assert reply.status == 200, reply.body
    assert seen_with(backends, rid)[0]["body_len"] == size


# -- max_connections ------------------------------------------------------------------------

CAP = 5


@pytest.fixture
def capped(backends: BackendThread, tmp_path: Path) -> Iterator[Gateway]:
    gw = Gateway(wide_config(backends, max_connections=CAP), tmp_path).start()
    yield gw
    gw.stop()


def _served(sock: socket.socket) -> bool:
    sock.sendall(b"GET /api/users HTTP/1.1\r\nHost: x\r\n\r\n")
    return read_reply(sock).status == 200


def _refused(gw: Gateway) -> float:
    return scrape(gw).value("aiogate_connections_refused_total", reason="max_connections")


def test_connections_over_the_cap_are_closed_at_once(capped: Gateway) -> None:
    assert _refused(capped) == 0
    held = [connect(capped.port) for _ in range(CAP)]
    try:
        for sock in held:
            assert _served(sock)  # kept alive: all five are open now
        with connect(capped.port) as extra:
            received, _ = wait_closed(extra, SLACK)
        assert received == b""  # closed without a byte written
        assert _refused(capped) == 1
        # One leaves: its place is free for a new client.
        held.pop().close()
        wait_until(
            lambda: scrape(capped).value("aiogate_active_connections") == CAP - 1,
            SLACK,
            "the closed connection to be gone",
        )
        with connect(capped.port) as newcomer:
            assert _served(newcomer)
        assert _refused(capped) == 1
    finally:
        for sock in held:
            sock.close()


def test_a_reload_changes_the_cap(capped: Gateway) -> None:
    held = [connect(capped.port) for _ in range(CAP)]
    try:
        for sock in held:
            assert _served(sock)
        with connect(capped.port) as extra:
            assert wait_closed(extra, SLACK)[0] == b""  # refused at the cap of five
        config = dict(capped.config)
        config["server"] = {**config["server"], "max_connections": CAP + 1}
        capped.write(config)
        capped.signal(signal.SIGHUP)
        capped.wait_event("config_reloaded", timeout=SLACK)
        with connect(capped.port) as sixth:
            assert _served(sixth)
        assert _refused(capped) == 1
    finally:
        for sock in held:
            sock.close()
