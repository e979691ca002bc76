"""aiogate.resources: the files shipped inside the package, as text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from aiogate import resources

ROOT = Path(__file__).resolve().parents[2]


def test_example_config_is_the_packaged_file() -> None:
    text = resources.example_config()
    assert text == (ROOT / "src/aiogate/data/aiogate.example.yaml").read_text()
    assert "${env:JWT_SECRET}" in text


@pytest.mark.parametrize(
    ("read", "source"),
    [
        (resources.systemd_unit, "systemd/aiogate.service"),
        (resources.grafana_dashboard, "deploy/grafana/aiogate.json"),
        (resources.prometheus_alerts, "deploy/prometheus/alerts.yaml"),
    ],
)
def test_checkout_files_are_read_from_their_one_source(read: object, source: str) -> None:
    assert callable(read)
    assert read() == (ROOT / source).read_text()


def test_texts_parse() -> None:
    assert "[Service]" in resources.systemd_unit()
    assert json.loads(resources.grafana_dashboard())["panels"]
    assert YAML(typ="safe").load(resources.prometheus_alerts())["groups"]
    assert YAML(typ="safe").load(resources.example_config())["routes"]


def test_unknown_name_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        resources.read_resource("nope.txt")


def test_missing_everywhere_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(resources, "_CHECKOUT_ROOT", tmp_path)
    with pytest.raises(resources.ResourceMissing, match=r"aiogate\.service"):
        resources.systemd_unit()


def test_example_config_passes_check_with_the_env_it_documents(tmp_path: Path) -> None:
    path = tmp_path / "aiogate.yaml"
    path.write_text(resources.example_config())
    env = {
        **os.environ,
        "AIOGATE_UPSTREAM_URL": "http://127.0.0.1:9001",
        "JWT_SECRET": "a" * 32,
    }
    check = [sys.executable, "-m", "aiogate", "check", "-c", str(path)]
    ok = subprocess.run(check, check=False, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    # Without the required variables it names them, with their lines.
    bare = {k: v for k, v in env.items() if k not in ("AIOGATE_UPSTREAM_URL", "JWT_SECRET")}
    failed = subprocess.run(
        check, check=False, env=bare, capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 1
    assert "JWT_SECRET is not set" in failed.stderr
    assert "AIOGATE_UPSTREAM_URL is not set" in failed.stderr
