import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from aiogate import log


@pytest.fixture(autouse=True)
def _logging() -> Iterator[None]:
    log.configure(stream=sys.__stdout__)
    yield
    log.flush()
