"""deploy/grafana/aiogate.json and deploy/prometheus/alerts.yaml query metrics that exist."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from backend import BackendThread
from gateway import Gateway
from gwconfigs import basic_config
from metrics_support import Scrape, scrape
from ruamel.yaml import YAML

from needs import needs_tool

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "aiogate.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
RUNBOOK = "https://github.com/aiogate/aiogate/blob/main/docs/operations.md"
NO_BACKEND = "503-no_healthy_backend-or-a-circuit-is-open"
_METRIC = re.compile(r"\baiogate_[a-z0-9_]+")
_SUFFIXES = ("_bucket", "_count", "_sum")


def _family(sample_name: str) -> str:
    for suffix in _SUFFIXES:
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name


def _exprs(node: Any) -> list[str]:
    """Every `expr` string anywhere in a dashboard (panels, rows, templating queries)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(_exprs(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_exprs(item))
    return found


@pytest.fixture(scope="module")
def live(backends: BackendThread, tmp_path_factory: pytest.TempPathFactory) -> Scrape:
    """A scrape of the real daemon after some traffic."""
    gw = Gateway(basic_config(backends), tmp_path_factory.mktemp("dash")).start()
    try:
        import urllib.request

        urllib.request.urlopen(f"{gw.url}/api/users", timeout=5).read()
        return scrape(gw)
    finally:
        gw.stop()


def _check_names(exprs: list[str], live: Scrape) -> set[str]:
    names = {_family(m) for expr in exprs for m in _METRIC.findall(expr)}
    assert names, "no aiogate metric referenced"
    missing = {n for n in names if not live.has_family(n)}
    assert not missing, f"not in a real scrape: {sorted(missing)}"
    return names


def test_dashboard_queries_real_metrics(live: Scrape) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = _check_names(_exprs(dashboard), live)
    # It covers traffic, errors, latency, upstream health, breakers and rate limiting.
    for needed in (
        "aiogate_requests_total", "aiogate_errors_total", "aiogate_request_duration_seconds",
        "aiogate_upstream_duration_seconds", "aiogate_backend_healthy", "aiogate_circuit_state",
        "aiogate_ratelimit_rejections_total",
    ):  # fmt: skip
        assert needed in names
    quantiles = [e for e in _exprs(dashboard) if "histogram_quantile(0.99" in e]
    assert quantiles
    assert all(p["datasource"]["uid"] == "${datasource}" for p in dashboard["panels"])


def test_alert_rules_parse_and_reference_real_metrics(live: Scrape) -> None:
    rules = YAML(typ="safe").load(ALERTS.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    for name in ("AiogateHighErrorRate", "AiogateBackendDown", "AiogateCircuitOpen",
                 "AiogateLatencyP99High"):  # fmt: skip
        assert name in alerts
        assert alerts[name]["labels"]["severity"]
    _check_names([r["expr"] for r in alerts.values()], live)


def _github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a file's headings (lower case, punctuation dropped)."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", markdown, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_alert_links_its_runbook_section() -> None:
    text = ALERTS.read_text()
    (base,) = re.findall(r"^# runbook base: (\S+)$", text, re.M)
    assert base.startswith("https://")
    anchors = _github_anchors((ROOT / "docs" / "operations.md").read_text())
    rules = YAML(typ="safe").load(text)
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == base, rule["alert"]  # the one base the header comment names
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/operations.md"


@needs_tool("promtool", "prometheus")
def test_alert_rules_pass_promtool() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_tool("promtool", "prometheus")
def test_alert_rules_fire_in_promtool_unit_test(tmp_path: Path) -> None:
    """The rules fire on series shaped like aiogate's (promtool's rule unit tests)."""
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": 'aiogate_requests_total{job="gw",route="/a",method="GET",'
                        'status="200"}',
                        "values": "0+60x20",
                    },
                    {
                        "series": 'aiogate_requests_total{job="gw",route="/a",method="GET",'
                        'status="502"}',
                        "values": "0+30x20",
                    },
                    {
                        "series": 'aiogate_backend_healthy{job="gw",upstream="u",'
                        'backend="http://b:1"}',
                        "values": "0x10",
                    },
                    {
                        "series": 'aiogate_circuit_state{job="gw",upstream="u",'
                        'backend="http://b:1"}',
                        "values": "2x10",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "15m",
                        "alertname": "AiogateHighErrorRate",
                        "exp_alerts": [
                            {
                                "exp_labels": {"job": "gw", "severity": "critical"},
                                "exp_annotations": {
                                    "summary": "aiogate gw: 33.33% of responses are 5xx",
                                    "runbook_url": f"{RUNBOOK}#many-5xx-responses",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "5m",
                        "alertname": "AiogateCircuitOpen",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "job": "gw",
                                    "upstream": "u",
                                    "backend": "http://b:1",
                                    "severity": "warning",
                                },
                                "exp_annotations": {
                                    "summary": "circuit open for backend http://b:1 of upstream u",
                                    "runbook_url": f"{RUNBOOK}#{NO_BACKEND}",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "alerts_test.yaml"
    path.write_text(json.dumps(tests))  # JSON is YAML
    result = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_is_importable_json(live: Scrape) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "aiogate"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert _check_names(_exprs(dashboard), live)
