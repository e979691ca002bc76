"""WebSocket handshake rules (RFC 6455 §4) and the little framing the gateway writes itself.

The gateway never re-frames WebSocket traffic: after the upstream's `101` it splices bytes
(see `tunnel.py`). It only checks the handshake, verifies the upstream's
`Sec-WebSocket-Accept`, and writes a close frame of its own when it ends a connection
(shutdown, idle timeout), which is why it tracks where frames begin (`FrameBoundary`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from typing import Final

from aiohttp import web
from aiohttp.http import HttpVersion11

from .errors import BadRequest, GatewayError
from .headers import connection_tokens

__all__ = [
    "GOING_AWAY",
    "FrameBoundary",
    "UpgradeRequired",
    "accept_key",
    "check_handshake",
    "close_frame",
    "is_websocket_request",
]

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Close code 1001: the endpoint is going away (server shutdown, idle connection dropped).
GOING_AWAY: Final = 1001
_CLOSE_OPCODE: Final = 0x8


class UpgradeRequired(GatewayError):
    """426: a WebSocket version the gateway does not speak (RFC 6455 §4.4)."""

    status = 426
    code = "unsupported_websocket_version"


def is_websocket_request(request: web.BaseRequest) -> bool:
    """The client asks for a WebSocket (`Upgrade: websocket`); the rest is checked later."""
    upgrade = request.headers.get("Upgrade")
    return upgrade is not None and "websocket" in upgrade.lower()


def check_handshake(request: web.BaseRequest) -> str:
    """The client's `Sec-WebSocket-Key` once the handshake is one the gateway proxies.

    400 for a malformed handshake (not a GET, no `Connection: upgrade`, no key, a body),
    426 with `Sec-WebSocket-Version: 13` for another version.
    """
    headers = request.headers
    if request.method != "GET" or request.version != HttpVersion11:
        raise BadRequest("a WebSocket handshake must be an HTTP/1.1 GET request")
    if request.body_exists:
        raise BadRequest("a WebSocket handshake must not have a body")
    upgrade = {t.strip().lower() for t in headers.get("Upgrade", "").split(",")}
    if "websocket" not in upgrade:
        raise BadRequest("a WebSocket handshake must carry Upgrade: websocket")
    tokens: set[str] = set().union(
        *(connection_tokens(v) for v in headers.getall("Connection", ()))
    )
    if "upgrade" not in tokens:
        raise BadRequest("a WebSocket handshake must carry Connection: upgrade")
    if headers.getall("Sec-WebSocket-Version", ()) != ["13"]:
        raise UpgradeRequired(
            "only WebSocket version 13 is supported", headers={"Sec-WebSocket-Version": "13"}
        )
    keys = headers.getall("Sec-WebSocket-Key", ())
    if len(keys) != 1 or not _valid_key(keys[0]):
        raise BadRequest("a WebSocket handshake needs one valid Sec-WebSocket-Key")
    return str(keys[0])


def _valid_key(key: str) -> bool:
    """A base64 value of 16 bytes (RFC 6455 §4.1)."""
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except ValueError:
        return False


def accept_key(key: str) -> str:
    """The `Sec-WebSocket-Accept` that answers `key`."""
    digest = hashlib.sha1(
        key.strip().encode("ascii") + _GUID
    ).digest()  # RFC 6455's choice, not for security
    return base64.b64encode(digest).decode("ascii")


def close_frame(code: int, *, masked: bool) -> bytes:
    """A close frame with `code` and no reason. Frames to a server must be masked (§5.3)."""
    payload = struct.pack("!H", code)
    if not masked:
        return bytes((0x80 | _CLOSE_OPCODE, len(payload))) + payload
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((0x80 | _CLOSE_OPCODE, 0x80 | len(payload))) + mask + body


class FrameBoundary:
    """Follows one direction of a WebSocket stream by its frame headers only (payloads are
    skipped by length, never read), so the gateway knows whether a close frame of its own
    can be written there without cutting a frame in two."""

    __slots__ = ("_header", "_remaining")

    def __init__(self) -> None:
        self._remaining = 0  # payload bytes of the current frame still to come
        self._header = b""  # a frame header split across reads

    @property
    def at_boundary(self) -> bool:
        return self._remaining == 0 and not self._header

    def feed(self, data: bytes) -> None:
        # Called for every read of a tunnel, so written for speed: a read inside a payload
        # costs one comparison, a frame header a few integer operations.
        size = len(data)
        remaining = self._remaining
        if not self._header:
            if remaining >= size:
                self._remaining = remaining - size
                return
        else:
            data = self._header + data  # rare: a header split across reads
            self._header = b""
            size = len(data)
        offset = remaining
        while offset < size:
            if offset + 2 > size:
                self._header = data[offset:]
                self._remaining = 0
                return
            second = data[offset + 1]
            length = second & 0x7F
            head = 6 if second & 0x80 else 2  # a masked frame carries a 4-byte key
            if length == 126:
                extended = 2
            elif length == 127:
                extended = 8
            else:
                extended = 0
            if offset + head + extended > size:
                self._header = data[offset:]
                self._remaining = 0
                return
            if extended:
                length = int.from_bytes(data[offset + 2 : offset + 2 + extended], "big")
            offset += head + extended + length
        self._remaining = offset - size
