from __future__ import annotations

import pytest
from aiohttp import web_protocol

from aiogate.aiohttp_compat import ParserUnavailable, c_parser_active, require_c_parser


def test_c_parser_is_active_in_the_test_environment() -> None:
    assert c_parser_active()
    require_c_parser()


def test_pure_python_parser_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp.http_parser import HttpRequestParserPy

    monkeypatch.setattr(web_protocol, "HttpRequestParser", HttpRequestParserPy)
    assert not c_parser_active()
    with pytest.raises(ParserUnavailable, match="AIOHTTP_NO_EXTENSIONS"):
        require_c_parser()
