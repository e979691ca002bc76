"""The discovery seam: what a source of backends (etcd, Consul, ...) has to provide.

A source only knows how to reach its registry and turn what it finds into backend sets. The
shared loop around it (back-off with jitter, keeping the last known set while the source is
down, publishing changes, the `discovery_*` log events) is `runner.SourceRunner`; which source
a `discovery: {type: ...}` block gets is `registry.SOURCES`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from ..config import BackendConfig

__all__ = ["Backends", "Source", "SourceSettings"]

#: One discovered backend set, in a stable order (equal sets compare equal).
Backends = tuple[BackendConfig, ...]


class SourceSettings(Protocol):
    """The part of a `discovery:` block the shared loop reads (every source type has it)."""

    @property
    def type(self) -> str: ...
    @property
    def timeout(self) -> float: ...  # the most the gateway's start waits for a first read
    @property
    def debounce(self) -> float: ...
    @property
    def backoff(self) -> float: ...
    @property
    def max_backoff(self) -> float: ...


class Source(Protocol):
    """One upstream's registry; the runner iterates `watch()` and finally `close()`s it."""

    @property
    def endpoint(self) -> str:
        """Where the source is talking to now (logged with every connect and disconnect)."""
        ...

    def describe(self) -> Mapping[str, object]:
        """Extra fields of the `discovery_connected` line (the etcd source: prefix, revision)."""
        ...

    def watch(self) -> AsyncIterator[Backends]:
        """Yield the whole backend set: first after the initial read, then after each change.

        It ends only by raising (the link was lost): the runner backs off and iterates a new
        `watch()`, which must read everything again. Yielding an unchanged set is fine.
        """
        ...

    def failed(self, error: Exception) -> bool:
        """`watch()` raised `error`: True to retry at once, False to back off first.

        Also the place to switch to another endpoint before the next attempt.
        """
        ...

    async def close(self) -> None:
        """Release connections; called once, after the last `watch()`."""
        ...
