"""The request side of HTTP/1.1: what to send (`RequestBody`) and the encoded request head.

Everything that decides the framing of the request lives here, so it can be read (and
reviewed as the security boundary it is) apart from the connection state machine.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["BodyChunks", "RequestBody", "check_head", "encode_head"]

BodyChunks = AsyncIterator[bytes]


@dataclass(frozen=True, slots=True)
class RequestBody:
    """What to send: exactly one of `data` or `chunks`.

    `chunks` with `length=None` goes out with `Transfer-Encoding: chunked`; with a length, with
    `Content-Length` framing, and the stream must then yield exactly that many bytes (ValueError
    otherwise, after aborting the upstream connection).
    """

    data: bytes | None = None
    chunks: BodyChunks | None = None
    length: int | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.chunks is None):
            raise ValueError("RequestBody needs exactly one of data / chunks")
        if self.data is not None:
            if self.length is not None and self.length != len(self.data):
                raise ValueError("RequestBody.length does not match len(data)")
        elif self.length is not None and self.length < 0:
            raise ValueError("RequestBody.length must not be negative")

    @property
    def replayable(self) -> bool:
        """Whether the body can be sent a second time (a stream is consumed by sending)."""
        return self.chunks is None


# --- request head ----------------------------------------------------------------------------

_token = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch
# Origin-form, absolute-form or "*": visible ASCII only. A space, CR or LF here would split
# the request line, so this is a framing check, not pedantry.
_target_ok = re.compile(r"[\x21-\x7e]+").fullmatch
# Framing is the client's job: these never go out as the caller gave them.
_FRAMING_HEADERS: Final = frozenset({"content-length", "transfer-encoding", "connection"})
_EMPTY_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})

# name -> True (send it) / False (a framing header: drop it). Header names repeat from request
# to request, so the token check and the lower() run once per distinct name. Bounded so that
# arbitrary client-chosen names cannot grow it without limit.
_name_cache: dict[str, bool] = {}
_method_cache: set[str] = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_CACHE_MAX: Final = 4096


def _sendable(name: str) -> bool:
    ok = _name_cache.get(name)
    if ok is None:
        if _token(name) is None:
            raise ValueError(f"invalid header name {name!r}")
        ok = name.lower() not in _FRAMING_HEADERS
        if len(_name_cache) < _CACHE_MAX:
            _name_cache[name] = ok
    return ok


def encode_head(
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]],
    body: RequestBody | None,
    *,
    upgrade: bool = False,
) -> bytes:
    """The request line, the caller's headers and our framing header, as one bytes object.

    Raises ValueError for anything that could change the message's framing: a method that is
    not a token, a target with spaces or controls, a header name that is not a token, a value
    holding CR, LF or NUL, text that has no UTF-8 form (a lone surrogate such as U+D800, which
    surrogateescape does not cover). Content-Length / Transfer-Encoding / Connection from the
    caller are dropped (`upgrade` adds `Connection: Upgrade`). Text is encoded as UTF-8 with
    surrogateescape, the inverse of how aiohttp's server decodes incoming headers, so client
    bytes pass through unchanged.
    """
    if method not in _method_cache:
        if _token(method) is None:
            raise ValueError(f"invalid method {method!r}")
        if len(_method_cache) < _CACHE_MAX:
            _method_cache.add(method)
    if _target_ok(target) is None:
        raise ValueError(f"invalid request target {target!r}")
    parts = [method, " ", target, " HTTP/1.1\r\n"]
    lines = 2  # the request line and the empty line ending the head
    for name, value in headers:
        if _sendable(name):
            parts.append(f"{name}: {value}\r\n")
            lines += 1
    if body is None:
        if method in _EMPTY_BODY_METHODS:
            parts.append("Content-Length: 0\r\n")
            lines += 1
    elif body.data is not None:
        parts.append(f"Content-Length: {len(body.data)}\r\n")
        lines += 1
    elif body.length is not None:
        parts.append(f"Content-Length: {body.length}\r\n")
        lines += 1
    else:
        parts.append("Transfer-Encoding: chunked\r\n")
        lines += 1
    if upgrade:
        parts.append("Connection: Upgrade\r\n")
        lines += 1
    parts.append("\r\n")
    text = "".join(parts)
    # Three C-speed scans of the whole head instead of a check per value: any CR or LF beyond
    # the ones we wrote means some value tried to start a header line of its own.
    if text.count("\n") != lines or text.count("\r") != lines or "\x00" in text:
        for name, value in headers:
            if "\r" in value or "\n" in value or "\x00" in value:
                raise ValueError(f"header {name!r} has CR, LF or NUL in its value")
        raise ValueError("CR, LF or NUL in the request head")  # pragma: no cover
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Name the culprit, never show the value: it may be a credential or a claim.
        for name, value in headers:
            try:
                value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise ValueError(f"header {name!r} has a value with no UTF-8 form") from None
        raise ValueError("the request target has no UTF-8 form") from None


def check_head(method: str, target: str, headers: Sequence[tuple[str, str]]) -> None:
    """Raise the ValueError `encode_head` would raise for this request, or nothing.

    For a caller that sends the same request to several places: it can find out once, before
    it picks any, whether the request can be sent at all.
    """
    encode_head(method, target, headers, None)
