"""Helpers for config tests: write YAML into a temp file and load it."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from config_testing import Errors, LoadText, WriteConfig

from aiogate.config import ConfigError, GatewayConfig, load_config


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    def write(text: str) -> Path:
        path = tmp_path / "aiogate.yaml"
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def load_text(write_config: WriteConfig) -> LoadText:
    def load(text: str, env: Mapping[str, str] | None = None) -> GatewayConfig:
        return load_config(write_config(text), env={} if env is None else env)

    return load


@pytest.fixture
def errors(write_config: WriteConfig) -> Errors:
    """Load text that must fail; return its issues as 'line:col: message' strings."""

    def run(text: str, env: Mapping[str, str] | None = None) -> list[str]:
        path = write_config(text)
        with pytest.raises(ConfigError) as info:
            load_config(path, env={} if env is None else env)
        for issue in info.value.issues:
            assert issue.file == str(path)
        return [f"{i.line}:{i.col}: {i.message}" for i in info.value.issues]

    return run
