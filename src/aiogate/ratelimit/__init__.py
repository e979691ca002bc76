"""Rate limiting: token bucket and sliding window, local or shared through Redis.

`bucket` is the maths (pure), `local` and `redis` the two backends implementing it,
`plan` turns the config into per-route limits, and `aiogate.stages.ratelimit` applies them.
"""

from .base import Limit, Limiter, Verdict
from .local import LocalLimiter, StoreRegistry
from .plan import RateLimitPlan
from .redis import RedisLimiter

__all__ = [
    "Limit",
    "Limiter",
    "LocalLimiter",
    "RateLimitPlan",
    "RedisLimiter",
    "StoreRegistry",
    "Verdict",
]
