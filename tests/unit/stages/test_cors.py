"""The CORS stage: origin matching, preflight answers, headers on actual requests."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from aiogate.config import CorsConfig
from aiogate.context import RequestContext
from aiogate.errors import Forbidden
from aiogate.stages.cors import Cors, OriginMatcher


def context(method: str, headers: dict[str, str]) -> RequestContext:
    request = make_mocked_request(method, "/a", headers=headers)
    return RequestContext(
        request=request, request_id="rid-1", method=method, path="/a", query="",
        client_ip="192.0.2.1", forwarded_for="192.0.2.1", started=0.0,
    )  # fmt: skip


async def terminal(ctx: RequestContext) -> web.StreamResponse:
    return web.Response(text="upstream")


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://example.com", True),
        ("HTTPS://EXAMPLE.COM", True),
        ("http://example.com", False),
        ("https://example.com:8443", False),
        ("https://a.sub.example.org", True),
        ("https://sub.example.org", True),
        ("https://example.org", False),
        ("https://.example.org", False),
        ("https://evil.com/.example.org", False),
        ("https://evil.com?.example.org", False),
        ("https://user@x.example.org", False),
        ("https://x.example.org:8443", False),
        ("http://x.example.org", False),
        ("https://x.example.net:8443", True),
        ("null", False),
    ],
)
def test_origin_matcher(origin: str, allowed: bool) -> None:
    matcher = OriginMatcher(
        ["https://example.com", "https://*.example.org", "https://*.example.net:8443"]
    )
    assert matcher(origin) is allowed
    assert OriginMatcher(["*"])(origin)


def cors(**config: Any) -> Cors:
    return Cors(CorsConfig.model_validate(config), ("GET", "POST"))


async def test_preflight_answered_with_the_policy() -> None:
    stage = cors(allowed_origins=["https://example.com"], allowed_headers=["X-Api", "Content-Type"],
                 max_age="10m", allow_credentials=True)  # fmt: skip
    ctx = context("OPTIONS", {"Origin": "https://example.com",
                              "Access-Control-Request-Method": "POST"})  # fmt: skip
    response = await stage(ctx, terminal)
    assert response.status == 204
    assert list(response.headers.items()) == [
        ("Access-Control-Allow-Origin", "https://example.com"),
        ("Access-Control-Allow-Methods", "GET, POST"),  # the route's methods by default
        ("Access-Control-Allow-Headers", "X-Api, Content-Type"),
        ("Access-Control-Max-Age", "600"),
        ("Access-Control-Allow-Credentials", "true"),
        ("Vary", "Origin"),
        ("X-Request-ID", "rid-1"),
    ]


async def test_preflight_from_another_origin_is_forbidden() -> None:
    stage = cors(allowed_origins=["https://example.com"])
    ctx = context("OPTIONS", {"Origin": "https://evil.example",
                              "Access-Control-Request-Method": "GET"})  # fmt: skip
    with pytest.raises(Forbidden) as info:
        await stage(ctx, terminal)
    assert info.value.code == "cors_origin_not_allowed"
    assert ctx.response_headers == [("Vary", "Origin")]


async def test_star_with_credentials_reflects_requested_headers() -> None:
    stage = cors(allowed_origins=["https://a.example"], allowed_headers="*", allow_credentials=True)
    ctx = context("OPTIONS", {"Origin": "https://a.example",
                              "Access-Control-Request-Method": "PUT",
                              "Access-Control-Request-Headers": "x-a, bad hdr, x-b"})  # fmt: skip
    response = await stage(ctx, terminal)
    assert response.headers["Access-Control-Allow-Headers"] == "x-a, x-b"
    assert response.headers.getall("Vary") == ["Origin", "Access-Control-Request-Headers"]


async def test_actual_request_headers() -> None:
    stage = cors(allowed_origins=["https://example.com"], exposed_headers=["X-Id"],
                 allow_credentials=True)  # fmt: skip
    ctx = context("GET", {"Origin": "https://example.com"})
    await stage(ctx, terminal)
    assert ctx.response_headers == [
        ("Access-Control-Allow-Origin", "https://example.com"),
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Expose-Headers", "X-Id"),
        ("Vary", "Origin"),
    ]
    assert "access-control-allow-origin" in ctx.response_drop  # the upstream's are replaced
    other = context("GET", {"Origin": "https://evil.example"})
    await stage(other, terminal)
    assert other.response_headers == [("Vary", "Origin")]
    star = cors(allowed_origins="*")
    anyone = context("GET", {"Origin": "https://evil.example"})
    await star(anyone, terminal)
    assert anyone.response_headers == [("Access-Control-Allow-Origin", "*")]
