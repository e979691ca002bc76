"""Canonical form of a request path: the one string that is both routed and forwarded.

Routing on one spelling of a path and forwarding another is how traversal bypasses happen
(``/public/%2e%2e/admin`` routed as ``/public/...`` but served as ``/admin``). So the gateway
normalises once, routes on the result and forwards exactly that result.

Pure and on the per-request hot path: no I/O, no regex; every table is built at import.
"""

from __future__ import annotations

import string

__all__ = ["InvalidPath", "normalize_path"]


class InvalidPath(ValueError):
    """The path cannot be normalised safely. The message is safe to show a client."""


# RFC 3986 §2.3. Decoding these never changes what a path means, so every spelling of
# them (`%41` vs `A`, `%2e` vs `.`) collapses to one before routing.
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def _build_escapes() -> dict[str, str]:
    """Map every two-hex-digit suffix of a `%` escape to its canonical replacement.

    One dict lookup then decodes, upper-cases or rejects an escape; `00` is absent on purpose
    so a NUL is rejected by the same miss as a malformed escape.
    """
    hexdigits = "0123456789abcdefABCDEF"
    table: dict[str, str] = {}
    for hi in hexdigits:
        for lo in hexdigits:
            byte = int(hi + lo, 16)
            if byte == 0:
                continue
            char = chr(byte)
            table[hi + lo] = char if char in _UNRESERVED else "%" + (hi + lo).upper()
    return table


_ESCAPES = _build_escapes()


def _reject(raw: str) -> InvalidPath:
    """Explain why `normalize_path` refused ``raw``; off the hot path, so clarity over speed.

    `?` and `#` are refused too: the caller strips the query, so a raw one here means either a
    caller bug (passing the query along) or a target an upstream would cut short; both would
    make the forwarded path differ from the routed one.
    """
    if not raw.startswith("/"):
        return InvalidPath("path must start with '/'")
    if "?" in raw or "#" in raw:
        return InvalidPath("path must not contain '?' or '#'")
    return InvalidPath("path contains a character that must be percent-encoded")


def _decode(path: str) -> str:
    """Decode escapes of unreserved characters and upper-case the hex of all others.

    Works on the whole path at once: decoding never yields a `/` (an encoded slash is not
    unreserved and stays `%2F`), so the segment boundaries are the same before and after.
    """
    parts = path.split("%")
    out = [parts[0]]
    for part in parts[1:]:
        replacement = _ESCAPES.get(part[:2])
        if replacement is None:
            if part[:2] == "00":
                raise InvalidPath("path must not contain an encoded NUL (%00)")
            raise InvalidPath("path contains a malformed percent-encoding")
        out.append(replacement)
        out.append(part[2:])
    return "".join(out)


def _resolve(path: str) -> str:
    """Merge empty segments and remove dot segments (RFC 3986 §5.2.4), never above root."""
    segments = path.split("/")
    kept: list[str] = []
    # segments[0] is the empty string before the leading '/'.
    for segment in segments[1:]:
        if segment == ".." and kept:
            kept.pop()
        elif segment not in ("", ".", ".."):
            kept.append(segment)
    if not kept:
        return "/"
    # Per the RFC a final `.` or `..` leaves the directory form: `/a/b/..` -> `/a/`.
    trailing = "/" if segments[-1] in ("", ".", "..") else ""
    return "/" + "/".join(kept) + trailing


def normalize_path(raw: str) -> str:
    """Return the canonical percent-encoded form of ``raw`` (a path without the query).

    Raises InvalidPath for anything that cannot be made canonical safely.
    """
    # One expression of C-level scans (a regex search costs several times more). For ASCII
    # text isprintable() is False exactly for the control characters (< 0x20 and 0x7f);
    # space counts as printable, hence its own test.
    if (
        raw[:1] != "/"
        or not raw.isascii()
        or not raw.isprintable()
        or " " in raw
        or "?" in raw
        or "#" in raw
    ):
        raise _reject(raw)
    path = _decode(raw) if "%" in raw else raw
    # Every segment follows a '/', so a dot segment always shows up as "/.": checking for that
    # instead of any '.' keeps `/v1/users.json` on the fast path.
    if "/." in path or "//" in path:
        return _resolve(path)
    return path
