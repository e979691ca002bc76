"""The immutable per-config bundle: router, composed chains, upstream pools.

A reload builds a new Runtime beside the running one, swaps one reference, and closes the old
Runtime once the requests that started on it have finished. Nothing live is mutated.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiohttp import web

from .auth import AuthServices
from .cache import CachePlan
from .config import GatewayConfig
from .iprules import IpRulesPlan
from .metrics import RECORDER, set_build_info
from .netmatch import NetworkSet, parse_ip
from .ratelimit import RateLimitPlan
from .redisconn import make_redis
from .router import ConditionalRouter, Router
from .runtime_types import CompiledRoute
from .stages import Next
from .stages.auth import claim_header_names
from .stages.build import Services, build_chain
from .stages.routing import ConditionalRouting, Routing, rules
from .tracing import Tracing
from .upstream.health import HealthChecker
from .upstream.pool import UpstreamPool
from .upstream.retry import RetryBudget
from .upstream.state import StateRegistry

if TYPE_CHECKING:
    from .hostview.link import HostLink

__all__ = ["CompiledRoute", "Runtime", "RuntimeHolder"]

# Shared by every Runtime: the labelled metric children outlive a reload.
_RECORDER = RECORDER


class Runtime:
    """Everything a request needs, built from one validated config."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        generation: int = 1,
        previous: Runtime | None = None,
        host: HostLink | None = None,
    ) -> None:
        self.config = config
        self.generation = generation
        #: A worker's link to the supervisor's host view (`workers > 1`), handed on to every
        #: later Runtime: the host then checks health and judges outcomes, not this process.
        if host is None and previous is not None:
            host = previous.host
        self.host: HostLink | None = host
        self.recorder = _RECORDER
        set_build_info()
        #: None when tracing is off: then nothing on the request path touches OpenTelemetry.
        self.tracing = Tracing(config.tracing) if config.tracing.enabled else None
        try:
            self._build(config, previous)
        except BaseException:
            # A Runtime that cannot be built must not leave the exporter's thread behind.
            if self.tracing is not None:
                self.tracing.shutdown()
            raise

    def _build(self, config: GatewayConfig, previous: Runtime | None) -> None:
        generation = self.generation
        wrap = self.tracing.wrap_stage if self.tracing is not None else None
        #: Shared by every Redis-backed feature of this Runtime; None without `redis:`.
        self.redis = make_redis(config.redis) if config.redis is not None else None
        # What is known about backends (health, ejections, circuits) carries over a reload.
        self.upstream_states = StateRegistry(publish=self.host is None)
        self.upstream_states.adopt(
            config.upstreams,
            config.circuit_breaker,
            previous.upstream_states if previous is not None else None,
            _now(),
        )
        self.pools = {u.name: UpstreamPool(u, self.upstream_states) for u in config.upstreams}
        budgets = {u.name: RetryBudget.from_config(u.retries) for u in config.upstreams}
        self._health = [
            HealthChecker(self.pools[u.name], u.health_check, generation)
            for u in config.upstreams
            if u.health_check is not None and self.host is None
        ]
        #: Verifiers, the JWKS client and its refresh task (started and closed with us).
        self.auth: AuthServices = AuthServices(
            config.auth, redis=self.redis, previous=previous.auth if previous is not None else None
        )
        #: The limiter (local, or Redis with local fallback) and each route's limits.
        self.ratelimit = RateLimitPlan(config, self.redis)
        #: Global IP rules compiled once; each route's stage adds its own (None: no stage).
        self.ip_rules = IpRulesPlan(config.ip_rules)
        #: Response cache stores; a route whose cache settings are unchanged keeps its store.
        self.caches: CachePlan = CachePlan(
            config.routes, self.redis, previous.caches if previous is not None else None
        )
        services = Services(
            config=config,
            pools=self.pools,
            budgets=budgets,
            auth=self.auth,
            ratelimit=self.ratelimit,
            ip_rules=self.ip_rules,
            recorder=self.recorder,
            tracing=self.tracing,
            claim_headers=claim_header_names(config.auth),
            caches=self.caches,
        )
        routes: list[tuple[str, frozenset[str] | None, CompiledRoute]] = []
        for route in config.routes:
            handler = build_chain(route, services, wrap=wrap)
            has_cors = services.policy(route).cors is not None
            compiled = CompiledRoute(route.label, route, handler, cors=has_cors)
            methods = frozenset(route.methods) if route.methods is not None else None
            routes.append((route.path, methods, compiled))
        self.router: Router[CompiledRoute] | ConditionalRouter[CompiledRoute]
        self.entry: Next
        if any(route.hosts or route.headers for route in config.routes):
            self.router = ConditionalRouter(rules(routes))
            self.entry = ConditionalRouting(self.router)
        else:  # decided once: a table without hosts and headers matches path and method only
            self.router = Router(routes)
            self.entry = Routing(self.router)
        # The same matcher as the IP rules: one bisect instead of a scan per address.
        self._trusted = NetworkSet(config.server.trusted_proxies)
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start background work: auth refreshes, one health-check task per upstream.

        Last, with nothing left to fail, the adopted backend state goes live (metric series,
        revived backends, health-check ownership): a Runtime that fails to build or start
        leaves the running one's backend state untouched.
        """
        await self.auth.start()
        for checker in self._health:
            checker.start()
        await self.ratelimit.start()
        self.upstream_states.commit(self.generation, _now())
        if self.host is not None:
            self.host.attach(self.upstream_states)

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
        await self.auth.close()
        for checker in self._health:
            await checker.stop()
        for pool in self.pools.values():
            await pool.close()
        if self.redis is not None:
            await self.redis.aclose()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)

    def upstreams_snapshot(self) -> dict[str, object]:
        """`GET /admin/upstreams`: per upstream and backend, what the pool manager knows."""
        now = _now()
        return {
            "generation": self.generation,
            "upstreams": [pool.snapshot(now) for pool in self.pools.values()],
        }

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
            if parse_ip(hop) is None:
                # Not an address (`<script>`, `1.2.3.4;proto=https`, `unknown`): the chain
                # cannot be believed past it, so the client is the last hop reached. Its value
                # would otherwise be the rate-limit key, the IP-rules input and the log's IP.
                break
            client = hop
            if not self._is_trusted(hop):
                break
        return client, f"{incoming}, {peer}", True

    def _is_trusted(self, address: str) -> bool:
        return self._trusted.contains(address)


def _now() -> float:
    """The event loop's clock (the one the pools and breakers run on), if there is a loop."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class RuntimeHolder:
    """The one mutable reference: which Runtime new requests use."""

    __slots__ = ("current",)

    def __init__(self, runtime: Runtime) -> None:
        self.current = runtime
