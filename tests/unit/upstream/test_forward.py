"""The upstream HTTP/1.1 client against real sockets on 127.0.0.1.

aiohttp.web servers play well-behaved upstreams; raw asyncio servers play broken ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp.plugin import AiohttpServer

from aiogate.upstream.forward import (
    ConnectionPool,
    Origin,
    RequestBody,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)
from aiogate.upstream.head import check_head

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
MakePool = Callable[..., ConnectionPool]
MakeRaw = Callable[[Handler], Awaitable["RawUpstream"]]

MiB = 1024 * 1024


# --- fixtures and helpers ---------------------------------------------------------------------


class RawUpstream:
    """A TCP server on 127.0.0.1 whose connections run `handler`; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._on_conn, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _on_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[MakeRaw]:
    servers: list[RawUpstream] = []

    async def make(handler: Handler) -> RawUpstream:
        server = await RawUpstream(handler).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[ConnectionPool] = []

    def make(port: int, **kwargs: Any) -> ConnectionPool:
        pool = ConnectionPool(Origin("http", "127.0.0.1", port), **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def wait_for_condition(check: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll a condition that nothing can signal (e.g. a socket's buffer filling up)."""
    end = asyncio.get_running_loop().time() + limit
    while not check():
        assert asyncio.get_running_loop().time() < end, "condition not reached"
        await asyncio.sleep(0.005)


async def gen(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def fixed(response: bytes, *, keep_open: bool = True) -> Handler:
    """A raw upstream answering every request head with `response`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(response)
            await writer.drain()
            if not keep_open:
                return

    return handler


async def aio_app(
    aiohttp_server: AiohttpServer, routes: list[web.RouteDef]
) -> tuple[Any, list[tuple[str, int]]]:
    """An aiohttp upstream; returns (server, peers) where peers records each request's peer."""
    peers: list[tuple[str, int]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        assert request.transport is not None
        peers.append(request.transport.get_extra_info("peername"))
        response: web.StreamResponse = await handler(request)
        return response

    app = web.Application(middlewares=[record], client_max_size=64 * MiB)
    app.add_routes(routes)
    return await aiohttp_server(app), peers


# --- well-behaved upstream --------------------------------------------------------------------


async def test_get_roundtrip(aiohttp_server: AiohttpServer, make_pool: MakePool) -> None:
    async def hello(request: web.Request) -> web.Response:
        text = f"{request.method} {request.path_qs} {request.headers.get('X-Test')}"
        return web.Response(text=text, headers={"X-Up": "1"})

    server, _ = await aio_app(aiohttp_server, [web.get("/hello", hello)])
    pool = make_pool(server.port)
    resp = await pool.request(
        "GET", "/hello?a=1&b=%20", [("Host", "x"), ("X-Test", "yes")], None, deadline=deadline()
    )
    assert resp.status == 200
    assert resp.reason == "OK"
    assert resp.http_version == "1.1"
    assert ("X-Up", "1") in resp.headers
    assert resp.content_length == len(b"GET /hello?a=1&b=%20 yes")
    assert await resp.read() == b"GET /hello?a=1&b=%20 yes"
    resp.release()
    resp.release()  # idempotent
    assert pool.in_use == 0
    assert pool.idle == 1


async def test_post_with_data(aiohttp_server: AiohttpServer, make_pool: MakePool) -> None:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body, headers={"X-CL": request.headers["Content-Length"]})

    server, _ = await aio_app(aiohttp_server, [web.post("/echo", echo)])
    pool = make_pool(server.port)
    for data in (b"hello", b"x" * (3 * MiB)):  # coalesced with the head / written separately
        resp = await pool.request(
            "POST", "/echo", [("Host", "x")], RequestBody(data=data), deadline=deadline()
        )
        assert await resp.read() == data
        assert dict(resp.headers)["X-CL"] == str(len(data))
        resp.release()


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


async def test_keep_alive_reuse(aiohttp_server: AiohttpServer, make_pool: MakePool) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    server, peers = await aio_app(aiohttp_server, [web.get("/", ok)])
    pool = make_pool(server.port)
    for _ in range(20):
        resp = await pool.request("GET", "/", [("Host", "x")], None, deadline=deadline())
        assert pool.in_use == 0  # a complete response frees its connection at once
        assert await resp.read() == b"ok"
        resp.release()
    assert len(peers) == 20
    assert len(set(peers)) == 1


async def test_concurrent_requests_use_separate_connections(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            await release.wait()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")

    server = await raw_upstream(handler)
    pool = make_pool(server.port)
    tasks = [
        asyncio.create_task(pool.request("GET", "/", [], None, deadline=deadline()))
        for _ in range(3)
    ]
    await wait_for_condition(lambda: server.connections == 3)
    assert pool.in_use == 3
    release.set()
    for resp in await asyncio.gather(*tasks):
        assert await resp.read() == b"x"
        resp.release()
    assert (pool.in_use, pool.idle) == (0, 3)


async def test_idle_timeout_drops_old_connections(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    server = await raw_upstream(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    pool = make_pool(server.port, idle_timeout=30.0)
    resp = await pool.request("GET", "/", [], None, deadline=deadline())
    resp.release()
    pool._idle[-1].idle_since -= 31.0  # as if it had been idle that long
    resp = await pool.request("GET", "/", [], None, deadline=deadline())
    resp.release()
    assert server.connections == 2
    assert pool.idle == 1


async def test_server_closing_idle_connection_removes_it(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    server = await raw_upstream(
        fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", keep_open=False)
    )
    pool = make_pool(server.port)
    resp = await pool.request("GET", "/", [], None, deadline=deadline())
    resp.release()
    await wait_for_condition(lambda: pool.idle == 0)


def close_second_request_on_each_connection() -> Handler:
    """Answers the first request of a connection, then reads the next and closes silently:
    what a server's idle-timeout close looks like when it crosses our reuse."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na")
        await writer.drain()
        await read_head(reader)

    return handler


async def test_stale_connection_retried_once(raw_upstream: MakeRaw, make_pool: MakePool) -> None:
    server = await raw_upstream(close_second_request_on_each_connection())
    pool = make_pool(server.port)
    for body in (None, RequestBody(data=b"payload")):
        resp = await pool.request("PUT", "/", [], body, deadline=deadline())
        assert await resp.read() == b"a"
        resp.release()
    # 1st: fresh. 2nd: reused -> closed unanswered -> replayed on a fresh connection.
    assert server.connections == 2
    assert pool.in_use == 0


@pytest.mark.parametrize("method", ["POST", "PATCH"])
async def test_stale_connection_not_replayed_for_non_idempotent_methods(
    raw_upstream: MakeRaw, make_pool: MakePool, method: str
) -> None:
    """The request was written: the server may have acted on it before dying. Only the caller
    (the proxy's retry policy) may decide, and it never repeats a POST."""
    server = await raw_upstream(close_second_request_on_each_connection())
    pool = make_pool(server.port)
    resp = await pool.request("GET", "/", [], None, deadline=deadline())
    assert await resp.read() == b"a"
    with pytest.raises(UpstreamProtocolError, match="closed before answering"):
        await pool.request(method, "/", [], RequestBody(data=b"pay"), deadline=deadline())
    assert server.connections == 1
    assert pool.in_use == 0


async def test_stream_body_not_retried(raw_upstream: MakeRaw, make_pool: MakePool) -> None:
    server = await raw_upstream(close_second_request_on_each_connection())
    pool = make_pool(server.port)
    resp = await pool.request("GET", "/", [], None, deadline=deadline())
    resp.release()
    with pytest.raises(UpstreamProtocolError):
        await pool.request("POST", "/", [], RequestBody(chunks=gen(b"x")), deadline=deadline())
    assert server.connections == 1
    assert pool.in_use == 0


async def test_fresh_connection_closed_unanswered_not_retried(
    raw_upstream: MakeRaw, make_pool: MakePool
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)

    server = await raw_upstream(handler)
    pool = make_pool(server.port)
    with pytest.raises(UpstreamProtocolError, match="closed"):
        await pool.request("GET", "/", [], None, deadline=deadline())
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


async def test_connect_refused(make_pool: MakePool) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = make_pool(port)
    with pytest.raises(UpstreamConnectError, match="cannot connect"):
        await pool.request("GET", "/", [], None, deadline=deadline())
    assert pool.in_use == 0


async def never_connects(*args: Any, **kwargs: Any) -> Any:
    await asyncio.get_running_loop().create_future()


async def test_connect_timeout(make_pool: MakePool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", never_connects)
    pool = make_pool(9, connect_timeout=0.05)
    with pytest.raises(UpstreamConnectError, match="timed out"):
        await pool.request("GET", "/", [], None, deadline=deadline())
    # The exchange deadline comes first: that is a timeout (504), not a connect error.
    pool = make_pool(9, connect_timeout=5.0)
    with pytest.raises(UpstreamTimeoutError):
        await pool.request("GET", "/", [], None, deadline=deadline(0.05))
    assert pool.in_use == 0


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


async def test_close_pool(raw_upstream: MakeRaw) -> None:
    server = await raw_upstream(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    pool = ConnectionPool(Origin("http", "127.0.0.1", server.port))
    resp = await pool.request("GET", "/", [], None, deadline=deadline())
    resp.release()
    assert pool.idle == 1
    await pool.close()
    assert pool.idle == 0
    with pytest.raises(UpstreamConnectError, match="closed"):
        await pool.request("GET", "/", [], None, deadline=deadline())


def test_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                head = await read_head(reader)
                if b"chunked" in head:
                    while size := int(await reader.readline(), 16):
                        await reader.readexactly(size + 2)
                    await reader.readline()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        server = await RawUpstream(handler).start()
        pool = ConnectionPool(Origin("http", "127.0.0.1", server.port))
        try:
            for body in (None, RequestBody(data=b"d"), RequestBody(chunks=gen(b"c" * 100_000))):
                resp = await pool.request("POST", "/", [], body, deadline=deadline())
                assert await resp.read() == b"ok"
                resp.release()
            assert server.connections == 1
        finally:
            await pool.close()
            await server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
