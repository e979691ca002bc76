"""StateRegistry across a reload: a rejected reload changes nothing the running Runtime sees
(breakers, health, metric series); an applied one carries the learnt state over."""

from __future__ import annotations

import tempfile
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from aiogate.config import CircuitBreakerConfig, GatewayConfig, load_config
from aiogate.ratelimit import RateLimitPlan
from aiogate.reload import Reloader
from aiogate.runtime import Runtime, RuntimeHolder
from aiogate.upstream.attempt import Attempt
from aiogate.upstream.breaker import CLOSED, OPEN
from aiogate.upstream.state import BackendState, StateRegistry

UP = "state-reload"  # an upstream name of this module's own: metric series are global
A, B, C = "http://127.0.0.1:9101", "http://127.0.0.1:9102", "http://127.0.0.1:9103"

RUNNING = f"""\
upstreams:
  - name: {UP}
    backends: [{{url: "{A}"}}, {{url: "{B}"}}, {{url: "{C}"}}]
    circuit_breaker: {{failure_threshold: 1, timeout: 1h}}
    health_check: {{type: tcp, interval: 1h, unhealthy_threshold: 1}}
routes:
  - path: /api
    upstream: {UP}
"""

# Every change adopt used to make in place: other breaker settings (A's open circuit would be
# replaced by a closed one), no health_check (B would be marked healthy), C dropped (its
# series would be removed).
CHANGED = f"""\
upstreams:
  - name: {UP}
    backends: [{{url: "{A}"}}, {{url: "{B}"}}]
    circuit_breaker: {{failure_threshold: 7, timeout: 1h}}
routes:
  - path: /api
    upstream: {UP}
"""


def gauge(name: str, backend: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"upstream": UP, "backend": backend})


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[tuple[Path, RuntimeHolder, Reloader]]:
    path = tmp_path / "gateway.yaml"
    path.write_text(RUNNING)
    first = Runtime(load_config(path, env={}))
    await first.start()
    # The health-check task's first probe (after a short jitter) would find nothing listening
    # and mark A unhealthy at a moment that depends on the machine's load: this module is
    # about what a reload changes, so no probe may run meanwhile.
    for checker in first._health:
        await checker.stop()
    holder = RuntimeHolder(first)
    reloader = Reloader(path, holder)
    pool = first.pools[UP]
    a = pool.backends[0]
    with Attempt(a) as attempt:
        attempt.failed(now=1.0)  # A's circuit opens
    pool.backends[1].state.check_result(False, "down", 1, 1, now=1.0)  # B goes unhealthy
    yield path, holder, reloader
    await reloader.close()
    await holder.current.close()


def snapshot(runtime: Runtime) -> dict[str, tuple[BackendState, object, bool, int, bool]]:
    state = runtime.upstream_states.upstreams[UP]
    return {
        url: (entry, entry.breaker, entry.healthy, entry.check_owner, getattr(entry, "live", True))
        for url, entry in state.backends.items()
    }


@pytest.mark.parametrize("failure", ["invalid_ca_file", "build_step", "start"])
async def test_a_rejected_reload_leaves_the_running_backend_state_as_it_was(
    running: tuple[Path, RuntimeHolder, Reloader],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
) -> None:
    path, holder, reloader = running
    first = holder.current
    before = snapshot(first)
    assert before[A][1].state == OPEN  # type: ignore[attr-defined]
    assert not before[B][2]
    gauges = {url: (gauge("aiogate_circuit_state", url), gauge("aiogate_backend_healthy", url))
              for url in (A, B, C)}  # fmt: skip
    assert gauges == {A: (2.0, 1.0), B: (0.0, 0.0), C: (0.0, 1.0)}
    version = first.upstream_states.upstreams[UP].version

    if failure == "invalid_ca_file":
        # Passes validation (a readable file) but is no PEM bundle: the pool build raises.
        bad_ca = tmp_path / "ca.pem"
        bad_ca.write_text("not a certificate\n")
        path.write_text(
            CHANGED.replace(
                f'[{{url: "{A}"}}, {{url: "{B}"}}]',
                f'[{{url: "{A}"}}, {{url: "{B}"}}, {{url: "https://127.0.0.1:9104"}}]\n'
                f"    tls: {{ca_file: {bad_ca}}}",
            )
        )
    else:
        path.write_text(CHANGED)
        if failure == "build_step":

            def broken_router(*args: object) -> None:
                raise ValueError("cannot build the router")

            monkeypatch.setattr("aiogate.runtime.Router", broken_router)
        else:

            async def broken_start(self: RateLimitPlan) -> None:
                raise RuntimeError("cannot start the limiter")

            monkeypatch.setattr(RateLimitPlan, "start", broken_start)

    outcome = await reloader.reload()
    monkeypatch.undo()
    assert not outcome.applied
    assert holder.current is first
    assert snapshot(first) == before  # same objects, same breakers, health, owner
    assert before[A][1].state == OPEN  # type: ignore[attr-defined]
    assert before[A][0].upstream is first.upstream_states.upstreams[UP]
    assert first.upstream_states.upstreams[UP].version == version
    assert {url: (gauge("aiogate_circuit_state", url), gauge("aiogate_backend_healthy", url))
            for url in (A, B, C)} == gauges  # fmt: skip


