"""A JSON-safe dump of the running config with every secret hidden (GET /admin/config)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

from ._observability import TracingConfig
from .model import GatewayConfig, RedisConfig

__all__ = ["REDACTED", "redacted"]

REDACTED = "***redacted***"


def redacted(cfg: GatewayConfig) -> dict[str, Any]:
    """The config as YAML-spelled plain data; secrets (tokens, JWT secret, API keys, a
    password in the Redis URL, tracing exporter header values) are replaced by ``REDACTED``.

    Walks the models itself instead of ``model_dump`` so that a secret can never leak through
    a serializer setting: every SecretStr is hidden by type, wherever it sits.
    """
    dumped = _dump(cfg)
    assert isinstance(dumped, dict)
    return dumped


def _dump(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, RedisConfig):
        return {**_dump_model(value), "url": _hide_password(value.url)}
    if isinstance(value, TracingConfig):
        # Exporter headers carry a hosted collector's credentials: names only.
        return {**_dump_model(value), "headers": dict.fromkeys(value.headers, REDACTED)}
    if isinstance(value, BaseModel):
        return _dump_model(value)
    if isinstance(value, Mapping):
        return {str(key): _dump(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [_dump(item) for item in value]
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    return value


def _dump_model(model: BaseModel) -> dict[str, Any]:
    # Use the YAML spelling (RouteAuth.types is `type:`) so the dump reads like the file.
    return {
        info.alias or name: _dump(getattr(model, name))
        for name, info in type(model).model_fields.items()
    }


def _hide_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{REDACTED}@{host}"))
