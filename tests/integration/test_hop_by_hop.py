"""Hop-by-hop headers are dropped both ways; X-Forwarded-For follows `trusted_proxies`."""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway
from gwconfigs import wide_config
from wire import access_line, connect, new_id, read_reply, request, seen_with

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "proxy-authenticate",
    "transfer-encoding",
}


@pytest.fixture(scope="module")
def hgw(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(wide_config(backends), tmp_path_factory.mktemp("hop")).start()
    yield gw
    gw.stop()


def seen_names(entry: dict[str, Any]) -> list[str]:
    return [k.decode().lower() for k, _ in entry["header_list"]]


def values(entry: dict[str, Any], name: str) -> list[str]:
    return [v.decode() for k, v in entry["header_list"] if k.decode().lower() == name.lower()]


def test_request_hop_by_hop_headers_are_not_forwarded(
    hgw: Gateway, backends: BackendThread
) -> None:
    rid = new_id()
    headers = [
        ("X-Request-ID", rid),
        ("Connection", "close, X-Custom-Hop, x-other-hop"),
        ("Keep-Alive", "timeout=5, max=100"),
        ("TE", "trailers"),
        ("Trailer", "X-Checksum"),
        ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
        ("Proxy-Connection", "keep-alive"),
        ("X-Custom-Hop", "secret"),
        ("X-Other-Hop", "secret too"),
        ("X-End-To-End", "kept"),
    ]
    reply = request(hgw.port, "POST", "/api/users", headers, b"body")
    assert reply.status == 200
    (entry,) = seen_with(backends, rid)
    names = set(seen_names(entry))
    # The backend's aiohttp client connection adds none of these by itself: anything seen
    # here came through the gateway.
    leaked = names & (HOP_BY_HOP - {"connection"} | {"x-custom-hop", "x-other-hop"})
    assert leaked == set(), leaked
    # The gateway's own Connection header (if any) to the upstream never names client tokens.
    for value in values(entry, "Connection"):
        assert "hop" not in value.lower(), value
    assert values(entry, "X-End-To-End") == ["kept"]


def test_connection_cannot_strip_the_gateways_own_headers(
    hgw: Gateway, backends: BackendThread
) -> None:
    rid = new_id()
    headers = [
        ("X-Request-ID", rid),
        (
            "Connection",
            "close, X-Forwarded-For, X-Request-ID, X-Forwarded-Proto, X-Forwarded-Host, Host",
        ),
    ]
    reply = request(hgw.port, "GET", "/api/users", headers, host="client.example")
    assert reply.status == 200
    assert reply.header("X-Request-ID") == rid
    (entry,) = seen_with(backends, rid)
    assert values(entry, "X-Forwarded-For") == ["127.0.0.1"]
    assert values(entry, "X-Forwarded-Proto") == ["http"]
    assert values(entry, "X-Forwarded-Host") == ["client.example"]
    assert values(entry, "X-Request-ID") == [rid]
    assert values(entry, "Host") == [f"127.0.0.1:{backends.ports['backend-1']}"]


def test_connection_naming_an_end_to_end_header_drops_it(
    hgw: Gateway, backends: BackendThread
) -> None:
    """RFC 9110 §7.6.1: whatever the client lists in Connection is hop-by-hop for this hop."""
    rid = new_id()
    headers = [("X-Request-ID", rid), ("Connection", "close, Authorization"),
               ("Authorization", "Bearer t")]  # fmt: skip
    assert request(hgw.port, "GET", "/api/users", headers).status == 200
    (entry,) = seen_with(backends, rid)
    assert "authorization" not in seen_names(entry)


def test_non_websocket_upgrade_is_not_forwarded_as_an_upgrade(
    hgw: Gateway, backends: BackendThread
) -> None:
    rid = new_id()
    headers = [("X-Request-ID", rid), ("Connection", "Upgrade"), ("Upgrade", "h2c")]
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    with connect(hgw.port) as sock:  # read one reply: the connection may stay open
        sock.sendall(f"GET /api/users HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
        reply = read_reply(sock)
    assert reply.status == 200
    (entry,) = seen_with(backends, rid)
    assert "upgrade" not in seen_names(entry)
    for value in values(entry, "Connection"):
        assert "upgrade" not in value.lower()


def test_websocket_handshake_carries_its_upgrade_and_a_plain_answer_is_relayed(
    hgw: Gateway, backends: BackendThread
) -> None:
    """The handshake's Upgrade / Connection: Upgrade go upstream (docs/websocket.md); a
    backend that does not speak WebSocket answers 200, which the client gets as it is."""
    rid = new_id()
    headers = [("X-Request-ID", rid), ("Connection", "Upgrade"), ("Upgrade", "websocket"),
               ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
               ("Sec-WebSocket-Version", "13")]  # fmt: skip
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers)
    with connect(hgw.port) as sock:
        sock.sendall(f"GET /api/users HTTP/1.1\r\nHost: x\r\n{lines}\r\n".encode())
        reply = read_reply(sock)
    assert reply.status == 200
    assert reply.header("Upgrade") is None
    (entry,) = seen_with(backends, rid)
    assert values(entry, "Upgrade") == ["websocket"]
    assert values(entry, "Connection") == ["Upgrade"]
    assert values(entry, "Sec-WebSocket-Key") == ["dGhlIHNhbXBsZSBub25jZQ=="]


def _keepalive_get(port: int, path: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """Over a kept-alive HTTP/1.1 connection (no `Connection: close` from us)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("keepalive", [False, True])
def test_response_hop_by_hop_headers_are_not_relayed(hgw: Gateway, keepalive: bool) -> None:
    if keepalive:
        status, headers, body = _keepalive_get(hgw.port, "/hop")
    else:
        reply = request(hgw.port, "GET", "/hop")
        status, headers, body = reply.status, reply.headers, reply.body
    assert (status, body) == (200, b"hop")
    names = {k.lower(): v for k, v in headers}
    assert "x-secret-hop" not in names
    assert "keep-alive" not in names
    assert "proxy-authenticate" not in names
    assert "x-secret-hop" not in names.get("connection", "").lower()
    assert names["x-end-to-end"] == "kept"


# -- trusted_proxies ----------------------------------------------------------------------------


def test_untrusted_peer_xff_is_discarded(hgw: Gateway, backends: BackendThread) -> None:
    rid = new_id()
    headers = [("X-Request-ID", rid), ("X-Forwarded-For", "203.0.113.7")]
    assert request(hgw.port, "GET", "/api/users", headers).status == 200
    (entry,) = seen_with(backends, rid)
    assert values(entry, "X-Forwarded-For") == ["127.0.0.1"]
    assert access_line(hgw, rid)["client_ip"] == "127.0.0.1"


@pytest.fixture
def trusted(backends: BackendThread, make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway(wide_config(backends, trusted_proxies=["127.0.0.0/8"]))


def test_trusted_peer_xff_is_believed(trusted: Gateway, backends: BackendThread) -> None:
    rid = new_id()
    headers = [("X-Request-ID", rid), ("X-Forwarded-For", "203.0.113.7")]
    assert request(trusted.port, "GET", "/api/users", headers).status == 200
    (entry,) = seen_with(backends, rid)
    assert values(entry, "X-Forwarded-For") == ["203.0.113.7, 127.0.0.1"]
    assert access_line(trusted, rid)["client_ip"] == "203.0.113.7"

    # A chain: the rightmost address that is not itself a trusted proxy is the client, and
    # several X-Forwarded-For fields are one list.
    rid = new_id()
    headers = [
        ("X-Request-ID", rid),
        ("X-Forwarded-For", "198.51.100.1, 203.0.113.9"),
        ("X-Forwarded-For", "127.0.0.9"),
    ]
    assert request(trusted.port, "GET", "/api/users", headers).status == 200
    (entry,) = seen_with(backends, rid)
    assert values(entry, "X-Forwarded-For") == ["198.51.100.1, 203.0.113.9, 127.0.0.9, 127.0.0.1"]
    assert access_line(trusted, rid)["client_ip"] == "203.0.113.9"

    # No incoming header: the peer is the client.
    rid = new_id()
    assert request(trusted.port, "GET", "/api/users", [("X-Request-ID", rid)]).status == 200
    (entry,) = seen_with(backends, rid)
    assert values(entry, "X-Forwarded-For") == ["127.0.0.1"]
    assert access_line(trusted, rid)["client_ip"] == "127.0.0.1"
