"""The host view (workers > 1): its wire protocol, a worker following the host's state, and
the supervisor and a worker talking over a real Unix socket (reconnect included)."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from aiogate import log
from aiogate.config import CircuitBreakerConfig, GatewayConfig, UpstreamConfig, load_config
from aiogate.hostview.host import HostView
from aiogate.hostview.link import HostLink
from aiogate.hostview.protocol import (
    VERSION,
    BackendView,
    Failure,
    ProtocolError,
    Snapshot,
    StateChange,
    Successes,
    decode,
    encode_failure,
    encode_snapshot,
    encode_state,
    encode_successes,
)
from aiogate.upstream.breaker import CLOSED, HALF_OPEN, OPEN
from aiogate.upstream.pool import UpstreamPool
from aiogate.upstream.state import BackendState, StateRegistry

A, B = "http://127.0.0.1:9001", "http://127.0.0.1:9002"


@pytest.fixture(autouse=True)
def _quiet_log(tmp_path: Path) -> Iterator[None]:
    with (tmp_path / "log").open("w+") as stream:
        log.configure(stream=stream)
        yield
        log.flush()
    log.configure(stream=sys.__stdout__)


# -- protocol ----------------------------------------------------------------------------------
def test_every_message_survives_a_round_trip() -> None:
    views = (
        BackendView("u", A, True, CLOSED),
        BackendView("u", B, False, OPEN, reopen_in=12.5, ejected_for=3.25),
    )
    found: dict[str, tuple[tuple[str, int], ...]] = {"u": ((A, 1), (B, 3))}
    assert decode(encode_snapshot(views, found)) == Snapshot(views, found)
    assert decode(encode_state(views[1:])) == StateChange(views[1:])
    items = [("u", A, 7, 2)]
    assert decode(encode_successes(items)) == Successes(tuple(items))
    assert decode(encode_failure("u", B, probe=True, passive=False)) == Failure("u", B, True, False)


def test_each_message_is_one_line() -> None:
    line = encode_snapshot((BackendView("u", "http://x\n", True, HALF_OPEN),), {})
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1


@pytest.mark.parametrize(
    "line",
    [
        b"not json\n",
        b"[1, 2]\n",
        b'{"t": "bogus"}\n',
        b'{"t": "fail", "u": "u"}\n',
        b'{"t": "snapshot", "v": 99, "backends": [], "found": {}}\n',
        b'{"t": "state", "backends": [{"u": "u", "b": "x", "healthy": true, "circuit": "ajar"}]}\n',
        b'{"t": "ok", "items": [["u", "x", "many", 0]]}\n',
    ],
)
def test_anything_else_is_a_protocol_error(line: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode(line)


def test_the_snapshot_names_its_version() -> None:
    assert f'"v":{VERSION}'.encode() in encode_snapshot((), {})


# -- a worker's state follows the host ---------------------------------------------------------
def _registry(publish: bool = False, **breaker: object) -> StateRegistry:
    config = UpstreamConfig.model_validate({"name": "u", "backends": [{"url": A}, {"url": B}]})
    registry = StateRegistry(publish=publish)
    registry.adopt([config], CircuitBreakerConfig.model_validate(breaker), None, 0.0)
    registry.commit(1, 0.0)
    return registry


def _entry(registry: StateRegistry, url: str = B) -> BackendState:
    return registry.upstreams["u"].backends[url]


def test_following_changes_health_circuit_and_ejection() -> None:
    registry = _registry(timeout=30)
    entry = _entry(registry)
    version = registry.upstreams["u"].version
    entry.follow(False, CLOSED, 0.0, 0.0, now=100.0)
    assert entry.healthy is False
    assert registry.upstreams["u"].version > version
    entry.follow(True, OPEN, 10.0, 5.0, now=100.0)
    entry = _entry(registry)  # (mypy keeps the narrowing above across the call)
    assert entry.healthy
    assert entry.recovered_at == 100.0
    assert entry.ejected_until == 105.0
    breaker = entry.breaker
    assert breaker.state == OPEN
    assert not breaker.available(109.9)
    assert breaker.available(110.0)  # the host's timeout, on the worker's own clock
    assert breaker.state == HALF_OPEN
    entry.follow(True, CLOSED, 0.0, 0.0, now=111.0)
    assert breaker.state == CLOSED
    assert entry.ejected_until == 0.0


def test_following_the_same_state_changes_nothing() -> None:
    registry = _registry()
    entry = _entry(registry)
    version = registry.upstreams["u"].version
    entry.follow(True, CLOSED, 0.0, 0.0, now=5.0)
    assert registry.upstreams["u"].version == version


class _Reports:
    def __init__(self) -> None:
        self.seen: list[tuple[str, bool, bool]] = []

    def success(self, state: BackendState, probe: bool) -> None:
        self.seen.append(("ok", probe, False))

    def failure(self, state: BackendState, probe: bool, passive: bool) -> None:
        self.seen.append(("fail", probe, passive))


async def test_a_reporting_worker_reports_verdicts_instead_of_judging_them() -> None:
    config = UpstreamConfig.model_validate({"name": "u", "backends": [{"url": A}]})
    registry = StateRegistry(publish=False)
    registry.adopt([config], CircuitBreakerConfig(failure_threshold=1), None, 0.0)
    registry.commit(1, 0.0)
    pool = UpstreamPool(config, registry)
    reports = _Reports()
    state = pool.backends[0].state
    state.reporter = reports
    for _ in range(3):
        with pool.pick("", 1.0) as attempt:
            attempt.failed(1.0)
    assert state.breaker.state == CLOSED  # the host decides, not this worker
    state.follow(True, HALF_OPEN, 0.0, 0.0, now=2.0)
    with pool.pick("", 2.0) as attempt:
        assert state.breaker.probes == 1
        attempt.succeeded(2.0, 0.01)
        assert state.breaker.probes == 0  # the slot is free again at once
    assert reports.seen == [("fail", False, True)] * 3 + [("ok", True, False)]
    await pool.close()


# -- supervisor and worker over the socket -----------------------------------------------------
def _gateway_config(tmp_path: Path, threshold: int = 3) -> GatewayConfig:
    path = tmp_path / "gw.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        circuit_breaker: {{failure_threshold: {threshold}, timeout: 30s}}
        upstreams:
          - name: u
            backends: [{{url: "{A}"}}, {{url: "{B}"}}]
            passive_health_check: {{consecutive_failures: 2, ejection_time: 20s}}
        routes:
          - path: /api
            upstream: u
        """)
    )
    return load_config(path, env={})


