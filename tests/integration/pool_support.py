"""Helpers for the pool, health, breaker and retry tests: a client and config builders."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from ctlbackend import CtlGroup
from gateway import Gateway

TOKEN = "pool-admin-token"


def call(
    gw: Gateway,
    path: str = "/p/x",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, Any], dict[str, str], float]:
    """(status, JSON body or {}, headers, seconds) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=timeout)
    start = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        took = time.perf_counter() - start
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"raw": raw.decode(errors="replace")}
        return resp.status, data, dict(resp.getheaders()), took
    finally:
        conn.close()


def backend_of(gw: Gateway, path: str = "/p/x", **kw: Any) -> str:
    status, data, _, _ = call(gw, path, **kw)
    assert status == 200, (status, data)
    return str(data["backend"])


def admin_upstreams(gw: Gateway) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", gw.admin_port, timeout=5)
    try:
        conn.request("GET", "/admin/upstreams", headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        return json.loads(resp.read())  # type: ignore[no-any-return]
    finally:
        conn.close()


def backend_view(gw: Gateway, url: str, upstream: str = "pool") -> dict[str, Any]:
    for up in admin_upstreams(gw)["upstreams"]:
        if up["name"] == upstream:
            for backend in up["backends"]:
                if backend["url"] == url:
                    return backend  # type: ignore[no-any-return]
    raise KeyError(url)


def pool_config(
    group: CtlGroup,
    count: int | None = None,
    weights: list[int] | None = None,
    route: dict[str, Any] | None = None,
    **upstream: Any,
) -> dict[str, Any]:
    backends = group.backends[:count] if count is not None else group.backends
    entries = []
    for i, backend in enumerate(backends):
        entry: dict[str, Any] = {"url": backend.url}
        if weights is not None:
            entry["weight"] = weights[i]
        entries.append(entry)
    return {
        "logging": {"level": "info"},
        "admin": {"token": TOKEN},
        "upstreams": [{"name": "pool", "backends": entries, **upstream}],
        "routes": [{"path": "/p", "upstream": "pool", "name": "p", **(route or {})}],
    }
