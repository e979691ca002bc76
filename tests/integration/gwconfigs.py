"""Gateway configs shared by the integration tests (import from here, not from conftest:
several test folders have a conftest.py, and `import conftest` finds whichever is first)."""

from __future__ import annotations

from typing import Any

from backend import BackendThread

__all__ = ["basic_config", "wide_config"]


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
