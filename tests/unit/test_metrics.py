"""metrics: the contract's names, the cached recorder, the exposition (one or many processes),
and the observability metrics: errors, in-flight, config hash/time, build info."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from aiogate import __version__, metrics

CONTRACT = {
    "aiogate_requests_total": "counter",
    "aiogate_request_duration_seconds": "histogram",
    "aiogate_upstream_duration_seconds": "histogram",
    "aiogate_ratelimit_rejections_total": "counter",
    "aiogate_circuit_state": "gauge",
    "aiogate_circuit_transitions_total": "counter",
    "aiogate_backend_healthy": "gauge",
    "aiogate_active_connections": "gauge",
    "aiogate_auth_failures_total": "counter",
}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_contract_metric_is_exposed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    text = metrics.exposition().decode()
    for name, kind in CONTRACT.items():
        assert f"# TYPE {name} {kind}" in text, name
    assert metrics.CONTENT_TYPE.startswith("text/plain")


def test_contract_labels() -> None:
    assert metrics.REQUESTS._labelnames == ("route", "method", "status")
    assert metrics.REQUEST_DURATION._labelnames == ("route",)
    assert metrics.UPSTREAM_DURATION._labelnames == ("upstream", "backend")
    assert metrics.RATELIMIT_REJECTIONS._labelnames == ("route", "dimension")
    assert metrics.CIRCUIT_STATE._labelnames == ("upstream", "backend")
    assert metrics.CIRCUIT_TRANSITIONS._labelnames == ("upstream", "backend", "to")
    assert metrics.BACKEND_HEALTHY._labelnames == ("upstream", "backend")
    assert metrics.AUTH_FAILURES._labelnames == ("route", "reason")


def test_recorder_counts_requests_and_durations() -> None:
    recorder = metrics.RequestRecorder()
    route = "unit-test-route"
    before = sample("aiogate_requests_total", route=route, method="GET", status="200")
    recorder.request(route, "GET", 200, 0.003)
    recorder.request(route, "GET", 200, 0.2)
    recorder.request(route, "POST", 502, 1.5)
    assert sample("aiogate_requests_total", route=route, method="GET", status="200") == before + 2
    assert sample("aiogate_requests_total", route=route, method="POST", status="502") >= 1
    assert sample("aiogate_request_duration_seconds_count", route=route) >= 3
    assert sample("aiogate_request_duration_seconds_bucket", route=route, le="0.005") >= 1
    # a second recorder shares the same series (they outlive a reload)
    metrics.RequestRecorder().request(route, "GET", 200, 0.001)
    assert sample("aiogate_requests_total", route=route, method="GET", status="200") == before + 3


def test_recorder_upstream_histogram() -> None:
    recorder = metrics.RequestRecorder()
    labels = {"upstream": "unit-up", "backend": "http://127.0.0.1:1"}
    before = sample("aiogate_upstream_duration_seconds_count", **labels)
    recorder.upstream("unit-up", "http://127.0.0.1:1", 0.05)
    recorder.upstream("unit-up", "http://127.0.0.1:1", 40.0)
    assert sample("aiogate_upstream_duration_seconds_count", **labels) == before + 2
    assert sample("aiogate_upstream_duration_seconds_bucket", **labels, le="10.0") == before + 1
    assert sample("aiogate_upstream_duration_seconds_bucket", **labels, le="+Inf") == before + 2


def test_multiprocess_exposition_reads_the_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    # an empty directory: no worker has written yet, so no samples (and no in-process ones)
    text = metrics.exposition().decode()
    assert "aiogate_requests_total{" not in text


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
