"""A socket-level backend: records the exact bytes the gateway sent, answers misbehaving.

The aiohttp backend in `backend.py` parses (and decompresses) what it receives; some tests need
the request as it was on the wire (is a gzip body still gzip? did a cut-off chunked body end
with a terminating chunk?) or a response no well-behaved server would send.

Paths (a leading `/raw` and anything after the name are ignored):
  /close-mid        head with Content-Length: 100000, 1000 body bytes, then close
  /close-mid-chunk  chunked head, one complete chunk, half of the next, then close
  /close-small      head with Content-Length: 5000, 100 body bytes, then close
  /close-early      close without answering
  /garbage          a response line that is not HTTP
  /notype          200 with a body and no Content-Type (and /notype-chunked, streamed)
  anything else     200, JSON {"ok": true}
"""

from __future__ import annotations

import socket
import socketserver
import threading
from dataclasses import dataclass, field


@dataclass
class RawRequest:
    head: bytes
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes  # as on the wire (chunked framing included)
    complete: bool  # the framed body arrived in full

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class RawLog:
    requests: list[RawRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: RawRequest) -> None:
        with self.lock:
            self.requests.append(entry)

    def with_id(self, request_id: str) -> list[RawRequest]:
        with self.lock:
            return [r for r in self.requests if r.header("X-Request-ID") == request_id]


def _read_head(sock: socket.socket, buffer: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            return None
        buffer += data
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    del buffer[:end]
    return head


def _fill(sock: socket.socket, buffer: bytearray, need: int) -> bool:
    while len(buffer) < need:
        data = sock.recv(65536)
        if not data:
            return False
        buffer += data
    return True


def _line(sock: socket.socket, buffer: bytearray, at: int) -> int | None:
    """Index of the CRLF ending the line that starts at `at`; None on EOF."""
    while True:
        index = buffer.find(b"\r\n", at)
        if index >= 0:
            return index
        data = sock.recv(65536)
        if not data:
            return None
        buffer += data


def _read_body(
    sock: socket.socket, buffer: bytearray, headers: list[tuple[str, str]]
) -> tuple[bytes, bool]:
    """The body as framed on the wire, and whether its framing completed before EOF."""
    names = {k.lower(): v for k, v in headers}
    if "chunked" in names.get("transfer-encoding", "").lower():
        at = 0
        while True:
            end = _line(sock, buffer, at)
            if end is None:
                break
            size = int(bytes(buffer[at:end]).split(b";")[0], 16)
            at = end + 2
            if size == 0:
                while True:  # trailers, up to the empty line
                    end = _line(sock, buffer, at)
                    if end is None:
                        break
                    line_empty = end == at
                    at = end + 2
                    if line_empty:
                        body = bytes(buffer[:at])
                        del buffer[:at]
                        return body, True
                break
            if not _fill(sock, buffer, at + size + 2):
                break
            at += size + 2
        return bytes(buffer), False
    length = int(names.get("content-length", "0"))
    if not _fill(sock, buffer, length):
        return bytes(buffer), False
    body = bytes(buffer[:length])
    del buffer[:length]
    return body, True


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)
        buffer = bytearray()
        try:
            while True:
                head = _read_head(sock, buffer)
                if head is None:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = []
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers.append((name, value.strip()))
                body, complete = _read_body(sock, buffer, headers)
                self.server.log.add(RawRequest(head, method, target, headers, body, complete))
                if not complete or not self._answer(sock, target):
                    return
        except (OSError, ValueError):
            return

    def _answer(self, sock: socket.socket, target: str) -> bool:
        path = target.split("?", 1)[0].removeprefix("/raw")
        if path.startswith("/close-mid-chunk"):
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"400\r\n" + b"a" * 1024 + b"\r\n400\r\n" + b"b" * 512
            )
            return False
        if path.startswith("/close-small"):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100)
            return False
        if path.startswith("/close-mid"):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            return False
        if path.startswith("/close-early"):
            return False
        if path.startswith("/garbage"):
            sock.sendall(b"HELLO THERE\r\n\r\n")
            return False
        if path.startswith("/notype-chunked"):
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            )
            return True
        if path.startswith("/server"):
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nServer: rawbackend/1.0\r\nContent-Length: 2\r\n\r\nok"
            )
            return True
        if path.startswith("/notype"):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
            return True
        body = b'{"ok": true}'
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        return True


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    log: RawLog


class RawBackend:
    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.log = RawLog()
        self.log = self.server.log
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RawBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)
