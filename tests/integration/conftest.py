from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from backend import BackendThread
from gateway import Gateway
from gwconfigs import basic_config


@pytest.fixture(scope="session")
def backends() -> Iterator[BackendThread]:
    thread = BackendThread(["backend-1", "backend-2"])
    thread.start()
    yield thread
    thread.stop()


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def factory(config: dict[str, Any], env: dict[str, str] | None = None) -> Gateway:
        sub = tmp_path / f"gw{len(started)}"
        sub.mkdir()
        gateway = Gateway(config, sub, env).start()
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One shared gateway for the read-only behaviour tests of a module."""
    gw = Gateway(basic_config(backends), tmp_path_factory.mktemp("gw")).start()
    yield gw
    gw.stop()


# -- serving-behaviour tests (routing, fidelity, limits, smuggling, errors) -------------------


@pytest.fixture(scope="session")
def raw_backend() -> Iterator[Any]:
    """A socket-level backend recording the exact request bytes (see rawbackend.py)."""
    from rawbackend import RawBackend

    server = RawBackend().start()
    yield server
    server.stop()
