"""A real HTTP backend for the integration tests, served from its own thread and event loop.

It lives for the whole test session so that every gateway under test can point at it; each
endpoint exposes one behaviour a gateway must relay faithfully.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class Seen:
    """What the backend received, for assertions about what the gateway forwarded."""

    requests: list[dict[str, object]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, entry: dict[str, object]) -> None:
        with self.lock:
            self.requests.append(entry)

    def last(self) -> dict[str, object]:
        with self.lock:
            return self.requests[-1]

    def find(self, request_id: str) -> dict[str, object]:
        with self.lock:
            for entry in reversed(self.requests):
                if entry["headers"].get("X-Request-ID") == request_id:  # type: ignore[attr-defined]
                    return entry
        raise KeyError(request_id)


def make_app(name: str, seen: Seen) -> web.Application:
    async def record(request: web.Request, body_len: int, digest: str) -> None:
        seen.add(
            {
                "backend": name,
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": dict(request.headers),
                "header_list": list(request.raw_headers),
                "body_len": body_len,
                "sha256": digest,
                "peer": request.remote,
            }
        )

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        await record(request, len(body), hashlib.sha256(body).hexdigest())
        return web.json_response(
            {
                "backend": name,
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": dict(request.headers),
                "body_len": len(body),
            }
        )

    async def upload(request: web.Request) -> web.Response:
        """Streams the body, hashing it, without holding it in memory."""
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        await record(request, size, digest.hexdigest())
        return web.json_response({"backend": name, "size": size, "sha256": digest.hexdigest()})

    async def upload_late(request: web.Request) -> web.Response:
        """`/upload-late/{seconds}`: like /upload, but starts reading only after a pause, so
        a proxy in front must hold the client back instead of buffering the body."""
        await asyncio.sleep(float(request.match_info["seconds"]))
        return await upload(request)

    async def download(request: web.Request) -> web.StreamResponse:
        """`/download/{size}`: deterministic bytes, streamed (chunked unless ?cl=1)."""
        size = int(request.match_info["size"])
        response = web.StreamResponse()
        response.content_type = "application/octet-stream"
        if request.query.get("cl"):
            response.content_length = size
        await response.prepare(request)
        block = bytes(range(256)) * 256  # 64 KiB
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        headers = {}
        if 300 <= code < 400:
            headers["Location"] = "/elsewhere"
        if code in (204, 304):
            return web.Response(status=code, headers=headers)
        return web.Response(status=code, text=f"status {code}", headers=headers)

    async def slow(request: web.Request) -> web.Response:
        # Recorded on arrival: a slow request whose gateway is gone must not show up seconds
        # later in another test's "nothing reached the backend" window.
        await record(request, 0, "")
        await asyncio.sleep(float(request.match_info["seconds"]))
        return web.json_response({"backend": name, "slept": request.match_info["seconds"]})

    async def cookies(_: web.Request) -> web.Response:
        response = web.Response(text="cookies")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        return response

    async def hop(_: web.Request) -> web.Response:
        """Sends hop-by-hop headers a gateway must strip on the way back."""
        response = web.Response(text="hop")
        response.headers["Connection"] = "X-Secret-Hop"
        response.headers["X-Secret-Hop"] = "leak"
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers["Proxy-Authenticate"] = "Basic"
        response.headers["X-End-To-End"] = "kept"
        return response

    async def gzipped(_: web.Request) -> web.Response:
        import gzip

        payload = gzip.compress(b"compressed payload " * 100)
        return web.Response(
            body=payload,
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )

    async def no_type(_: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 3
        await response.prepare(_)
        await response.write(b"abc")
        return response

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=1024**3)
    app.router.add_get("/health", health)
    app.router.add_post("/upload-late/{seconds}", upload_late)
    app.router.add_route("*", "/upload{tail:.*}", upload)
    app.router.add_get("/download/{size:\\d+}", download)
    app.router.add_route("*", "/status/{code:\\d+}", status)
    app.router.add_get("/slow/{seconds}", slow)
    app.router.add_get("/cookies", cookies)
    app.router.add_get("/hop", hop)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/notype", no_type)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


class BackendThread:
    """Runs aiohttp backends on 127.0.0.1 in a daemon thread; ports are chosen by the OS."""

    def __init__(self, names: list[str]) -> None:
        self.seen = Seen()
        self.ports: dict[str, int] = {}
        self._names = names
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self._run, name="test-backends", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("test backends did not start")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def call(self, fn: Callable[[], object]) -> None:
        self._loop.call_soon_threadsafe(fn)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()
        for runner in self._runners:
            self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    async def _start(self) -> None:
        for name in self._names:
            runner = web.AppRunner(make_app(name, self.seen), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            server = site._server
            assert server is not None
            self.ports[name] = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._runners.append(runner)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
