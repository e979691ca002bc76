"""One backend of an upstream: its address, weight, connection pool and learnt state.

Pools (pool.py) choose among them; attempts (attempt.py) account each try to one.
"""

from __future__ import annotations

import ssl

from ..config import BackendConfig, UpstreamConfig
from .forward import ConnectionPool, Origin
from .state import BackendState

__all__ = ["Backend"]


class Backend:
    __slots__ = (
        "authority",
        "base_path",
        "base_weight",
        "config",
        "connections",
        "in_flight",
        "label",
        "peers",
        "state",
        "track_latency",
        "upstream",
        "weight",
    )

    def __init__(
        self,
        config: BackendConfig,
        upstream: UpstreamConfig,
        ssl_context: ssl.SSLContext | None,
        state: BackendState,
    ) -> None:
        self.config = config
        self.label = config.url
        self.base_weight: float = config.weight
        #: Effective weight: `base_weight`, less while slow start ramps it up.
        self.weight: float = config.weight
        self.authority = config.authority
        self.base_path = config.base_path
        self.in_flight = 0
        self.state = state
        # What an attempt's outcome needs to know of the upstream (attempt.py): its passive
        # check settings, how many backends the ejection cap applies to, and whether
        # `p2c_ewma` reads the latency estimate.
        self.upstream = upstream
        self.peers = len(upstream.backends)
        self.track_latency = upstream.strategy == "p2c_ewma"
        self.connections = ConnectionPool(
            Origin(config.scheme, config.host, config.port),
            max_idle=upstream.max_idle_connections,
            idle_timeout=upstream.keepalive_timeout,
            connect_timeout=upstream.connect_timeout,
            ssl_context=ssl_context if config.scheme == "https" else None,
            server_name=upstream.tls.server_name,
        )

    @property
    def ewma(self) -> float:
        return self.state.ewma
