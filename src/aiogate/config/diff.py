"""What a reload changed, for the `config_reloaded` log line."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .model import GatewayConfig

__all__ = ["diff_summary"]

# Sections compared as a whole; routes and upstreams are compared item by item.
_SECTIONS = ("server", "admin", "logging", "redis", "auth", "rate_limits", "circuit_breaker",
             "tracing", "ip_rules", "reload")  # fmt: skip


def _by_key(items: Iterable[Any], key: str) -> dict[str, Any]:
    return {str(getattr(item, key)): item for item in items}


def _compare(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[str]]:
    return {
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
        "changed": sorted(k for k in old.keys() & new.keys() if old[k] != new[k]),
    }


def diff_summary(old: GatewayConfig, new: GatewayConfig) -> dict[str, Any]:
    """Routes and upstreams added/removed/changed (by label/name), and other changed sections.

    Only names appear, never values: secrets must not reach the log.
    """
    return {
        "routes": _compare(_by_key(old.routes, "label"), _by_key(new.routes, "label")),
        "upstreams": _compare(_by_key(old.upstreams, "name"), _by_key(new.upstreams, "name")),
        "sections_changed": [s for s in _SECTIONS if getattr(old, s) != getattr(new, s)],
    }
