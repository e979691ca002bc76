"""The upstream connection pool (forward.py) against real sockets on 127.0.0.1: round trips,
keep-alive reuse, idle expiry, replaying a request on a stale connection, connect errors.

aiohttp.web servers play well-behaved upstreams; raw asyncio servers play broken ones.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp import web
from pytest_aiohttp.plugin import AiohttpServer
from upstream_testing import (
    Handler,
    MakePool,
    MakeRaw,
    MiB,
    RawUpstream,
    aio_app,
    deadline,
    fixed,
    gen,
    read_head,
    wait_for_condition,
)

from aiogate.upstream.forward import (
    ConnectionPool,
    Origin,
    RequestBody,
    UpstreamConnectError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
)


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


async def test_max_idle_zero_disables_reuse_without_errors(
    aiohttp_server: AiohttpServer, make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    """`max_idle_connections: 0` means no connection is kept (it raised IndexError per
    exchange inside the transport callback, logged as a fatal transport error)."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    server, peers = await aio_app(aiohttp_server, [web.get("/", ok)])
    pool = make_pool(server.port, max_idle=0)
    for _ in range(5):
        resp = await pool.request("GET", "/", [("Host", "x")], None, deadline=deadline())
        assert await resp.read() == b"ok"
        resp.release()
    assert len(set(peers)) == 5  # a new connection every time
    assert "Fatal error" not in caplog.text
    assert "IndexError" not in caplog.text


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
