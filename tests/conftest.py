"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from consul_double import ConsulAgent, ConsulDouble, ConsulEnv
from etcd_server import EtcdServer
from redis_server import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server of this test's own: kill() and restart() it to test outages."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """A real etcd of this test's own: kill() and restart() it to test outages."""
    server = EtcdServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def consul() -> Iterator[ConsulEnv]:
    """The Consul double, or the real agent at $AIOGATE_TEST_CONSUL (same tests, unchanged)."""
    real = os.environ.get("AIOGATE_TEST_CONSUL")
    if real:
        agent = ConsulAgent(real, os.environ.get("AIOGATE_TEST_CONSUL_TOKEN"))
        yield ConsulEnv(real, agent, None)
        agent.cleanup()
        return
    double = ConsulDouble().start()
    yield ConsulEnv(double.url, ConsulAgent(double.url), double)
    double.stop()
