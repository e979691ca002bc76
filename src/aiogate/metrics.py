"""Every Prometheus object of the gateway, with the contract's names; defined nowhere else.

`prometheus_client` is the official client. With `server.workers > 1` the parent sets
`PROMETHEUS_MULTIPROC_DIR` before the workers start, so their samples land in shared files that
the parent's /metrics aggregates (the library's multiprocess mode).
"""

from __future__ import annotations

import os
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = [
    "ACTIVE_CONNECTIONS",
    "AUTH_FAILURES",
    "BACKEND_HEALTHY",
    "CIRCUIT_STATE",
    "CIRCUIT_TRANSITIONS",
    "CONFIG_RELOADS",
    "CONTENT_TYPE",
    "RATELIMIT_REJECTIONS",
    "REQUESTS",
    "REQUEST_DURATION",
    "UPSTREAM_DURATION",
    "RequestRecorder",
    "exposition",
]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

# Latency buckets from 1 ms to 30 s: a gateway's own overhead sits in the low buckets,
# upstream time in the high ones.
_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

REQUESTS: Final = Counter(
    "aiogate_requests_total",
    "Requests answered, by route, method and status.",
    ["route", "method", "status"],
)
REQUEST_DURATION: Final = Histogram(
    "aiogate_request_duration_seconds",
    "Time from request head received to response finished, by route.",
    ["route"],
    buckets=_BUCKETS,
)
UPSTREAM_DURATION: Final = Histogram(
    "aiogate_upstream_duration_seconds",
    "Time from sending a request upstream to its response head, by upstream and backend.",
    ["upstream", "backend"],
    buckets=_BUCKETS,
)
ACTIVE_CONNECTIONS: Final = Gauge(
    "aiogate_active_connections",
    "Client connections open on the proxy listener.",
    multiprocess_mode="livesum",
)
RATELIMIT_REJECTIONS: Final = Counter(
    "aiogate_ratelimit_rejections_total",
    "Requests rejected with 429, by route and limit dimension.",
    ["route", "dimension"],
)
CIRCUIT_STATE: Final = Gauge(
    "aiogate_circuit_state",
    "Circuit breaker state per backend: 0 closed, 1 half-open, 2 open.",
    ["upstream", "backend"],
    multiprocess_mode="max",
)
CIRCUIT_TRANSITIONS: Final = Counter(
    "aiogate_circuit_transitions_total",
    "Circuit breaker transitions, by target state.",
    ["upstream", "backend", "to"],
)
BACKEND_HEALTHY: Final = Gauge(
    "aiogate_backend_healthy",
    "1 when the backend passes its health checks, else 0.",
    ["upstream", "backend"],
    multiprocess_mode="min",
)
AUTH_FAILURES: Final = Counter(
    "aiogate_auth_failures_total",
    "Rejected credentials, by route and reason.",
    ["route", "reason"],
)
CONFIG_RELOADS: Final = Counter(
    "aiogate_config_reloads_total",
    "Configuration reload attempts, by result (applied or rejected).",
    ["result"],
)


class RequestRecorder:
    """Caches labelled children: `.labels()` hashes its arguments on every call (hot path)."""

    __slots__ = ("_durations", "_requests", "_upstream")

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._durations: dict[str, Histogram] = {}
        self._upstream: dict[tuple[str, str], Histogram] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = REQUESTS.labels(route, method, str(status))
        counter.inc()
        histogram = self._durations.get(route)
        if histogram is None:
            histogram = self._durations[route] = REQUEST_DURATION.labels(route)
        histogram.observe(seconds)

    def upstream(self, upstream: str, backend: str, seconds: float) -> None:
        key = (upstream, backend)
        histogram = self._upstream.get(key)
        if histogram is None:
            histogram = self._upstream[key] = UPSTREAM_DURATION.labels(upstream, backend)
        histogram.observe(seconds)


def exposition() -> bytes:
    """The text exposition for /metrics; aggregates the workers' files in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
