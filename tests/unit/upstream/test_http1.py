"""One upstream HTTP/1.1 exchange (http1.py) against real sockets on 127.0.0.1: request bodies,
response parsing and framing, deadlines, aborts, and when a connection may not be reused.

aiohttp.web servers play well-behaved upstreams; raw asyncio servers play broken ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp.plugin import AiohttpServer
from upstream_testing import (
    MakePool,
    MakeRaw,
    MiB,
    aio_app,
    deadline,
    fixed,
    gen,
    read_head,
    wait_for_condition,
)

from aiogate.upstream.forward import (
    RequestBody,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)


async def test_chunked_upload(aiohttp_server: AiohttpServer, make_pool: MakePool) -> None:
    seen: dict[str, Any] = {}

    async def sink(request: web.Request) -> web.Response:
        digest = hashlib.sha256()
        size = 0
        async for block in request.content.iter_any():
            digest.update(block)
            size += len(block)
        seen.update(te=request.headers.get("Transfer-Encoding"), size=size, sha=digest.hexdigest())
        return web.Response(text="ok")

    server, _ = await aio_app(aiohttp_server, [web.post("/up", sink)])
    pool = make_pool(server.port)
    block = bytes(range(256)) * 256  # 64 KiB
    expected = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        yield b""  # must not end the chunked body
        for i in range(320):  # 20 MiB
            part = block[i % 7 :] + block[: i % 7]
            expected.update(part)
            yield part

    resp = await pool.request(
        "POST", "/up", [("Host", "x")], RequestBody(chunks=body()), deadline=deadline(30)
    )
    assert await resp.read() == b"ok"
    resp.release()
    assert seen == {"te": "chunked", "size": 320 * 64 * 1024, "sha": expected.hexdigest()}
    assert pool.idle == 1


async def test_stream_upload_with_length(
    aiohttp_server: AiohttpServer, make_pool: MakePool
) -> None:
    async def echo(request: web.Request) -> web.Response:
        assert "Transfer-Encoding" not in request.headers
        body = await request.read()
        return web.Response(body=body, headers={"X-CL": request.headers["Content-Length"]})

    server, _ = await aio_app(aiohttp_server, [web.put("/e", echo)])
    pool = make_pool(server.port)
    body = RequestBody(chunks=gen(b"abc", b"", b"defg"), length=7)
    resp = await pool.request("PUT", "/e", [("Host", "x")], body, deadline=deadline())
    assert await resp.read() == b"abcdefg"
    assert dict(resp.headers)["X-CL"] == "7"
    resp.release()


@pytest.mark.parametrize(
    ("parts", "length", "message"),
    [((b"abc", b"defg"), 5, "longer"), ((b"abc",), 5, "shorter")],
)
async def test_stream_length_mismatch_aborts(
    parts: tuple[bytes, ...],
    length: int,
    message: str,
    raw_upstream: MakeRaw,
    make_pool: MakePool,
) -> None:
    received = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            data = await reader.read()  # until EOF / reset
        received.set_result(data)

    server = await raw_upstream(handler)
    pool = make_pool(server.port)
    with pytest.raises(ValueError, match=message):
        await pool.request(
            "POST", "/", [], RequestBody(chunks=gen(*parts), length=length), deadline=deadline()
        )
    assert len(await received) < length  # the upstream never got a complete body
    assert (pool.in_use, pool.idle) == (0, 0)


async def test_large_response_streams_with_flat_buffer(
    aiohttp_server: AiohttpServer, make_pool: MakePool
) -> None:
    block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB
    total = 20 * MiB

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = total
        await response.prepare(request)
        for _ in range(total // len(block)):
            await response.write(block)
        return response

    server, _ = await aio_app(aiohttp_server, [web.get("/big", big)])
    pool = make_pool(server.port)
    resp = await pool.request("GET", "/big", [("Host", "x")], None, deadline=deadline(30))
    assert resp.content_length == total
    conn = resp._conn
    assert conn is not None
    # Do not consume: the client must stop reading rather than buffer the whole body.
    await wait_for_condition(lambda: conn._read_paused)
    await asyncio.sleep(0.05)  # give a misbehaving client the chance to overfill
    assert resp._buffered < 768 * 1024
    digest = hashlib.sha256()
    size = 0
    max_chunk = 0
    async for chunk in resp.iter_chunks():
        digest.update(chunk)
        size += len(chunk)
        max_chunk = max(max_chunk, len(chunk))
    resp.release()
    assert size == total
    assert digest.hexdigest() == hashlib.sha256(block * (total // len(block))).hexdigest()
    assert max_chunk < 768 * 1024
    assert pool.idle == 1


async def test_set_cookie_duplicates_kept_in_order(
    aiohttp_server: AiohttpServer, make_pool: MakePool
) -> None:
    async def cookies(request: web.Request) -> web.Response:
        response = web.Response(text="c")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("X-Mid", "m")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        response.headers.add("set-cookie", "c=3")
        return response

    server, _ = await aio_app(aiohttp_server, [web.get("/", cookies)])
    pool = make_pool(server.port)
    resp = await pool.request("GET", "/", [("Host", "x")], None, deadline=deadline())
    resp.release()
    got = [(k, v) for k, v in resp.headers if k.lower() in ("set-cookie", "x-mid")]
    assert got == [
        ("Set-Cookie", "a=1; Path=/"),
        ("X-Mid", "m"),
        ("Set-Cookie", "b=2; Path=/"),
        ("set-cookie", "c=3"),
    ]


async def test_bodyless_responses_keep_connection_in_sync(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await read_head(reader)
            if head.startswith(b"HEAD"):
                # The Content-Length of the GET it stands for; no body follows.
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
            elif b"/204" in head:
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            elif b"/304" in head:
                writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")

    server = await raw_upstream(handler)
    pool = make_pool(server.port)
    for method, target, status in [
        ("HEAD", "/", 200),
        ("GET", "/", 200),
        ("HEAD", "/", 200),
        ("GET", "/204", 204),
        ("GET", "/304", 304),
        ("GET", "/", 200),
    ]:
        resp = await pool.request(method, target, [], None, deadline=deadline())
        assert resp.status == status
        body = await resp.read()
        if method == "GET" and status == 200:
            assert body == b"0123456789"
            assert resp.content_length == 10
        else:
            assert body == b""
            assert resp.content_length == 0
        resp.release()
    assert server.connections == 1


async def test_interim_responses_skipped(raw_upstream: MakeRaw, make_pool: MakePool) -> None:
    server = await raw_upstream(
        fixed(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
        )
    )
    pool = make_pool(server.port)
    for _ in range(2):
        resp = await pool.request("POST", "/", [], RequestBody(data=b"x"), deadline=deadline())
        assert resp.status == 201
        assert resp.headers == [("Content-Length", "2")]
        assert await resp.read() == b"ok"
        resp.release()
    assert server.connections == 1


async def test_body_iterator_error_aborts_upstream(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    received = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await read_head(reader)
        with contextlib.suppress(ConnectionResetError):
            data += await reader.read()  # until EOF
        received.set_result(data)

    server = await raw_upstream(handler)
    pool = make_pool(server.port)

    class BodyTooLarge(Exception):
        pass

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        yield b"second"
        raise BodyTooLarge

    with pytest.raises(BodyTooLarge):
        await pool.request("POST", "/", [], RequestBody(chunks=body()), deadline=deadline())
    data = await received
    assert b"Transfer-Encoding: chunked" in data
    assert not data.endswith(b"0\r\n\r\n")
    assert b"\r\n0\r\n" not in data
    assert (pool.in_use, pool.idle) == (0, 0)


async def test_cancellation_while_sending_aborts(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    received = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await read_head(reader)
        with contextlib.suppress(ConnectionResetError):
            data += await reader.read()
        received.set_result(data)

    server = await raw_upstream(handler)
    pool = make_pool(server.port)
    gate = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"part"
        await gate.wait()
        yield b"never"

    task = asyncio.create_task(
        pool.request("POST", "/", [], RequestBody(chunks=body()), deadline=deadline())
    )
    await wait_for_condition(lambda: server.connections == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (await received).endswith(b"0\r\n\r\n")
    assert pool.in_use == 0


async def test_early_error_response_while_uploading(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(
            b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig"
        )
        await writer.drain()

    server = await raw_upstream(handler)
    pool = make_pool(server.port)
    gate = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(10_000):  # far more than the socket buffers hold
            yield b"z" * 65536
            gate.set()

    resp = await pool.request("POST", "/", [], RequestBody(chunks=body()), deadline=deadline())
    assert resp.status == 413
    assert await resp.read() == b"big"
    resp.release()
    assert (pool.in_use, pool.idle) == (0, 0)


async def test_deadline_waiting_for_head(raw_upstream: MakeRaw, make_pool: MakePool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await reader.read()

    server = await raw_upstream(handler)
    pool = make_pool(server.port)
    with pytest.raises(UpstreamTimeoutError):
        await pool.request("GET", "/", [], None, deadline=deadline(0.1))
    with pytest.raises(UpstreamTimeoutError):
        await pool.request("GET", "/", [], None, deadline=deadline(-1))
    assert (pool.in_use, pool.idle) == (0, 0)


async def test_deadline_during_body(raw_upstream: MakeRaw, make_pool: MakePool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await reader.read()

    server = await raw_upstream(handler)
    pool = make_pool(server.port)
    resp = await pool.request("GET", "/", [], None, deadline=deadline(0.2))
    chunks = resp.iter_chunks()
    assert await chunks.__anext__() == b"partial"
    with pytest.raises(UpstreamTimeoutError):
        await chunks.__anext__()
    with pytest.raises(UpstreamTimeoutError):
        await resp.read()
    resp.release()
    assert (pool.in_use, pool.idle) == (0, 0)


async def test_unreleased_response_is_reaped_at_deadline(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    server = await raw_upstream(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc"))
    pool = make_pool(server.port)
    resp = await pool.request("GET", "/", [], None, deadline=deadline(0.1))
    assert pool.in_use == 1
    await wait_for_condition(lambda: pool.in_use == 0)
    with pytest.raises(UpstreamTimeoutError):
        await resp.read()


@pytest.mark.parametrize(
    ("response", "match"),
    [
        (b"HTTP/1.1 OK\r\n\r\n", "malformed"),
        (b"HTTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", "malformed"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
            "Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nab", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", "malformed"),
        (b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nX: a\x00\r\nContent-Length: 0\r\n\r\n", "malformed"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", "101"),
        (b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", "version"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            "transfer coding",
        ),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc", "transfer coding"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n", "too large"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * 300 + b"\r\n", "too many"),
    ],
)
async def test_malformed_response(
    response: bytes, match: str, raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    server = await raw_upstream(fixed(response))
    pool = make_pool(server.port)
    with pytest.raises(UpstreamProtocolError, match=match):
        await pool.request("GET", "/", [], None, deadline=deadline())
    assert (pool.in_use, pool.idle) == (0, 0)


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
    ],
)
async def test_truncated_or_bad_body(
    response: bytes, raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    server = await raw_upstream(fixed(response, keep_open=False))
    pool = make_pool(server.port)
    resp = await pool.request("GET", "/", [], None, deadline=deadline())
    with pytest.raises(UpstreamProtocolError):
        await resp.read()
    resp.release()
    assert (pool.in_use, pool.idle) == (0, 0)


async def test_read_until_close_body(raw_upstream: MakeRaw, make_pool: MakePool) -> None:
    server = await raw_upstream(fixed(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", keep_open=False))
    pool = make_pool(server.port)
    resp = await pool.request("GET", "/", [], None, deadline=deadline())
    assert resp.content_length is None
    assert await resp.read() == b"until the end"
    resp.release()
    assert (pool.in_use, pool.idle) == (0, 0)


async def test_chunked_response_with_trailers(raw_upstream: MakeRaw, make_pool: MakePool) -> None:
    server = await raw_upstream(
        fixed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
    )
    pool = make_pool(server.port)
    for _ in range(2):
        resp = await pool.request("GET", "/", [], None, deadline=deadline())
        assert resp.content_length is None
        assert await resp.read() == b"hello world"
        assert resp.headers == [("Transfer-Encoding", "chunked")]
        resp.release()
    assert server.connections == 1


async def test_connection_close_and_http10_not_reused(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    responses = iter(
        [
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na",
            b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nc",
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nd",
        ]
    )

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(next(responses))

    server = await raw_upstream(handler)
    pool = make_pool(server.port)
    for expected in b"abcd":
        resp = await pool.request("GET", "/", [], None, deadline=deadline())
        assert await resp.read() == bytes([expected])
        resp.release()
    assert server.connections == 3  # a, b closed; c kept alive for d


async def test_garbage_after_response_not_reused(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    server = await raw_upstream(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naJUNK"))
    pool = make_pool(server.port)
    resp = await pool.request("GET", "/", [], None, deadline=deadline())
    assert await resp.read() == b"a"
    resp.release()
    assert (pool.in_use, pool.idle) == (0, 0)


async def test_release_after_partial_read_closes(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"p" * 1000)
            await writer.drain()

    server = await raw_upstream(handler)
    pool = make_pool(server.port)
    resp = await pool.request("GET", "/", [], None, deadline=deadline())
    assert await resp.iter_chunks().__anext__()
    resp.release()
    with pytest.raises(UpstreamError, match="released"):
        await resp.read()
    assert (pool.in_use, pool.idle) == (0, 0)
    resp = await pool.request("GET", "/", [], None, deadline=deadline())
    resp.release()
    assert server.connections == 2


async def test_upgrade_hands_the_connection_over(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    """A 101 to an upgrade request: the head is the answer, the bytes after it (sent in the
    same segment) go to whoever takes the socket over, and the pool forgets the connection."""
    heads: list[bytes] = []

    async def switch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await read_head(reader))
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n\r\nfirst-bytes"
        )
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()

    server = await raw_upstream(switch)
    pool = make_pool(server.port)
    resp = await pool.request(
        "GET", "/ws", [("Host", "x"), ("Upgrade", "websocket")], None,
        deadline=deadline(5), upgrade=True,
    )  # fmt: skip
    assert resp.status == 101
    assert b"\r\nConnection: Upgrade\r\n" in heads[0]
    assert resp.upgraded is not None
    await wait_for_condition(lambda: bool(resp.upgraded and resp.upgraded._upgrade_tail))
    taken = resp.upgraded.take_over()
    assert taken is not None
    transport, tail = taken
    assert tail == b"first-bytes"
    assert pool.in_use == 0
    assert pool.idle == 0
    await asyncio.sleep(0.05)  # well past where the exchange's timers would have fired
    assert not transport.is_closing()
    transport.close()


async def test_101_without_an_upgrade_request_is_a_protocol_error(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    server = await raw_upstream(fixed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"))
    pool = make_pool(server.port)
    with pytest.raises(UpstreamProtocolError, match="101"):
        await pool.request("GET", "/", [("Host", "x")], None, deadline=deadline(5))
    assert pool.in_use == 0
