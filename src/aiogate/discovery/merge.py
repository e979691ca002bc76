"""Pure functions: an etcd value -> a backend; a file config + discovered backends -> a config.

The merged config is an ordinary immutable `GatewayConfig`, so a Runtime built from it is no
different from one built from a file, and backend state carries over by URL as on any reload.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from pydantic import ValidationError

from ..config import BackendConfig, GatewayConfig, UpstreamConfig

__all__ = ["BadValue", "backend_key", "merge", "parse_backend"]


class BadValue(ValueError):
    """A registration that is not a backend; it is logged and skipped, never fatal."""


def parse_backend(value: bytes) -> BackendConfig:
    """`http://10.0.0.5:8080` or `{"url": "http://10.0.0.5:8080", "weight": 2}`.

    Other keys of the JSON object (ids, tags, metadata registrars like to add) are ignored.
    """
    try:
        text = value.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise BadValue(f"not UTF-8: {exc}") from None
    if not text:
        raise BadValue("empty value")
    data: object
    if text.startswith(("{", '"', "[")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise BadValue(f"invalid JSON: {exc}") from None
        if isinstance(data, str):
            data = {"url": data}
        elif isinstance(data, dict):
            if "url" not in data:
                raise BadValue("JSON object without a 'url'")
            data = {k: data[k] for k in ("url", "weight") if k in data}
        else:
            raise BadValue("expected a URL or a JSON object with 'url'")
    else:
        data = {"url": text}
    try:
        return BackendConfig.model_validate(data)
    except ValidationError as exc:
        raise BadValue("; ".join(_reason(e) for e in exc.errors())) from None


def _reason(error: Mapping[str, object]) -> str:
    ctx = error.get("ctx")
    if isinstance(ctx, dict) and "message" in ctx:
        return str(ctx["message"])
    loc = ".".join(str(part) for part in error.get("loc", ()))  # type: ignore[attr-defined]
    return f"{loc}: {error.get('msg')}" if loc else str(error.get("msg"))


def backend_key(backend: BackendConfig) -> tuple[str, str, str]:
    """What makes two backends the same one (as the config's duplicate check sees it)."""
    return (backend.scheme, backend.authority, backend.base_path)


def merge_backends(
    static: Sequence[BackendConfig], found: Iterable[BackendConfig]
) -> tuple[BackendConfig, ...]:
    """Static backends first, then discovered ones not already among them."""
    seen = {backend_key(b) for b in static}
    out = list(static)
    for backend in found:
        key = backend_key(backend)
        if key not in seen:
            seen.add(key)
            out.append(backend)
    return tuple(out)


def merge(config: GatewayConfig, found: Mapping[str, Sequence[BackendConfig]]) -> GatewayConfig:
    """`config` with each discovering upstream's backends extended by `found[upstream]`.

    Returns `config` itself when nothing changes (so "no change" is cheap to detect).
    """
    upstreams: list[UpstreamConfig] = []
    changed = False
    for upstream in config.upstreams:
        extra = found.get(upstream.name, ()) if upstream.discovery is not None else ()
        backends = merge_backends(upstream.backends, extra)
        if len(backends) == len(upstream.backends):
            upstreams.append(upstream)
            continue
        changed = True
        upstreams.append(upstream.model_copy(update={"backends": backends}))
    if not changed:
        return config
    # Validated (not copied) so that derived lookups such as upstream_by_name are rebuilt;
    # the sections are already models, which pydantic takes as they are.
    fields = {name: getattr(config, name) for name in type(config).model_fields}
    fields["upstreams"] = tuple(upstreams)
    return GatewayConfig.model_validate(fields)
