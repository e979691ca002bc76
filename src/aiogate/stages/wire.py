"""Small relayed responses written as one pre-serialised buffer.

Most proxied responses are small and arrive whole (the proxy reads bodies up to 64 KiB before
answering). For those, aiohttp's general response machinery — a header multidict built from
our list, `prepare()` working out framing, compression and defaults, then a C serialiser — costs
about a tenth of the gateway's time per request. `WireResponse` is still an aiohttp
`StreamResponse` (aiohttp drives it through `prepare()` and `write_eof()` as any other), but
`prepare()` writes the status line, the headers and the body in one `writer.write()`.

It relays exactly what it is given: no `Server` or `Content-Type` of its own. It adds what a
forwarding recipient must: `Date` when the upstream sent none (RFC 9110 §6.6.1),
`Content-Length`, and the `Connection` header the client's keep-alive state needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from aiohttp import web
from aiohttp.http import HttpVersion10, HttpVersion11

from ..aiohttp_compat import rfc822_formatted_time

__all__ = ["BUFFER_LIMIT", "WireResponse"]

#: Bodies up to this size are read whole, both ways: cheaper than streaming, and replayable.
BUFFER_LIMIT: Final = 64 * 1024


class WireResponse(web.StreamResponse):
    """A complete response of known, small size; see the module docstring."""

    __slots__ = ("_body_bytes", "_pairs", "_send_body")

    def __init__(
        self,
        status: int,
        reason: str | None,
        headers: Sequence[tuple[str, str]],
        body: bytes,
        *,
        send_body: bool = True,
    ) -> None:
        super().__init__(status=status, reason=reason)
        self._pairs = headers
        self._body_bytes = body
        #: False for a HEAD: Content-Length still describes `body`, which is not sent.
        self._send_body = send_body

    @property
    def body(self) -> bytes:
        return self._body_bytes

    @body.setter
    def body(self, body: bytes) -> None:
        """Replace the body before it is sent (a response transformation)."""
        if self._eof_sent:
            raise RuntimeError("the response was sent already")
        self._body_bytes = body

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), as relayed."""
        wanted = name.lower()
        for key, value in self._pairs:
            if key.lower() == wanted:
                return value
        return None

    async def prepare(self, request: web.BaseRequest) -> Any:
        if self._eof_sent:
            return None
        writer = request.writer
        if self._keep_alive is None:  # force_close() set it to False already
            self._keep_alive = request.keep_alive
        self._req = request
        self._payload_writer = writer
        version = request.version
        parts = [f"HTTP/{version.major}.{version.minor} {self._status} {self._reason}\r\n"]
        lines = 1
        has_date = False
        for name, value in self._pairs:
            parts.append(f"{name}: {value}\r\n")
            lines += 1
            if not has_date and len(name) == 4 and name.lower() == "date":
                has_date = True
        if not has_date:
            parts.append(f"Date: {rfc822_formatted_time()}\r\n")
            lines += 1
        parts.append(f"Content-Length: {len(self._body_bytes)}\r\n")
        lines += 1
        if self._keep_alive:
            if version == HttpVersion10:
                parts.append("Connection: keep-alive\r\n")
                lines += 1
        elif version == HttpVersion11:
            parts.append("Connection: close\r\n")
            lines += 1
        parts.append("\r\n")
        head = "".join(parts)
        # Every line break must be one of ours: a CR or LF inside a name, value or reason
        # would start a header (or a response) of its own. Three C-speed scans, as in head.py.
        if head.count("\n") != lines + 1 or head.count("\r") != lines + 1 or "\x00" in head:
            raise ValueError("CR, LF or NUL in a response header")
        self._eof_sent = True
        data = head.encode("utf-8", "surrogateescape")
        await writer.write(data + self._body_bytes if self._send_body else data)
        return writer

    async def write_eof(self, data: bytes = b"") -> None:
        """Everything went out in `prepare()`."""
