"""Fixtures shared by the unit tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# log_testing (the shared log helpers) imports as a top-level module.
sys.path.insert(0, str(Path(__file__).parent))

from log_testing import log_to_file


@pytest.fixture
def quiet_log(tmp_path: Path) -> Iterator[None]:
    """Keep the log of code under test off stdout: it goes to a file of the test's own.

    Use it module-wide with `pytestmark = pytest.mark.usefixtures("quiet_log")`.
    """
    with log_to_file(tmp_path / "log"):
        yield
