"""WebSocket proxying against the real daemon and a real aiohttp WebSocket backend.

aiohttp's client for the traffic itself (it frames, masks and negotiates permessage-deflate);
raw sockets for the handshakes a client library would refuse to send.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import socket
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from gateway import Gateway, wait_until
from wire import access_line, assert_gateway_error, connect, exchange, new_id, read_reply
from wsbackend import WsBackend

API_KEY = "ws-key-0123456789"


@pytest.fixture(scope="module")
def ws_backend() -> Iterator[WsBackend]:
    backend = WsBackend().start()
    yield backend
    backend.stop()


def ws_config(backend: WsBackend, **server: Any) -> dict[str, Any]:
    return {
        "logging": {"level": "info"},
        "server": server,
        "auth": {"api_key": {"keys": [{"key": API_KEY, "consumer": "alice"}]}},
        "upstreams": [
            {"name": "ws", "backends": [{"url": backend.url}]},
            {"name": "bad-accept", "backends": [{"url": backend.bad_accept_url}]},
        ],
        "routes": [
            {"path": "/ws", "upstream": "ws"},
            {"path": "/ws-reject", "upstream": "ws"},
            {"path": "/off", "upstream": "ws", "websocket": False},
            {"path": "/private", "upstream": "ws", "auth": {"type": "api_key"}},
            {"path": "/limited", "upstream": "ws", "rate_limit": {"requests": 2, "window": "1h"}},
            {"path": "/bad", "upstream": "bad-accept"},
            {"path": "/metered", "upstream": "ws"},
            {"path": "/cached", "upstream": "ws", "cache": {"ttl": "1h"}},
            {
                "path": "/browser",
                "upstream": "ws",
                "cors": {"allowed_origins": ["https://app.example"]},
            },
        ],
    }


@pytest.fixture(scope="module")
def wsgw(ws_backend: WsBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(ws_config(ws_backend), tmp_path_factory.mktemp("wsgw")).start()
    yield gw
    gw.stop()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def handshake(path: str, *extra: str, version: str = "13", key: str | None = None) -> bytes:
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: gw.test",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Version: {version}",
        f"Sec-WebSocket-Key: {key}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def metric(gw: Gateway, name: str, labels: str) -> float | None:
    with urllib.request.urlopen(f"{gw.admin_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


# -- traffic ------------------------------------------------------------------------------------


def test_text_binary_large_and_ping_pass_both_ways(wsgw: Gateway) -> None:
    async def go() -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(f"{wsgw.url}/ws", autoping=False, max_msg_size=0) as ws,
        ):
            await ws.send_str("héllo")
            assert (await ws.receive()).data == "héllo"
            await ws.send_bytes(b"\x00\x01\xff")
            assert (await ws.receive()).data == b"\x00\x01\xff"
            big = os.urandom(5 * 1024 * 1024)
            await ws.send_bytes(big)
            assert (await ws.receive(timeout=30)).data == big
            await ws.ping(b"are you there")
            pong = await ws.receive()
            assert pong.type == aiohttp.WSMsgType.PONG
            assert pong.data == b"are you there"

    run(go())


def test_close_codes_pass_through_both_directions(wsgw: Gateway, ws_backend: WsBackend) -> None:
    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"{wsgw.url}/ws") as ws:
                await ws.send_str("close:4001")
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE
                assert msg.data == 4001
                assert msg.extra == "bye"
            async with s.ws_connect(f"{wsgw.url}/ws") as ws:
                await ws.close(code=4002, message=b"client done")

    run(go())
    wait_until(lambda: 4002 in ws_backend.seen.close_codes, 5, "backend saw 4002")


def test_permessage_deflate_is_negotiated_end_to_end(wsgw: Gateway, ws_backend: WsBackend) -> None:
    async def go() -> int:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{wsgw.url}/ws", compress=15) as ws:
            await ws.send_str("a" * 100_000)
            assert (await ws.receive()).data == "a" * 100_000
            return ws.compress

    assert run(go()) == 15
    with ws_backend.seen.lock:
        offered = ws_backend.seen.handshakes[-1].get("Sec-WebSocket-Extensions", "")
        accepted = ws_backend.seen.compressed[-1]
    assert "permessage-deflate" in offered
    assert accepted == 15


def test_access_line_and_metrics_at_the_end(wsgw: Gateway) -> None:
    request_id = new_id()
    total = 'method="GET",route="/metered",status="101"'  # a route no other test uses
    assert metric(wsgw, "aiogate_requests_total", total) is None

    async def go() -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(f"{wsgw.url}/metered/ws", headers={"X-Request-ID": request_id}) as ws,
        ):
            assert ws._response.headers["X-Request-ID"] == request_id
            wait_until(
                lambda: metric(wsgw, "aiogate_websocket_connections", 'route="/metered"') == 1.0,
                5,
                "gauge at 1",
            )
            # Not logged while open: the line is written when the connection ends.
            assert not [e for e in wsgw.events("request") if e.get("request_id") == request_id]
            await ws.send_bytes(b"x" * 1000)
            await ws.receive()

    run(go())
    line = access_line(wsgw, request_id)
    assert line["status"] == 101
    assert line["route"] == "/metered"
    assert line["duration_ms"] > 0
    assert line["bytes_in"] >= 1000
    assert line["bytes_out"] >= 1000
    wait_until(
        lambda: metric(wsgw, "aiogate_websocket_connections", 'route="/metered"') == 0.0,
        5,
        "gauge 0",
    )
    wait_until(lambda: metric(wsgw, "aiogate_requests_total", total) == 1, 5, "counted")


def test_a_cached_route_never_answers_a_handshake_from_its_cache(wsgw: Gateway) -> None:
    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            for number in range(3):
                async with s.ws_connect(f"{wsgw.url}/cached/ws") as ws:
                    assert "X-Cache" not in ws._response.headers
                    await echo_once(ws, f"round {number}")

    run(go())


# -- what is refused before (or instead of) the upgrade ----------------------------------------


def test_websocket_false_refuses_the_upgrade(wsgw: Gateway) -> None:
    reply = exchange(wsgw.port, handshake("/off/ws"))
    assert_gateway_error(reply, 400, "websocket_not_allowed")


def test_auth_runs_before_the_upgrade(wsgw: Gateway, ws_backend: WsBackend) -> None:
    seen = len(ws_backend.seen.handshakes)
    reply = exchange(wsgw.port, handshake("/private/ws"))
    assert_gateway_error(reply, 401)
    assert len(ws_backend.seen.handshakes) == seen

    async def go() -> str:
        async with (
            aiohttp.ClientSession() as s,
            s.ws_connect(f"{wsgw.url}/private/ws", headers={"X-API-Key": API_KEY}) as ws,
        ):
            await ws.send_str("in")
            return str((await ws.receive()).data)

    assert run(go()) == "in"
    # The credential stays at the gateway.
    assert "X-API-Key" not in ws_backend.seen.handshakes[-1]


def status_of_head(sock: socket.socket) -> int:
    """The status of the response head on `sock` (a 101 has no body to frame)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_cors_refuses_a_websocket_from_another_origin(wsgw: Gateway, ws_backend: WsBackend) -> None:
    seen = len(ws_backend.seen.handshakes)
    reply = exchange(wsgw.port, handshake("/browser/ws", "Origin: https://evil.example"))
    assert_gateway_error(reply, 403, "cors_origin_not_allowed")
    assert len(ws_backend.seen.handshakes) == seen
    with connect(wsgw.port) as sock:
        sock.sendall(handshake("/browser/ws", "Origin: https://app.example"))
        assert status_of_head(sock) == 101


