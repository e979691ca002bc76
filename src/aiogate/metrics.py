"""Every Prometheus object of the gateway, with the contract's names; defined nowhere else.

`prometheus_client` is the official client. With `server.workers > 1` the parent sets
`PROMETHEUS_MULTIPROC_DIR` before the workers start, so their samples land in shared files that
the parent's /metrics aggregates (the library's multiprocess mode).
"""

from __future__ import annotations

import hashlib
import os
import platform
import time
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# `*_created` series (one per counter and histogram child) double the series count for a value
# nobody graphs; the switch must be thrown before the first metric below is created.
disable_created_metrics()  # type: ignore[no-untyped-call]

__all__ = [
    "ACTIVE_CONNECTIONS",
    "WEBSOCKET_CONNECTIONS",
    "AUTH_FAILURES",
    "BACKEND_HEALTHY",
    "BUILD_INFO",
    "CACHE_BYTES",
    "CACHE_EVICTIONS",
    "CACHE_REQUESTS",
    "TLS_HANDSHAKE_FAILURES",
    "CIRCUIT_STATE",
    "CIRCUIT_TRANSITIONS",
    "CONFIG_HASH",
    "CONFIG_LOADED_TIME",
    "CONFIG_RELOADS",
    "CONNECTIONS_REFUSED",
    "CONTENT_TYPE",
    "DISCOVERY_BACKENDS",
    "DISCOVERY_UP",
    "ERRORS",
    "IP_REJECTIONS",
    "RATELIMIT_BACKEND_UP",
    "RATELIMIT_REJECTIONS",
    "REQUESTS",
    "REQUEST_DURATION",
    "UPSTREAM_DURATION",
    "UPSTREAM_IN_FLIGHT",
    "RECORDER",
    "RequestRecorder",
    "config_loaded",
    "exposition",
    "set_build_info",
]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

