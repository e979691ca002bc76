"""What aiogate needs from aiohttp beyond its documented API, checked in one place.

aiogate runs behind aiohttp's low-level server and relies on the strictness of its C HTTP
parser (llhttp). aiohttp silently falls back to a pure-Python parser when its extensions are
missing or disabled (`AIOHTTP_NO_EXTENSIONS=1`); that parser accepts shapes llhttp refuses,
so the gateway refuses to start on it rather than relay what it cannot parse strictly.
"""

from __future__ import annotations

from aiohttp import web_protocol

__all__ = ["ParserUnavailable", "c_parser_active", "require_c_parser"]


class ParserUnavailable(RuntimeError):
    """aiohttp's C HTTP parser is not in use. The message says how to fix it."""


def c_parser_active() -> bool:
    """True when aiohttp's server side parses requests with its C extension (llhttp)."""
    # web_protocol binds the parser class at its import: that is the one the server uses.
    parser: type = getattr(web_protocol, "HttpRequestParser")  # noqa: B009 (not re-exported)
    return parser.__module__ == "aiohttp._http_parser"


def require_c_parser() -> None:
    if not c_parser_active():
        raise ParserUnavailable(
            "aiohttp's C HTTP parser is not active (AIOHTTP_NO_EXTENSIONS is set, or aiohttp "
            "was installed without its compiled extensions); its pure-Python parser is laxer "
            "and aiogate will not serve with it: unset AIOHTTP_NO_EXTENSIONS or reinstall "
            "aiohttp from a wheel (pip install --force-reinstall --only-binary=:all: aiohttp)"
        )