def test_rate_limit_counts_handshakes(wsgw: Gateway) -> None:
    statuses = []
    for _ in range(3):
        with connect(wsgw.port) as sock:
            sock.sendall(handshake("/limited/ws"))
            statuses.append(status_of_head(sock))
    assert statuses == [101, 101, 429]


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (handshake("/ws", version="8"), 426),
        (handshake("/ws", key=""), 400),
        (handshake("/ws", key="c2hvcnQ="), 400),  # not 16 bytes
        (handshake("/ws", "Content-Length: 5") + b"hello", 400),
        (handshake("/ws").replace(b"GET", b"POST", 1), 400),
        (handshake("/ws").replace(b"HTTP/1.1", b"HTTP/1.0", 1), 400),
        (handshake("/ws").replace(b"Connection: Upgrade", b"Connection: keep-alive"), 400),
    ],
    ids=["version-8", "no-key", "short-key", "body", "post", "http-1.0", "no-connection-upgrade"],
)
def test_bad_handshakes(wsgw: Gateway, ws_backend: WsBackend, data: bytes, status: int) -> None:
    seen = len(ws_backend.seen.handshakes)
    reply = exchange(wsgw.port, data)
    assert_gateway_error(reply, status)
    if status == 426:
        assert reply.header("Sec-WebSocket-Version") == "13"
    assert len(ws_backend.seen.handshakes) == seen


