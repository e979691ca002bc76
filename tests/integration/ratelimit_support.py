"""Helpers of the rate-limit integration tests: routes with limits, bursts of requests."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import aiohttp
from backend import BackendThread
from wire import request


def limited_config(
    backends: BackendThread, *routes: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """One upstream; each route given is `{path, rate_limit, ...}` to it."""
    config: dict[str, Any] = {
        "logging": {"level": "info"},
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "upstreams": [{"name": "svc", "backends": [{"url": backends.url("backend-1")}]}],
        "routes": [{"upstream": "svc", **route} for route in routes],
    }
    config.update(extra)
    return config


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


async def burst(
    urls: list[str], n: int, headers: dict[str, str] | None = None, *, fresh: bool = False
) -> list[int]:
    """`n` concurrent GETs spread round-robin over `urls`; the statuses, in order."""
    connector = aiohttp.TCPConnector(limit=0, force_close=fresh)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(index: int) -> int:
            url = urls[index % len(urls)]
            async with session.get(url, headers=headers) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def metric(admin_url: str, name: str) -> list[str]:
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return [line for line in text.splitlines() if line.startswith(name)]


def body(raw: bytes) -> dict[str, Any]:
    return dict(json.loads(raw))


def obs_text_config(backends: BackendThread, **extra: Any) -> dict[str, Any]:
    return limited_config(
        backends,
        {"path": "/t", "rate_limit": {"requests": 2, "window": "1h", "dimension": "header:X-T"}},
        {"path": "/open"},
        rate_limits=[{"dimension": "api_key", "limit": 4, "window": "1h"}],
        **extra,
    )  # fmt: skip


def obs_text_statuses(gw: Any) -> list[int]:
    """Header bytes 0xE9 (obs-text), which aiohttp decodes as lone surrogates."""
    headers = [("X-T", "caf\xe9"), ("X-API-Key", "k\xe9y")]
    return [request(gw.port, "GET", path, headers).status for path in ["/t"] * 3 + ["/open"] * 2]
