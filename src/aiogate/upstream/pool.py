"""Upstream pools: the backends of one upstream, a strategy, and a connection pool each."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from ..config import BackendConfig, UpstreamConfig, UpstreamTlsConfig
from .balance import Strategy, make_strategy
from .forward import ConnectionPool, Origin

__all__ = ["Backend", "NoBackendAvailable", "UpstreamPool"]


class NoBackendAvailable(Exception):
    """Every backend of the upstream is out of rotation."""


class Backend:
    __slots__ = ("authority", "base_path", "config", "connections", "in_flight", "label", "weight")

    def __init__(
        self,
        config: BackendConfig,
        upstream: UpstreamConfig,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self.config = config
        self.label = config.url
        self.weight = config.weight
        self.authority = config.authority
        self.base_path = config.base_path
        self.in_flight = 0
        self.connections = ConnectionPool(
            Origin(config.scheme, config.host, config.port),
            max_idle=upstream.max_idle_connections,
            idle_timeout=upstream.keepalive_timeout,
            connect_timeout=upstream.connect_timeout,
            ssl_context=ssl_context if config.scheme == "https" else None,
            server_name=upstream.tls.server_name,
        )


class UpstreamPool:
    __slots__ = ("_strategy", "backends", "config", "name")

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.name = config.name
        context = _ssl_context(config.tls) if any(
            b.scheme == "https" for b in config.backends
        ) else None  # fmt: skip
        self.backends: Sequence[Backend] = tuple(
            Backend(b, config, context) for b in config.backends
        )
        self._strategy: Strategy = make_strategy(config.strategy)

    def pick(self, client_ip: str) -> Backend:
        if not self.backends:
            raise NoBackendAvailable(self.name)
        return self._strategy.pick(self.backends, client_ip)

    async def close(self) -> None:
        for backend in self.backends:
            await backend.connections.close()


def _ssl_context(tls: UpstreamTlsConfig) -> ssl.SSLContext:
    """One context per upstream: building it loads the trust store, so never per connection."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
