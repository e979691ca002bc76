"""The request head and body (head.py), sent through the pool to real sockets on 127.0.0.1:
framing set by the client only, header bytes passed through, injection refused before connecting.
"""

from __future__ import annotations

import asyncio

import pytest
from upstream_testing import MakePool, MakeRaw, deadline, gen, read_head

from aiogate.upstream.forward import RequestBody
from aiogate.upstream.head import check_head


async def test_framing_added_by_client_only(raw_upstream: MakeRaw, make_pool: MakePool) -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_head(reader)
            heads.append(head)
            if b"Content-Length: 3" in head:
                await reader.readexactly(3)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    server = await raw_upstream(handler)
    pool = make_pool(server.port)
    smuggle = [
        ("Host", "h"),
        ("Content-Length", "999"),
        ("transfer-encoding", "chunked"),
        ("Connection", "close"),
    ]
    for method, body in (("POST", None), ("GET", None), ("PUT", RequestBody(data=b"abc"))):
        resp = await pool.request(method, "/p", smuggle, body, deadline=deadline())
        await resp.read()
        resp.release()
    assert heads[0] == b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
    assert heads[1] == b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n"
    assert heads[2] == b"PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n"
    assert server.connections == 1


async def test_header_bytes_pass_through_unchanged(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_head(reader))
        writer.write(b"HTTP/1.1 200 \xc3\xa9\r\nX-V: caf\xc3\xa9 \xff\r\nContent-Length: 0\r\n\r\n")

    server = await raw_upstream(handler)
    pool = make_pool(server.port)
    # How aiohttp's server hands us a UTF-8 value and an invalid byte.
    value = b"caf\xc3\xa9 \xff".decode("utf-8", "surrogateescape")
    resp = await pool.request("GET", "/", [("X-V", value)], None, deadline=deadline())
    resp.release()
    assert b"\r\nX-V: caf\xc3\xa9 \xff\r\n" in heads[0]
    assert ("X-V", value) in resp.headers
    assert resp.reason == "é"


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/", [("X-A", "v\r\nX-Injected: 1")]),
        ("GET", "/", [("X-A", "v\nX-Injected: 1")]),
        ("GET", "/", [("X-A", "v\rX")]),
        ("GET", "/", [("X-A", "v\x00")]),
        ("GET", "/", [("X-A\r\nX-B", "v")]),
        ("GET", "/", [("X A", "v")]),
        ("GET", "/", [("Transfer-Encoding:chunked;x", "v")]),
        ("GET", "/", [("", "v")]),
        ("GET", "/a b", []),
        ("GET", "/a\r\nX: y", []),
        ("GET", "", []),
        ("GE T", "/", []),
        ("GET\r\n", "/", []),
    ],
)
async def test_injection_rejected(
    method: str, target: str, headers: list[tuple[str, str]], make_pool: MakePool
) -> None:
    # Port 9 is never contacted: validation happens before any connection is made.
    pool = make_pool(9)
    with pytest.raises(ValueError, match=r"invalid|CR, LF or NUL"):
        await pool.request(method, target, headers, None, deadline=deadline())
    assert pool.in_use == 0


async def test_unencodable_header_rejected_naming_the_header_not_the_value(
    make_pool: MakePool,
) -> None:
    pool = make_pool(9)  # never contacted
    headers = [("X-Ok", "fine"), ("X-User-Id", "secret\ud800")]
    with pytest.raises(ValueError, match="'X-User-Id'") as info:
        await pool.request("GET", "/", headers, None, deadline=deadline())
    assert "secret" not in str(info.value)
    with pytest.raises(ValueError, match="'X-User-Id'"):
        check_head("GET", "/", headers)
    check_head("GET", "/", [("X-Bytes", "\udcff")])  # surrogateescape'd client bytes pass
    assert pool.in_use == 0


def test_request_body_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        RequestBody()
    with pytest.raises(ValueError, match="exactly one"):
        RequestBody(data=b"x", chunks=gen())
    with pytest.raises(ValueError, match="does not match"):
        RequestBody(data=b"x", length=2)
    assert RequestBody(data=b"x").replayable
    assert not RequestBody(chunks=gen()).replayable