def test_upstream_refusal_is_relayed_and_the_connection_goes_on(wsgw: Gateway) -> None:
    with connect(wsgw.port) as sock:
        sock.sendall(handshake("/ws-reject"))
        reply = read_reply(sock)
        assert reply.status == 403
        assert reply.json() == {"refused": True}
        assert reply.header("Upgrade") is None
        # The connection is plain HTTP again: a next request is answered.
        sock.sendall(handshake("/ws-reject"))
        assert read_reply(sock).status == 403


def test_upstream_101_without_matching_accept_is_502(wsgw: Gateway) -> None:
    reply = exchange(wsgw.port, handshake("/bad"))
    assert_gateway_error(reply, 502, "bad_upstream_response")


# -- lifecycle: reloads, idle timeout, shutdown -------------------------------------------------


async def echo_once(ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
    await ws.send_str(text)
    assert (await ws.receive(timeout=10)).data == text


def test_a_websocket_survives_ten_reloads(
    make_gateway: Callable[..., Gateway], ws_backend: WsBackend
) -> None:
    gw = make_gateway(ws_config(ws_backend, shutdown_timeout="1s"))

    async def go() -> None:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{gw.url}/ws") as ws:
            await echo_once(ws, "before")
            for number in range(1, 11):
                gw.signal(signal.SIGHUP)
                await asyncio.to_thread(gw.wait_event, "config_reloaded", number)
                await echo_once(ws, f"after reload {number}")
            # Past the old Runtimes' drain (shutdown_timeout): still open.
            await asyncio.sleep(1.5)
            await echo_once(ws, "still here")

    run(go())


def test_idle_websocket_is_closed(
    make_gateway: Callable[..., Gateway], ws_backend: WsBackend
) -> None:
    gw = make_gateway(ws_config(ws_backend, websocket_idle_timeout="1s"))

    async def go() -> aiohttp.WSMessage:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{gw.url}/ws") as ws:
            await echo_once(ws, "hi")
            return await ws.receive(timeout=10)

    msg = run(go())
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert msg.data == 1001


def test_shutdown_closes_websockets_with_1001(
    make_gateway: Callable[..., Gateway], ws_backend: WsBackend
) -> None:
    gw = make_gateway(ws_config(ws_backend, shutdown_timeout="1s"))
    closed_before = len(ws_backend.seen.close_codes)

    async def go() -> aiohttp.WSMessage:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{gw.url}/ws") as ws:
            await echo_once(ws, "hi")
            gw.signal(signal.SIGTERM)
            # Within shutdown_timeout the WebSocket still works.
            await echo_once(ws, "draining")
            return await ws.receive(timeout=10)

    msg = run(go())
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert msg.data == 1001
    assert gw.proc is not None
    assert gw.proc.wait(10) == 0
    wait_until(lambda: len(ws_backend.seen.close_codes) > closed_before, 5, "backend closed")
    assert ws_backend.seen.close_codes[-1] == 1001
