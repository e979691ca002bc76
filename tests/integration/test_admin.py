"""The admin listener: liveness, readiness, metrics and the bearer-protected admin API."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway, wait_until
from gwconfigs import wide_config
from wire import connect, read_reply, request

TOKEN = "admin-token-s3cret-value"
JWT_SECRET = "jwt-secret-never-shown-0123456789abcdef"
API_KEY = "api-key-never-shown"


def admin_config(backends: BackendThread) -> dict[str, Any]:
    config = wide_config(backends)
    config["admin"] = {"token": "${env:AIOGATE_TEST_TOKEN}"}
    config["auth"] = {
        "jwt": {"algorithms": ["HS256"], "secret": "${env:AIOGATE_TEST_JWT}"},
        "api_key": {"keys": [{"key": "${env:AIOGATE_TEST_KEY}", "consumer": "alice"}]},
    }
    return config


ENV = {"AIOGATE_TEST_TOKEN": TOKEN, "AIOGATE_TEST_JWT": JWT_SECRET, "AIOGATE_TEST_KEY": API_KEY}


@pytest.fixture(scope="module")
def agw(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(admin_config(backends), tmp_path_factory.mktemp("admin"), env=ENV).start()
    yield gw
    gw.stop()


def bearer(token: str = TOKEN) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


def test_healthz_and_readyz(agw: Gateway) -> None:
    reply = request(agw.admin_port, "GET", "/healthz")
    assert reply.status == 200
    assert reply.json()["status"] == "ok"
    reply = request(agw.admin_port, "GET", "/readyz")
    assert reply.status == 200
    assert reply.json()["status"] == "ready"


def metric_value(text: str, name: str, labels: dict[str, str]) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def scrape(gw: Gateway) -> str:
    reply = request(gw.admin_port, "GET", "/metrics")
    assert reply.status == 200
    assert (reply.header("Content-Type") or "").startswith("text/plain")
    return reply.body.decode()


def test_metrics_have_the_contract_names(agw: Gateway, backends: BackendThread) -> None:
    for _ in range(2):
        assert request(agw.port, "GET", "/api/users").status == 200
    assert request(agw.port, "GET", "/api/orders/1/items").status == 200
    text = scrape(agw)
    assert (metric_value(text, "aiogate_requests_total",
            {"route": "/api/users", "method": "GET", "status": "200"}) or 0) >= 2  # fmt: skip
    assert (metric_value(text, "aiogate_requests_total",
            {"route": "order-items", "method": "GET", "status": "200"}) or 0) >= 1  # fmt: skip
    count = metric_value(text, "aiogate_request_duration_seconds_count", {"route": "/api/users"})
    assert (count or 0) >= 2
    assert metric_value(
        text, "aiogate_request_duration_seconds_bucket", {"route": "/api/users", "le": "+Inf"}
    )
    upstream = {"upstream": "user-service", "backend": backends.url("backend-1")}
    assert (metric_value(text, "aiogate_upstream_duration_seconds_count", upstream) or 0) >= 3
    assert re.search(r"^aiogate_active_connections(\{[^}]*\})? \d", text, re.M), text


def test_error_statuses_are_counted(agw: Gateway) -> None:
    # `/` is routed in this config; a malformed path is a gateway-made 400.
    assert request(agw.port, "GET", "/api/users/%zz").status == 400
    text = scrape(agw)
    assert [line for line in text.splitlines()
            if line.startswith("aiogate_requests_total{") and 'status="400"' in line]  # fmt: skip


def active_connections(gw: Gateway) -> float:
    match = re.search(r"^aiogate_active_connections(?:\{[^}]*\})? (\S+)", scrape(gw), re.M)
    assert match
    return float(match.group(1))


def test_active_connections_gauge_follows_open_connections(agw: Gateway) -> None:
    base = active_connections(agw)
    with ExitStack() as stack:
        for _ in range(3):
            sock = stack.enter_context(connect(agw.port))
            sock.sendall(b"GET /api/users HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_reply(sock).status == 200  # kept alive afterwards
        wait_until(lambda: active_connections(agw) >= base + 3, 10, "gauge to count 3 more")
    wait_until(lambda: active_connections(agw) <= base, 10, "gauge to drop back")


def test_admin_api_requires_the_bearer_token(agw: Gateway) -> None:
    for headers in ([], bearer("wrong"), [("Authorization", f"Basic {TOKEN}")],
                    [("Authorization", TOKEN)]):  # fmt: skip
        reply = request(agw.admin_port, "GET", "/admin/config", headers)
        assert reply.status == 401, headers
        assert (reply.header("WWW-Authenticate") or "").lower().startswith("bearer")
        body = reply.json()
        assert body["error"]
        assert TOKEN not in reply.body.decode()
    reply = request(agw.admin_port, "POST", "/admin/reload")
    assert reply.status == 401


def test_admin_config_is_redacted(agw: Gateway) -> None:
    reply = request(agw.admin_port, "GET", "/admin/config", bearer())
    assert reply.status == 200
    assert (reply.header("Content-Type") or "").startswith("application/json")
    text = reply.body.decode()
    for secret in (TOKEN, JWT_SECRET, API_KEY):
        assert secret not in text
    config = json.loads(text)
    assert config["admin"]["token"] != TOKEN
    assert "redacted" in str(config["admin"]["token"]).lower()
    assert "redacted" in str(config["auth"]["jwt"]["secret"]).lower()
    assert "redacted" in json.dumps(config["auth"]["api_key"]["keys"]).lower()
    # The rest is the running config.
    assert config["server"]["listen"] == f"127.0.0.1:{agw.port}"
    assert {r["path"] for r in config["routes"]} >= {"/api/users", "/api/orders"}


def test_admin_reload_applies_a_changed_file(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(admin_config(backends), env=ENV)
    assert request(gw.port, "GET", "/api/users").status == 200
    config = dict(gw.config)
    config["routes"] = [{"path": "/v2", "upstream": "order-service", "name": "v2"}]
    gw.write(config)
    reply = request(gw.admin_port, "POST", "/admin/reload", bearer())
    assert reply.status == 200, reply.body
    assert reply.json()["status"] == "applied"
    gw.wait_event("config_reloaded")
    assert request(gw.port, "GET", "/v2/x").json()["backend"] == "backend-2"
    assert request(gw.port, "GET", "/api/users").status == 404

    # An invalid file is rejected and the running config keeps serving.
    gw.path.write_text("routes: [ {path: /v3, upstream: nowhere} ]\n")
    reply = request(gw.admin_port, "POST", "/admin/reload", bearer())
    assert reply.status >= 400
    assert reply.json()["status"] == "rejected"
    assert reply.json()["errors"]
    assert request(gw.port, "GET", "/v2/x").status == 200


def test_admin_api_is_off_without_a_token(gateway: Gateway) -> None:
    reply = request(gateway.admin_port, "GET", "/admin/config")
    assert reply.status in (401, 403, 404)
    assert reply.json()["error"]


def test_unknown_admin_path_is_404(agw: Gateway) -> None:
    reply = request(agw.admin_port, "GET", "/admin/nope", bearer())
    assert reply.status == 404
