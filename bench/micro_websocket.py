"""WebSocket echo through a proxy: messages/s and proxy CPU per message (ADR 0016).

Run: .venv/bin/python bench/micro_websocket.py [--duration 8] [--connections 4] [--window 32]

Targets, each against the same aiohttp echo backend on 127.0.0.1 (its own process):
  direct          the client talks to the backend
  aiogate         the real daemon: a byte tunnel after the upstream's 101 (option a)
  aiohttp-relay   a prototype of option b: web.WebSocketResponse to the client,
                  ClientSession.ws_connect upstream, each message received and re-sent

The client keeps `window` 1 KiB binary messages in flight on each connection and counts the
echoes. Each echo is two frames through the proxy (one each way). CPU is the proxy process's
user+system time over the run (from /proc), divided by the echoes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = os.urandom(1024)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the processes -----------------------------------------------------------------------------


def serve_backend(port: int) -> None:
    import uvloop
    from aiohttp import WSMsgType, web

    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/ws", echo)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def serve_relay(port: int, upstream: str) -> None:
    """Option b: aiohttp's WebSocket classes on both sides, relaying messages."""
    import aiohttp
    import uvloop
    from aiohttp import WSMsgType, web

    async def pump(source: object, sink: object) -> None:
        async for msg in source:  # type: ignore[attr-defined]
            if msg.type == WSMsgType.BINARY:
                await sink.send_bytes(msg.data)  # type: ignore[attr-defined]
            elif msg.type == WSMsgType.TEXT:
                await sink.send_str(msg.data)  # type: ignore[attr-defined]
        await sink.close()  # type: ignore[attr-defined]

    async def relay(request: web.Request) -> web.WebSocketResponse:
        client = web.WebSocketResponse(compress=False)
        await client.prepare(request)
        session: aiohttp.ClientSession = request.app["session"]
        async with session.ws_connect(upstream, compress=0) as server:
            await asyncio.gather(pump(client, server), pump(server, client))
        return client

    async def start(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession()

    async def stop(app: web.Application) -> None:
        await app["session"].close()

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_get("/ws", relay)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


# -- the client --------------------------------------------------------------------------------


async def one_connection(url: str, window: int, until: float) -> int:
    import aiohttp

    echoed = 0
    async with aiohttp.ClientSession() as session, session.ws_connect(url, compress=0) as ws:
        for _ in range(window):
            await ws.send_bytes(MESSAGE)
        while time.monotonic() < until:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise RuntimeError(f"unexpected {msg.type}")
            echoed += 1
            await ws.send_bytes(MESSAGE)
    return echoed


async def measure(url: str, connections: int, window: int, duration: float) -> float:
    until = time.monotonic() + duration
    counts = await asyncio.gather(*(one_connection(url, window, until) for _ in range(connections)))
    return sum(counts) / duration


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--serve-backend", type=int)
    parser.add_argument("--serve-relay", type=int)
    parser.add_argument("--upstream", default="")
    args = parser.parse_args()
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return
    if args.serve_relay:
        serve_relay(args.serve_relay, args.upstream)
        return

    import uvloop

    me = str(Path(__file__).resolve())
    backend_port, relay_port, gate_port = free_port(), free_port(), free_port()
    procs = [spawn(me, "--serve-backend", str(backend_port))]
    wait_port(backend_port)
    backend = f"http://127.0.0.1:{backend_port}/ws"
    procs.append(spawn(me, "--serve-relay", str(relay_port), "--upstream", backend))
    config = Path(tempfile.mkdtemp()) / "aiogate.yaml"
    config.write_text(
        f'server: {{listen: "127.0.0.1:{gate_port}"}}\n'
        f'admin: {{listen: "127.0.0.1:{free_port()}"}}\n'
        "logging: {level: warning}\n"
        f'upstreams: [{{name: echo, backends: [{{url: "http://127.0.0.1:{backend_port}"}}]}}]\n'
        "routes: [{path: /ws, upstream: echo}]\n"
    )
    procs.append(spawn("-m", "aiogate", "run", "--config", str(config)))
    wait_port(relay_port)
    wait_port(gate_port)
    targets = [
        ("direct", backend_port, procs[0].pid),
        ("aiogate (tunnel)", gate_port, procs[2].pid),
        ("aiohttp-relay", relay_port, procs[1].pid),
    ]
    try:
        print(
            f"{args.connections} connections x {args.window} in flight, 1 KiB binary messages, "
            f"{args.duration:g} s each"
        )
        print(f"{'target':18s} {'echoes/s':>10s} {'frames/s':>10s} {'proxy CPU µs/echo':>18s}")
        for name, port, pid in targets:
            url = f"http://127.0.0.1:{port}/ws"
            uvloop.run(measure(url, 1, 4, 1.0))  # warm-up
            before = cpu_seconds(pid)
            rate = uvloop.run(measure(url, args.connections, args.window, args.duration))
            used = cpu_seconds(pid) - before
            per = "—" if name == "direct" else f"{used / (rate * args.duration) * 1e6:.1f}"
            print(f"{name:18s} {rate:10,.0f} {2 * rate:10,.0f} {per:>18s}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


if __name__ == "__main__":
    main()
