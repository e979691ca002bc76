"""WireResponse: a small relayed response serialised in one write, framed correctly."""

from __future__ import annotations

import re

import pytest
from aiohttp.http import HttpVersion10, HttpVersion11
from aiohttp.test_utils import make_mocked_request

from aiogate.stages.wire import WireResponse


class RecordingWriter:
    def __init__(self) -> None:
        self.data = b""

    async def write(self, chunk: bytes) -> None:
        self.data += chunk


async def send(
    response: WireResponse, *, version: object = HttpVersion11, closing: bool = False
) -> str:
    writer = RecordingWriter()
    request = make_mocked_request(
        "GET",
        "/",
        version=version,
        closing=closing,
        writer=writer,  # type: ignore[arg-type]
    )
    # The mock treats every HTTP/1.0 request as closing; a real one says keep-alive explicitly.
    request._message = request._message._replace(should_close=closing)
    await response.prepare(request)
    await response.write_eof()
    return writer.data.decode()


async def test_status_headers_and_body_go_out_as_relayed() -> None:
    headers = [("Content-Type", "application/json"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    raw = await send(WireResponse(201, "Created", headers, b'{"ok":1}'))
    head, _, body = raw.partition("\r\n\r\n")
    lines = head.split("\r\n")
    assert lines[0] == "HTTP/1.1 201 Created"
    assert lines[1:4] == ["Content-Type: application/json", "Set-Cookie: a=1", "Set-Cookie: b=2"]
    assert "Content-Length: 8" in lines
    assert body == '{"ok":1}'
    # nothing invented: no Server, no Content-Type of its own, no Connection on HTTP/1.1
    assert not any(line.lower().startswith(("server:", "connection:")) for line in lines)


async def test_date_is_added_only_when_the_upstream_sent_none() -> None:
    raw = await send(WireResponse(200, None, [], b""))
    assert re.search(r"\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n", raw)
    raw = await send(WireResponse(200, None, [("date", "Mon, 01 Jan 2024 00:00:00 GMT")], b""))
    assert raw.count("Date:") + raw.count("date:") == 1


async def test_reason_defaults_to_the_standard_phrase() -> None:
    raw = await send(WireResponse(404, None, [], b"x"))
    assert raw.startswith("HTTP/1.1 404 Not Found\r\n")


async def test_connection_header_follows_the_client() -> None:
    closing = await send(WireResponse(200, None, [], b""), closing=True)
    assert "\r\nConnection: close\r\n" in closing
    old_keepalive = await send(WireResponse(200, None, [], b""), version=HttpVersion10)
    assert old_keepalive.startswith("HTTP/1.0 200 OK\r\n")
    assert "\r\nConnection: keep-alive\r\n" in old_keepalive
    forced = WireResponse(200, None, [], b"")
    forced.force_close()
    assert "\r\nConnection: close\r\n" in await send(forced)


@pytest.mark.parametrize(
    "headers",
    [[("X-Evil", "a\r\nSet-Cookie: injected=1")], [("X-Evil", "a\nb")], [("X-Nul", "a\x00b")]],
)
async def test_line_breaks_in_headers_are_refused(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        await send(WireResponse(200, None, headers, b""))


async def test_body_can_be_replaced_before_sending_only() -> None:
    response = WireResponse(200, None, [("Content-Type", "application/json")], b"{}")
    assert response.header("content-type") == "application/json"
    assert response.header("X-Missing") is None
    response.body = b'{"a":1}'
    raw = await send(response)
    assert raw.endswith('\r\nContent-Length: 7\r\n\r\n{"a":1}')
    with pytest.raises(RuntimeError):
        response.body = b"late"
    assert await response.prepare(make_mocked_request("GET", "/")) is None  # sent once only


async def test_head_answer_describes_a_body_it_does_not_send() -> None:
    raw = await send(
        WireResponse(200, "OK", [("Content-Type", "text/plain")], b"hello", send_body=False)
    )
    head, _, body = raw.partition("\r\n\r\n")
    assert "Content-Length: 5" in head.split("\r\n")
    assert body == ""
