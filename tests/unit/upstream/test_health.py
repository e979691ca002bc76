"""Script health checks: the whole process group goes (at the timeout, on cancel, and what a
script leaves running), and output is kept to 2 KiB without buffering the rest. Real processes.
"""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from log_testing import log_to_file

from aiogate import log
from aiogate.config import UpstreamConfig
from aiogate.upstream.health import HealthChecker
from aiogate.upstream.pool import Backend, UpstreamPool


@pytest.fixture(autouse=True)
def _log_to_file(tmp_path: Path) -> Iterator[None]:
    with log_to_file(tmp_path / "log", level="debug"):
        yield


def checker(script: str, timeout: float) -> tuple[HealthChecker, Backend]:
    config = UpstreamConfig.model_validate(
        {
            "name": "svc",
            "backends": [{"url": "http://127.0.0.1:1"}],
            "health_check": {
                "type": "script",
                "command": ["sh", "-c", script],
                "timeout": timeout,
                "interval": 60,
            },
        }
    )
    assert config.health_check is not None
    pool = UpstreamPool(config)
    return HealthChecker(pool, config.health_check, generation=0), pool.backends[0]


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")  # a zombie is dead


def gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, 9)  # do not leave it behind whatever the test says
            return False
        time.sleep(0.02)
    return True


def written(path: Path) -> bool:
    return path.exists() and bool(path.read_text().strip())


async def wait_for_file(path: Path) -> None:
    deadline = time.monotonic() + 5.0
    while not written(path):
        assert time.monotonic() < deadline, f"{path} never written"
        await asyncio.sleep(0.01)


async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    # The grandchild holds the output pipe: killing only `sh` would leave it, and the pipe,
    # alive for 20 s.
    check, backend = checker(f"sleep 20 & echo $! > {pidfile}; sleep 20", timeout=0.5)
    started = time.monotonic()
    assert await check._check(backend) == (False, "script: killed after 0.5s")
    assert time.monotonic() - started < 3.0
    assert gone(int(pidfile.read_text()))


async def test_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    check, backend = checker(f"sleep 20 & echo $! > {pidfile}; sleep 20", timeout=30)
    task = asyncio.create_task(check._check(backend))
    await wait_for_file(pidfile)
    task.cancel()
    async with asyncio.timeout(3.0):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert gone(int(pidfile.read_text()))


async def test_what_a_script_leaves_running_is_killed_after_it_exits(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    check, backend = checker(f"sleep 20 >/dev/null 2>&1 & echo $! > {pidfile}; echo ok", timeout=5)
    assert await check._check(backend) == (True, "script exit 0")
    assert gone(int(pidfile.read_text()))


async def test_output_is_capped_without_being_buffered(tmp_path: Path) -> None:
    check, backend = checker("head -c 50000000 /dev/zero | tr '\\0' x; exit 3", timeout=20)
    tracemalloc.start()
    try:
        result = await check._check(backend)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result == (False, "script exit 3")
    assert peak < 4_000_000, peak  # 50 MB were written; a few pipe reads are held at most
    log.flush()
    (line,) = [
        line
        for line in (tmp_path / "log").read_text().splitlines()
        if "health_check_output" in line
    ]
    assert '"output":"' + "x" * 2048 + '"' in line
