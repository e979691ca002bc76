"""bucket.py (pure maths) and the local limiter against the shared table of cases."""

from __future__ import annotations

import pytest
from rl_cases import CASES, Case
from rl_helpers import FakeClock, make_limit, make_local

from aiogate.ratelimit import bucket
from aiogate.ratelimit.bucket import SLIDING_WINDOW, TOKEN_BUCKET


def algorithm_code(name: str) -> int:
    return SLIDING_WINDOW if name == "sliding_window" else TOKEN_BUCKET


@pytest.mark.parametrize("name", sorted(CASES))
def test_pure_maths_follow_the_table(name: str) -> None:
    algorithm, limit, window, steps = CASES[name]
    code = algorithm_code(algorithm)
    state = None
    for now, admitted, remaining, reset, retry in steps:
        state, ok = bucket.judge(code, limit, window, state, now)
        if ok:
            state = bucket.consume(code, state)
        got = bucket.report(code, limit, window, state, now, admitted=ok)
        assert (ok, got[0]) == (admitted, remaining), (now, state)
        assert got[1] == pytest.approx(reset, abs=1e-9), ("reset", now)
        assert got[2] == pytest.approx(retry, abs=1e-9), ("retry", now)


@pytest.mark.parametrize("name", sorted(CASES))
async def test_local_limiter_follows_the_table(name: str) -> None:
    case: Case = CASES[name]
    algorithm, limit, window, steps = case
    clock = FakeClock()
    local = make_local(clock)
    rule = make_limit(algorithm=algorithm, limit=limit, window=window)
    for now, admitted, remaining, reset, retry in steps:
        clock.now = now
        verdict = await local.acquire([rule], ["1.2.3.4"])
        assert (verdict.admitted, verdict.remaining) == (admitted, remaining), now
        assert verdict.reset == pytest.approx(reset, abs=1e-9)
        assert verdict.retry_after == pytest.approx(retry, abs=1e-9)


def test_token_bucket_never_exceeds_capacity_after_a_long_idle() -> None:
    state, _ = bucket.judge(TOKEN_BUCKET, 5, 1.0, (2.0, 0.0, 0.0), 1e6)
    assert state[0] == 5
