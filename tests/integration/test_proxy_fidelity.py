"""What goes through the gateway arrives intact: method, path, query, body, headers, ids."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway
from gwconfigs import wide_config
from wire import access_line, new_id, request, seen_with

ACCESS_FIELDS = {
    "event",
    "request_id",
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "upstream",
    "backend",
    "client_ip",
    "bytes_in",
    "bytes_out",
}


@pytest.fixture(scope="module")
def fgw(
    backends: BackendThread, raw_backend: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = wide_config(backends, raw_backend.url)
    gw = Gateway(config, tmp_path_factory.mktemp("fidelity")).start()
    yield gw
    gw.stop()


def one_seen(backends: BackendThread, rid: str) -> dict[str, Any]:
    seen = seen_with(backends, rid)
    assert len(seen) == 1, seen
    return seen[0]


def header_values(entry: dict[str, Any], name: str) -> list[str]:
    wanted = name.lower().encode()
    return [v.decode() for k, v in entry["header_list"] if k.lower() == wanted]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_method_is_forwarded(fgw: Gateway, backends: BackendThread, method: str) -> None:
    rid = new_id()
    body = b"payload" if method in ("POST", "PUT", "PATCH") else b""
    reply = request(fgw.port, method, "/echo/m", [("X-Request-ID", rid)], body)
    assert reply.status == 200
    assert one_seen(backends, rid)["method"] == method


def test_path_and_query_are_forwarded_verbatim(fgw: Gateway, backends: BackendThread) -> None:
    rid = new_id()
    query = "a=1&b=%20x&c=%2F%3F%26&d=a+b&e=%E2%82%AC&a=2&flag&empty=&q=%25"
    reply = request(fgw.port, "GET", f"/api/users/9?{query}", [("X-Request-ID", rid)])
    assert reply.status == 200
    assert one_seen(backends, rid)["raw_path"] == f"/api/users/9?{query}"


@pytest.mark.parametrize("size", [0, 1, 1000, 64 * 1024, 64 * 1024 + 1, 3 * 1024 * 1024 + 17])
def test_body_is_byte_exact(fgw: Gateway, backends: BackendThread, size: int) -> None:
    rid = new_id()
    body = os.urandom(size)
    reply = request(fgw.port, "POST", "/upload", [("X-Request-ID", rid)], body)
    assert reply.status == 200, reply.body
    entry = one_seen(backends, rid)
    assert entry["body_len"] == size
    assert entry["sha256"] == hashlib.sha256(body).hexdigest()
    assert reply.json()["sha256"] == hashlib.sha256(body).hexdigest()


def test_chunked_request_body_is_byte_exact(fgw: Gateway, backends: BackendThread) -> None:
    rid = new_id()
    pieces = [os.urandom(n) for n in (1, 100, 70000, 5, 200000)]
    conn = http.client.HTTPConnection("127.0.0.1", fgw.port, timeout=20)
    try:
        conn.request(
            "POST", "/upload", body=iter(pieces), headers={"X-Request-ID": rid},
            encode_chunked=True,
        )  # fmt: skip
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    finally:
        conn.close()
    whole = b"".join(pieces)
    entry = one_seen(backends, rid)
    assert (entry["body_len"], entry["sha256"]) == (len(whole), hashlib.sha256(whole).hexdigest())


def test_end_to_end_headers_incl_duplicates(fgw: Gateway, backends: BackendThread) -> None:
    rid = new_id()
    headers = [
        ("X-Request-ID", rid),
        ("X-Dup", "one"),
        ("X-Custom", "v a l u e; q=1"),
        ("X-Dup", "two"),
        ("Accept", "text/html, application/json;q=0.9"),
        ("Cookie", "a=1; b=2"),
        ("Authorization", "Bearer abc"),
        ("User-Agent", "wire-test/1"),
        ("If-None-Match", '"etag-1"'),
    ]
    assert request(fgw.port, "GET", "/echo/h", headers).status == 200
    entry = one_seen(backends, rid)
    assert header_values(entry, "X-Dup") == ["one", "two"]
    for name, value in headers[2:]:
        if name != "X-Dup":
            assert header_values(entry, name) == [value], name


def test_multiple_set_cookie_are_preserved(fgw: Gateway) -> None:
    reply = request(fgw.port, "GET", "/cookies")
    assert reply.status == 200
    assert reply.all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirects_are_passed_through_not_followed(
    fgw: Gateway, backends: BackendThread, code: int
) -> None:
    rid = new_id()
    reply = request(fgw.port, "GET", f"/status/{code}", [("X-Request-ID", rid)])
    assert reply.status == code
    assert reply.header("Location") == "/elsewhere"
    assert reply.body == f"status {code}".encode()
    # Not followed: nothing asked the backend for /elsewhere on this request's behalf.
    assert seen_with(backends, rid) == []  # /status does not record; /elsewhere would echo


@pytest.mark.parametrize("code", [200, 201, 204, 304, 404, 418, 500, 503])
def test_upstream_status_is_relayed(fgw: Gateway, code: int) -> None:
    reply = request(fgw.port, "GET", f"/status/{code}")
    assert reply.status == code
    if code not in (204, 304):
        assert reply.body == f"status {code}".encode()


def test_gzip_response_is_relayed_compressed(fgw: Gateway) -> None:
    reply = request(fgw.port, "GET", "/gzip", [("Accept-Encoding", "gzip")])
    assert reply.status == 200
    assert reply.header("Content-Encoding") == "gzip"
    assert reply.body[:2] == b"\x1f\x8b"  # still gzip on the wire
    assert int(reply.header("Content-Length") or -1) == len(reply.body)
    assert gzip.decompress(reply.body) == b"compressed payload " * 100


def test_gzip_request_body_is_forwarded_compressed(fgw: Gateway, raw_backend: Any) -> None:
    rid = new_id()
    payload = gzip.compress(b"request payload " * 500, mtime=0)
    reply = request(
        fgw.port, "POST", "/raw/echo",
        [("X-Request-ID", rid), ("Content-Encoding", "gzip"), ("Content-Type", "text/plain")],
        payload,
    )  # fmt: skip
    assert reply.status == 200
    (seen,) = raw_backend.log.with_id(rid)
    assert seen.header("Content-Encoding") == "gzip"
    assert seen.body == payload


@pytest.mark.parametrize("path", ["/raw/notype", "/raw/notype-chunked"])
def test_no_content_type_is_invented(fgw: Gateway, path: str) -> None:
    # (backend.py's /notype cannot be used: aiohttp itself adds application/octet-stream.)
    reply = request(fgw.port, "GET", path)
    assert reply.status == 200
    assert reply.body == b"abc"
    assert "content-type" not in reply.names()


def test_forwarding_headers(fgw: Gateway, backends: BackendThread) -> None:
    rid = new_id()
    reply = request(
        fgw.port, "GET", "/api/users", [("X-Request-ID", rid)], host="shop.example:8443"
    )
    assert reply.status == 200
    entry = one_seen(backends, rid)
    assert header_values(entry, "Host") == [f"127.0.0.1:{backends.ports['backend-1']}"]
    assert header_values(entry, "X-Forwarded-Host") == ["shop.example:8443"]
    assert header_values(entry, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(entry, "X-Forwarded-Proto") == ["http"]
    assert header_values(entry, "X-Request-ID") == [rid]


def test_client_forwarding_headers_are_replaced(fgw: Gateway, backends: BackendThread) -> None:
    """Without trusted_proxies a client's X-Forwarded-* are not believed nor duplicated."""
    rid = new_id()
    spoofed = [
        ("X-Request-ID", rid),
        ("X-Forwarded-For", "6.6.6.6"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "evil.example"),
    ]
    assert request(fgw.port, "GET", "/api/users", spoofed, host="good.example").status == 200
    entry = one_seen(backends, rid)
    assert header_values(entry, "X-Forwarded-For") == ["127.0.0.1"]
    assert header_values(entry, "X-Forwarded-Proto") == ["http"]
    assert header_values(entry, "X-Forwarded-Host") == ["good.example"]