# Latency buckets from 0.5 ms to 10 s: a gateway's own overhead sits in the low buckets,
# upstream time in the high ones (anything slower lands in +Inf; timeouts are errors anyway).
_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
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
WEBSOCKET_CONNECTIONS: Final = Gauge(
    "aiogate_websocket_connections",
    "WebSocket connections open through the gateway, by route.",
    ["route"],
    multiprocess_mode="livesum",
)
CONNECTIONS_REFUSED: Final = Counter(
    "aiogate_connections_refused_total",
    "Client connections closed unserved as soon as they were accepted, by reason.",
    ["reason"],
)
RATELIMIT_REJECTIONS: Final = Counter(
    "aiogate_ratelimit_rejections_total",
    "Requests rejected with 429, by route and limit dimension.",
    ["route", "dimension"],
)
RATELIMIT_BACKEND_UP: Final = Gauge(
    "aiogate_ratelimit_backend_up",
    "1 while the shared rate-limit backend answers, 0 while limits fall back to local buckets.",
    ["backend"],
    multiprocess_mode="min",
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
UPSTREAM_RETRIES: Final = Counter(
    "aiogate_upstream_retries_total",
    "Upstream attempts after the first, by upstream and reason (connect, reset, timeout, "
    "broken, status); "
    "`budget_exhausted` counts retries the retry budget refused (too many retries in flight).",
    ["upstream", "reason"],
)
BACKEND_EJECTIONS: Final = Counter(
    "aiogate_backend_ejections_total",
    "Passive health check ejections, by upstream and backend.",
    ["upstream", "backend"],
)
IP_REJECTIONS: Final = Counter(
    "aiogate_ip_rejections_total",
    "Requests rejected with 403 by an IP allow/deny rule, by route.",
    ["route"],
)
TLS_HANDSHAKE_FAILURES: Final = Counter(
    "aiogate_tls_handshake_failures_total",
    "TLS handshakes on the proxy listener that did not complete, by reason.",
    ["reason"],
)
AUTH_FAILURES: Final = Counter(
    "aiogate_auth_failures_total",
    "Rejected credentials, by route and reason.",
    ["route", "reason"],
)
UNDERSCORE_HEADERS: Final = Counter(
    "aiogate_underscore_headers_total",
    "Requests whose header names contained '_', by what server.underscore_headers did "
    "(dropped: forwarded without those headers; rejected: answered 400).",
    ["action"],
)
CONFIG_RELOADS: Final = Counter(
    "aiogate_config_reloads_total",
    "Configuration reload attempts, by result (applied or rejected).",
    ["result"],
)
# Set only by the process that owns the config (the single daemon, or the supervisor): "max"
# over the per-process files then is that process's value (workers leave theirs at 0).
CONFIG_HASH: Final = Gauge(
    "aiogate_config_hash",
    "The loaded config file's SHA-256, first 48 bits as a number (changes with every edit).",
    multiprocess_mode="max",
)
CONFIG_LOADED_TIME: Final = Gauge(
    "aiogate_config_last_load_timestamp_seconds",
    "Unix time the running config was loaded (at start or by a successful reload).",
    multiprocess_mode="max",
)
ERRORS: Final = Counter(
    "aiogate_errors_total",
    "Error responses made by the gateway itself, by kind (the JSON body's `error` code).",
    ["kind"],
)
UPSTREAM_IN_FLIGHT: Final = Gauge(
    "aiogate_upstream_in_flight",
    "Requests sent to a backend and not yet answered (head), by upstream and backend.",
    ["upstream", "backend"],
    multiprocess_mode="livesum",
)
BUILD_INFO: Final = Gauge(
    "aiogate_build_info",
    "Always 1; the labels say which aiogate and Python are running.",
    ["version", "python"],
    multiprocess_mode="max",
)
DISCOVERY_BACKENDS: Final = Gauge(
    "aiogate_discovery_backends",
    "Backends of an upstream currently registered in service discovery (etcd).",
    ["upstream"],
    multiprocess_mode="livemax",
)
DISCOVERY_UP: Final = Gauge(
    "aiogate_discovery_up",
    "1 while every discovery source (etcd watch) is connected, 0 while one is retrying.",
    multiprocess_mode="livemin",
)

CACHE_REQUESTS: Final = Counter(
    "aiogate_cache_requests_total",
    "Requests on routes with a response cache, by route and result (hit, miss, bypass).",
    ["route", "result"],
)
CACHE_EVICTIONS: Final = Counter(
    "aiogate_cache_evictions_total",
    "Fresh entries the memory cache dropped to stay within its bounds, by route.",
    ["route"],
)
CACHE_BYTES: Final = Gauge(
    "aiogate_cache_bytes",
    "Bytes held by a route's memory cache (bodies and headers).",
    ["route"],
    multiprocess_mode="livesum",
)


class RequestRecorder:
    """Caches labelled children: `.labels()` hashes its arguments on every call (hot path)."""

    __slots__ = ("_durations", "_errors", "_in_flight", "_requests", "_upstream")

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._durations: dict[str, Histogram] = {}
        self._upstream: dict[tuple[str, str], Histogram] = {}
        self._errors: dict[str, Counter] = {}
        self._in_flight: dict[tuple[str, str], Gauge] = {}

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

    def error(self, kind: str) -> None:
        counter = self._errors.get(kind)
        if counter is None:
            counter = self._errors[kind] = ERRORS.labels(kind)
        counter.inc()

    def in_flight(self, upstream: str, backend: str) -> Gauge:
        """The in-flight gauge of one backend: `inc()` when sending, `dec()` when answered."""
        key = (upstream, backend)
        gauge = self._in_flight.get(key)
        if gauge is None:
            gauge = self._in_flight[key] = UPSTREAM_IN_FLIGHT.labels(upstream, backend)
        return gauge


#: The process-wide recorder: labelled children outlive reloads and are shared by every module.
RECORDER: Final = RequestRecorder()


def config_loaded(data: bytes) -> None:
    """Publish the hash and load time of the config file just applied (its exact bytes)."""
    CONFIG_HASH.set(int.from_bytes(hashlib.sha256(data).digest()[:6], "big"))
    CONFIG_LOADED_TIME.set(time.time())


def set_build_info() -> None:
    from . import __version__

    BUILD_INFO.labels(__version__, platform.python_version()).set(1)


def exposition() -> bytes:
    """The text exposition for /metrics; aggregates the workers' files in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
