"""One try of one request on one backend, from the pick until its answer is relayed.

`UpstreamPool.pick()` hands out an `Attempt`; it owns what the try holds on its backend: a
place in the backend's in-flight count (least-connections, p2c and `max_connections` read it)
and, while the circuit is half-open, one of its probe slots. The attempt gets exactly one
verdict — `succeeded()`, `failed()` or `cancelled()` (no verdict: the client left, or the
request was at fault) — and later ones are ignored, so whichever layer learns the outcome first
gives it and the others need not know. `close()` gives back the in-flight place and, if no
verdict was given, frees the probe slot: the proxy closes every attempt in a `finally`.

In a worker of a host view (`server.workers > 1`) the verdict goes to the supervisor through the
state's `reporter` (a non-blocking append to a buffer): the host's breaker and passive checks
judge it, and the worker only frees its probe slot.

A verdict comes before `close()` when the response head decides it (a 5xx), and the body is
still relayed under the same in-flight place; any other status is judged once its body is
through (a backend whose bodies break after good heads must still open its circuit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backend import Backend
    from .state import BackendState

__all__ = ["Attempt"]


class Attempt:
    __slots__ = ("_closed", "_pending", "_probe", "_state", "backend")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        state: BackendState = backend.state
        self._state = state
        # Taken now, in the same step as the pick: no other request can take the last slot
        # (or the last connection under `max_connections`) in between.
        self._probe = state.breaker.acquire()
        self._pending = True  # no verdict yet
        self._closed = False
        backend.in_flight += 1

    def succeeded(self, now: float, seconds: float) -> None:
        """A complete answer below 500; `seconds` is the head's latency (for `p2c_ewma`)."""
        if not self._pending:
            return
        self._pending = False
        state = self._state
        reporter = state.reporter
        if reporter is not None:
            if self._probe:
                state.breaker.cancel(True)
            reporter.success(state, self._probe)
        else:
            state.breaker.record(True, now, self._probe)
            if state.passive_failures or state.ejections:
                state.passive_success(now)
        if self.backend.track_latency:
            state.observe(seconds, now)

    def failed(self, now: float, *, passive: bool = True) -> None:
        """A connect error, a timeout, a broken response, or a 5xx (`passive`: one that the
        passive checks count, too)."""
        if not self._pending:
            return
        self._pending = False
        state = self._state
        backend = self.backend
        reporter = state.reporter
        if reporter is not None:
            if self._probe:
                state.breaker.cancel(True)
            reporter.failure(state, self._probe, passive)
        else:
            state.breaker.record(False, now, self._probe)
            if passive:
                state.passive_failure(backend.upstream, now, backend.peers)
        if backend.track_latency:
            state.penalise(now)

    def cancelled(self) -> None:
        """Over without a verdict on the backend: its probe slot (if any) is free again."""
        if not self._pending:
            return
        self._pending = False
        self._state.breaker.cancel(self._probe)

    def close(self) -> None:
        """The attempt is over (its answer relayed, or abandoned); safe to call again."""
        if self._closed:
            return
        self._closed = True
        if self._pending:
            self.cancelled()
        self.backend.in_flight -= 1

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
