"""Reloads racing shutdown: no Runtime may be left started and never closed."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from aiogate.config import load_config
from aiogate.daemon import Daemon
from aiogate.reload import Reloader
from aiogate.runtime import Runtime, RuntimeHolder

CONFIG = """\
server:
  listen: "127.0.0.1:0"
  shutdown_timeout: 1s
upstreams:
  - name: u
    backends: [{url: "http://127.0.0.1:9001"}]
routes:
  - path: /api
    upstream: u
"""


class Tracker:
    """Records which Runtimes were built, started and closed; start of generation >= 2 can be
    held until `release` is set."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.built: list[int] = []
        self.started: list[int] = []
        self.closed: list[int] = []
        self.release = asyncio.Event()
        self.starting = asyncio.Event()
        real_init, real_start, real_close = Runtime.__init__, Runtime.start, Runtime.close
        tracker = self

        def init(self: Runtime, *args: object, **kwargs: object) -> None:
            real_init(self, *args, **kwargs)  # type: ignore[arg-type]
            tracker.built.append(self.generation)

        async def start(self: Runtime) -> None:
            await real_start(self)
            if self.generation >= 2:
                tracker.starting.set()
                await tracker.release.wait()  # e.g. a slow JWKS fetch or Redis script load
            tracker.started.append(self.generation)

        async def close(self: Runtime) -> None:
            tracker.closed.append(self.generation)
            await real_close(self)

        monkeypatch.setattr(Runtime, "__init__", init)
        monkeypatch.setattr(Runtime, "start", start)
        monkeypatch.setattr(Runtime, "close", close)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG)
    return path


async def test_a_reload_cancelled_while_starting_closes_its_runtime(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = Tracker(monkeypatch)
    first = Runtime(load_config(config_path, env={}))
    await first.start()
    holder = RuntimeHolder(first)
    reloader = Reloader(config_path, holder)
    task = asyncio.create_task(reloader.reload())
    await tracker.starting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert tracker.built == [1, 2]
    assert tracker.closed == [2]  # the half-started Runtime, not the running one
    assert holder.current is first
    owners = {e.check_owner for s in first.upstream_states.upstreams.values()
              for e in s.backends.values()}  # fmt: skip
    assert owners == {1}
    await reloader.close()
    await first.close()


async def test_no_reload_after_the_reloader_closed(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = Tracker(monkeypatch)
    first = Runtime(load_config(config_path, env={}))
    holder = RuntimeHolder(first)
    reloader = Reloader(config_path, holder)
    await reloader.close()
    outcome = await reloader.reload()
    assert not outcome.applied
    assert outcome.errors == ("the gateway is shutting down",)
    assert (await reloader.rebuild("discovery")).applied is False
    assert tracker.built == [1]  # nothing was built
    assert holder.current is first
    await first.close()


async def test_close_waits_for_a_reload_in_progress(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin reload running when shutdown begins: the Runtime it swaps in is current when
    `close()` returns, so the daemon's close of the current Runtime reaches it."""
    tracker = Tracker(monkeypatch)
    first = Runtime(load_config(config_path, env={}))
    await first.start()
    holder = RuntimeHolder(first)
    reloader = Reloader(config_path, holder)
    reload = asyncio.create_task(reloader.reload())
    await tracker.starting.wait()
    closing = asyncio.create_task(reloader.close())
    await asyncio.sleep(0)
    assert not closing.done()
    tracker.release.set()
    assert (await reload).applied
    await closing  # the replaced Runtime drained and closed, too
    assert tracker.closed == [1]
    assert holder.current.generation == 2
    await holder.current.close()


async def test_daemon_shutdown_closes_every_runtime_a_sighup_reload_built(
    config_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    tracker = Tracker(monkeypatch)
    daemon = Daemon(config_path, load_config(config_path, env={}), worker=True)
    loop = asyncio.get_running_loop()
    run = asyncio.create_task(daemon.run())
    try:
        while not daemon.ready:  # noqa: ASYNC110 - the daemon offers nothing to await
            await asyncio.sleep(0.01)
        daemon._on_sighup()  # what SIGHUP does
        await tracker.starting.wait()
        # Shutdown begins while the reload's Runtime is still starting; were it let through
        # (or not closed when cancelled), it would keep its tasks after the daemon returned.
        daemon.request_stop()
        assert await asyncio.wait_for(run, 10) == 0
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
    assert tracker.built == [1, 2]
    assert sorted(tracker.closed) == [1, 2]
