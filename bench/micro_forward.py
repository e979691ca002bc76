"""Micro-benchmark: sequential upstream requests, aiogate's ConnectionPool vs aiohttp.ClientSession.

The upstream is a raw asyncio server (uvloop, in a child process so its CPU time is not
counted) answering every request head with a fixed 100-byte response. Both clients run on
uvloop, one request at a time over one keep-alive connection. Reported: wall-clock µs per
request and client-process CPU µs per request.

    .venv/bin/python bench/micro_forward.py [--requests 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import time
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop

from aiogate.upstream.forward import ConnectionPool, Origin

BODY = b"x" * 100
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
)
HEADERS = [
    ("Host", "127.0.0.1"),
    ("User-Agent", "bench"),
    ("Accept", "*/*"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("X-Forwarded-Proto", "http"),
    ("X-Request-ID", "0123456789abcdef0123456789abcdef"),
]


class _Upstream(asyncio.Protocol):
    """Answers each complete request head; no parsing beyond finding the blank line."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            buf = buf[end + 4 :]
            self.transport.write(RESPONSE)
        self.buf = buf


def _serve(sock: socket.socket) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Upstream, sock=sock)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


async def _timed(n: int, one: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    for _ in range(min(1000, n)):  # warm-up: connection set up, caches filled
        await one()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await one()
    return (
        (time.perf_counter() - wall) / n * 1e6,
        (time.process_time() - cpu) / n * 1e6,
    )


async def bench_pool(port: int, n: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    pool = ConnectionPool(Origin("http", "127.0.0.1", port))

    async def one() -> None:
        resp = await pool.request("GET", "/bench?q=1", HEADERS, None, deadline=loop.time() + 5)
        body = await resp.read()
        resp.release()
        assert body == BODY

    try:
        return await _timed(n, one)
    finally:
        await pool.close()


async def bench_aiohttp(port: int, n: int) -> tuple[float, float]:
    url = f"http://127.0.0.1:{port}/bench?q=1"
    headers = dict(HEADERS)
    connector = aiohttp.TCPConnector(limit=1)
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=["Accept-Encoding"],
    ) as session:

        async def one() -> None:
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                body = await resp.read()
            assert body == BODY

        return await _timed(n, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(sock,), daemon=True)
    server.start()
    try:
        results: dict[str, list[tuple[float, float]]] = {"ConnectionPool": [], "aiohttp": []}
        for _ in range(args.rounds):
            results["ConnectionPool"].append(uvloop.run(bench_pool(port, args.requests)))
            results["aiohttp"].append(uvloop.run(bench_aiohttp(port, args.requests)))
        print(f"{args.requests} sequential GETs, 100-byte body, uvloop; best of {args.rounds}")
        best = {name: min(runs) for name, runs in results.items()}
        for name, (wall, cpu) in best.items():
            print(f"  {name:15s} {wall:7.1f} µs/request wall   {cpu:7.1f} µs/request client CPU")
        ratio = best["aiohttp"][0] / best["ConnectionPool"][0]
        print(f"  throughput ratio (wall): {ratio:.2f}x")
    finally:
        server.terminate()
        server.join()
        sock.close()


if __name__ == "__main__":
    main()
