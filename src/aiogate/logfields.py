"""Log lines with the field names of Elastic Common Schema or of OpenTelemetry.

`logging.format: ecs` or `otel` renames the fields of every JSON line (the access line and
the events) so that a pipeline built for one of those schemas ingests them without a mapping
of its own. `json` (the default) never comes here: its lines stay exactly as they are.

- ECS (https://www.elastic.co/guide/en/ecs/current/): flat dotted keys (`http.request.method`),
  `@timestamp`, `log.level`, `message`; `event.duration` in nanoseconds. Fields without an
  ECS name go under `aiogate.` (ECS's advice for custom fields).
- OpenTelemetry log data model (https://opentelemetry.io/docs/specs/otel/logs/data-model/):
  `Timestamp` (ns since the epoch), `SeverityText`/`SeverityNumber`, `Body` (the event name),
  `TraceId`, `InstrumentationScope`, `Resource`, and the rest in `Attributes`, named by the
  semantic conventions where there is one (`http.request.method`, `url.path`, `http.route`,
  `http.response.status_code`, `client.address`) and `aiogate.*` otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = ["MAPPERS", "Mapper", "to_ecs", "to_otel"]

Mapper = Callable[[Mapping[str, Any]], dict[str, Any]]

ECS_VERSION: Final = "8.11.0"

_ECS_NAMES: Final[Mapping[str, str]] = {
    "timestamp": "@timestamp",
    "level": "log.level",
    "logger": "log.logger",
    "event": "message",
    "request_id": "http.request.id",
    "trace_id": "trace.id",
    "client_ip": "client.ip",
    "method": "http.request.method",
    "path": "url.path",
    "status": "http.response.status_code",
    "bytes_in": "http.request.body.bytes",
    "bytes_out": "http.response.body.bytes",
    "consumer": "user.name",
    "exception": "error.stack_trace",
}

_OTEL_ATTRIBUTES: Final[Mapping[str, str]] = {
    "method": "http.request.method",
    "path": "url.path",
    "route": "http.route",
    "status": "http.response.status_code",
    "client_ip": "client.address",
    "bytes_in": "http.request.body.size",
    "bytes_out": "http.response.body.size",
    "exception": "exception.stacktrace",
}
# Severity numbers of the OTel data model (the first of each range).
_SEVERITY: Final[Mapping[str, int]] = {
    "debug": 5,
    "info": 9,
    "warning": 13,
    "error": 17,
    "critical": 21,
}


def to_ecs(fields: Mapping[str, Any]) -> dict[str, Any]:
    """One line's fields under their ECS names."""
    out: dict[str, Any] = {"ecs.version": ECS_VERSION}
    for key, value in fields.items():
        if key == "duration_ms":
            out["event.duration"] = round(value * 1_000_000)  # ECS: nanoseconds
        elif key == "trace_id" and not value:
            continue  # no trace: leave `trace.id` out rather than empty
        else:
            out[_ECS_NAMES.get(key) or f"aiogate.{key}"] = value
    event = fields.get("event")
    if event is not None:
        out["event.action"] = event
    return out


def to_otel(fields: Mapping[str, Any]) -> dict[str, Any]:
    """One line's fields as an OpenTelemetry log record."""
    level = str(fields.get("level", "info"))
    record: dict[str, Any] = {
        "Timestamp": str(time.time_ns()),  # a JSON string: 64-bit integers lose precision
        "SeverityText": level.upper(),
        "SeverityNumber": _SEVERITY.get(level, 9),
        "Body": fields.get("event", ""),
        "Resource": {"service.name": "aiogate"},
        "InstrumentationScope": {"Name": fields.get("logger", "aiogate")},
    }
    trace_id = fields.get("trace_id")
    if trace_id:
        record["TraceId"] = trace_id
    attributes: dict[str, Any] = {}
    for key, value in fields.items():
        if key in ("event", "level", "logger", "timestamp", "trace_id"):
            continue
        attributes[_OTEL_ATTRIBUTES.get(key) or f"aiogate.{key}"] = value
    record["Attributes"] = attributes
    return record


#: `logging.format` -> the mapper of its lines; `json` and `console` have none.
MAPPERS: Final[Mapping[str, Mapper]] = {"ecs": to_ecs, "otel": to_otel}
