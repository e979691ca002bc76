"""The upstream pool: picks skip open, ejected and unhealthy backends; slow start ramps up.

The breaker, balancing strategies and backoff have their own tests (test_breaker.py,
test_balance.py, test_retry.py)."""

from __future__ import annotations

import pytest

from aiogate.config import UpstreamConfig
from aiogate.upstream.attempt import Attempt
from aiogate.upstream.pool import NoBackendAvailable, UpstreamPool

pytestmark = pytest.mark.usefixtures("quiet_log")


async def test_pool_skips_open_ejected_unhealthy_and_ramps_slow_start() -> None:
    config = UpstreamConfig.model_validate(
        {"name": "u", "slow_start": 10, "passive_health_check": {"consecutive_failures": 1},
         "backends": [{"url": "http://127.0.0.1:1"}, {"url": "http://127.0.0.1:2", "weight": 4},
                      {"url": "http://127.0.0.1:3"}]}
    )  # fmt: skip
    pool = UpstreamPool(config, now=0.0)
    a, b, c = pool.backends
    pool.choose("", 100.0)
    assert b.weight == 4
    b.state.check_result(False, "x", 1, 1, 100.0)  # unhealthy
    assert {pool.choose("", 101.0).label for _ in range(10)} == {a.label, c.label}
    with Attempt(a) as attempt:
        attempt.failed(101.0)  # passive: ejected (cap: 50% of 3 -> 1)
    assert {pool.choose("", 102.0).label for _ in range(10)} == {c.label}
    for _ in range(5):
        with Attempt(c) as attempt:
            attempt.failed(102.0, passive=False)  # breaker opens (default threshold 5)
    with pytest.raises(NoBackendAvailable) as info:
        pool.choose("", 103.0)
    assert info.value.circuit_open
    b.state.check_result(True, "ok", 1, 1, 200.0)  # healthy again at 200: ramps up
    assert pool.choose("", 201.0) is b
    assert b.weight == pytest.approx(0.4)  # 10% floor of weight 4
    pool.choose("", 206.0)
    assert b.weight == pytest.approx(2.4)
    pool.choose("", 211.0)
    assert b.weight == 4
    await pool.close()
