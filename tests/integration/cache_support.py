"""A backend that counts what reaches it, and answers with the caching headers a test asks for.

`GET /c/<anything>?cc=…&expires=…&status=…&size=…&delay=…&vary=…&cookie=1&chunked=1`: the
query picks the answer's Cache-Control, Expires, status, body size, delay (seconds), Vary,
a Set-Cookie, or a chunked (unknown-length) body. The body names how many requests that exact
target has seen, so a test tells a cached answer from a fresh one by its body too.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

from aiohttp import web

__all__ = ["CountingBackend", "cache_config"]


class CountingBackend:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="cache-backend", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count(self, target: str) -> int:
        with self._lock:
            return self.counts[target]

    def start(self) -> CountingBackend:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("cache backend did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()
        if self._runner is not None:
            self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._answer)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.counts[request.raw_path] += 1
            seen = self.counts[request.raw_path]
        query = request.query
        if "delay" in query:
            await asyncio.sleep(float(query["delay"]))
        headers: dict[str, str] = {"X-Seen": str(seen)}
        for param, header in (("cc", "Cache-Control"), ("expires", "Expires"), ("vary", "Vary")):
            if param in query:
                headers[header] = query[param]
        if "cookie" in query:
            headers["Set-Cookie"] = "session=1"
        lang = request.headers.get("Accept-Language", "")
        consumer = request.headers.get("X-Consumer", "")
        size = int(query.get("size", "0"))
        body = f"seen={seen} lang={lang} consumer={consumer} ".encode() + b"x" * size
        status = int(query.get("status", "200"))
        if "chunked" in query:
            response = web.StreamResponse(status=status, headers=headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            await response.write(body)
            await response.write_eof()
            return response
        return web.Response(status=status, body=body, headers=headers)


def cache_config(backend: CountingBackend, **cache: Any) -> dict[str, Any]:
    """Cached routes on one origin: `/c` (ttl 30s, vary Accept-Language), `/short` (ttl 2s),
    `/small` (max_entry_size 2KiB), `/auth` (API key, not cached), `/auth-shared` (API
    key, `authenticated: true`) and `/edited` (transformations and CORS); keys k-alice and
    k-bob. `cache` overrides every route's."""
    base = {"ttl": "30s", "vary": ["Accept-Language"], **cache}

    def route(path: str, **extra: Any) -> dict[str, Any]:
        return {"path": path, "upstream": "origin", "cache": {**base, **extra}}

    keys = [{"key": "k-alice", "consumer": "alice"}, {"key": "k-bob", "consumer": "bob"}]
    return {
        "logging": {"level": "info"},
        "auth": {"api_key": {"header": "X-API-Key", "keys": keys}},
        "upstreams": [{"name": "origin", "backends": [{"url": backend.url}]}],
        "routes": [
            route("/c"),
            route("/short", ttl="2s"),
            route("/small", max_entry_size="2KiB"),
            {**route("/auth"), "auth": {"type": "api_key"}},
            {**route("/auth-shared", authenticated=True), "auth": {"type": "api_key"}},
            {
                **route("/edited"),
                "transformations": {
                    "request": {"add_query": {"via": "gw"}},
                    "response": {
                        "add_headers": {"X-Edited": "yes"},
                        "remove_headers": ["X-Seen"],
                        "status_map": {404: 200},
                    },
                },
                "cors": {"allowed_origins": ["https://app.test"]},
            },
        ],
    }
