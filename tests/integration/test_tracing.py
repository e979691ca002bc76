"""Tracing against the real daemon and a real OTLP/HTTP receiver: propagation and span tree."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway, wait_until
from gwconfigs import basic_config
from otlp_receiver import OtlpReceiver

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SERVER, CLIENT = 2, 3  # OTLP SpanKind values


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    server = OtlpReceiver().start()
    yield server
    server.stop()


def traced_config(
    backends: BackendThread, receiver: OtlpReceiver, **tracing: Any
) -> dict[str, Any]:
    return basic_config(
        backends,
        tracing={
            "enabled": True,
            "endpoint": receiver.endpoint,
            "export_interval": "50ms",
            "service_name": "aiogate-test",
            **tracing,
        },
    )


def get(gw: Gateway, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    request = urllib.request.Request(gw.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def access_line(gw: Gateway, request_id: str) -> dict[str, Any]:
    wait_until(
        lambda: any(e.get("request_id") == request_id for e in gw.events("request")),
        what=f"access line of {request_id}",
    )
    return next(e for e in gw.events("request") if e.get("request_id") == request_id)


def test_client_trace_is_continued_and_injected_upstream(
    backends: BackendThread, receiver: OtlpReceiver, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(traced_config(backends, receiver))
    status, headers, body = get(
        gw,
        "/api/users/7",
        {
            "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
            "tracestate": "vendor=abc",
        },
    )
    assert status == 200
    spans = receiver.wait_trace(CLIENT_TRACE, 2)
    request_span = next(s for s in spans if s.kind == SERVER)
    attempt = next(s for s in spans if s.kind == CLIENT)
    # The gateway's request span is a child of the client's span ...
    assert request_span.parent_span_id == CLIENT_SPAN
    assert request_span.name == "GET /api/users"
    assert request_span.attributes["http.route"] == "/api/users"
    assert request_span.attributes["http.response.status_code"] == 200
    assert request_span.attributes["aiogate.request_id"] == headers["X-Request-ID"]
    assert request_span.service_name == "aiogate-test"
    assert request_span.trace_state == "vendor=abc"
    # ... the upstream attempt a child of the request span ...
    assert attempt.parent_span_id == request_span.span_id
    assert attempt.attributes["aiogate.upstream"] == "user-service"
    assert attempt.attributes["aiogate.attempt"] == 1
    # ... and the backend saw the attempt as its parent, in the same trace (client's replaced).
    upstream_headers = {k.lower(): v for k, v in body["headers"].items()}
    assert upstream_headers["traceparent"] == f"00-{CLIENT_TRACE}-{attempt.span_id}-01"
    assert upstream_headers["tracestate"] == "vendor=abc"
    # Logs and traces join on the access line's trace_id.
    line = access_line(gw, headers["X-Request-ID"])
    assert line["trace_id"] == CLIENT_TRACE


def test_new_trace_when_none_came_in(
    backends: BackendThread, receiver: OtlpReceiver, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(traced_config(backends, receiver))
    status, headers, body = get(gw, "/api/orders")
    assert status == 200
    line = access_line(gw, headers["X-Request-ID"])
    trace_id = line["trace_id"]
    assert len(trace_id) == 32
    assert trace_id != "0" * 32
    spans = receiver.wait_trace(trace_id, 2)
    request_span = next(s for s in spans if s.kind == SERVER)
    assert request_span.parent_span_id == ""  # a root span
    upstream = {k.lower(): v for k, v in body["headers"].items()}
    assert upstream["traceparent"].startswith(f"00-{trace_id}-")
    assert receiver.content_types[-1] == "application/x-protobuf"


def test_gateway_error_is_traced_as_error(
    backends: BackendThread, receiver: OtlpReceiver, make_gateway: Callable[..., Gateway]
) -> None:
    config = traced_config(backends, receiver)
    config["upstreams"].append({"name": "dead", "backends": [{"url": "http://127.0.0.1:9"}]})
    config["routes"].append({"path": "/dead", "upstream": "dead"})
    gw = make_gateway(config)
    trace = "11111111111111111111111111111111"
    status, headers, _body = get(gw, "/dead", {"traceparent": f"00-{trace}-{CLIENT_SPAN}-01"})
    assert status in (502, 503)
    spans = receiver.wait_trace(trace, 2)
    request_span = next(s for s in spans if s.kind == SERVER)
    assert request_span.status_code == 2  # STATUS_CODE_ERROR
    assert request_span.attributes["http.response.status_code"] == status
    assert access_line(gw, headers["X-Request-ID"])["trace_id"] == trace


def test_parent_based_ratio_sampling(
    backends: BackendThread, receiver: OtlpReceiver, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(traced_config(backends, receiver, sample_ratio=0.0))
    # A new trace at ratio 0: not sampled, nothing exported, but the id still propagates.
    _status, headers, body = get(gw, "/api/users")
    line = access_line(gw, headers["X-Request-ID"])
    upstream = {k.lower(): v for k, v in body["headers"].items()}
    assert upstream["traceparent"].startswith(f"00-{line['trace_id']}-")
    assert int(upstream["traceparent"].rsplit("-", 1)[1], 16) & 1 == 0  # sampled flag off
    # A sampled parent wins over the ratio.
    sampled = "22222222222222222222222222222222"
    get(gw, "/api/users", {"traceparent": f"00-{sampled}-{CLIENT_SPAN}-01"})
    receiver.wait_trace(sampled, 2)
    assert receiver.trace(line["trace_id"]) == []


def test_tracing_off_passes_the_client_context_through(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    gw = make_gateway(basic_config(backends))
    parent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    _status, headers, body = get(gw, "/api/users", {"traceparent": parent})
    upstream = {k.lower(): v for k, v in body["headers"].items()}
    assert upstream["traceparent"] == parent
    assert access_line(gw, headers["X-Request-ID"])["trace_id"] == ""
