"""What every limiter backend shares: the compiled limit, the verdict, the Limiter protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from .bucket import SLIDING_WINDOW, TOKEN_BUCKET

if TYPE_CHECKING:
    from ..context import RequestContext
    from .store import Store

__all__ = ["Limit", "Limiter", "Verdict"]


class Limit:
    """One configured rule, resolved once per Runtime: never parsed on the request path."""

    __slots__ = (
        "algorithm",
        "dimension",
        "id",
        "limit",
        "local_limit",
        "prefix",
        "store",
        "value",
        "window",
    )

    def __init__(
        self,
        *,
        id: str,
        dimension: str,
        algorithm: str,
        limit: int,
        window: float,
        local_limit: int,
        value: Callable[[RequestContext], str],
        store: Store,
    ) -> None:
        #: Stable name: Redis key part and the RateLimit-Policy name.
        self.id = id
        self.dimension = dimension
        self.algorithm = SLIDING_WINDOW if algorithm == "sliding_window" else TOKEN_BUCKET
        #: The configured N (shared through Redis).
        self.limit = limit
        #: What one process may admit when it judges alone (N / workers without Redis).
        self.local_limit = local_limit
        self.window = window
        #: The dimension value of a request: fallback applied, normalised (plan.bucket_key).
        self.value = value
        #: Redis key prefix: `aiogate:rl:<id>:`.
        self.prefix = f"aiogate:rl:{id}:"
        self.store = store

    def __repr__(self) -> str:
        return f"Limit({self.id!r}, {self.limit}/{self.window}s, {self.dimension})"


class Verdict:
    """A request's outcome over all its limits, and the one limit its headers report.

    The reported limit is the most restrictive: on a rejection the one whose retry is furthest,
    else the one with the fewest requests remaining (ties: the longest reset).
    """

    __slots__ = ("admitted", "limit", "remaining", "reported", "reset", "retry_after")

    def __init__(
        self,
        admitted: bool,
        reported: Limit,
        *,
        limit: int,
        remaining: int,
        reset: float,
        retry_after: float,
    ) -> None:
        self.admitted = admitted
        self.reported = reported
        #: The N in effect for the reported limit (the local share when judged locally).
        self.limit = limit
        self.remaining = remaining
        self.reset = reset
        self.retry_after = retry_after


class Limiter(Protocol):
    """Judges one request against its limits; never raises and never waits unboundedly."""

    async def start(self) -> None: ...

    async def acquire(self, limits: Sequence[Limit], values: Sequence[str]) -> Verdict: ...


def pick(
    admitted: bool,
    limits: Sequence[Limit],
    effective: Sequence[int],
    results: Sequence[tuple[int, float, float]],
) -> Verdict:
    """Choose the most restrictive of several limits' results (see Verdict)."""
    best = 0
    if len(results) > 1:
        for i in range(1, len(results)):
            rem, reset, retry = results[i]
            b_rem, b_reset, b_retry = results[best]
            if admitted:
                if rem < b_rem or (rem == b_rem and reset > b_reset):
                    best = i
            elif retry > b_retry:
                best = i
    remaining, reset, retry = results[best]
    return Verdict(
        admitted,
        limits[best],
        limit=effective[best],
        remaining=remaining,
        reset=reset,
        retry_after=retry,
    )
