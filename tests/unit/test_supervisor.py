"""The supervisor's reload verdict comes from every worker's answer, not from READY=1 alone."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from aiogate import sdnotify
from aiogate.config import load_config
from aiogate.supervisor import Supervisor

OLD = """\
server: {listen: "127.0.0.1:8080", workers: 2}
upstreams: [{name: u, backends: [{url: "http://127.0.0.1:9001"}]}]
routes: [{path: /api, upstream: u}]
"""
NEW = OLD.replace("/api", "/v2")


class FakeWorker:
    """Answers each SIGHUP on the notify protocol, as a worker's Daemon.reload does."""

    def __init__(self, supervisor: Supervisor, pid: int, answers: list[bool]) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.signals: list[int] = []
        self._supervisor = supervisor
        self._answers = answers

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)
        applied = self._answers.pop(0)
        status = sdnotify.reload_status(self.pid, len(self.signals), applied, ["cannot build"])
        loop = asyncio.get_running_loop()
        loop.call_soon(self._supervisor.on_worker_message, f"READY=1\nSTATUS={status}")


async def test_a_reload_one_worker_rejects_is_rejected_and_rolled_back(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(OLD)
    runtime_dir = tmp_path / "run"
    runtime_dir.mkdir()
    supervisor = Supervisor(path, load_config(path, env={}), runtime_dir)
    supervisor._accept(OLD.encode())
    good = FakeWorker(supervisor, 101, [True, True])
    bad = FakeWorker(supervisor, 102, [False])
    supervisor._workers = {0: good, 1: bad}  # type: ignore[dict-item]

    path.write_text(NEW)
    outcome = await supervisor.reload()
    assert not outcome.applied
    assert outcome.generation == 1
    assert outcome.errors == ("worker 102: cannot build",)
    assert (runtime_dir / "accepted.yaml").read_text() == OLD  # did not advance
    assert supervisor.config.routes[0].path == "/api"
    # the worker that applied it was told to go back to the config its sibling serves
    assert good.signals == [signal.SIGHUP, signal.SIGHUP]
    assert bad.signals == [signal.SIGHUP]

    good._answers, bad._answers = [True], [True]
    outcome = await supervisor.reload()
    assert outcome.applied
    assert outcome.generation == 2
    assert (runtime_dir / "accepted.yaml").read_text() == NEW
    assert supervisor.config.routes[0].path == "/v2"