async def _until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within 5 s: {what}")


def _host_backends(host: HostView) -> list[dict[str, Any]]:
    (pool,) = cast(list[dict[str, Any]], host.document()["upstreams"])
    return cast(list[dict[str, Any]], pool["backends"])


@pytest.fixture
async def linked(tmp_path: Path) -> AsyncIterator[tuple[HostView, HostLink, StateRegistry]]:
    config = _gateway_config(tmp_path)
    host = HostView(tmp_path / "host.sock")
    await host.start(config)
    found: list[object] = []
    link = HostLink(str(host.socket_path), on_found=found.append)
    worker = StateRegistry(publish=False)
    worker.adopt(config.upstreams, config.circuit_breaker, None, 0.0)
    worker.commit(1, 0.0)
    link.attach(worker)
    link.start()
    assert await link.first_snapshot(5)
    assert found == [{}]
    await _until(lambda: _entry(worker).reporter is link, "reporting to the host")
    yield host, link, worker
    await link.close()
    await host.close()


async def test_failures_from_a_worker_open_the_hosts_breaker_and_the_worker_follows(
    linked: tuple[HostView, HostLink, StateRegistry],
) -> None:
    host, link, worker = linked
    entry = _entry(worker)
    for _ in range(3):
        link.failure(entry, probe=False, passive=True)
    await _until(lambda: entry.breaker.state == OPEN, "the worker follows the host's circuit")
    backends = _host_backends(host)
    assert [b["circuit"] for b in backends] == ["closed", "open"]
    assert entry.breaker.opened_at + 30 > asyncio.get_running_loop().time() + 29


