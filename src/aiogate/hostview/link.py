"""A worker's end of the host view: follow the supervisor's backend state, report outcomes.

While the link is up, the worker's backend states are driven by the supervisor's messages
(health from the host's one set of active checks, circuits and ejections from every worker's
outcomes), and each attempt's verdict is reported instead of judged: a success is counted in a
buffer flushed every `_FLUSH_EVERY` seconds by a timer, a failure is written at once, so the
request path never awaits the link.

When the link drops (supervisor restarting its socket, a broken line), the worker keeps the last
state it was told and judges its own outcomes again, as a single process would, until it
reconnects (with back-off) and the supervisor's snapshot replaces what it decided meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from .. import log
from ..tasks import BackgroundTask
from ..upstream.state import BackendState, OutcomeReporter, StateRegistry
from .protocol import (
    BackendView,
    ProtocolError,
    Snapshot,
    StateChange,
    decode,
    encode_failure,
    encode_successes,
)

__all__ = ["HostLink"]

#: How long successes are coalesced before they are sent (one message per window).
_FLUSH_EVERY: Final = 0.1
_MIN_BACKOFF: Final = 0.05
_MAX_BACKOFF: Final = 2.0
#: The longest line read (a snapshot of thousands of backends is well below it).
LINE_LIMIT: Final = 16 * 1024 * 1024

Found = Mapping[str, tuple[tuple[str, int], ...]]


class HostLink:
    """Connects to the supervisor's host-view socket at `path` and keeps reconnecting."""

    def __init__(self, path: str, on_found: Callable[[Found], None] | None = None) -> None:
        self._path = path
        #: Told the discovered backends of every snapshot (the worker's discovery overlay).
        self.on_found = on_found
        self._registry: StateRegistry | None = None
        #: The last view of every backend and when it came: applied again to the entries of
        #: a Runtime built later (a reload, a discovery change).
        self._views: dict[tuple[str, str], tuple[BackendView, float]] = {}
        self._writer: asyncio.StreamWriter | None = None
        #: Successes not sent yet, by backend state (an identity hash: no key built per request).
        self._pending: dict[BackendState, list[int]] = {}
        self._flush_handle: asyncio.TimerHandle | None = None
        self._task = BackgroundTask("host-link")
        self._first = asyncio.Event()
        #: Connections made so far (a test reads it to see a reconnect).
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._writer is not None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._task.start(self._run())

    async def first_snapshot(self, seconds: float) -> bool:
        """Wait (at most `seconds`) for the first snapshot: whether it came."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first.wait(), seconds)
        return self._first.is_set()

    async def close(self) -> None:
        self._flush()
        await self._task.stop()
        self._detach()

    def attach(self, registry: StateRegistry) -> None:
        """`registry` (a Runtime that just started) is the one to drive from now on."""
        self._registry = registry
        now = asyncio.get_running_loop().time()
        self._apply([view for view, _ in self._views.values()], now, stale=True)
        self._set_reporter(self if self.connected else None)

    # -- OutcomeReporter (the request path: never awaits) --------------------------------------
    def success(self, state: BackendState, probe: bool) -> None:
        counts = self._pending.get(state)
        if counts is not None:
            counts[0] += 1
            if probe:
                counts[1] += 1
            return
        self._pending[state] = [1, int(probe)]
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_later(_FLUSH_EVERY, self._flush)

    def failure(self, state: BackendState, probe: bool, passive: bool) -> None:
        counts = self._pending.pop(state, None)
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        name, label = state.upstream.name, state.label
        if counts is not None:  # this worker's earlier successes first: its order is kept
            writer.write(encode_successes([(name, label, counts[0], counts[1])]))
        writer.write(encode_failure(name, label, probe=probe, passive=passive))

    def _flush(self) -> None:
        self._flush_handle = None
        pending, self._pending = self._pending, {}
        writer = self._writer
        if pending and writer is not None and not writer.is_closing():
            items = [(s.upstream.name, s.label, n, p) for s, (n, p) in pending.items()]
            writer.write(encode_successes(items))

    # -- the connection ------------------------------------------------------------------------
    async def _run(self) -> None:
        logger = log.get_logger("aiogate.hostview")
        delay = _MIN_BACKOFF
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self._path, limit=LINE_LIMIT)
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF)
                continue
            connects = self.connects
            try:
                await self._follow(reader, writer)
                reason = "closed by the supervisor"
            except Exception as exc:  # whatever broke: reconnect, start over
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._detach()
                writer.close()
            logger.warning(log.HOST_LINK_LOST, reason=reason, socket=self._path)
            # The back-off starts over only after a link that worked (its snapshot was
            # valid): a supervisor that answers with what this worker cannot read (another
            # protocol version) is not retried every 50 ms forever.
            delay = _MIN_BACKOFF if self.connects > connects else min(delay * 2, _MAX_BACKOFF)
            await asyncio.sleep(delay)

    async def _follow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = decode(await reader.readline())
        if not isinstance(first, Snapshot):
            raise ProtocolError("the first message is not a snapshot")
        self.connects += 1
        self._on_snapshot(first)
        self._writer = writer
        self._set_reporter(self)
        log.get_logger("aiogate.hostview").info(
            log.HOST_LINK_UP, socket=self._path, backends=len(first.backends)
        )
        while line := await reader.readline():
            message = decode(line)
            now = asyncio.get_running_loop().time()
            if isinstance(message, StateChange):
                for view in message.backends:
                    self._views[view.key] = (view, now)
                self._apply(message.backends, now)
            elif isinstance(message, Snapshot):
                self._on_snapshot(message)
            else:
                raise ProtocolError(f"unexpected message {type(message).__name__}")

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        now = asyncio.get_running_loop().time()
        self._views = {view.key: (view, now) for view in snapshot.backends}
        self._apply(snapshot.backends, now)
        if self.on_found is not None:
            self.on_found(snapshot.found)
        self._first.set()

    def _apply(self, views: Iterable[BackendView], now: float, *, stale: bool = False) -> None:
        registry = self._registry
        if registry is None:
            return
        for view in views:
            upstream = registry.upstreams.get(view.upstream)
            entry = upstream.backends.get(view.backend) if upstream is not None else None
            if entry is None:
                continue  # not in this worker's config (yet)
            reopen_in, ejected_for = view.reopen_in, view.ejected_for
            if stale:  # relative times count from when the view came
                age = now - self._views[view.key][1]
                reopen_in, ejected_for = reopen_in - age, ejected_for - age
            entry.follow(view.healthy, view.circuit, reopen_in, ejected_for, now)

    def _set_reporter(self, reporter: OutcomeReporter | None) -> None:
        registry = self._registry
        if registry is None:
            return
        for upstream in registry.upstreams.values():
            for entry in upstream.backends.values():
                entry.reporter = reporter

    def _detach(self) -> None:
        """The link is down: keep the last state, judge outcomes locally until it is back."""
        self._writer = None
        self._pending.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._set_reporter(None)
