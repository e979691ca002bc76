"""Log lines of the real daemon: access line fields, ids bound while serving, sampling, levels,
the config_reloaded diff summary."""

from __future__ import annotations

import json
import signal
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway, wait_until
from gwconfigs import basic_config
from otlp_receiver import OtlpReceiver

ACCESS_FIELDS = {"event", "request_id", "method", "path", "route", "status", "duration_ms",
                 "upstream", "backend", "client_ip", "trace_id", "level", "timestamp"}  # fmt: skip


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    yield server
    server.stop()


def call(gw: Gateway, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(gw.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            resp.read()
            return int(resp.status), resp.headers["X-Request-ID"]
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code), exc.headers["X-Request-ID"]


def line_of(gw: Gateway, event: str, request_id: str) -> dict[str, Any]:
    wait_until(
        lambda: any(e.get("request_id") == request_id for e in gw.events(event)),
        what=f"{event} of {request_id}",
    )
    return next(e for e in gw.events(event) if e.get("request_id") == request_id)


def guarded_config(backends: BackendThread, **extra: Any) -> dict[str, Any]:
    config = basic_config(backends, **extra)
    config["auth"] = {"api_key": {"header": "X-API-Key", "keys": [{"key": "k-1", "consumer": "a"}]}}
    config["routes"] = [
        *config["routes"],
        {"path": "/private", "upstream": "user-service", "auth": {"type": "api_key"}},
        {"path": "/limited", "upstream": "user-service",
         "rate_limit": {"requests": 1, "window": "60s"}},
    ]  # fmt: skip
    return config


def test_access_line_fields(backends: BackendThread, make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway(basic_config(backends))
    status, request_id = call(gw, "/api/users/9?x=1", {"X-Request-ID": "req-abc.1"})
    assert (status, request_id) == (200, "req-abc.1")
    line = line_of(gw, "request", "req-abc.1")
    assert line.keys() >= ACCESS_FIELDS
    assert line["method"] == "GET"
    assert line["path"] == "/api/users/9"
    assert line["route"] == "/api/users"
    assert line["status"] == 200
    assert line["upstream"] == "user-service"
    assert line["backend"] == backends.url("backend-1")
    assert line["client_ip"] == "127.0.0.1"
    assert line["duration_ms"] > 0
    assert line["trace_id"] == ""
    assert line["logger"] == "aiogate.access"


def test_lines_while_serving_carry_request_and_trace_ids(
    backends: BackendThread, receiver: OtlpReceiver, make_gateway: Callable[..., Gateway]
) -> None:
    config = guarded_config(
        backends,
        tracing={"enabled": True, "endpoint": receiver.endpoint, "export_interval": "50ms"},
        logging={"level": "info", "levels": {"aiogate.ratelimit": "debug"}},
    )
    gw = make_gateway(config)
    status, request_id = call(gw, "/private")
    assert status == 401
    failed = line_of(gw, "auth_failed", request_id)
    access = line_of(gw, "request", request_id)
    assert failed["trace_id"] == access["trace_id"] != ""
    assert failed["reason"]
    # The auth stage has its own span under the request span, marked as an error.
    spans = receiver.wait_trace(access["trace_id"], 2)
    request_span = next(s for s in spans if s.kind == 2)
    auth = next(s for s in spans if s.name == "auth")
    assert auth.parent_span_id == request_span.span_id
    assert auth.status_code == 2
    # Rate limiting: the stage span and the upstream attempt are siblings under the request.
    status, admitted = call(gw, "/limited")
    assert status == 200
    trace_id = line_of(gw, "request", admitted)["trace_id"]
    spans = receiver.wait_trace(trace_id, 3)
    request_span = next(s for s in spans if s.kind == 2)
    by_name = {s.name: s for s in spans}
    assert by_name["ratelimit"].parent_span_id == request_span.span_id
    assert by_name["upstream"].parent_span_id == request_span.span_id
    # The rejection line carries the trace id too.
    status, request_id = call(gw, "/limited")
    assert status == 429
    rejected = line_of(gw, "ratelimit_rejected", request_id)
    trace_id = line_of(gw, "request", request_id)["trace_id"]
    assert rejected["trace_id"] == trace_id
    spans = receiver.wait_trace(trace_id, 2)
    assert "ratelimit" in {s.name for s in spans}


def test_access_log_sampling_keeps_errors(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    config = basic_config(backends)
    config["logging"] = {"level": "info", "access_log_sample": 0.0}
    config["upstreams"].append({"name": "dead", "backends": [{"url": "http://127.0.0.1:9"}]})
    config["routes"].append({"path": "/dead", "upstream": "dead"})
    gw = make_gateway(config)
    ok = [call(gw, "/api/users")[1] for _ in range(5)]
    missing = call(gw, "/nope")[1]
    status, broken = call(gw, "/dead")
    assert status >= 500
    line_of(gw, "request", missing)
    line_of(gw, "request", broken)
    logged = {e["request_id"] for e in gw.events("request")}
    assert not logged & set(ok)


def test_access_log_off(backends: BackendThread, make_gateway: Callable[..., Gateway]) -> None:
    config = basic_config(backends)
    config["logging"] = {"level": "info", "access_log": False}
    gw = make_gateway(config)
    call(gw, "/api/users")
    call(gw, "/nope")
    gw.stop()
    assert gw.events("request") == []


def test_logger_levels_change_on_reload_and_diff_summary(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    config = guarded_config(backends)
    config["logging"] = {"level": "info", "levels": {"aiogate.auth": "warning"}}
    gw = make_gateway(config)
    status, quiet = call(gw, "/private")
    assert status == 401
    line_of(gw, "request", quiet)  # the request is over, its auth line would be out already
    assert not [e for e in gw.events("auth_failed") if e.get("request_id") == quiet]
    # Reload: auth back to info, one route added, one removed, one changed, one upstream added.
    new = dict(config)
    new["logging"] = {"level": "info", "levels": {"aiogate.auth": "info"}}
    routes = [r for r in config["routes"] if r["path"] != "/t"]
    routes = [dict(r, methods=["GET"]) if r["path"] == "/api/orders" else r for r in routes]
    new["routes"] = [*routes, {"path": "/new", "upstream": "extra"}]
    extra = {"name": "extra", "backends": [{"url": backends.url("backend-2")}]}
    new["upstreams"] = [*config["upstreams"], extra]
    gw.write({**gw.config, **new})
    gw.signal(signal.SIGHUP)
    reloaded = gw.wait_event("config_reloaded")[-1]
    assert reloaded["changes"]["routes"] == {
        "added": ["/new"], "removed": ["testing"], "changed": ["/api/orders"],
    }  # fmt: skip
    assert reloaded["changes"]["upstreams"] == {"added": ["extra"], "removed": [], "changed": []}
    assert "logging" in reloaded["changes"]["sections_changed"]
    status, loud = call(gw, "/private")
    assert status == 401
    assert line_of(gw, "auth_failed", loud)["level"] == "info"


def test_a_429_logs_one_line(backends: BackendThread, make_gateway: Callable[..., Gateway]) -> None:
    """At the default level a refused request writes its access line and nothing else."""
    gw = make_gateway(guarded_config(backends))
    assert call(gw, "/limited")[0] == 200
    status, request_id = call(gw, "/limited")
    assert status == 429
    access = line_of(gw, "request", request_id)
    assert access["status"] == 429
    # A stage's line would have been written before the access line: none is there.
    assert [e["event"] for e in gw.events() if e.get("request_id") == request_id] == ["request"]


@pytest.mark.parametrize("fmt", ["ecs", "otel"])
def test_ecs_and_otel_field_names(
    backends: BackendThread, make_gateway: Callable[..., Gateway], fmt: str
) -> None:
    """`logging.format: ecs | otel`: the daemon's lines use that schema's field names."""
    config = basic_config(backends, logging={"level": "info", "format": fmt})
    gw = make_gateway(config)
    status, request_id = call(gw, "/api/users/1")
    assert status == 200

    def access_line() -> dict[str, Any] | None:
        for line in list(gw.lines):
            record = json.loads(line)
            ids = (
                record.get("http.request.id"),
                record.get("Attributes", {}).get("aiogate.request_id"),
            )
            if request_id in ids:
                return dict(record)
        return None

    wait_until(lambda: access_line() is not None, what="the access line")
    line = access_line()
    assert line is not None
    if fmt == "ecs":
        assert (line["message"], line["http.request.method"], line["url.path"]) == (
            "request",
            "GET",
            "/api/users/1",
        )
        assert line["http.response.status_code"] == 200
        assert line["client.ip"] == "127.0.0.1"
        assert isinstance(line["event.duration"], int)
    else:
        attributes = line["Attributes"]
        assert (line["Body"], line["SeverityText"]) == ("request", "INFO")
        assert (attributes["http.request.method"], attributes["url.path"]) == (
            "GET",
            "/api/users/1",
        )
        assert attributes["http.response.status_code"] == 200
        assert attributes["client.address"] == "127.0.0.1"