async def test_passive_failures_reported_by_a_worker_eject_the_backend_host_wide(
    linked: tuple[HostView, HostLink, StateRegistry],
) -> None:
    host, link, worker = linked
    entry = _entry(worker)
    link.failure(entry, probe=False, passive=False)  # a breaker failure only
    link.failure(entry, probe=False, passive=True)
    await asyncio.sleep(0.2)
    assert _host_backends(host)[1]["ejected"] is False
    link.failure(entry, probe=False, passive=True)
    now = asyncio.get_running_loop().time()
    await _until(lambda: entry.ejected_until > now + 19, "the worker follows the ejection")
    assert _host_backends(host)[1]["ejected"] is True
    assert entry.breaker.state == OPEN  # the third failure also reached the threshold


async def test_a_success_between_failures_resets_the_count_in_order(
    linked: tuple[HostView, HostLink, StateRegistry],
) -> None:
    host, link, worker = linked
    entry = _entry(worker)
    link.failure(entry, probe=False, passive=True)
    link.failure(entry, probe=False, passive=True)
    link.success(entry, probe=False)  # buffered, but sent before the next failure
    link.failure(entry, probe=False, passive=True)
    await asyncio.sleep(0.3)
    backends = _host_backends(host)
    assert backends[1]["circuit"] == "closed"
    assert backends[1]["circuit_failures"] == 1


async def test_a_dropped_link_reconnects_and_reporting_stops_meanwhile(
    linked: tuple[HostView, HostLink, StateRegistry],
) -> None:
    host, link, worker = linked
    entry = _entry(worker)
    host.drop_workers()
    await _until(lambda: entry.reporter is None, "judging locally while the link is down")
    await _until(lambda: link.connects == 2 and link.connected, "reconnected")
    await _until(lambda: entry.reporter is link, "reporting again")
    for _ in range(3):
        link.failure(entry, probe=False, passive=True)
    await _until(lambda: entry.breaker.state == OPEN, "the host's verdict after the reconnect")


async def test_a_reload_on_the_host_sends_a_snapshot_that_keeps_the_state(
    linked: tuple[HostView, HostLink, StateRegistry], tmp_path: Path
) -> None:
    host, link, worker = linked
    entry = _entry(worker)
    for _ in range(3):
        link.failure(entry, probe=False, passive=True)
    await _until(lambda: entry.breaker.state == OPEN, "open")
    host.apply(_gateway_config(tmp_path))  # same breaker settings: the state carries over
    # A new worker Runtime (its own reload) adopts nothing yet: the link gives it the state.
    fresh = StateRegistry(publish=False)
    config = _gateway_config(tmp_path)
    fresh.adopt(config.upstreams, config.circuit_breaker, None, 0.0)
    fresh.commit(2, 0.0)
    link.attach(fresh)
    assert _entry(fresh).breaker.state == OPEN
    assert _entry(fresh).reporter is link
    backends = _host_backends(host)
    assert backends[1]["circuit"] == "open"


async def test_a_link_drops_a_line_it_cannot_read_and_reconnects(tmp_path: Path) -> None:
    """A wrong version (or garbage) is never acted on: the worker reconnects, and the next
    connection's snapshot is applied."""
    lines = [b'{"t": "snapshot", "v": 99, "backends": [], "found": {}}\n', b"garbage\n"]
    good = BackendView("u", B, False, CLOSED)
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.write(lines.pop(0) if lines else encode_snapshot((good,), {}))
        await reader.read()  # until the worker hangs up
        writer.close()

    path = tmp_path / "fake.sock"
    server = await asyncio.start_unix_server(serve, path=str(path))
    link = HostLink(str(path))
    worker = _registry()
    link.attach(worker)
    link.start()
    try:
        assert await link.first_snapshot(5)
        assert connections == 3
        assert link.connects == 1
        assert _entry(worker).healthy is False
    finally:
        await link.close()
        server.close()
