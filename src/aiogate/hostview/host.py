"""The supervisor's host view: one opinion per host about every backend (`workers > 1`).

The supervisor owns the one `StateRegistry` of the host (adopted across reloads as a Runtime's
is), runs the active health checks once, and judges every worker's attempt outcomes with the
host's breakers and passive checks. Each worker connects to a Unix socket in the supervisor's
private runtime folder; it gets a snapshot of every backend on connect and after each reload,
then one message per change (protocol.py). State-change events and the
`aiogate_backend_healthy` / `aiogate_circuit_state` gauges come from here only.

The supervisor sends no traffic, so two timed transitions that a serving process makes when it
next picks are made by a timer here: an open circuit becomes half-open when its timeout ends.
(An ejection ends by itself: workers got how long it lasts.)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final, cast

from .. import log
from ..config import GatewayConfig
from ..tasks import TaskSet
from ..upstream.backend import Backend
from ..upstream.breaker import CLOSED, OPEN
from ..upstream.health import HealthChecker
from ..upstream.pool import UpstreamPool
from ..upstream.state import StateRegistry
from .link import LINE_LIMIT
from .protocol import (
    BackendView,
    Failure,
    ProtocolError,
    Successes,
    decode,
    encode_snapshot,
    encode_state,
)

__all__ = ["HostView"]

#: A worker that lets this much of our messages pile up unread is cut off; it reconnects and
#: starts again from a snapshot rather than the supervisor buffering without bound.
_MAX_BUFFERED: Final = 4 * 1024 * 1024

Found = Mapping[str, tuple[tuple[str, int], ...]]


class HostView:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._generation = 0
        self._registry: StateRegistry | None = None
        self._pools: dict[str, UpstreamPool] = {}
        self._backends: dict[tuple[str, str], Backend] = {}
        self._checkers: list[HealthChecker] = []
        self._found: dict[str, tuple[tuple[str, int], ...]] = {}
        self._clients: set[asyncio.StreamWriter] = set()
        #: What each worker was last told of each backend (to send only what changed).
        self._sent: dict[tuple[str, str], tuple[bool, int, float, float]] = {}
        self._publish_handle: asyncio.Handle | None = None
        self._reopen_handle: asyncio.TimerHandle | None = None
        self._server: asyncio.AbstractServer | None = None
        self._retiring = TaskSet()
        self._log = log.get_logger("aiogate.hostview")

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self, config: GatewayConfig, found: Found | None = None) -> None:
        self.apply(config, found)
        self._server = await asyncio.start_unix_server(
            self._serve, path=str(self.socket_path), limit=LINE_LIMIT
        )
        os.chmod(self.socket_path, 0o600)  # the workers run as the supervisor's user

    def apply(self, config: GatewayConfig, found: Found | None = None) -> None:
        """Follow `config` (the accepted one, discovered backends merged in): states carry over
        for backends still configured, checks restart with the new settings, and every worker
        gets a snapshot (with the discovered backends, which its own config merges in)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._generation += 1
        registry = StateRegistry()
        registry.adopt(config.upstreams, config.circuit_breaker, self._registry, now)
        pools = {u.name: UpstreamPool(u, registry) for u in config.upstreams}
        checkers = [
            HealthChecker(pools[u.name], u.health_check, self._generation)
            for u in config.upstreams
            if u.health_check is not None
        ]
        for checker in checkers:
            checker.start()
        registry.commit(self._generation, now)
        old_checkers, old_pools = self._checkers, self._pools
        self._registry, self._pools, self._checkers = registry, pools, checkers
        self._backends = {(p.name, b.label): b for p in pools.values() for b in p.backends}
        if found is not None:
            self._found = dict(found)
        for state in registry.upstreams.values():
            state.listen(self._changed)
        self._retiring.spawn(_retire(old_checkers, old_pools), name="hostview-retire")
        self._broadcast(encode_snapshot(self._remember(now), self._found))
        self._schedule_reopen(now)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._clients):
            writer.close()
        self._clients.clear()
        for handle in (self._publish_handle, self._reopen_handle):
            if handle is not None:
                handle.cancel()
        await _retire(self._checkers, self._pools)
        await self._retiring.wait()
        with contextlib.suppress(OSError):
            self.socket_path.unlink()

    def drop_workers(self) -> None:
        """Close every worker's link (they reconnect): for tests of the worker's side."""
        for writer in list(self._clients):
            writer.close()

    # -- /admin/upstreams ----------------------------------------------------------------------
    def document(self) -> dict[str, object]:
        """The pools' snapshot, host-wide. In-flight counts, connections and latency belong to
        each worker's traffic, which the supervisor does not see: they are null here."""
        now = asyncio.get_running_loop().time()
        upstreams = []
        for pool in self._pools.values():
            snapshot = pool.snapshot(now)
            for backend in cast(list[dict[str, object]], snapshot["backends"]):
                backend.update(in_flight=None, connections=None, latency_ewma_ms=None)
            upstreams.append(snapshot)
        return {"host_view": {"workers_connected": len(self._clients)}, "upstreams": upstreams}

    # -- publishing ----------------------------------------------------------------------------
    def _views(self, now: float) -> list[BackendView]:
        views = []
        for (upstream, url), backend in self._backends.items():
            state = backend.state
            breaker = state.breaker
            circuit = breaker.state if breaker.config.enabled else CLOSED
            reopen_in = max(0.0, breaker.reopens_at() - now) if circuit == OPEN else 0.0
            ejected_for = max(0.0, state.ejected_until - now)
            views.append(BackendView(upstream, url, state.healthy, circuit, reopen_in, ejected_for))
        return views

    def _remember(self, now: float) -> tuple[BackendView, ...]:
        views = self._views(now)
        self._sent = {v.key: _signature(v, now) for v in views}
        return tuple(views)

    def _changed(self) -> None:
        """A backend's eligibility changed (health, circuit, ejection): publish soon, once for
        every change made in this turn of the loop."""
        if self._publish_handle is None:
            self._publish_handle = asyncio.get_running_loop().call_soon(self._publish)

    def _publish(self) -> None:
        self._publish_handle = None
        now = asyncio.get_running_loop().time()
        changed = []
        for view in self._views(now):
            signature = _signature(view, now)
            if self._sent.get(view.key) != signature:
                self._sent[view.key] = signature
                changed.append(view)
        if changed:
            self._broadcast(encode_state(tuple(changed)))
        self._schedule_reopen(now)

    def _schedule_reopen(self, now: float) -> None:
        """Wake up when the first open circuit's timeout ends (nobody picks here to notice)."""
        due = math.inf
        for backend in self._backends.values():
            breaker = backend.state.breaker
            if breaker.config.enabled and breaker.state == OPEN:
                due = min(due, breaker.reopens_at())
        if self._reopen_handle is not None:
            self._reopen_handle.cancel()
            self._reopen_handle = None
        if due < math.inf:
            loop = asyncio.get_running_loop()
            self._reopen_handle = loop.call_at(max(due, now), self._reopen)

    def _reopen(self) -> None:
        self._reopen_handle = None
        now = asyncio.get_running_loop().time()
        for backend in self._backends.values():
            breaker = backend.state.breaker
            if breaker.state == OPEN and breaker.reopens_at() <= now:
                breaker.available(now)  # open -> half-open: the state change publishes
        self._schedule_reopen(now)

    def _broadcast(self, line: bytes) -> None:
        for writer in list(self._clients):
            if writer.transport.get_write_buffer_size() > _MAX_BUFFERED:
                self._log.warning(log.HOST_VIEW_BAD_MESSAGE, reason="worker not reading")
                self._clients.discard(writer)
                writer.close()
                continue
            writer.write(line)

    # -- workers -------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        now = asyncio.get_running_loop().time()
        writer.write(encode_snapshot(tuple(self._views(now)), self._found))
        self._clients.add(writer)
        try:
            while line := await reader.readline():
                self._outcome(decode(line))
        except (OSError, ConnectionError):
            pass  # the worker went away
        except Exception as exc:  # a bad line, one beyond the limit
            self._log.warning(log.HOST_VIEW_BAD_MESSAGE, reason=f"{type(exc).__name__}: {exc}")
        finally:
            self._clients.discard(writer)
            writer.close()

    def _outcome(self, message: object) -> None:
        """A worker's attempt outcomes, judged by the host's breakers and passive checks."""
        now = asyncio.get_running_loop().time()
        if isinstance(message, Failure):
            backend = self._backends.get((message.upstream, message.backend))
            if backend is None:
                return  # a backend this config does not have (any more)
            state = backend.state
            state.breaker.record(False, now, message.probe)
            if message.passive:
                state.passive_failure(backend.upstream, now, backend.peers)
        elif isinstance(message, Successes):
            for upstream, url, count, probes in message.items:
                backend = self._backends.get((upstream, url))
                if backend is None:
                    continue
                state = backend.state
                breaker = state.breaker
                if count > probes:
                    breaker.record(True, now)  # resets a closed circuit's failure count
                for _ in range(probes):
                    breaker.record(True, now, probe=True)
                if state.passive_failures or state.ejections:
                    state.passive_success(now)
        else:
            raise ProtocolError(f"a worker sent {type(message).__name__}")


def _signature(view: BackendView, now: float) -> tuple[bool, int, float, float]:
    """What workers must be told again when it changes: health, circuit, and when an open
    circuit lets probes through and an ejection ends (absolute: a circuit that re-opens, or
    a backend ejected again, is news even when the state name is the same)."""
    reopens = round(now + view.reopen_in, 2) if view.circuit == OPEN else 0.0
    ejected = round(now + view.ejected_for, 2) if view.ejected_for > 0 else 0.0
    return view.healthy, view.circuit, reopens, ejected


async def _retire(checkers: list[HealthChecker], pools: dict[str, UpstreamPool]) -> None:
    for checker in checkers:
        await checker.stop()
    for pool in pools.values():
        await pool.close()
