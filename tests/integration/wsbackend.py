"""A real WebSocket backend for the integration tests, on its own thread and event loop.

Paths:
  /ws, /*/ws   aiohttp WebSocket echo (text and binary; permessage-deflate when offered).
               A text message `close:<code>` makes it close with that code. It records the
               handshake headers it saw and the close code each client sent.
  /ws-reject   answers the handshake with 403 and a JSON body (no upgrade)
  and, on `bad_accept_port`, a socket-level server answering every handshake with a 101
  whose Sec-WebSocket-Accept is wrong.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web


@dataclass
class WsSeen:
    handshakes: list[dict[str, str]] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    compressed: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_app(seen: WsSeen) -> web.Application:
    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(compress=True, max_msg_size=64 * 1024 * 1024)
        await socket.prepare(request)
        with seen.lock:
            seen.handshakes.append(dict(request.headers))
            seen.compressed.append(socket.compress)
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                if message.data.startswith("close:"):
                    await socket.close(code=int(message.data[6:]), message=b"bye")
                    break
                await socket.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await socket.send_bytes(message.data)
        with seen.lock:
            seen.close_codes.append(socket.close_code)
        return socket

    async def reject(_: web.Request) -> web.Response:
        return web.json_response({"refused": True}, status=403)

    app = web.Application()
    app.router.add_get("/ws", ws)
    app.router.add_get("/{prefix}/ws", ws)
    app.router.add_get("/ws-reject", reject)
    return app


async def _bad_accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBvbmU=\r\n\r\n"
        )
        await reader.read()  # until the gateway closes
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


class WsBackend:
    def __init__(self) -> None:
        self.seen = WsSeen()
        self.port = 0
        self.bad_accept_port = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._runner: web.AppRunner | None = None
        self._raw: Any = None
        self._thread = threading.Thread(target=self._run, name="ws-backend", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bad_accept_url(self) -> str:
        return f"http://127.0.0.1:{self.bad_accept_port}"

    def start(self) -> WsBackend:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("WebSocket backend did not start")
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._started.set()
        self._loop.run_forever()
        assert self._runner is not None
        self._loop.run_until_complete(self._runner.cleanup())
        self._raw.close()
        self._loop.close()

    async def _start(self) -> None:
        self._runner = web.AppRunner(make_app(self.seen), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._raw = await asyncio.start_server(_bad_accept, "127.0.0.1", 0)
        self.bad_accept_port = self._raw.sockets[0].getsockname()[1]

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
