"""Shared helpers for the upstream client's tests (test_forward, test_http1, test_head).

Real sockets on 127.0.0.1: aiohttp.web servers play well-behaved upstreams; raw asyncio servers
(`RawUpstream`) play broken ones. A uniquely named module rather than `conftest`, so importing
it can never pick up another directory's conftest; conftest.py holds the fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from pytest_aiohttp.plugin import AiohttpServer

from aiogate.upstream.forward import ConnectionPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


MakePool = Callable[..., ConnectionPool]


MakeRaw = Callable[[Handler], Awaitable["RawUpstream"]]


MiB = 1024 * 1024


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
