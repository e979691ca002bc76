"""The upstream client's errors, and the gateway status each one maps to."""

from __future__ import annotations

__all__ = [
    "UpstreamClosedError",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamTimeoutError",
]


class UpstreamError(Exception):
    """Base of every failure to get a response from an upstream."""


class UpstreamConnectError(UpstreamError):
    """Refused, unreachable, DNS failure or connect timeout: the gateway answers 502."""


class UpstreamTimeoutError(UpstreamError):
    """The exchange's deadline passed: the gateway answers 504."""


class UpstreamProtocolError(UpstreamError):
    """Malformed or unsupported response, or the upstream closed too early: 502."""


class UpstreamClosedError(UpstreamProtocolError):
    """The upstream closed (or reset) a fresh connection before a single response byte: the
    signature of a backend that died or restarted with the request in flight."""


class _StaleConnectionError(UpstreamProtocolError):
    """A reused keep-alive connection died before a single response byte arrived.

    Usually the server closed it while it sat idle and the FIN crossed our request; the pool
    replays it once on a fresh connection only if it is idempotent with a replayable body (the
    request was written: the server may have acted on it), else it reaches the caller.
    """
