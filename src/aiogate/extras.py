"""Optional parts of aiogate that come with pip extras: is this one installed?

A leaf module (no aiogate imports), so the config checks can ask it without importing the
feature itself.
"""

from __future__ import annotations

import importlib.util
from typing import Final

__all__ = ["TRACING_MODULES", "tracing_sdk_available"]

#: What tracing imports: the `[tracing]` extra (`pip install 'aiogate[tracing]'`) brings them.
TRACING_MODULES: Final = (
    "opentelemetry.trace",
    "opentelemetry.sdk.trace",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
)


def tracing_sdk_available() -> bool:
    """Whether the OpenTelemetry SDK and OTLP exporter are installed. Only the modules' specs
    are looked up; nothing is imported."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in TRACING_MODULES)
    except ImportError:  # a parent package is missing (find_spec imports parents)
        return False
