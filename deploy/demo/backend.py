"""A tiny demo backend for `make run`: answers every request with JSON describing it."""

from __future__ import annotations

import argparse

from aiohttp import web


def make_app(name: str) -> web.Application:
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "backend": name})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "backend": name,
                "method": request.method,
                "path": request.path_qs,
                "headers": dict(request.headers),
                "body_bytes": len(body),
            }
        )

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, required=True)
    # 127.0.0.1 for `make run`; the compose demo binds 0.0.0.0 inside its container.
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    web.run_app(make_app(args.name), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
