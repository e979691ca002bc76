"""The request-head checks (Host, duplicate Authorization, underscores) and the forwarding
header helpers of the proxy (underscore filtering, spellings, the Forwarded element)."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from aiogate.config import ServerConfig
from aiogate.errors import BadRequest
from aiogate.metrics import UNDERSCORE_HEADERS
from aiogate.requestcheck import check_request_head, valid_host
from aiogate.stages.forwarding import filter_request_headers, forwarded_element, spellings

DROP = ServerConfig()
REJECT = ServerConfig(underscore_headers="reject")
ALLOW = ServerConfig(underscore_headers="allow")


def head(
    headers: list[tuple[str, str]],
    target: str = "/p",
    version: HttpVersion = HttpVersion11,
) -> web.BaseRequest:
    return make_mocked_request("GET", target, headers=CIMultiDict(headers), version=version)


def refused(request: web.BaseRequest, server: ServerConfig = DROP) -> str:
    with pytest.raises(BadRequest) as info:
        check_request_head(request, server)
    return str(info.value)


def passes(request: web.BaseRequest, server: ServerConfig = DROP) -> None:
    check_request_head(request, server)


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "EXAMPLE.com.",
        "a-b_c~d.example",
        "localhost:8080",
        "127.0.0.1",
        "127.0.0.1:65535",
        "[::1]",
        "[2001:db8::1]:443",
        "[::ffff:10.0.0.1]",
        "x",
    ],
)
def test_valid_hosts(host: str) -> None:
    assert valid_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "",
        "..example.com",
        ".example.com",
        "a..b",
        "example..",
        "a b",
        "example.com/\\:552",
        "example.com/x",
        "example.com:",
        "example.com:0",
        "example.com:65536",
        "example.com:123456",
        "example.com:80:80",
        "example.com:8o",
        "user@example.com",
        "[::1",
        "::1",
        "[::g]",
        "[v1.x]",
        "[fe80::1%25eth0]",
        "exa%41mple.com",
        "a,b",
        "a;b",
        'a"b',
        "a\\b",
    ],
)
def test_invalid_hosts(host: str) -> None:
    assert not valid_host(host)


def test_bad_host_is_400() -> None:
    assert "invalid Host" in refused(head([("Host", "..example.com")]))


def test_two_hosts_are_400() -> None:
    assert "more than one Host" in refused(head([("Host", "a.example"), ("Host", "a.example")]))


def test_missing_host_is_400_on_http11_only() -> None:
    assert "needs a Host" in refused(head([]))
    passes(head([], version=HttpVersion10))


@pytest.mark.parametrize(
    ("target", "host"),
    [
        ("http://a.example/p", "a.example"),
        ("HTTP://A.example:80/p", "a.example"),
        ("https://a.example/p", "a.example:443"),
        ("http://a.example:8080?q", "A.EXAMPLE:8080"),
    ],
)
def test_absolute_form_agreeing_with_host_passes(target: str, host: str) -> None:
    passes(head([("Host", host)], target=target))


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("http://b.example/p", "differs"),
        ("http://a.example:8080/p", "differs"),
        ("http://user@a.example/p", "invalid authority"),
        ("http://a..example/p", "invalid authority"),
        ("http:///p", "invalid authority"),
    ],
)
def test_absolute_form_disagreeing_is_400(target: str, reason: str) -> None:
    assert reason in refused(head([("Host", "a.example")], target=target))


def test_absolute_form_without_host_on_http10_is_checked() -> None:
    passes(head([], target="http://a.example/p", version=HttpVersion10))
    assert "invalid authority" in refused(head([], target="http://a b/", version=HttpVersion10))


def test_duplicate_authorization_is_400_everywhere() -> None:
    request = head([("Host", "h"), ("Authorization", "Bearer a"), ("authorization", "Bearer b")])
    assert "Authorization" in refused(request)
    passes(head([("Host", "h"), ("Authorization", "Bearer a")]))


def value(action: str) -> float:
    return float(UNDERSCORE_HEADERS.labels(action)._value.get())


def test_underscore_names_per_mode() -> None:
    request = head([("Host", "h"), ("X_User_Id", "admin")])
    dropped, rejected = value("dropped"), value("rejected")
    passes(request, DROP)
    assert value("dropped") == dropped + 1
    assert "'_'" in refused(request, REJECT)
    assert value("rejected") == rejected + 1
    passes(request, ALLOW)
    passes(head([("Host", "h"), ("X-User-Id", "alice")]), REJECT)
    assert (value("dropped"), value("rejected")) == (dropped + 1, rejected + 1)


CLAIMS = spellings(frozenset({"connection", "x-forwarded-for", "x-user-id", "x_tenant"}))


def test_spellings_add_the_dash_form() -> None:
    assert "x-tenant" in CLAIMS
    assert "x_tenant" in CLAIMS
    plain = frozenset({"a-b"})
    assert spellings(plain) is plain


def names(pairs: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in pairs]


SPOOFS = CIMultiDict(
    [
        ("X-User-Id", "alice"),
        ("X_User_Id", "admin"),
        ("x_user-id", "admin"),
        ("X_Forwarded_For", "6.6.6.6"),
        ("X-Tenant", "other"),
        ("X_Tenant", "other"),
        ("X_Custom", "kept when allowed"),
        ("X-Kept", "yes"),
    ]
)


def test_filter_drops_underscore_names_by_default() -> None:
    assert names(filter_request_headers(SPOOFS, CLAIMS)) == ["X-Kept"]


def test_filter_allow_keeps_only_harmless_underscore_names() -> None:
    kept = names(filter_request_headers(SPOOFS, CLAIMS, underscores=True))
    assert kept == ["X_Custom", "X-Kept"]


@pytest.mark.parametrize(
    ("peer", "proto", "host", "element"),
    [
        ("192.0.2.1", "http", "example.com", "for=192.0.2.1;proto=http;host=example.com"),
        ("::1", "https", "example.com:8443", 'for="[::1]";proto=https;host="example.com:8443"'),
        ("", "http", "", "for=unknown;proto=http"),
        ("10.0.0.1", "http", "[::1]", 'for=10.0.0.1;proto=http;host="[::1]"'),
    ],
)
def test_forwarded_element(peer: str, proto: str, host: str, element: str) -> None:
    assert forwarded_element(peer, proto, host) == element
