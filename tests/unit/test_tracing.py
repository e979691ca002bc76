"""tracing: span tree, propagation and sampling with the SDK's in-memory exporter."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aiogate.config import TracingConfig
from aiogate.context import RequestContext
from aiogate.errors import Unauthorized
from aiogate.stages import Next, compose
from aiogate.tracing import Tracing

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def make_tracing(**config: Any) -> tuple[Tracing, InMemorySpanExporter]:
    tracing = Tracing(
        TracingConfig(enabled=True, endpoint="http://127.0.0.1:9/v1/traces", **config)
    )
    exporter = InMemorySpanExporter()
    tracing._provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracing, exporter


def make_ctx(headers: dict[str, str] | None = None) -> RequestContext:
    request = make_mocked_request("GET", "/api/x", headers=headers or {})
    return RequestContext(request=request, request_id="rid", method="GET", path="/api/x",
                          query="", client_ip="127.0.0.1", forwarded_for="127.0.0.1",
                          started=0.0)  # fmt: skip


class _Stage:
    def __init__(self, name: str, fail: bool = False) -> None:
        self.name = name
        self.fail = fail

    async def __call__(self, ctx: RequestContext, call_next: Next) -> web.StreamResponse:
        if self.fail:
            raise Unauthorized("no")
        return await call_next(ctx)


async def run_request(tracing: Tracing, ctx: RequestContext, stages: list[Any]) -> Any:
    seen: dict[str, Any] = {}

    async def terminal(inner: RequestContext) -> web.StreamResponse:
        headers = [("traceparent", "client-value"), ("X-Other", "1")]
        span = tracing.start_attempt(inner, headers, attempt=1)
        seen["headers"] = headers
        tracing.end_attempt(span, status=200)
        return web.Response()

    handler = compose(stages, terminal, wrap=tracing.wrap_stage)

    async def serve() -> None:  # its own task, like aiohttp's per-request task
        tracing.start_request(ctx)
        try:
            await handler(ctx)
            tracing.end_request(ctx, 200)
        except Unauthorized:
            tracing.end_request(ctx, 401)

    import asyncio

    await asyncio.get_running_loop().create_task(serve())
    return seen


async def test_span_tree_and_injection() -> None:
    tracing, exporter = make_tracing()
    ctx = make_ctx({"traceparent": PARENT, "tracestate": "a=b"})
    seen = await run_request(tracing, ctx, [_Stage("auth"), _Stage("ratelimit")])
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"GET", "auth", "ratelimit", "upstream"}
    root = spans["GET"]
    assert f"{root.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert root.parent is not None
    assert f"{root.parent.span_id:016x}" == "00f067aa0ba902b7"
    for name in ("auth", "ratelimit", "upstream"):
        parent = spans[name].parent
        assert parent is not None
        assert parent.span_id == root.context.span_id  # siblings under the request
    upstream = spans["upstream"]
    traceparent = dict(seen["headers"])["traceparent"]
    assert traceparent == f"00-{ctx.trace_id}-{upstream.context.span_id:016x}-01"
    assert dict(seen["headers"])["tracestate"] == "a=b"
    assert [n for n, _ in seen["headers"]].count("traceparent") == 1
    tracing.shutdown(grace=0.1)


async def test_rejecting_stage_is_an_error_span() -> None:
    tracing, exporter = make_tracing()
    ctx = make_ctx()
    await run_request(tracing, ctx, [_Stage("auth", fail=True)])
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"GET", "auth"}
    assert not spans["auth"].status.is_ok
    assert (spans["GET"].attributes or {})["http.response.status_code"] == 401
    assert spans["GET"].parent is None
    tracing.shutdown(grace=0.1)


async def test_ratio_zero_samples_nothing_new_but_follows_a_sampled_parent() -> None:
    tracing, exporter = make_tracing(sample_ratio=0.0)
    ctx = make_ctx()
    await run_request(tracing, ctx, [])
    assert exporter.get_finished_spans() == ()
    assert ctx.trace_id
    assert ctx.trace_id != "0" * 32
    await run_request(tracing, make_ctx({"traceparent": PARENT}), [])
    assert len(exporter.get_finished_spans()) == 2
    tracing.shutdown(grace=0.1)


def test_compose_without_wrap_adds_nothing() -> None:
    stage = _Stage("auth")

    async def terminal(ctx: RequestContext) -> web.StreamResponse:
        return web.Response()

    handler = compose([stage], terminal)  # type: ignore[list-item]
    assert handler.func is stage  # type: ignore[attr-defined]


def test_tracing_config_validation() -> None:
    config = TracingConfig()
    assert config.enabled is False
    with pytest.raises(ValueError, match="http"):
        TracingConfig(endpoint="collector:4318")
    with pytest.raises(ValueError, match="less than or equal"):
        TracingConfig(sample_ratio=1.5)


async def test_unsampled_requests_make_no_stage_spans(monkeypatch: Any) -> None:
    tracing, exporter = make_tracing(sample_ratio=0.0)
    started: list[str] = []
    real = tracing._tracer.start_span

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        started.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(tracing._tracer, "start_span", counting)
    seen = await run_request(tracing, make_ctx(), [_Stage("auth"), _Stage("ratelimit")])
    # The request and the upstream attempt (which carries the unsampled trace context on);
    # no span at all for the stages.
    assert started == ["GET", "upstream"]
    flags = int(dict(seen["headers"])["traceparent"].rsplit("-", 1)[1], 16)
    assert not flags & 1  # propagated as not sampled
    assert exporter.get_finished_spans() == ()
    tracing.shutdown(grace=0.1)
