"""Fixtures for the upstream client's tests: raw upstreams and connection pools, closed after."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

# upstream_testing (the shared helpers) imports as a top-level module.
sys.path.insert(0, str(Path(__file__).parent))

from upstream_testing import Handler, MakePool, MakeRaw, RawUpstream

from aiogate.upstream.forward import ConnectionPool, Origin


@pytest.fixture
async def raw_upstream() -> AsyncIterator[MakeRaw]:
    servers: list[RawUpstream] = []

    async def make(handler: Handler) -> RawUpstream:
        server = await RawUpstream(handler).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[ConnectionPool] = []

    def make(port: int, **kwargs: Any) -> ConnectionPool:
        pool = ConnectionPool(Origin("http", "127.0.0.1", port), **kwargs)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()
