"""The upstream side of the reverse proxy: a keep-alive connection pool per backend origin.

Usage::

    pool = ConnectionPool(Origin("http", "127.0.0.1", 9001))
    resp = await pool.request("GET", "/users?id=1", headers, None, deadline=loop.time() + 30)
    try:
        async for chunk in resp.iter_chunks():
            ...
    finally:
        resp.release()
    await pool.close()

The wire protocol lives in `http1.py` (request framing in `head.py`, errors in `errors.py`);
this module does pooling, connecting and the one stale-connection retry (idempotent requests
with a replayable body only). Errors map to gateway
statuses: `UpstreamConnectError` and `UpstreamProtocolError` -> 502, `UpstreamTimeoutError` ->
504. ValueError means the caller passed something that cannot be framed safely (bad header,
body length mismatch).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeoutError,
    _StaleConnectionError,
)
from .head import BodyChunks, RequestBody, encode_head
from .http1 import Http1Connection, UpstreamResponse
from .retry import IDEMPOTENT_METHODS

__all__ = [
    "BodyChunks",
    "ConnectionPool",
    "Origin",
    "RequestBody",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeoutError",
]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a backend listens: `http`, or `https` (TLS through the pool's SSL context)."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


class ConnectionPool:
    """Keep-alive HTTP/1.1 connections to one origin; one exchange per connection at a time.

    Idle connections are reused newest first (LIFO keeps a warm core and lets the rest age
    out) and dropped when older than `idle_timeout`, checked by timestamp on checkout and
    checkin rather than with a timer per connection, or as soon as the server closes them.
    There is no cap on connections in use: admission control is the caller's.
    """

    __slots__ = (
        "_closed",
        "_connect_timeout",
        "_idle",
        "_idle_timeout",
        "_in_use",
        "_max_idle",
        "_server_name",
        "_ssl",
        "origin",
    )

    def __init__(
        self,
        origin: Origin,
        *,
        max_idle: int = 64,
        idle_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> None:
        if origin.scheme not in ("http", "https"):
            raise ValueError(f"unsupported upstream scheme {origin.scheme!r}")
        self.origin = origin
        # https: verify against the system trust store unless the caller brings a context.
        self._ssl = ssl_context or (
            ssl.create_default_context() if origin.scheme == "https" else None
        )
        self._server_name = server_name or origin.host
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._idle: list[Http1Connection] = []  # oldest first; checkout pops the newest
        self._in_use = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"<ConnectionPool {self.origin} in_use={self._in_use} idle={len(self._idle)}>"

    @property
    def in_use(self) -> int:
        """Exchanges in flight: connecting, sending, or with a response not yet complete."""
        return self._in_use

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of an https origin (health checks connect with the same one)."""
        return self._ssl

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: RequestBody | None,
        *,
        deadline: float,
        read_timeout: float | None = None,
        connect_timeout: float | None = None,
        upgrade: bool = False,
    ) -> UpstreamResponse:
        """Send a request; return once the final response head is in.

        `deadline` (absolute `loop.time()`) bounds connecting, sending, the head and every
        later body read; `read_timeout` the wait for the head once the request is out. The
        response must be released (`release()`), or read to its end. `upgrade`: a `101` answer
        is accepted, and its connection leaves the pool (`Http1Connection.take_over`).
        """
        if self._closed:
            raise UpstreamConnectError(f"connection pool for {self.origin} is closed")
        # Before any connection is touched, so a bad header costs nothing upstream.
        head = encode_head(method, target, headers, body, upgrade=upgrade)
        loop = asyncio.get_running_loop()
        if deadline <= loop.time():
            raise UpstreamTimeoutError("deadline passed before the request was sent")
        is_head = method == "HEAD"
        conn = self._checkout(loop)
        if conn is not None:
            self._in_use += 1
            try:
                return await conn.exchange(
                    head, body, is_head, deadline, read_timeout, upgrade=upgrade
                )
            except _StaleConnectionError:
                # The server closed the idle connection as we reused it. Usually it never saw
                # the request, but it may have acted on it and died before answering: only a
                # request that is safe to repeat (RFC 9110 §9.2.2), with a body that can be sent
                # again (a stream is consumed), is replayed here. Anything else goes to the
                # caller, whose retry policy knows the request was written.
                if method not in IDEMPOTENT_METHODS or (body is not None and not body.replayable):
                    raise
        conn = await self._connect(loop, deadline, connect_timeout)
        return await conn.exchange(head, body, is_head, deadline, read_timeout, upgrade=upgrade)

    async def close(self) -> None:
        """Close idle connections; in-flight ones close when their exchange ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        # Wait for the transports to be gone, so nothing is left for the loop to warn about.
        for conn in idle:
            await conn.wait_closed()

    # -- internals -----------------------------------------------------------------------------

    def _checkout(self, loop: asyncio.AbstractEventLoop) -> Http1Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = loop.time()
        while idle:
            conn = idle.pop()
            if now - conn.idle_since > self._idle_timeout:
                # LIFO: everything below is older still.
                conn.close()
                for older in idle:
                    older.close()
                idle.clear()
                return None
            if conn.usable:
                return conn
            conn.close()
        return None

    async def _connect(
        self,
        loop: asyncio.AbstractEventLoop,
        deadline: float,
        connect_timeout: float | None = None,
    ) -> Http1Connection:
        origin = self.origin
        connect_timeout = connect_timeout or self._connect_timeout
        limit = loop.time() + connect_timeout
        connect_deadline = min(deadline, limit)
        self._in_use += 1
        timeout = asyncio.timeout_at(connect_deadline)
        try:
            async with timeout:
                transport, conn = await loop.create_connection(
                    lambda: Http1Connection(self, loop),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                    server_hostname=self._server_name if self._ssl is not None else None,
                )
        except TimeoutError as exc:
            self._in_use -= 1
            if not timeout.expired():  # an OS-level ETIMEDOUT, not our timer
                raise UpstreamConnectError(f"cannot connect to {origin}: {exc}") from exc
            if deadline < limit:
                raise UpstreamTimeoutError(f"deadline passed while connecting to {origin}") from exc
            raise UpstreamConnectError(
                f"connect to {origin} timed out after {connect_timeout:g}s"
            ) from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake (all OSErrors)
            self._in_use -= 1
            raise UpstreamConnectError(f"cannot connect to {origin}: {exc}") from exc
        except BaseException:
            self._in_use -= 1
            raise
        conn.attach(transport)
        return conn

    # -- called by Http1Connection -------------------------------------------------------------

    def _exchange_done(self, conn: Http1Connection, reusable: bool) -> None:
        self._in_use -= 1
        if not reusable:
            return  # the connection already closed itself
        if self._closed:
            conn.close()
            return
        idle = self._idle
        now = conn._loop.time()
        # Age out from the bottom here too: under steady load the LIFO top is always fresh and
        # checkout would never look at the old ones.
        while idle and now - idle[0].idle_since > self._idle_timeout:
            idle.pop(0).close()
        if self._max_idle <= 0:  # reuse disabled: no connection is kept
            conn.close()
            return
        if len(idle) >= self._max_idle:
            idle.pop(0).close()
        conn.idle_since = now
        idle.append(conn)

    def _connection_lost(self, conn: Http1Connection) -> None:
        with contextlib.suppress(ValueError):  # not idle: nothing to forget
            self._idle.remove(conn)
