"""Observability settings: the `tracing:` block and access-log sampling."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import Field, field_validator

from ..extras import tracing_sdk_available
from ._base import Model, fail
from .units import Duration

__all__ = ["SampleRatio", "TracingConfig"]

#: A probability: 0 keeps nothing, 1 keeps everything.
SampleRatio = Annotated[float, Field(ge=0.0, le=1.0)]


class TracingConfig(Model):
    """OpenTelemetry tracing. Off unless `enabled: true`; off costs no OTel call per request."""

    enabled: bool = False
    #: OTLP/HTTP traces endpoint (the full URL, `/v1/traces` included).
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    protocol: Literal["http/protobuf"] = "http/protobuf"
    #: Extra headers for the exporter (e.g. an auth token of a hosted collector).
    headers: Mapping[str, str] = Field(default_factory=dict)
    service_name: str = Field(default="aiogate", min_length=1)
    #: Parent-based ratio sampling: a sampled (or unsampled) parent decides; new traces are
    #: kept with this probability.
    sample_ratio: SampleRatio = 1.0
    #: Export timeout per batch.
    timeout: Annotated[Duration, Field(gt=0)] = 10.0
    #: BatchSpanProcessor: how often a batch goes out, its size, and the queue bound (spans
    #: beyond it are dropped rather than slowing requests).
    export_interval: Annotated[Duration, Field(gt=0)] = 1.0
    max_export_batch_size: int = Field(default=512, gt=0)
    max_queue_size: int = Field(default=2048, gt=0)

    @field_validator("enabled")
    @classmethod
    def _sdk_installed(cls, value: bool) -> bool:
        if value and not tracing_sdk_available():
            fail(
                "tracing needs OpenTelemetry, which is not installed: "
                "pip install 'aiogate[tracing]'"
            )
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            fail("must be an http:// or https:// URL")
        return value
