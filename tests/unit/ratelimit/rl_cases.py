"""The one table of rate-limit cases, run against bucket.py, the local limiter and the Lua
script on a real redis-server (tests/integration/test_ratelimit_lua.py).

A case is (algorithm, limit, window, steps); a step is (now, admitted, remaining, reset,
retry_after) for one request against one bucket.
"""

from __future__ import annotations

from typing import Final

Step = tuple[float, bool, int, float, float]
Case = tuple[str, int, float, list[Step]]

CASES: Final[dict[str, Case]] = {
    # 3 per 3 s: one token a second.
    "token_bucket_burst_then_refill": ("token_bucket", 3, 3.0, [
        (100.0, True, 2, 1.0, 0.0),
        (100.0, True, 1, 2.0, 0.0),
        (100.0, True, 0, 3.0, 0.0),
        (100.0, False, 0, 3.0, 1.0),
        (100.5, False, 0, 2.5, 0.5),
        (101.0, True, 0, 3.0, 0.0),
        (110.0, True, 2, 1.0, 0.0),
    ]),
    "token_bucket_fractional_refill": ("token_bucket", 10, 60.0, [
        (0.0, True, 9, 6.0, 0.0),
        (3.0, True, 8, 9.0, 0.0),      # 0.5 token back: 9.5 - 1
        (3.0, True, 7, 15.0, 0.0),
        (1.0, True, 6, 21.0, 0.0),     # clock stepped back: no refill, never negative time
    ]),
    "token_bucket_limit_one": ("token_bucket", 1, 1.0, [
        (5.0, True, 0, 1.0, 0.0),
        (5.25, False, 0, 0.75, 0.75),
        (6.0, True, 0, 1.0, 0.0),
    ]),
    # 3 per 10 s, sliding window counter.
    "sliding_window_weighted_previous": ("sliding_window", 3, 10.0, [
        (0.0, True, 2, 20.0, 0.0),
        (1.0, True, 1, 19.0, 0.0),
        (2.0, True, 0, 18.0, 0.0),
        (3.0, False, 0, 17.0, 10.0 + 10.0 * (1 - 2 / 3) - 3.0),
        (13.5, True, 0, 16.5, 0.0),    # previous 3 weighted 0.65 -> 1.95 + 1
        (14.0, False, 0, 16.0, 10.0 + 10.0 * (1 - 1 / 3) - 14.0),
        (35.0, True, 2, 15.0, 0.0),    # two windows later: nothing counts
    ]),
    "sliding_window_next_window": ("sliding_window", 2, 1.0, [
        (10.0, True, 1, 2.0, 0.0),
        (10.1, True, 0, 1.9, 0.0),
        (10.2, False, 0, 1.8, 1.3),    # room only once the window rolls: at 11.5
        (11.0, False, 0, 1.0, 0.5),    # previous 2 weighted 1.0 -> no room yet
        (11.6, True, 0, 1.4, 0.0),     # 2 * 0.4 + 0 + 1 <= 2
    ]),
}  # fmt: skip
