"""Structured logging: structlog JSON lines on stdout, buffered.

Writing and flushing one line per request costs ~8 µs here, so lines go into an in-memory
buffer that is flushed on a short timer, when it grows large, and at shutdown. The access line
(one per request) skips structlog's processor chain and is serialised directly with orjson: it
is the hottest log call by far and its shape is fixed.
"""

from __future__ import annotations

import asyncio
import os
import random
import select
import sys
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, ClassVar, Final, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from .logfields import MAPPERS, Mapper

__all__ = [
    "ACCESS_LOGGER",
    "AUTH_FAILED",
    "AUTH_KEY_INVALID",
    "AUTH_STORE_BAD_RECORD",
    "AUTH_STORE_UNAVAILABLE",
    "JWKS_REFRESHED",
    "JWKS_REFRESH_FAILED",
    "BACKEND_ERROR",
    "CACHE_STORE_RESTORED",
    "CACHE_STORE_UNAVAILABLE",
    "CONFIG_REJECTED",
    "CONFIG_RELOADED",
    "CONFIG_FILE_CHANGED",
    "CONFIG_SOURCE_CONNECTED",
    "CONFIG_SOURCE_DELETED",
    "CONFIG_SOURCE_DISCONNECTED",
    "CONFIG_WATCH_FAILED",
    "CONFIG_WATCH_FILE_MISSING",
    "CONFIG_WATCH_STARTED",
    "CONFIG_WATCH_STOPPED",
    "IP_REJECTED",
    "INTERNAL_ERROR",
    "RATELIMIT_BACKEND_DEGRADED",
    "RATELIMIT_BACKEND_RESTORED",
    "RATELIMIT_REJECTED",
    "RETRY",
    "CONFIG_RESTART_REQUIRED",
    "RUNTIME_DRAIN_TIMEOUT",
    "WORKERS_NOT_READY",
    "WORKER_RELOAD_SLOW",
    "WORKER_ROLLBACK_FAILED",
    "REQUEST",
    "SHUTDOWN_COMPLETE",
    "SHUTDOWN_STARTED",
    "STARTED",
    "TLS_HANDSHAKE_FAILED",
    "WORKER_EXITED",
    "WORKER_HUNG",
    "WORKER_STARTED",
    "HOST_LINK_UP",
    "HOST_LINK_LOST",
    "HOST_VIEW_BAD_MESSAGE",
    "BufferedSink",
    "access",
    "bind_request",
    "configure",
    "flush",
    "get_logger",
]

# Event names: every state change is a named event (DESIGN.md, house style 10).
REQUEST: Final = "request"
CONFIG_RELOADED: Final = "config_reloaded"
CONFIG_REJECTED: Final = "config_rejected"
STARTED: Final = "gateway_started"
CONFIG_RESTART_REQUIRED: Final = "config_restart_required"
RUNTIME_DRAIN_TIMEOUT: Final = "runtime_drain_timeout"
WORKER_RELOAD_SLOW: Final = "worker_reload_slow"
WORKER_ROLLBACK_FAILED: Final = "worker_rollback_failed"
WORKERS_NOT_READY: Final = "workers_not_ready"
SHUTDOWN_STARTED: Final = "shutdown_started"
SHUTDOWN_COMPLETE: Final = "shutdown_complete"
WORKER_STARTED: Final = "worker_started"
WORKER_EXITED: Final = "worker_exited"
#: A worker's event loop stopped pinging the watchdog: it is killed and restarted.
WORKER_HUNG: Final = "worker_hung"
#: `workers > 1`: a worker's link to the supervisor's host view (hostview/).
HOST_LINK_UP: Final = "host_link_up"
HOST_LINK_LOST: Final = "host_link_lost"
HOST_VIEW_BAD_MESSAGE: Final = "host_view_bad_message"
BACKEND_ERROR: Final = "upstream_error"
INTERNAL_ERROR: Final = "internal_error"
RATELIMIT_BACKEND_DEGRADED: Final = "ratelimit_backend_degraded"
RATELIMIT_BACKEND_RESTORED: Final = "ratelimit_backend_restored"
# Upstream pool manager (issue 5): state changes of backends and circuits.
CIRCUIT_STATE_CHANGED: Final = "circuit_state_changed"
BACKEND_HEALTH_CHANGED: Final = "backend_health_changed"
BACKEND_EJECTED: Final = "backend_ejected"
DISCOVERY_CONNECTED: Final = "discovery_connected"
DISCOVERY_DISCONNECTED: Final = "discovery_disconnected"
DISCOVERY_BACKENDS_CHANGED: Final = "discovery_backends_changed"
DISCOVERY_BAD_VALUE: Final = "discovery_bad_value"
DISCOVERY_APPLIED: Final = "discovery_applied"
DISCOVERY_APPLY_FAILED: Final = "discovery_apply_failed"
HEALTH_CHECK_OUTPUT: Final = "health_check_output"
AUTH_FAILED: Final = "auth_failed"
TLS_HANDSHAKE_FAILED: Final = "tls_handshake_failed"
JWKS_REFRESHED: Final = "jwks_refreshed"
JWKS_REFRESH_FAILED: Final = "jwks_refresh_failed"
AUTH_STORE_UNAVAILABLE: Final = "auth_store_unavailable"
AUTH_STORE_BAD_RECORD: Final = "auth_store_bad_record"
AUTH_KEY_INVALID: Final = "auth_key_invalid"
RATELIMIT_REJECTED: Final = "ratelimit_rejected"
CACHE_STORE_UNAVAILABLE: Final = "cache_store_unavailable"
CACHE_STORE_RESTORED: Final = "cache_store_restored"
IP_REJECTED: Final = "ip_rejected"
CONFIG_WATCH_STARTED: Final = "config_watch_started"
CONFIG_WATCH_STOPPED: Final = "config_watch_stopped"
CONFIG_WATCH_FAILED: Final = "config_watch_failed"
CONFIG_WATCH_FILE_MISSING: Final = "config_watch_file_missing"
CONFIG_FILE_CHANGED: Final = "config_file_changed"
#: The etcd config source (`config_source:`): link up/down, and its key deleted.
CONFIG_SOURCE_CONNECTED: Final = "config_source_connected"
CONFIG_SOURCE_DISCONNECTED: Final = "config_source_disconnected"
CONFIG_SOURCE_DELETED: Final = "config_source_deleted"
#: An owned background task ended with an exception (fields: task, error); see tasks.py.
TASK_FAILED: Final = "background_task_failed"
#: An upstream attempt failed and another follows (fields: upstream, backend, attempt, reason,
#: delay_ms; the request_id and trace_id are bound to the line).
RETRY: Final = "retry"