# -- X-Request-ID ----------------------------------------------------------------------------


def test_well_formed_request_id_is_kept_everywhere(fgw: Gateway, backends: BackendThread) -> None:
    rid = "client-id.42:abc_DEF"
    rid = f"{rid}-{new_id()}"
    reply = request(fgw.port, "POST", "/api/users/1?x=y", [("X-Request-ID", rid)], b"12345")
    assert reply.status == 200
    assert reply.header("X-Request-ID") == rid
    assert len(reply.all("X-Request-ID")) == 1
    assert header_values(one_seen(backends, rid), "X-Request-ID") == [rid]
    line = access_line(fgw, rid)
    assert set(line) >= ACCESS_FIELDS, set(line) ^ ACCESS_FIELDS
    assert line["event"] == "request"
    assert line["method"] == "POST"
    assert line["path"] == "/api/users/1"
    assert line["route"] == "/api/users"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], int | float)
    assert line["duration_ms"] >= 0
    assert line["upstream"] == "user-service"
    assert line["backend"] == backends.url("backend-1")
    assert line["client_ip"] == "127.0.0.1"
    assert line["bytes_in"] == 5
    assert line["bytes_out"] == len(reply.body)


@pytest.mark.parametrize(
    "bad", ["has spaces in it", "x" * 300, "semi;colon", 'quote"d', "uni\u00e9", ""]
)
def test_malformed_request_id_is_replaced(fgw: Gateway, backends: BackendThread, bad: str) -> None:
    marker = new_id()
    reply = request(
        fgw.port, "GET", f"/echo/rid/{marker}", [("X-Request-ID", bad)],
    )  # fmt: skip
    assert reply.status == 200
    new = reply.header("X-Request-ID")
    assert new
    assert new != bad.strip()
    assert re.fullmatch(r"[A-Za-z0-9._:+=/-]{8,128}", new), new
    (entry,) = seen_with(backends, new)
    assert entry["raw_path"] == f"/echo/rid/{marker}"
    assert access_line(fgw, new)["path"] == f"/echo/rid/{marker}"


def test_absent_request_id_is_generated_and_unique(fgw: Gateway, backends: BackendThread) -> None:
    ids = set()
    for _ in range(3):
        reply = request(fgw.port, "GET", "/api/users")
        rid = reply.header("X-Request-ID")
        assert rid
        ids.add(rid)
        assert seen_with(backends, rid)[0]["backend"] == "backend-1"
        assert access_line(fgw, rid)["status"] == 200
    assert len(ids) == 3


def test_gateway_errors_carry_the_request_id_too(fgw: Gateway) -> None:
    rid = new_id()
    reply = request(fgw.port, "GET", "/api/users/%zz", [("X-Request-ID", rid)])
    assert reply.status == 400
    assert reply.header("X-Request-ID") == rid
    assert reply.json()["request_id"] == rid
    line = access_line(fgw, rid)
    assert line["status"] == 400
    assert set(line) >= ACCESS_FIELDS
