"""Backends a test can steer: make them slow, failing, unhealthy, down, or back up.

Every backend answers any path with JSON `{"backend": name}` (status `status`, after `delay`
seconds), `/health` with `health_status`, and counts what reached it. `down()` closes the
listener (connections are refused), `up()` listens again on the same port.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web


class CtlBackend:
    def __init__(self, group: CtlGroup, name: str) -> None:
        self.group = group
        self.name = name
        self.port = 0
        self.status = 200
        self.delay = 0.0
        self.health_status = 200
        self.hits: Counter[str] = Counter()  # path -> requests that reached the backend
        self.methods: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def traffic(self) -> int:
        """Requests that reached the backend, health checks excluded."""
        return sum(n for path, n in self.hits.items() if path != "/health")

    def reset(self) -> None:
        self.status, self.delay, self.health_status = 200, 0.0, 200
        self.hits.clear()
        self.methods.clear()

    def _app(self) -> web.Application:
        async def handle(request: web.Request) -> web.Response:
            await request.read()
            self.hits[request.path] += 1
            if request.path == "/health":
                return web.json_response({"backend": self.name}, status=self.health_status)
            self.methods[request.method] += 1
            if self.delay:
                await asyncio.sleep(self.delay)
            return web.json_response({"backend": self.name}, status=self.status)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        return app

    async def _up(self) -> None:
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        server = self._site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def up(self) -> None:
        self.group.run(self._up())

    def down(self) -> None:
        self.group.run(self._down())


class CtlGroup:
    """N steerable backends on one background event loop."""

    def __init__(self, count: int, prefix: str = "b") -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.backends = [CtlBackend(self, f"{prefix}{i}") for i in range(count)]
        for backend in self.backends:
            backend.up()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def __getitem__(self, index: int) -> CtlBackend:
        return self.backends[index]

    def reset(self) -> None:
        for backend in self.backends:
            if backend._runner is None:
                backend.up()
            backend.reset()

    def close(self) -> None:
        for backend in self.backends:
            backend.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def ctl_group_fixtures(count: int, prefix: str = "b") -> tuple[Any, Any]:
    """A test module's `group` fixture and its autouse companion, for module-level use:

        group, _fresh = ctl_group_fixtures(2, prefix="h")

    `group` starts `count` backends once per module (starting them per test would be slow);
    `_fresh` resets them before every test, so no test sees another test's steering.
    """

    @pytest.fixture(scope="module", name="group")
    def group() -> Iterator[CtlGroup]:
        g = CtlGroup(count, prefix=prefix)
        yield g
        g.close()

    @pytest.fixture(autouse=True, name="_fresh")
    def fresh(group: CtlGroup) -> None:
        group.reset()

    return group, fresh