ACCESS_LOGGER: Final = "aiogate.access"

_LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_FLUSH_INTERVAL: Final = 0.1
_FLUSH_SIZE: Final = 64 * 1024

# (request_id, trace_id) of the request being served by the current task: every structlog line
# logged while serving carries both. aiohttp runs each request in a task of its own, with its
# own copy of the context, so the binding ends with the request without being reset.
_REQUEST_IDS: ContextVar[tuple[str, str] | None] = ContextVar("aiogate_request_ids", default=None)


def bind_request(request_id: str, trace_id: str = "") -> None:
    """Bind the ids of the request served by this task to every line it logs."""
    _REQUEST_IDS.set((request_id, trace_id))


def _add_request_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    ids = _REQUEST_IDS.get()
    if ids is not None:
        event_dict.setdefault("request_id", ids[0])
        if ids[1]:
            event_dict.setdefault("trace_id", ids[1])
    return event_dict


class BufferedSink:
    """Collects encoded lines and writes them to a file descriptor in batches.

    A flush is scheduled on the running loop when the first line lands in an empty buffer; with
    no loop (the CLI, or after shutdown) every line is written through at once.
    """

    __slots__ = ("_buffer", "_fd", "_max_write", "_scheduled")

    def __init__(self, fd: int, *, whole_lines: bool = False) -> None:
        self._fd = fd
        self._buffer = bytearray()
        self._scheduled = False
        # Workers share one stdout: writes of at most PIPE_BUF bytes cut at a newline are atomic
        # on a pipe, so lines of different workers never interleave mid-line.
        self._max_write = select.PIPE_BUF if whole_lines else 0

    def write(self, line: bytes) -> None:
        buffer = self._buffer
        buffer += line
        buffer += b"\n"
        if len(buffer) >= _FLUSH_SIZE:
            self.flush()
        elif not self._scheduled:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._scheduled = True
            loop.call_later(_FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        self._scheduled = False
        buffer = self._buffer
        if not buffer:
            return
        done = 0
        total = len(buffer)
        try:
            with memoryview(buffer) as view:
                while done < total:
                    done += os.write(self._fd, view[done : self._piece_end(buffer, done)])
        except BlockingIOError:
            pass  # a non-blocking stdout whose reader is slow: the rest waits for the next flush
        except OSError:
            done = total  # stdout is gone: logging must never take the gateway down
        del buffer[:done]

    def _piece_end(self, buffer: bytearray, start: int) -> int:
        """End of the next write: everything, or whole lines within PIPE_BUF for workers."""
        limit = self._max_write
        end = len(buffer)
        if not limit or end - start <= limit:
            return end
        cut = buffer.rfind(b"\n", start, start + limit)
        return cut + 1 if cut >= start else start + limit


class _SinkLogger:
    """structlog's wrapped logger: hands rendered lines to the current sink.

    Always the *current* one: a logger obtained before a reload (``configure``) must not keep
    writing into the replaced sink, whose buffer nobody flushes at exit any more.
    """

    __slots__ = ()

    def msg(self, message: str | bytes) -> None:
        _State.sink.write(message if isinstance(message, bytes) else message.encode())

    debug = info = warning = warn = error = critical = exception = log = msg


class _State:
    sink: BufferedSink = BufferedSink(1)
    level: int = _LEVELS["info"]
    levels: Mapping[str, int] = {}
    json: bool = True
    #: `logging.format: ecs | otel`: renames the fields of every JSON line; None for `json`.
    mapper: Mapper | None = None
    access_enabled: bool = True
    #: Share of non-error access lines written (1.0: all).
    access_sample: float = 1.0
    processors: ClassVar[list[Processor]] = []
    cache: ClassVar[dict[str, Any]] = {}
    ts_second: int = -1
    ts_prefix: str = ""


def _timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    event_dict["timestamp"] = _now_iso()
    return event_dict


def _now_iso() -> str:
    """ISO-8601 UTC with milliseconds; the date part is cached per second (hot path)."""
    now = time.time()
    second = int(now)
    if second != _State.ts_second:
        _State.ts_second = second
        _State.ts_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{_State.ts_prefix}.{int((now - second) * 1000):03d}Z"


def _level_for(name: str) -> int:
    """The most specific configured level: `aiogate.proxy` inherits from `aiogate`."""
    levels = _State.levels
    probe = name
    while probe:
        if probe in levels:
            return levels[probe]
        probe = probe.rpartition(".")[0]
    return _State.level


def configure(
    *,
    level: str = "info",
    fmt: str = "json",
    levels: Mapping[str, str] | None = None,
    access_log: bool = True,
    access_sample: float = 1.0,
    stream: TextIO | None = None,
    whole_lines: bool = False,
) -> None:
    """(Re)configure logging; safe to call on every reload."""
    previous = _State.sink
    previous.flush()
    out = stream if stream is not None else sys.stdout
    _State.sink = BufferedSink(out.fileno(), whole_lines=whole_lines)
    _State.level = _LEVELS[level]
    _State.levels = {name: _LEVELS[lvl] for name, lvl in (levels or {}).items()}
    _State.json = fmt != "console"
    _State.mapper = MAPPERS.get(fmt)
    _State.access_enabled = access_log and _level_for(ACCESS_LOGGER) <= _LEVELS["info"]
    _State.access_sample = access_sample
    renderer: Processor
    if _State.json:
        renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    _State.processors = _processors(renderer, _State.mapper)
    _State.cache = {}


def _processors(renderer: Processor, mapper: Mapper | None = None) -> list[Processor]:
    processors: list[Processor] = [
        _add_request_ids,
        structlog.processors.add_log_level,
        _timestamp,
        structlog.processors.format_exc_info,
    ]
    if mapper is not None:
        processors.append(lambda _, __, event_dict: mapper(event_dict))
    processors.append(renderer)
    return processors


def get_logger(name: str) -> Any:
    """A bound logger for `name`, filtered at that name's configured level.

    Typed `Any` because structlog's filtering loggers are generated classes; call it where the
    line is logged (cheap: cached) so a reload's new levels apply at once.
    """
    logger = _State.cache.get(name)
    if logger is None:
        if not _State.processors:
            # Used before configure() (a library caller, a test): JSON lines, the default.
            _State.processors = _processors(
                structlog.processors.JSONRenderer(serializer=orjson.dumps)
            )
        logger = structlog.wrap_logger(
            _SinkLogger(),
            processors=_State.processors,
            wrapper_class=structlog.make_filtering_bound_logger(_level_for(name)),
        ).bind(logger=name)
        _State.cache[name] = logger
    return logger


def access(fields: dict[str, Any]) -> None:
    """Write one access line (`event: request`). `fields` is consumed.

    With sampling, a share of the lines of responses below 400 is dropped; errors (4xx, 5xx)
    are always written.
    """
    if not _State.access_enabled:
        return
    sample = _State.access_sample
    if sample < 1.0 and fields["status"] < 400 and _random() >= sample:
        return
    if _State.json:
        fields["event"] = REQUEST
        fields["level"] = "info"
        fields["logger"] = ACCESS_LOGGER
        fields["timestamp"] = _now_iso()
        mapper = _State.mapper
        _State.sink.write(orjson.dumps(fields if mapper is None else mapper(fields)))
    else:
        get_logger(ACCESS_LOGGER).info(REQUEST, **fields)


_random = random.random


def flush() -> None:
    _State.sink.flush()
