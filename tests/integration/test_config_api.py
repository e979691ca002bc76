"""`PUT /admin/config`, `GET /admin/routes` and `aiogate reload` against the real daemon."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from backend import BackendThread
from gateway import ROOT, Gateway, free_port
from gwconfigs import basic_config
from wire import request
from yaml_dump import dump

TOKEN = "config-api-token-0123456789abcdef"
ENV = {"AIOGATE_TEST_TOKEN": TOKEN}
AIOGATE = Path(sys.executable).with_name("aiogate")


def _config(backends: BackendThread, **extra: Any) -> dict[str, Any]:
    config = basic_config(backends, **extra)
    config["admin"] = {"token": "${env:AIOGATE_TEST_TOKEN}"}
    return config


def _with_route(gw: Gateway, backends: BackendThread, path: str) -> dict[str, Any]:
    config = _config(backends)
    config["routes"] = [*config["routes"], {"path": path, "upstream": "user-service"}]
    config["admin"] = {**gw.config["admin"], "token": "${env:AIOGATE_TEST_TOKEN}"}
    config["server"] = gw.config["server"]
    return config


def _unbuildable(gw: Gateway, backends: BackendThread, tmp: Path) -> dict[str, Any]:
    """Valid for `check`, but the Runtime cannot be built: a CA file that is no PEM bundle."""
    bad_ca = tmp / "ca.pem"
    bad_ca.write_text("not a certificate\n")
    config = _with_route(gw, backends, "/never")
    tls = {
        "name": "tls",
        "backends": [{"url": "https://127.0.0.1:1"}],
        "tls": {"ca_file": str(bad_ca)},
    }
    config["upstreams"] = [*config["upstreams"], tls]
    return config


def _put(gw: Gateway, body: bytes, query: str = "", token: str = TOKEN) -> Any:
    return request(
        gw.admin_port,
        "PUT",
        f"/admin/config{query}",
        [("Authorization", f"Bearer {token}"), ("Content-Type", "application/yaml")],
        body,
    )


def _status(gw: Gateway, path: str) -> int:
    return request(gw.port, "GET", path).status


@pytest.fixture
def cgw(backends: BackendThread, make_gateway: Any) -> Gateway:
    gw: Gateway = make_gateway(_config(backends), env=ENV)
    return gw


def test_put_applies_a_yaml_config_without_touching_the_file(
    cgw: Gateway, backends: BackendThread
) -> None:
    before = cgw.path.read_bytes()
    assert _status(cgw, "/pushed") == 404
    reply = _put(cgw, dump(_with_route(cgw, backends, "/pushed")).encode())
    assert reply.status == 200, reply.body
    assert reply.json()["status"] == "applied"
    assert reply.json()["persisted"] is False
    assert _status(cgw, "/pushed") == 200
    assert cgw.path.read_bytes() == before
    assert cgw.wait_event("config_reloaded")


def test_put_takes_json_too(cgw: Gateway, backends: BackendThread) -> None:
    body = json.dumps(_with_route(cgw, backends, "/as-json")).encode()
    assert _put(cgw, body).status == 200
    assert _status(cgw, "/as-json") == 200


def test_an_invalid_config_is_400_with_every_error_and_changes_nothing(cgw: Gateway) -> None:
    body = b"server:\n  max_body_size: lots\nroutes:\n  - path: /x\n    upstream: nowhere\n"
    reply = _put(cgw, body)
    assert reply.status == 400
    document = reply.json()
    assert document["error"] == "invalid_config"
    assert document["errors"] == [
        "2:18: server.max_body_size: invalid size 'lots' (use e.g. 512, 64KiB, 10MiB, 1GB)",
        "5:15: routes[0].upstream: unknown upstream 'nowhere' (no upstreams are defined)",
    ]
    assert _status(cgw, "/api/users") == 200
    assert not cgw.events("config_reloaded")


def test_put_and_routes_need_the_admin_token(cgw: Gateway) -> None:
    assert _put(cgw, b"routes: []\n", token="wrong").status == 401
    assert request(cgw.admin_port, "GET", "/admin/routes").status == 401


def test_persist_writes_the_file_atomically_keeping_its_mode(
    cgw: Gateway, backends: BackendThread
) -> None:
    os.chmod(cgw.path, 0o600)
    body = dump(_with_route(cgw, backends, "/kept")).encode()
    reply = _put(cgw, body, "?persist=true")
    assert reply.status == 200, reply.body
    assert reply.json()["persisted"] is True
    assert cgw.path.read_bytes() == body
    assert stat.S_IMODE(cgw.path.stat().st_mode) == 0o600
    assert not [p for p in cgw.path.parent.iterdir() if p.name.endswith(".tmp")]
    # A SIGHUP re-reads the file: the pushed config stays.
    assert _status(cgw, "/kept") == 200


def test_a_valid_config_that_cannot_be_built_is_422_and_not_persisted(
    cgw: Gateway, backends: BackendThread, tmp_path: Path
) -> None:
    config = _unbuildable(cgw, backends, tmp_path)
    before = cgw.path.read_bytes()
    reply = _put(cgw, dump(config).encode(), "?persist=true")
    assert reply.status == 422, reply.body
    assert reply.json()["status"] == "rejected"
    assert cgw.path.read_bytes() == before
    assert _status(cgw, "/never") == 404


def test_get_routes_lists_the_running_routes(cgw: Gateway) -> None:
    reply = request(cgw.admin_port, "GET", "/admin/routes", [("Authorization", f"Bearer {TOKEN}")])
    assert reply.status == 200
    routes = reply.json()["routes"]
    by_path = {route["path"]: route for route in routes}
    assert by_path["/api/users"]["upstream"] == "user-service"
    assert by_path["/api/users"]["methods"] == ["GET", "POST", "PUT", "DELETE", "HEAD"]
    assert by_path["/api/orders/{id}/items"]["name"] == "order-items"
    assert by_path["/t"]["auth"] == []
    assert by_path["/t"]["hosts"] == []
    assert by_path["/t"]["headers"] == {}


def test_put_with_two_workers_reaches_every_worker(
    backends: BackendThread, make_gateway: Any
) -> None:
    gw: Gateway = make_gateway(_config(backends, server={"workers": 2}), env=ENV)
    assert _put(gw, dump(_with_route(gw, backends, "/both")).encode()).status == 200
    # Each new connection may land on either worker (SO_REUSEPORT): all must know the route.
    assert {_status(gw, "/both") for _ in range(30)} == {200}


# -- aiogate reload ----------------------------------------------------------------------------


def _reload_cli(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AIOGATE), "reload", "--config", str(path), "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, **ENV, **(env or {})},
        check=False,
    )


def test_reload_command_exits_0_when_applied(cgw: Gateway, backends: BackendThread) -> None:
    cgw.write(_with_route(cgw, backends, "/reloaded"))
    result = _reload_cli(cgw.path)
    assert result.returncode == 0, result.stderr
    assert "applied" in result.stdout
    assert _status(cgw, "/reloaded") == 200


def test_reload_command_exits_1_with_the_errors_when_rejected(
    cgw: Gateway, backends: BackendThread, tmp_path: Path
) -> None:
    config = _unbuildable(cgw, backends, tmp_path)
    cgw.write(config)
    result = _reload_cli(cgw.path)
    assert result.returncode == 1
    assert "rejected" in result.stderr
    assert "Traceback" not in result.stderr
    assert _status(cgw, "/never") == 404


def test_reload_command_with_an_invalid_file_prints_its_errors(cgw: Gateway) -> None:
    cgw.path.write_text("server:\n  max_body_size: lots\n")
    result = _reload_cli(cgw.path)
    assert result.returncode == 1
    assert f"{cgw.path}:2:" in result.stderr
    assert _status(cgw, "/api/users") == 200


def test_reload_command_without_a_running_gateway(backends: BackendThread, tmp_path: Path) -> None:
    config = _config(backends)
    config["admin"]["listen"] = f"127.0.0.1:{free_port()}"
    path = tmp_path / "aiogate.yaml"
    path.write_text(dump(config))
    result = _reload_cli(path)
    assert result.returncode == 1
    assert "cannot reach the gateway" in result.stderr


def test_reload_command_with_the_admin_api_off(backends: BackendThread, tmp_path: Path) -> None:
    path = tmp_path / "aiogate.yaml"
    path.write_text(dump(basic_config(backends)))
    result = _reload_cli(path)
    assert result.returncode == 1
    assert "admin API is off" in result.stderr


def test_reload_is_in_help() -> None:
    result = subprocess.run(
        [str(AIOGATE), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert "reload" in result.stdout
