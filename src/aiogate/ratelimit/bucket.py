"""The limiting maths, pure: no clock, no I/O. `token_bucket.lua` is a line-by-line twin.

State is three floats per (limit, dimension value), the same in memory and in Redis:

- token bucket: ``a`` = tokens, ``b`` = time of the last update; ``c`` unused.
- sliding window counter: ``a`` = index of the current window (``floor(now / W)``),
  ``b`` = requests counted in it, ``c`` = requests counted in the previous one.

A request is judged in two steps so that several limits can be checked as one: `judge` brings a
state up to `now` (refill / window roll) and says whether this limit would admit; only when
every limit admits is one request `consume`d from each. `report` gives what the headers show.
Operation order matters: Python and Lua must round identically (both use IEEE doubles), which
the shared table of cases in the tests checks.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["SLIDING_WINDOW", "TOKEN_BUCKET", "consume", "judge", "report"]

TOKEN_BUCKET: Final = 0
SLIDING_WINDOW: Final = 1

State = tuple[float, float, float]


def judge(
    algorithm: int, limit: float, window: float, state: State | None, now: float
) -> tuple[State, bool]:
    """The state brought up to `now`, and whether one more request fits."""
    if algorithm == TOKEN_BUCKET:
        tokens = limit
        if state is not None:
            elapsed = now - state[1]
            if elapsed < 0:
                elapsed = 0.0
            tokens = state[0] + elapsed * limit / window
            tokens = min(tokens, limit)
        return (tokens, now, 0.0), tokens >= 1
    index = float(math.floor(now / window))
    current = previous = 0.0
    if state is not None:
        if index <= state[0]:  # same window (or a clock that stepped back)
            index, current, previous = state
        elif index == state[0] + 1:
            previous = state[1]
    rolled = (index, current, previous)
    return rolled, _estimate(window, rolled, now) + 1 <= limit


def consume(algorithm: int, state: State) -> State:
    if algorithm == TOKEN_BUCKET:
        return (state[0] - 1, state[1], state[2])
    return (state[0], state[1] + 1, state[2])


def report(
    algorithm: int, limit: float, window: float, state: State, now: float, *, admitted: bool
) -> tuple[int, float, float]:
    """(remaining, seconds until the limit is whole again, seconds until a retry can pass).

    `admitted` is this limit's own verdict; the retry delay is 0 when it would admit.
    """
    if algorithm == TOKEN_BUCKET:
        tokens = state[0]
        reset = (limit - tokens) * window / limit
        retry = 0.0 if admitted else (1 - tokens) * window / limit
        return max(math.floor(tokens), 0), reset, retry
    index, current, previous = state
    estimate = _estimate(window, state, now)
    remaining = max(math.floor(limit - estimate), 0)
    if current > 0:
        reset = (index + 2) * window - now
    elif previous > 0:
        reset = (index + 1) * window - now
    else:
        reset = 0.0
    retry = 0.0
    if not admitted:
        if current <= limit - 1 and previous > 0:
            at = index * window + window * (1 - (limit - 1 - current) / previous)
        else:
            at = (index + 1) * window + window * (1 - (limit - 1) / current)
        retry = at - now
        if retry < 0:
            retry = 0.0
    return remaining, reset, retry


def _estimate(window: float, state: State, now: float) -> float:
    index, current, previous = state
    elapsed = (now - index * window) / window
    if elapsed < 0:
        elapsed = 0.0
    elif elapsed > 1:
        elapsed = 1.0
    return previous * (1 - elapsed) + current
