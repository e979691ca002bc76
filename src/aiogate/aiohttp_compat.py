"""Everything aiogate takes from aiohttp beyond its documented API, in one place.

Every import of a private aiohttp name lives here (the connection handler in `connection.py`
subclasses aiohttp's `RequestHandler` and is the only other module that touches its
internals); `setup.cfg` bounds aiohttp below its next minor release while this is so. A test
(tests/unit/test_import_graph.py) keeps private aiohttp imports out of every other module.

aiogate also relies on the strictness of aiohttp's C HTTP parser (llhttp). aiohttp silently
falls back to a pure-Python parser when its extensions are missing or disabled
(`AIOHTTP_NO_EXTENSIONS=1`); that parser accepts shapes llhttp refuses, so the gateway refuses
to start on it rather than relay what it cannot parse strictly.
"""

from __future__ import annotations

from aiohttp import web_protocol
from aiohttp.helpers import rfc822_formatted_time, set_exception
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import _ErrInfo as ErrInfo

__all__ = [
    "ErrInfo",
    "ParserUnavailable",
    "c_parser_active",
    "reader_is_waiting",
    "require_c_parser",
    "rfc822_formatted_time",
    "set_exception",
]


def reader_is_waiting(reader: StreamReader) -> bool:
    """A coroutine is blocked reading `reader` (aiohttp keeps the future in `_waiter`)."""
    return reader._waiter is not None


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
