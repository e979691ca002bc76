"""The upstream attempt: one verdict per try, and nothing held on the backend once closed."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from aiogate import log
from aiogate.config import CircuitBreakerConfig, UpstreamConfig
from aiogate.upstream.breaker import CLOSED, HALF_OPEN, OPEN
from aiogate.upstream.pool import NoBackendAvailable, UpstreamPool
from aiogate.upstream.state import StateRegistry


@pytest.fixture(autouse=True)
def _quiet_log(tmp_path: Path) -> Iterator[None]:
    with (tmp_path / "log").open("w+") as stream:
        log.configure(stream=stream)
        yield
        log.flush()
    log.configure(stream=sys.__stdout__)


def _config(**extra: object) -> UpstreamConfig:
    return UpstreamConfig.model_validate(
        {"name": "svc", "backends": [{"url": "http://127.0.0.1:9"}], **extra}
    )


def _pool(config: UpstreamConfig, **breaker: object) -> UpstreamPool:
    registry = StateRegistry()
    registry.adopt([config], CircuitBreakerConfig.model_validate(breaker), None, 0.0)
    registry.commit(0, 0.0)
    return UpstreamPool(config, registry)


@pytest.fixture
async def half_open() -> AsyncIterator[UpstreamPool]:
    """One backend whose circuit is half-open at t=10, with one probe slot."""
    pool = _pool(
        _config(), failure_threshold=1, success_threshold=1, timeout=10, half_open_requests=1
    )
    with pool.pick("", 0.0) as attempt:
        attempt.failed(0.0)
    assert pool.backends[0].state.breaker.state == OPEN
    yield pool
    await pool.close()


async def test_pick_holds_the_in_flight_place_until_closed() -> None:
    pool = _pool(_config())
    (backend,) = pool.backends
    attempt = pool.pick("", 0.0)
    assert attempt.backend is backend
    assert backend.in_flight == 1
    attempt.succeeded(0.0, 0.01)
    assert backend.in_flight == 1  # a verdict does not end the relay of the answer
    attempt.close()
    attempt.close()
    assert backend.in_flight == 0
    await pool.close()


async def test_only_the_first_verdict_counts() -> None:
    pool = _pool(_config(), failure_threshold=5)
    (backend,) = pool.backends
    with pool.pick("", 0.0) as attempt:
        attempt.failed(0.0)  # a 5xx head
        attempt.failed(0.0)  # its body broke too: still one failure
        attempt.succeeded(0.0, 0.01)  # nor does a later success reset the count
    assert backend.state.breaker.failures == 1


async def test_an_attempt_closed_without_a_verdict_frees_its_probe_slot(
    half_open: UpstreamPool,
) -> None:
    breaker = half_open.backends[0].state.breaker
    with half_open.pick("", 10.0):
        assert (breaker.state, breaker.probes) == (HALF_OPEN, 1)
        with pytest.raises(NoBackendAvailable):
            half_open.pick("", 10.0)  # the one slot is taken
    assert breaker.probes == 0
    assert breaker.state == HALF_OPEN  # no verdict: nothing learnt about the backend
    with half_open.pick("", 10.0) as attempt:
        attempt.cancelled()
        attempt.succeeded(10.0, 0.01)  # after a cancel: ignored
    assert (breaker.state, breaker.probes) == (HALF_OPEN, 0)


async def test_a_probe_verdict_reaches_the_breaker_once(half_open: UpstreamPool) -> None:
    breaker = half_open.backends[0].state.breaker
    with half_open.pick("", 10.0) as attempt:
        attempt.succeeded(10.0, 0.01)
    assert (breaker.state, breaker.probes) == (CLOSED, 0)


async def test_passive_ejection_counts_through_the_attempt() -> None:
    pool = _pool(_config(passive_health_check={"consecutive_failures": 2}))
    (backend,) = pool.backends
    for _ in range(2):
        with pool.pick("", 1.0) as attempt:
            attempt.failed(1.0)
    assert backend.state.ejected_until > 1.0
    # A 5xx whose status the passive checks ignore does not count towards an ejection.
    pool = _pool(_config(passive_health_check={"consecutive_failures": 1}))
    with pool.pick("", 1.0) as attempt:
        attempt.failed(1.0, passive=False)
    assert pool.backends[0].state.ejected_until == 0.0
