"""One builder for the access line, so every line carries the same fields.

A request refused before it could be parsed has no method, path or route: those are "-" / "",
and every other field is still present (a log pipeline can rely on the schema).
"""

from __future__ import annotations

from . import log

__all__ = ["write_access"]


def write_access(
    *,
    request_id: str,
    status: int,
    duration: float,
    method: str = "-",
    path: str = "-",
    route: str = "",
    upstream: str = "",
    backend: str = "",
    client_ip: str = "",
    consumer: str | None = None,
    bytes_in: int = 0,
    bytes_out: int = 0,
    trace_id: str = "",
) -> None:
    """Write the `event: request` line of one request (sampling applies, see log.access)."""
    log.access(
        {
            "request_id": request_id,
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": round(duration * 1000.0, 3),
            "upstream": upstream,
            "backend": backend,
            "client_ip": client_ip,
            "consumer": consumer,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "trace_id": trace_id,
        }
    )
