"""A JSON-safe dump of the running config with every secret hidden (GET /admin/config).

Secrets are found by rule, not by listing fields, so a key added later is covered too:

- every ``SecretStr`` (tokens, the JWT secret, API keys), wherever it sits;
- a value whose key names a secret (``token``, ``password``, ``secret``, ``*_token`` ...);
- in any string that is a URL: its userinfo (``user:pass@``) and a ``password`` query value;
- in any header map (a mapping under ``headers`` or ``*_headers``): the values of credential
  headers (``Authorization``, ``Cookie``, ``Proxy-Authorization``, ``*-Key``, ``*-Token``,
  ``*-Secret``); the tracing exporter's headers are hidden whole, as before.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from pydantic import BaseModel, SecretStr

from ._observability import TracingConfig
from .model import GatewayConfig

__all__ = ["REDACTED", "is_credential_header", "redact_data", "redact_url", "redacted"]

REDACTED = "***redacted***"

_CREDENTIAL_HEADERS: Final = frozenset({"authorization", "cookie", "proxy-authorization"})
_CREDENTIAL_SUFFIXES: Final = ("-key", "-token", "-secret")
_SECRET_KEYS: Final = frozenset({"token", "password", "secret"})
_SECRET_KEY_SUFFIXES: Final = ("_token", "_password", "_secret")
# Header-named maps whose values are header *names*, not values: nothing to hide there.
_NAME_MAPS: Final = frozenset({"rename_headers"})


def redacted(cfg: GatewayConfig) -> dict[str, Any]:
    """The config as YAML-spelled plain data, with every secret replaced by ``REDACTED``.

    Walks the models itself instead of ``model_dump`` so that a secret can never leak through
    a serializer setting.
    """
    dumped = _dump(cfg)
    assert isinstance(dumped, dict)
    return dumped


def redact_data(value: Any) -> Any:
    """Plain config data (or a model) with the same rules applied: new keys are covered."""
    return _dump(value)


def is_credential_header(name: str) -> bool:
    """Whether a header's value is a credential (by its name, case-insensitive)."""
    lowered = name.lower()
    return lowered in _CREDENTIAL_HEADERS or lowered.endswith(_CREDENTIAL_SUFFIXES)


def redact_url(text: str) -> str:
    """``text`` with a URL's userinfo and ``password`` query values hidden; other text as is."""
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError:  # not a URL after all (an invalid IPv6 literal, say)
        return text
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    if query:
        query = "&".join(_redact_pair(pair) for pair in query.split("&"))
    if (netloc, query) == (parts.netloc, parts.query):
        return text
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _redact_pair(pair: str) -> str:
    name, eq, _ = pair.partition("=")
    if eq and unquote_plus(name).strip().lower() == "password":
        return f"{name}={REDACTED}"
    return pair


def _dump(value: Any, key: str = "") -> Any:
    if isinstance(value, SecretStr):
        return REDACTED
    if isinstance(value, TracingConfig):
        # Exporter headers carry a hosted collector's credentials: names only.
        return {**_dump_model(value), "headers": dict.fromkeys(value.headers, REDACTED)}
    if isinstance(value, BaseModel):
        return _dump_model(value)
    if isinstance(value, Mapping):
        return _dump_mapping(value, key)
    if isinstance(value, tuple | list):
        return [_dump(item, key) for item in value]
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, str):
        return redact_url(value)
    return value


def _dump_model(model: BaseModel) -> dict[str, Any]:
    # Use the YAML spelling (RouteAuth.types is `type:`) so the dump reads like the file.
    fields = type(model).model_fields.items()
    return _dump_mapping({info.alias or name: getattr(model, name) for name, info in fields})


def _dump_mapping(mapping: Mapping[Any, Any], key: str = "") -> dict[str, Any]:
    headers = _is_header_map(key)
    out: dict[str, Any] = {}
    for raw_name, item in mapping.items():
        name = str(raw_name)
        secret = _is_secret_key(name) or (headers and is_credential_header(name))
        # Only text is hidden by name: `forward_token: true` is a setting, not a secret, and an
        # absent or empty secret shows that it is not configured.
        out[name] = REDACTED if secret and isinstance(item, str) and item else _dump(item, name)
    return out


def _is_header_map(key: str) -> bool:
    return (key == "headers" or key.endswith("_headers")) and key not in _NAME_MAPS


def _is_secret_key(name: str) -> bool:
    lowered = name.lower()
    return lowered in _SECRET_KEYS or lowered.endswith(_SECRET_KEY_SUFFIXES)
