from __future__ import annotations

from aiogate.ratelimit.base import Limit
from aiogate.ratelimit.local import LocalLimiter, Store


class FakeClock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_local(clock: FakeClock) -> LocalLimiter:
    return LocalLimiter(clock)


def make_limit(
    *,
    id: str = "test.0",
    algorithm: str = "token_bucket",
    limit: int = 3,
    window: float = 3.0,
    local_limit: int | None = None,
    dimension: str = "ip",
) -> Limit:
    return Limit(
        id=id,
        dimension=dimension,
        algorithm=algorithm,
        limit=limit,
        window=window,
        local_limit=limit if local_limit is None else local_limit,
        value=lambda ctx: ctx.client_ip,
        store=Store(max(2 * window, 1.0)),
    )
