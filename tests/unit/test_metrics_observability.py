"""metrics added by the observability work: errors, in-flight, config hash/time, build info."""

from __future__ import annotations

import hashlib
import time

from prometheus_client import REGISTRY

from aiogate import __version__, metrics


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_gateway_buckets_span_half_a_millisecond_to_ten_seconds() -> None:
    recorder = metrics.RequestRecorder()
    recorder.request("/buckets", "GET", 200, 0.0004)
    assert sample("aiogate_request_duration_seconds_bucket", route="/buckets", le="0.0005") == 1
    assert sample("aiogate_request_duration_seconds_bucket", route="/buckets", le="10.0") == 1
    assert (
        REGISTRY.get_sample_value(
            "aiogate_request_duration_seconds_bucket", {"route": "/buckets", "le": "30.0"}
        )
        is None
    )


def test_errors_by_kind_are_cached_children() -> None:
    recorder = metrics.RequestRecorder()
    before = sample("aiogate_errors_total", kind="unit_kind")
    recorder.error("unit_kind")
    recorder.error("unit_kind")
    assert sample("aiogate_errors_total", kind="unit_kind") == before + 2
    assert recorder._errors["unit_kind"] is recorder._errors["unit_kind"]


def test_in_flight_gauge_per_backend() -> None:
    recorder = metrics.RequestRecorder()
    gauge = recorder.in_flight("u-unit", "http://b:1")
    assert recorder.in_flight("u-unit", "http://b:1") is gauge
    gauge.inc()
    assert sample("aiogate_upstream_in_flight", upstream="u-unit", backend="http://b:1") == 1
    gauge.dec()
    assert sample("aiogate_upstream_in_flight", upstream="u-unit", backend="http://b:1") == 0


def test_config_loaded_publishes_hash_and_time() -> None:
    data = b"routes: []\n"
    metrics.config_loaded(data)
    expected = int.from_bytes(hashlib.sha256(data).digest()[:6], "big")
    assert sample("aiogate_config_hash") == expected
    assert abs(sample("aiogate_config_last_load_timestamp_seconds") - time.time()) < 5
    metrics.config_loaded(data + b"# edited\n")
    assert sample("aiogate_config_hash") != expected


def test_build_info() -> None:
    metrics.set_build_info()
    assert (
        sample(
            "aiogate_build_info",
            version=__version__,
            python=__import__("platform").python_version(),
        )
        == 1
    )
