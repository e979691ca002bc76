"""metrics: the contract's names, the cached recorder, the exposition (one or many processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from aiogate import metrics

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
