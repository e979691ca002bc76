"""The upstream pool: picks skip open, ejected and unhealthy backends; slow start ramps up.

The breaker, balancing strategies and backoff have their own tests (test_breaker.py,
test_balance.py, test_retry.py)."""

from __future__ import annotations

import pytest

from aiogate.config import UpstreamConfig
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
    pool.pick("", 100.0)
    assert b.weight == 4
    b.state.check_result(False, "x", 1, 1, 100.0)  # unhealthy
    assert {pool.pick("", 101.0).label for _ in range(10)} == {a.label, c.label}
    pool.failed(a, 101.0, probe=False)  # passive: ejected (cap: 50% of 3 -> 1)
    assert {pool.pick("", 102.0).label for _ in range(10)} == {c.label}
    for _ in range(5):
        pool.failed(c, 102.0, probe=False, passive=False)  # breaker opens (default threshold 5)
    with pytest.raises(NoBackendAvailable) as info:
        pool.pick("", 103.0)
    assert info.value.circuit_open
    b.state.check_result(True, "ok", 1, 1, 200.0)  # healthy again at 200: ramps up
    assert pool.pick("", 201.0) is b
    assert b.weight == pytest.approx(0.4)  # 10% floor of weight 4
    pool.pick("", 206.0)
    assert b.weight == pytest.approx(2.4)
    pool.pick("", 211.0)
    assert b.weight == 4
    await pool.close()
