"""A bounded LRU whose entries expire at their own deadline."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

__all__ = ["ExpiringLru"]

K = TypeVar("K")
V = TypeVar("V")


class ExpiringLru(Generic[K, V]):
    """`get` answers only entries whose deadline has not passed; `get_stale` answers any."""

    __slots__ = ("_data", "_max")

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()

    @property
    def capacity(self) -> int:
        return self._max

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, now: float) -> V | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            return None
        self._data.move_to_end(key)
        return entry[1]

    def get_stale(self, key: K) -> V | None:
        entry = self._data.get(key)
        return None if entry is None else entry[1]

    def put(self, key: K, value: V, expires: float) -> None:
        if self._max <= 0:
            return
        data = self._data
        data[key] = (expires, value)
        data.move_to_end(key)
        while len(data) > self._max:
            data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)
