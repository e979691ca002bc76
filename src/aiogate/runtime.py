"""The immutable per-config bundle: router, composed chains, upstream pools.

A reload builds a new Runtime beside the running one, swaps one reference, and closes the old
Runtime once the requests that started on it have finished. Nothing live is mutated.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from ipaddress import IPv4Network, IPv6Network

from aiohttp import web

from .config import GatewayConfig
from .metrics import RequestRecorder
from .redisconn import make_redis
from .router import Router
from .runtime_types import CompiledRoute
from .stages import Next, Stage, compose
from .stages.proxy import Proxy
from .stages.routing import Routing
from .upstream.pool import UpstreamPool

__all__ = ["CompiledRoute", "Runtime", "RuntimeHolder"]

# Shared by every Runtime: the labelled metric children outlive a reload.
_RECORDER = RequestRecorder()


class Runtime:
    """Everything a request needs, built from one validated config."""

    def __init__(self, config: GatewayConfig, *, generation: int = 1) -> None:
        self.config = config
        self.generation = generation
        self.recorder = _RECORDER
        #: Shared by every Redis-backed feature of this Runtime; None without `redis:`.
        self.redis = make_redis(config.redis) if config.redis is not None else None
        self.pools = {u.name: UpstreamPool(u) for u in config.upstreams}
        routes: list[tuple[str, frozenset[str] | None, CompiledRoute]] = []
        for route in config.routes:
            pool = self.pools[route.upstream]
            terminal = Proxy(
                pool,
                timeout=route.timeout if route.timeout is not None else pool.config.timeout,
                max_body_size=config.server.max_body_size,
                recorder=self.recorder,
            )
            stages: list[Stage] = []
            compiled = CompiledRoute(route.label, route, compose(stages, terminal))
            methods = frozenset(route.methods) if route.methods is not None else None
            routes.append((route.path, methods, compiled))
        self.router: Router[CompiledRoute] = Router(routes)
        self.entry: Next = Routing(self.router)
        self._trusted: Sequence[IPv4Network | IPv6Network] = config.server.trusted_proxies
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start background work (health checks arrive with the pool manager)."""

    def enter(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def drain(self, grace: float) -> bool:
        """Wait until no request runs on this Runtime; False if `grace` seconds passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()
        if self.redis is not None:
            await self.redis.aclose()

    # -- per request -----------------------------------------------------------------------
    def client_address(self, request: web.BaseRequest) -> tuple[str, str, bool]:
        """(client IP, X-Forwarded-For to send upstream, whether the peer is a trusted proxy).

        The socket peer is the client unless the peer is a trusted proxy; then the chain in
        X-Forwarded-For is walked from the right, skipping trusted hops, and the first address
        not trusted is the client. An untrusted peer's X-Forwarded-For is discarded entirely.
        """
        peer = request.remote or ""
        if not self._trusted or not self._is_trusted(peer):
            return peer, peer, False
        incoming = ", ".join(request.headers.getall("X-Forwarded-For", ()))
        if not incoming:
            return peer, peer, True
        client = peer
        for hop in reversed([h.strip() for h in incoming.split(",")]):
            if not hop:
                continue
            client = hop
            if not self._is_trusted(hop):
                break
        return client, f"{incoming}, {peer}", True

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)


class RuntimeHolder:
    """The one mutable reference: which Runtime new requests use."""

    __slots__ = ("current",)

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime
