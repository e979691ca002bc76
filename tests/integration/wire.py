"""Raw HTTP/1.1 over sockets: exact request bytes out, parsed response in.

http.client and aiohttp both normalise what they send (and aiohttp decompresses what it
receives); the wire-level tests need the bytes exactly as written, so they use these helpers.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from backend import BackendThread


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes
    complete: bool = True  # False when the connection closed before the framed body ended
    extra: bytes = field(default=b"", repr=False)  # bytes after this response (pipelining)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def names(self) -> set[str]:
        return {key.lower() for key, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def recv_all(sock: socket.socket) -> bytes:
    """Everything until the peer closes (or the socket timeout fires)."""
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def parse(data: bytes, *, head_request: bool = False) -> Reply:
    """Parse one response from `data` (as much as arrived); raises on a missing head."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"no complete response head in {data[:300]!r}")
    lines = head.decode("latin-1").split("\r\n")
    _, status, *reason = lines[0].split(" ", 2)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    reply = Reply(int(status), reason[0] if reason else "", headers, b"", data)
    code = reply.status
    if head_request or code in (204, 304) or 100 <= code < 200:
        reply.extra = rest
        return reply
    te = reply.header("Transfer-Encoding")
    length = reply.header("Content-Length")
    if te is not None and "chunked" in te.lower():
        body = bytearray()
        while True:
            size_line, sep, rest = rest.partition(b"\r\n")
            if not sep:
                reply.complete = False
                break
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                trailer_end = rest.find(b"\r\n")
                reply.complete = trailer_end >= 0
                rest = rest[trailer_end + 2 :] if trailer_end >= 0 else b""
                break
            if len(rest) < size + 2:
                body += rest[:size]
                reply.complete = False
                rest = b""
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        reply.body = bytes(body)
        reply.extra = rest
    elif length is not None:
        n = int(length)
        reply.body = rest[:n]
        reply.complete = len(rest) >= n
        reply.extra = rest[n:]
    else:
        reply.body = rest  # read until close
    return reply


def exchange(port: int, data: bytes, *, timeout: float = 10.0, head_request: bool = False) -> Reply:
    """Send `data` as is, read until the server closes, parse the first response."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        received = recv_all(sock)
    return parse(received, head_request=head_request)


def request(
    port: int,
    method: str,
    target: str,
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    *,
    host: str = "gw.test",
    timeout: float = 10.0,
) -> Reply:
    """A well-formed request with `Connection: close`; headers go out exactly in order."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    names = {name.lower() for name, _ in headers or []}
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if body and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    if "connection" not in names:
        lines.append("Connection: close")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    return exchange(port, data, timeout=timeout, head_request=method == "HEAD")


def new_id() -> str:
    return "t-" + uuid.uuid4().hex


def wait_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Read until the peer closes; (bytes received, seconds it took). Fails on timeout."""
    sock.settimeout(timeout)
    started = time.monotonic()
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout}s") from None
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks), time.monotonic() - started


def seen_count(backends: BackendThread) -> int:
    with backends.seen.lock:
        return len(backends.seen.requests)


def seen_with(backends: BackendThread, request_id: str) -> list[dict[str, Any]]:
    with backends.seen.lock:
        return [
            entry
            for entry in backends.seen.requests
            if entry["headers"].get("X-Request-ID") == request_id  # type: ignore[attr-defined]
        ]


def assert_gateway_error(reply: Reply, status: int, code: str | None = None) -> dict[str, Any]:
    """The contract's error shape: JSON with error, message, request_id; no traceback."""
    assert reply.status == status, (reply.status, reply.body[:500])
    assert (reply.header("Content-Type") or "").startswith("application/json"), reply.headers
    body = reply.json()
    assert set(body) >= {"error", "message", "request_id"}, body
    assert isinstance(body["error"], str)
    assert body["error"]
    if code is not None:
        assert body["error"] == code, body
    assert_no_traceback(reply.body)
    return body  # type: ignore[no-any-return]


def assert_no_traceback(body: bytes) -> None:
    text = body.decode("utf-8", "replace")
    for marker in ("Traceback", 'File "', "aiogate/", "site-packages", "Error:"):
        assert marker not in text, text[:500]


def access_line(gateway: Any, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The gateway's access log line for `request_id` (log lines are flushed on a timer)."""
    from gateway import wait_until

    found: list[dict[str, Any]] = []

    def look() -> bool:
        found[:] = [e for e in gateway.events("request") if e.get("request_id") == request_id]
        return bool(found)

    wait_until(look, timeout, f"access line for {request_id}")
    assert len(found) == 1, found
    return found[0]


def read_reply(sock: socket.socket, *, head_request: bool = False) -> Reply:
    """Read exactly one complete response from a kept-alive connection."""
    data = b""
    while True:
        if b"\r\n\r\n" in data:
            reply = parse(data, head_request=head_request)
            framed = (
                reply.header("Content-Length") is not None
                or "chunked" in (reply.header("Transfer-Encoding") or "").lower()
                or head_request
                or reply.status in (204, 304)
            )
            if framed and reply.complete:
                return reply
        chunk = sock.recv(65536)
        if not chunk:
            return parse(data, head_request=head_request)
        data += chunk
