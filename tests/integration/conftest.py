from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from backend import BackendThread
from gateway import Gateway


@pytest.fixture(scope="session")
def backends() -> Iterator[BackendThread]:
    thread = BackendThread(["backend-1", "backend-2"])
    thread.start()
    yield thread
    thread.stop()


def basic_config(backends: BackendThread, **extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "logging": {"level": "info"},
        "upstreams": [
            {"name": "user-service", "backends": [{"url": backends.url("backend-1")}]},
            {"name": "order-service", "backends": [{"url": backends.url("backend-2")}]},
        ],
        "routes": [
            {"path": "/api/users", "methods": ["GET", "POST", "PUT", "DELETE", "HEAD"],
             "upstream": "user-service"},
            {"path": "/api/orders", "upstreams": "order-service"},
            {"path": "/api/orders/{id}/items", "methods": ["GET"], "upstream": "user-service",
             "name": "order-items"},
            {"path": "/t", "upstream": "user-service", "name": "testing"},
        ],
    }  # fmt: skip
    config.update(extra)
    return config


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def factory(config: dict[str, Any], env: dict[str, str] | None = None) -> Gateway:
        sub = tmp_path / f"gw{len(started)}"
        sub.mkdir()
        gateway = Gateway(config, sub, env).start()
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One shared gateway for the read-only behaviour tests of a module."""
    gw = Gateway(basic_config(backends), tmp_path_factory.mktemp("gw")).start()
    yield gw
    gw.stop()


# -- serving-behaviour tests (routing, fidelity, limits, smuggling, errors) -------------------


@pytest.fixture(scope="session")
def raw_backend() -> Iterator[Any]:
    """A socket-level backend recording the exact request bytes (see rawbackend.py)."""
    from rawbackend import RawBackend

    server = RawBackend().start()
    yield server
    server.stop()


def wide_config(
    backends: BackendThread, raw_url: str | None = None, **server: Any
) -> dict[str, Any]:
    """basic_config plus a catch-all `/` route to backend-1 (so /cookies, /gzip, /upload...
    are reachable) and, with `raw_url`, `/raw` to the raw backend. `server` keys go to server:."""
    config = basic_config(backends)
    config["routes"] = [
        *config["routes"],
        {"path": "/", "upstream": "user-service", "name": "root"},
    ]
    if raw_url is not None:
        config["upstreams"] = [
            *config["upstreams"],
            {"name": "raw", "backends": [{"url": raw_url}]},
        ]
        config["routes"] = [*config["routes"], {"path": "/raw", "upstream": "raw", "name": "raw"}]
    if server:
        config["server"] = dict(server)
    return config
