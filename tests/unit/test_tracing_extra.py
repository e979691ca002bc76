"""OpenTelemetry is the optional `[tracing]` extra: `sdk_available()` tells whether it is there."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aiogate.tracing import sdk_available


def test_sdk_available_with_the_extra_installed() -> None:
    # The test extra pulls `aiogate[tracing]`.
    assert sdk_available() is True


@pytest.mark.parametrize(
    "missing",
    ["opentelemetry", "opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"],
)
def test_sdk_missing_is_reported(missing: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import system treat the module as absent.
    for name in list(sys.modules):
        if name == missing or name.startswith(f"{missing}."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)
    assert sdk_available() is False


_BLOCK_OTEL = """
import importlib.abc, sys

class NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoOpenTelemetry())
"""


def test_without_the_extra_the_gateway_imports_and_reports_it(tmp_path: Path) -> None:
    """An install without `[tracing]` (simulated: every opentelemetry import fails) still
    imports the daemon and validates a config; `sdk_available()` says False."""
    config = tmp_path / "aiogate.yaml"
    config.write_text("upstreams: []\nroutes: []\n")
    code = _BLOCK_OTEL + (
        "import aiogate.cli, aiogate.daemon, aiogate.tracing\n"
        "assert aiogate.tracing.sdk_available() is False\n"
        f"sys.exit(aiogate.cli.main(['check', '-c', {str(config)!r}]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout


def test_check_refuses_tracing_without_the_extra(tmp_path: Path) -> None:
    config = tmp_path / "aiogate.yaml"
    config.write_text("tracing:\n  enabled: true\nupstreams: []\nroutes: []\n")
    code = _BLOCK_OTEL + (
        f"import aiogate.cli\nsys.exit(aiogate.cli.main(['check', '-c', {str(config)!r}]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 1
    assert f"{config}:2:12: tracing.enabled: tracing needs OpenTelemetry" in out.stderr
    assert "pip install 'aiogate[tracing]'" in out.stderr
    assert "Traceback" not in out.stderr
