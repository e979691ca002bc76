"""The honest Python baseline: a minimal aiohttp reverse proxy on uvloop.

One catch-all handler and one shared ClientSession (keep-alive pool). No logging, no routing,
no checks: whatever aiogate costs on top of this is the price of its features.

Usage: python bench/minimal_aiohttp_proxy.py --port 8080 --upstream http://127.0.0.1:9001
"""

import argparse
import asyncio

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDictProxy

# Hop-by-hop headers plus the framing ones that aiohttp sets itself.
DROP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Content-Length",
    )
)  # fmt: skip


def strip(headers: "CIMultiDictProxy[str]") -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k.lower() not in DROP]


async def serve(port: int, upstream: str) -> None:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=75)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def proxy(request: web.Request) -> web.Response:
            async with session.request(
                request.method,
                upstream + request.path_qs,
                headers=strip(request.headers),
                data=await request.read() if request.body_exists else None,
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                return web.Response(status=resp.status, headers=strip(resp.headers), body=body)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9001")
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.upstream.rstrip("/")))


if __name__ == "__main__":
    main()
