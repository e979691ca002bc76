"""A stored response and its byte form (for Redis): one small JSON head, then the body."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import orjson

__all__ = ["Entry", "decode", "encode"]

_MAGIC: Final = b"AGC1"
#: What an entry costs beyond its body and headers, for the memory store's byte bound.
_OVERHEAD: Final = 200


@dataclass(frozen=True, slots=True)
class Entry:
    """An upstream response as it arrived (end-to-end headers only), and when it expires.

    Times are wall-clock POSIX seconds: a Redis entry is read by other gateways.
    """

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    expires_at: float
    #: The upstream's `Age` when it arrived: part of every later `Age`.
    initial_age: float = 0.0

    def fresh(self, now: float) -> bool:
        return now < self.expires_at

    def age(self, now: float) -> int:
        """The `Age` to send (RFC 9111 §4.2.3), whole seconds."""
        return int(self.initial_age + max(0.0, now - self.stored_at))

    @property
    def size(self) -> int:
        """Bytes this entry holds, roughly: what the memory store's `max_size` counts."""
        return len(self.body) + sum(len(n) + len(v) for n, v in self.headers) + _OVERHEAD


def encode(entry: Entry) -> bytes:
    head = orjson.dumps(
        {
            "s": entry.status,
            "r": entry.reason,
            "h": entry.headers,
            "t": entry.stored_at,
            "e": entry.expires_at,
            "a": entry.initial_age,
        }
    )
    return b"".join((_MAGIC, len(head).to_bytes(4, "big"), head, entry.body))


def decode(data: bytes) -> Entry | None:
    """The entry `encode` made; None for anything else (another version, a damaged value)."""
    if not data.startswith(_MAGIC) or len(data) < 8:
        return None
    size = int.from_bytes(data[4:8], "big")
    try:
        head = orjson.loads(data[8 : 8 + size])
        headers: Sequence[Sequence[str]] = head["h"]
        return Entry(
            status=int(head["s"]),
            reason=str(head["r"]),
            headers=tuple((str(n), str(v)) for n, v in headers),
            body=data[8 + size :],
            stored_at=float(head["t"]),
            expires_at=float(head["e"]),
            initial_age=float(head["a"]),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