async def test_an_applied_reload_carries_state_and_only_then_changes_it(
    running: tuple[Path, RuntimeHolder, Reloader],
) -> None:
    path, holder, reloader = running
    first = holder.current
    old = snapshot(first)
    path.write_text(CHANGED)
    outcome = await reloader.reload()
    assert outcome.applied
    second = holder.current
    new = snapshot(second)
    assert set(new) == {A, B}
    # A: other breaker settings -> a copy with a new, closed breaker; the old entry (still
    # used by the draining Runtime) keeps its open one but no longer speaks for the backend.
    assert new[A][0] is not old[A][0]
    assert new[A][1].state == CLOSED  # type: ignore[attr-defined]
    assert old[A][1].state == OPEN  # type: ignore[attr-defined]
    assert not old[A][0].live
    assert old[A][0].check_owner != first.generation  # the old checks are ignored
    # B: no health checks any more -> revived in the new Runtime.
    assert new[B][2]
    assert new[B][3] == second.generation
    assert gauge("aiogate_circuit_state", A) == 0.0
    assert gauge("aiogate_backend_healthy", B) == 1.0
    assert gauge("aiogate_backend_healthy", C) is None  # dropped: series removed


def test_adopt_shares_unchanged_entries_and_is_pure() -> None:
    config = load_config_text(RUNNING)
    old = StateRegistry()
    old.adopt(config.upstreams, config.circuit_breaker, None, now=0.0)
    old.commit(1, now=0.0)
    entry = old.upstreams[UP].backends[A]
    entry.check_result(False, "x", 1, 1, now=1.0)  # learnt: unhealthy

    new = StateRegistry()
    new.adopt(config.upstreams, CircuitBreakerConfig(), old, now=2.0)
    # Same config: every entry shared, so both Runtimes account to the same object...
    assert new.upstreams[UP].backends[A] is entry
    assert new.upstreams[UP] is not old.upstreams[UP]  # ...in containers of its own
    assert old.upstreams[UP].backends[A].upstream is old.upstreams[UP]
    assert entry.check_owner == 1  # not the new Runtime's until it commits
    new.commit(2, now=3.0)
    assert entry.check_owner == 2
    assert entry.upstream is new.upstreams[UP]
    assert not entry.healthy  # carried, not reset


def test_a_copy_catches_up_with_what_its_original_learnt_before_commit() -> None:
    config = load_config_text(RUNNING)
    changed = load_config_text(CHANGED)
    old = StateRegistry()
    old.adopt(config.upstreams, config.circuit_breaker, None, now=0.0)
    old.commit(1, now=0.0)
    new = StateRegistry()
    new.adopt(changed.upstreams, changed.circuit_breaker, old, now=1.0)
    # Between adopt and commit (the new Runtime starting) the running one keeps learning.
    old.upstreams[UP].backends[A].check_result(False, "x", 1, 1, now=2.0)
    new.commit(2, now=3.0)
    # A (breaker copy) took the later verdict... and, with no checks any more, was revived.
    copy = new.upstreams[UP].backends[A]
    assert copy.last_check == "x"
    assert copy.healthy
    assert copy.live


def load_config_text(text: str) -> GatewayConfig:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.yaml"
        path.write_text(textwrap.dedent(text))
        return load_config(path, env={})
