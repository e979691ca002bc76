"""The host-view wire protocol: newline-delimited JSON between the supervisor and its workers.

Small and versioned: every message is one JSON object on one line with a type `t`; the
supervisor's first message on a connection is a `snapshot` carrying `v` (the protocol version).
A worker that gets another version, a line that is not JSON or a message it does not know
drops the connection and reconnects, so both sides never act on a message they misread.

supervisor → worker
  {"t": "snapshot", "v": 1, "backends": [VIEW, ...], "found": {upstream: [[url, weight], ...]}}
      on connect and after each reload or discovery change: the whole host state;
  {"t": "state", "backends": [VIEW, ...]}
      the backends whose state changed;
  VIEW = {"u": upstream, "b": backend url, "healthy": bool, "circuit": "closed"|"half_open"|
          "open", "reopen_in": seconds until an open circuit lets probes through,
          "ejected_for": seconds of passive ejection left}.
  Times are relative (seconds from now), so the two processes' clocks never have to agree.

worker → supervisor
  {"t": "ok", "items": [[upstream, backend, successes, probe successes], ...]}
      successes, coalesced per backend over a short window;
  {"t": "fail", "u": upstream, "b": backend, "probe": bool, "passive": bool}
      one failed attempt, sent at once (after that backend's pending successes, so that each
      worker's outcomes arrive in the order they happened).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import orjson

from ..upstream.breaker import STATE_NAMES

__all__ = [
    "VERSION",
    "BackendView",
    "Failure",
    "ProtocolError",
    "Snapshot",
    "StateChange",
    "Successes",
    "decode",
    "encode_failure",
    "encode_snapshot",
    "encode_state",
    "encode_successes",
]

VERSION: Final = 1


class ProtocolError(ValueError):
    """A line that is not a message of this protocol version."""


@dataclass(frozen=True, slots=True)
class BackendView:
    """What a worker needs to know of one backend to pick (or avoid) it."""

    upstream: str
    backend: str
    healthy: bool
    circuit: int  # breaker.CLOSED / HALF_OPEN / OPEN
    reopen_in: float = 0.0
    ejected_for: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return self.upstream, self.backend


@dataclass(frozen=True, slots=True)
class Snapshot:
    backends: tuple[BackendView, ...]
    #: Discovered backends per upstream: (url, weight) pairs.
    found: dict[str, tuple[tuple[str, int], ...]]


@dataclass(frozen=True, slots=True)
class StateChange:
    backends: tuple[BackendView, ...]


@dataclass(frozen=True, slots=True)
class Successes:
    #: (upstream, backend, successes, of which half-open probes)
    items: tuple[tuple[str, str, int, int], ...]


@dataclass(frozen=True, slots=True)
class Failure:
    upstream: str
    backend: str
    probe: bool
    passive: bool


Message = Snapshot | StateChange | Successes | Failure


def _line(data: dict[str, object]) -> bytes:
    return orjson.dumps(data) + b"\n"


def _view(view: BackendView) -> dict[str, object]:
    return {
        "u": view.upstream,
        "b": view.backend,
        "healthy": view.healthy,
        "circuit": STATE_NAMES[view.circuit],
        "reopen_in": round(view.reopen_in, 4),
        "ejected_for": round(view.ejected_for, 4),
    }


def encode_snapshot(
    views: tuple[BackendView, ...], found: Mapping[str, tuple[tuple[str, int], ...]]
) -> bytes:
    return _line(
        {
            "t": "snapshot",
            "v": VERSION,
            "backends": [_view(v) for v in views],
            "found": {name: [list(b) for b in backends] for name, backends in found.items()},
        }
    )


def encode_state(views: tuple[BackendView, ...]) -> bytes:
    return _line({"t": "state", "backends": [_view(v) for v in views]})


def encode_successes(items: list[tuple[str, str, int, int]]) -> bytes:
    return _line({"t": "ok", "items": [list(item) for item in items]})


def encode_failure(upstream: str, backend: str, *, probe: bool, passive: bool) -> bytes:
    return _line({"t": "fail", "u": upstream, "b": backend, "probe": probe, "passive": passive})


def decode(line: bytes) -> Message:
    """One received line as a message; ProtocolError for anything else."""
    try:
        data = orjson.loads(line)
        if not isinstance(data, dict):
            raise ProtocolError("not a JSON object")
        kind = data["t"]
        if kind == "snapshot":
            if data.get("v") != VERSION:
                raise ProtocolError(f"protocol version {data.get('v')!r}, expected {VERSION}")
            found = {
                str(name): tuple((str(url), int(weight)) for url, weight in backends)
                for name, backends in data["found"].items()
            }
            return Snapshot(_views(data["backends"]), found)
        if kind == "state":
            return StateChange(_views(data["backends"]))
        if kind == "ok":
            items = tuple((str(u), str(b), int(n), int(p)) for u, b, n, p in data["items"])
            return Successes(items)
        if kind == "fail":
            return Failure(
                str(data["u"]), str(data["b"]), bool(data["probe"]), bool(data["passive"])
            )
    except ProtocolError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed message: {exc!r}") from None
    raise ProtocolError(f"unknown message type {kind!r}")


def _views(raw: list[dict[str, object]]) -> tuple[BackendView, ...]:
    return tuple(
        BackendView(
            upstream=str(item["u"]),
            backend=str(item["b"]),
            healthy=bool(item["healthy"]),
            circuit=STATE_NAMES.index(str(item["circuit"])),
            reopen_in=float(item.get("reopen_in", 0.0)),  # type: ignore[arg-type]
            ejected_for=float(item.get("ejected_for", 0.0)),  # type: ignore[arg-type]
        )
        for item in raw
    )
