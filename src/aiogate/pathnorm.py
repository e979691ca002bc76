"""Canonical form of a request path: the one string that is both routed and forwarded.

Routing on one spelling of a path and forwarding another is how traversal bypasses happen
(``/public/%2e%2e/admin`` routed as ``/public/...`` but served as ``/admin``). So the gateway
normalises once, routes on the result and forwards exactly that result.

Two more spellings make upstreams see another path than the gateway routed: an encoded slash
or backslash (`/public/..%2Fadmin` is one segment here, but nginx decodes `%2F` before matching
and serves `/admin`) and `;` path parameters (Tomcat, Spring and Jetty drop `;...` from every
segment, so `/public/..;/admin` is `/admin` to them). Both are refused unless the flags say
otherwise (`server.escaped_slashes`, `server.path_parameters`).

Pure and on the per-request hot path: no I/O, no regex; every table is built at import.
"""

from __future__ import annotations

import string
from typing import Final

__all__ = ["ALLOW_PATH_PARAMETERS", "UNESCAPE_SLASHES", "InvalidPath", "normalize_path"]

#: Flag (`server.escaped_slashes: unescape`): `%2F`, `%5C` and `\` become `/` before dot
#: segments are resolved, instead of refusing the path.
UNESCAPE_SLASHES: Final = 1
#: Flag (`server.path_parameters: allow`): `;` is an ordinary character, not a refusal.
ALLOW_PATH_PARAMETERS: Final = 2


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


def _escaped_slashes(path: str, flags: int) -> str:
    """Turn `%2F`, `%5C` and `\\` of a decoded path into `/`, or refuse them.

    Kept as written they would be data to the gateway but a separator to many upstreams (nginx
    decodes `%2F` before matching; Windows servers and some frameworks split on `\\`), so
    the only safe choices are to decide before routing that they are separators, or to refuse.
    """
    if not flags & UNESCAPE_SLASHES:
        raise InvalidPath("path contains an encoded slash or backslash (%2F, %5C or \\)")
    return path.replace("%2F", "/").replace("%5C", "/").replace("\\", "/")


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


def normalize_path(raw: str, flags: int = 0) -> str:
    """Return the canonical percent-encoded form of ``raw`` (a path without the query).

    ``flags`` is a union of `UNESCAPE_SLASHES` and `ALLOW_PATH_PARAMETERS`; 0 is the strict
    default. Raises InvalidPath for anything that cannot be made canonical safely.
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
    path = raw
    if "%" in raw:
        path = _decode(raw)
        # The decoder upper-cases the hex, so these two scans catch every spelling; a double
        # encoding (`%252F`) is `%25` + `2F` and stays data, as every upstream decodes once.
        if "%2F" in path or "%5C" in path:
            path = _escaped_slashes(path, flags)
    if "\\" in path:
        path = _escaped_slashes(path, flags)
    if ";" in path and not flags & ALLOW_PATH_PARAMETERS:
        # Encoded `%3B` is data to everyone and passes; a raw one is a parameter delimiter
        # to some upstreams, which then serve another resource than the one routed.
        raise InvalidPath("path contains ';' (path parameters are refused; encode it as %3B)")
    # Every segment follows a '/', so a dot segment always shows up as "/.": checking for that
    # instead of any '.' keeps `/v1/users.json` on the fast path.
    if "/." in path or "//" in path:
        return _resolve(path)
    return path
