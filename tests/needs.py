"""Markers for tests that need a system tool `make test` installs."""

from __future__ import annotations

import os
import shutil

import pytest


def needs_tool(name: str, package: str) -> pytest.MarkDecorator:
    """Skip on a developer machine without `name`; in CI (`make test` installs `package`) a
    missing tool is a failure, never a silent skip."""
    missing = shutil.which(name) is None and not os.environ.get("CI")
    return pytest.mark.skipif(
        missing, reason=f"{name} not installed (apt-get install -y {package}; make test does)"
    )
