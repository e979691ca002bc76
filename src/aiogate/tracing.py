"""OpenTelemetry tracing: one span per request, one per stage, one per upstream attempt.

Tracing is decided when a Runtime is built: with `tracing.enabled: false` no `Tracing` object
exists, `compose()` wraps nothing and the server skips every call below, so the hot path makes
no OpenTelemetry call at all (the SDK is not even imported).

When on, the client's W3C `traceparent`/`tracestate` are extracted (a new trace starts when
there are none), the request span is the parent of the stage and upstream-attempt spans, and
each attempt injects its own `traceparent` upstream in place of the client's. Sampling is
parent-based with a ratio for new traces; finished spans go to a BatchSpanProcessor whose thread
exports them over OTLP/HTTP (protobuf), off the event loop.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from .config import TracingConfig
from .context import RequestContext
from .extras import tracing_sdk_available

if TYPE_CHECKING:
    from .stages import Next, Stage

__all__ = ["Tracing", "sdk_available"]

_TRACE_HEADERS: Final = frozenset({"traceparent", "tracestate"})


def sdk_available() -> bool:
    """Whether the OpenTelemetry SDK and OTLP exporter are installed (the `[tracing]` extra).

    A config with `tracing.enabled: true` on an install without them is refused by `check`
    (see extras.py); this is the same test.
    """
    return tracing_sdk_available()


class Tracing:
    """A tracer provider with its exporter, owned by one Runtime (shut down with it)."""

    def __init__(self, config: TracingConfig) -> None:
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from . import __version__

        self.config = config
        self._provider = TracerProvider(
            resource=Resource.create(
                {"service.name": config.service_name, "service.version": __version__}
            ),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        exporter = self._exporter = OTLPSpanExporter(
            endpoint=config.endpoint,
            headers=dict(config.headers),
            timeout=config.timeout,
        )
        self._provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=config.max_queue_size,
                schedule_delay_millis=config.export_interval * 1000.0,
                max_export_batch_size=min(config.max_export_batch_size, config.max_queue_size),
                export_timeout_millis=config.timeout * 1000.0,
            )
        )
        self._tracer = self._provider.get_tracer("aiogate", __version__)
        self._propagator = TraceContextTextMapPropagator()
        self._attach = otel_context.attach
        self._detach = otel_context.detach
        self._with_span = trace.set_span_in_context
        self._server = trace.SpanKind.SERVER
        self._client = trace.SpanKind.CLIENT
        self._internal = trace.SpanKind.INTERNAL
        from opentelemetry.trace import Status, StatusCode

        self._status = Status
        self._error = StatusCode.ERROR

    # -- request ----------------------------------------------------------------------------
    def start_request(self, ctx: RequestContext) -> None:
        """Start the request span (child of the client's, if any) and make it current."""
        headers = ctx.request.headers
        parent = self._propagator.extract(headers) if "traceparent" in headers else None
        span = self._tracer.start_span(
            ctx.method,
            context=parent,
            kind=self._server,
            attributes={
                "http.request.method": ctx.method,
                "url.path": ctx.path,
                "client.address": ctx.client_ip,
                "aiogate.request_id": ctx.request_id,
            },
        )
        # The request's own task: the attached context dies with it, no detach needed.
        self._attach(self._with_span(span, parent))
        ctx.span = span
        ctx.trace_id = f"{span.get_span_context().trace_id:032x}"

    def end_request(self, ctx: RequestContext, status: int) -> None:
        span = ctx.span
        if span is None:
            return
        ctx.span = None
        if span.is_recording():
            route = ctx.route_label
            if route:
                span.update_name(f"{ctx.method} {route}")
                span.set_attribute("http.route", route)
            span.set_attribute("http.response.status_code", status)
            if ctx.upstream:
                span.set_attribute("aiogate.upstream", ctx.upstream)
                span.set_attribute("aiogate.backend", ctx.backend)
            if status >= 500:
                span.set_status(self._status(self._error, f"HTTP {status}"))
        span.end()

    # -- stages ------------------------------------------------------------------------------
    def wrap_stage(self, stage: Stage, call_next: Next) -> Next:
        """`stage` with a span covering its own work: the span ends when the stage calls the
        next one (so stage spans are siblings under the request span) or when it returns or
        raises (a rejection marks the span as an error)."""
        name = str(getattr(stage, "name", type(stage).__name__))
        tracer = self._tracer
        attach = self._attach
        detach = self._detach
        with_span = self._with_span
        internal = self._internal
        status = self._status
        error = self._error

        async def traced(ctx: RequestContext) -> web.StreamResponse:
            request_span = ctx.span
            if request_span is None or not request_span.is_recording():
                # An unsampled request (most of them at a 1-10 % ratio): a child span would
                # record nothing, so none is made; the upstream attempt still propagates.
                return await stage(ctx, call_next)
            span = tracer.start_span(name, kind=internal)
            token: Any = attach(with_span(span))
            open_ = True

            def close() -> None:
                nonlocal open_
                if open_:
                    open_ = False
                    span.end()
                    detach(token)

            async def next_(inner: RequestContext) -> web.StreamResponse:
                close()
                return await call_next(inner)

            try:
                return await stage(ctx, next_)
            except BaseException as exc:
                if open_ and span.is_recording():
                    span.set_status(status(error, type(exc).__name__))
                    span.record_exception(exc)
                raise
            finally:
                close()

        return traced

    # -- upstream attempts ---------------------------------------------------------------------
    def start_attempt(
        self,
        ctx: RequestContext,
        headers: list[tuple[str, str]],
        *,
        attempt: int = 1,
    ) -> Any:
        """Start the span of one upstream attempt and put its `traceparent` into `headers`
        (replacing any the client sent). End it with :meth:`end_attempt`."""
        span = self._tracer.start_span(
            "upstream",
            kind=self._client,
            attributes={
                "aiogate.upstream": ctx.upstream,
                "aiogate.backend": ctx.backend,
                "aiogate.attempt": attempt,
                "http.request.method": ctx.method,
            },
        )
        headers[:] = [h for h in headers if h[0].lower() not in _TRACE_HEADERS]
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._with_span(span))
        headers.extend(carrier.items())
        return span

    def end_attempt(
        self, span: Any, *, status: int | None = None, error: BaseException | str | None = None
    ) -> None:
        if span.is_recording():
            if status is not None:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(self._status(self._error, f"HTTP {status}"))
            if error is not None:
                span.set_status(self._status(self._error, str(error) or type(error).__name__))
                if isinstance(error, BaseException):
                    span.record_exception(error)
        span.end()

    # -- lifecycle -----------------------------------------------------------------------------
    def force_flush(self, timeout_millis: int = 5000) -> bool:
        return bool(self._provider.force_flush(timeout_millis))

    def shutdown(self, grace: float = 2.0) -> None:
        """Export what is queued and stop the exporter thread (blocking: call off the loop).

        A collector that is down would hold the exporter in its retry back-off for up to
        `timeout`; after `grace` seconds the exporter is shut down, which ends the retries.
        """
        timer = threading.Timer(grace, self._exporter.shutdown)
        timer.daemon = True
        timer.start()
        try:
            self._provider.shutdown()
        finally:
            timer.cancel()
