"""Which implementation a `discovery: {type: ...}` block runs: one entry per source type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from .consul import ConsulSource
from .etcd_source import EtcdSource
from .source import Source, SourceSettings

__all__ = ["SOURCES", "make_source"]

#: type -> factory(upstream name, that type's config model) -> Source.
SOURCES: Final[dict[str, Callable[[str, Any], Source]]] = {
    "etcd": EtcdSource,
    "consul": ConsulSource,
}


def make_source(upstream: str, settings: SourceSettings) -> Source:
    # The config's union only admits registered types, so the lookup cannot miss.
    return SOURCES[settings.type](upstream, settings)
