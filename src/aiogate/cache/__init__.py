"""The response cache: freshness rules (pure), stored entries, memory and Redis stores.

The stage that uses them is `stages/cache.py`; see docs/cache.md.
"""

from .entry import Entry
from .freshness import STORABLE_STATUSES, Directives, Freshness, cache_key, directives, freshness
from .plan import CachePlan
from .store import KEY_PREFIX, MemoryStore, RedisStore, Store, StoreUnavailable

__all__ = [
    "KEY_PREFIX",
    "STORABLE_STATUSES",
    "CachePlan",
    "Directives",
    "Entry",
    "Freshness",
    "MemoryStore",
    "RedisStore",
    "Store",
    "StoreUnavailable",
    "cache_key",
    "directives",
    "freshness",
]
