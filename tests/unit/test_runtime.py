"""runtime.client_address (trusted proxies), reload.restart_only_changes, stages.compose,
and the Reloader's swap/reject logic, without a network."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from multidict import CIMultiDict

from aiogate.config import GatewayConfig, load_config
from aiogate.context import RequestContext
from aiogate.reload import Reloader, restart_only_changes
from aiogate.runtime import Runtime, RuntimeHolder
from aiogate.stages import compose

BASE = """\
server:
  listen: "127.0.0.1:8080"
  trusted_proxies: {trusted}
upstreams:
  - name: u
    backends: [{{url: "http://127.0.0.1:9001"}}]
routes:
  - path: /api
    upstream: u
"""


def make_config(tmp_path: Path, text: str = "", trusted: str = "[]") -> GatewayConfig:
    path = tmp_path / f"c{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(BASE.format(trusted=trusted) + textwrap.dedent(text))
    return load_config(path, env={})


@pytest.fixture
async def runtime_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Runtime]]:
    made: list[Runtime] = []

    def factory(trusted: str = "[]") -> Runtime:
        runtime = Runtime(make_config(tmp_path, trusted=trusted))
        made.append(runtime)
        return runtime

    yield factory
    for runtime in made:
        await runtime.close()


def request(peer: str, *xff: str) -> Any:
    headers = CIMultiDict(("X-Forwarded-For", value) for value in xff)
    return SimpleNamespace(remote=peer, headers=headers)


# -- client_address -----------------------------------------------------------------------
async def test_without_trusted_proxies_the_peer_is_the_client(
    runtime_factory: Callable[..., Runtime],
) -> None:
    runtime = runtime_factory()
    client, xff, *_ = runtime.client_address(request("203.0.113.9", "1.2.3.4"))
    assert (client, xff) == ("203.0.113.9", "203.0.113.9")  # a spoofed XFF is dropped


async def test_an_untrusted_peer_cannot_spoof(runtime_factory: Callable[..., Runtime]) -> None:
    runtime = runtime_factory('["10.0.0.0/8"]')
    client, xff, *_ = runtime.client_address(request("203.0.113.9", "1.2.3.4"))
    assert (client, xff) == ("203.0.113.9", "203.0.113.9")


async def test_a_trusted_peer_is_believed(runtime_factory: Callable[..., Runtime]) -> None:
    runtime = runtime_factory('["10.0.0.0/8"]')
    client, xff, *_ = runtime.client_address(request("10.1.2.3", "198.51.100.7"))
    assert client == "198.51.100.7"
    assert xff == "198.51.100.7, 10.1.2.3"


async def test_trusted_hops_are_skipped_from_the_right(
    runtime_factory: Callable[..., Runtime],
) -> None:
    runtime = runtime_factory('["10.0.0.0/8", "192.168.0.0/16"]')
    # spoofed left part, then the real client, then two trusted proxies
    req = request("10.0.0.1", "6.6.6.6, 198.51.100.7, 192.168.1.1", "10.9.9.9")
    client, xff, *_ = runtime.client_address(req)
    assert client == "198.51.100.7"
    assert xff == "6.6.6.6, 198.51.100.7, 192.168.1.1, 10.9.9.9, 10.0.0.1"


async def test_trusted_peer_edge_cases(runtime_factory: Callable[..., Runtime]) -> None:
    runtime = runtime_factory('["10.0.0.0/8", "::1/128"]')
    # no XFF at all: the peer itself
    assert runtime.client_address(request("10.0.0.1"))[:2] == ("10.0.0.1", "10.0.0.1")
    # a chain of only trusted hops: the leftmost one
    assert runtime.client_address(request("10.0.0.1", "10.0.0.2"))[0] == "10.0.0.2"
    # garbage in the chain stops the walk: the last address reached is the client (garbage is
    # never the rate-limit key, the IP-rules input or the logged IP), and nothing crashes
    assert runtime.client_address(request("10.0.0.1", "not-an-ip"))[0] == "10.0.0.1"
    assert runtime.client_address(request("10.0.0.1", "<script>"))[0] == "10.0.0.1"
    assert runtime.client_address(request("10.0.0.1", "1.2.3.4;proto=https"))[0] == "10.0.0.1"
    assert runtime.client_address(request("10.0.0.1", "6.6.6.6, junk, 10.0.0.2"))[0] == "10.0.0.2"
    # empty hops are skipped
    assert runtime.client_address(request("10.0.0.1", "198.51.100.1, ,"))[0] == "198.51.100.1"
    # IPv6 peer in a trusted network
    assert runtime.client_address(request("::1", "2001:db8::5"))[0] == "2001:db8::5"
    # no peer (unix socket): empty, not a crash
    assert runtime.client_address(request("", "1.2.3.4"))[0] == ""


# -- restart_only_changes -----------------------------------------------------------------
def test_restart_only_changes(tmp_path: Path) -> None:
    old = make_config(tmp_path)
    assert restart_only_changes(old, make_config(tmp_path)) == []
    changed = make_config(
        tmp_path,
        text="""\
        admin:
          listen: "127.0.0.1:9999"
        """,
    )
    assert restart_only_changes(old, changed) == ["admin.listen"]
    path = tmp_path / "s.yaml"
    path.write_text(
        BASE.format(trusted="[]").replace(
            'listen: "127.0.0.1:8080"',
            'listen: "127.0.0.1:8081"\n  workers: 3\n  idle_timeout: 5s\n'
            "  max_header_size: 16KiB\n  max_headers: 50\n  shutdown_timeout: 1s",
        )
    )
    new = load_config(path, env={})
    assert restart_only_changes(old, new) == [
        "server.listen",
        "server.workers",
        "server.max_header_size",
        "server.max_headers",
        "server.idle_timeout",
    ]  # shutdown_timeout is not among them: a reload applies it


# -- compose ------------------------------------------------------------------------------
async def test_compose_runs_stages_in_order_around_the_terminal() -> None:
    calls: list[str] = []

    def stage(name: str) -> Any:
        async def run(ctx: RequestContext, call_next: Any) -> web.StreamResponse:
            calls.append(f"{name}>")
            response = await call_next(ctx)
            calls.append(f"<{name}")
            response.headers[f"X-{name}"] = "1"
            return response

        return run

    async def terminal(ctx: RequestContext) -> web.StreamResponse:
        calls.append("terminal")
        return web.Response(text="ok")

    handler = compose([stage("a"), stage("b")], terminal)
    response = await handler(SimpleNamespace())  # type: ignore[arg-type]
    assert calls == ["a>", "b>", "terminal", "<b", "<a"]
    assert response.headers["X-a"] == response.headers["X-b"] == "1"
    assert compose([], terminal) is terminal


async def test_a_stage_can_short_circuit() -> None:
    async def deny(ctx: RequestContext, call_next: Any) -> web.StreamResponse:
        return web.Response(status=403)

    async def terminal(ctx: RequestContext) -> web.StreamResponse:  # pragma: no cover
        raise AssertionError("must not be reached")

    response = await compose([deny], terminal)(SimpleNamespace())  # type: ignore[arg-type]
    assert response.status == 403


# -- Reloader -----------------------------------------------------------------------------
async def test_reloader_swaps_and_rejects(tmp_path: Path) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(BASE.format(trusted="[]"))
    holder = RuntimeHolder(Runtime(load_config(path, env={})))
    first = holder.current
    reloader = Reloader(path, holder)

    path.write_text(BASE.format(trusted="[]") + "  - {path: /more, upstream: u}\n")
    outcome = await reloader.reload()
    assert outcome.applied
    assert outcome.generation == 2
    assert holder.current is not first
    assert len(holder.current.config.routes) == 2

    path.write_text("server: {workers: -1}\nbogus: 1\n")
    outcome = await reloader.reload()
    assert not outcome.applied
    assert outcome.generation == 2
    assert len(outcome.errors) == 2
    assert all(error.startswith(f"{path}:") for error in outcome.errors)
    assert holder.current.generation == 2

    await reloader.close()  # the replaced runtime drained (nothing in flight) and closed
    await holder.current.close()


async def test_runtime_drain_waits_for_in_flight(tmp_path: Path) -> None:
    runtime = Runtime(make_config(tmp_path))
    assert await runtime.drain(0.01)
    runtime.enter()
    assert runtime.in_flight == 1
    assert not await runtime.drain(0.05)
    runtime.leave()
    assert await runtime.drain(0.01)
    await runtime.close()


async def test_a_runtime_that_fails_to_start_is_rejected_and_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "live.yaml"
    path.write_text(BASE.format(trusted="[]"))
    first = Runtime(load_config(path, env={}))
    await first.start()
    holder = RuntimeHolder(first)
    reloader = Reloader(path, holder)
    closed: list[int] = []
    real_start, real_close = Runtime.start, Runtime.close

    async def failing_start(self: Runtime) -> None:
        await real_start(self)  # takes over the shared backend state, then fails
        raise RuntimeError("cannot start")

    async def recording_close(self: Runtime) -> None:
        closed.append(self.generation)
        await real_close(self)

    monkeypatch.setattr(Runtime, "start", failing_start)
    monkeypatch.setattr(Runtime, "close", recording_close)
    outcome = await reloader.reload()
    assert not outcome.applied
    assert outcome.errors == (f"{path}: cannot start",)
    assert holder.current is first
    assert closed == [2]  # the half-started Runtime was closed, the running one was not
    owners = {
        entry.check_owner
        for state in first.upstream_states.upstreams.values()
        for entry in state.backends.values()
    }
    assert owners == {first.generation}  # its health checks record verdicts again
    monkeypatch.undo()
    await reloader.close()
    await first.close()
