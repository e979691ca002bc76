"""The gateway's log in unit tests: sent to a file of the test's own, and read back as events.

A uniquely named module rather than `conftest`, so importing it can never pick up another
directory's conftest; tests/unit/conftest.py puts this folder on sys.path and holds the
`quiet_log` fixture.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from aiogate import log


@contextmanager
def log_to_file(path: Path, level: str = "info") -> Iterator[TextIO]:
    """Send the log lines to `path` (readable through the stream yielded), then back to stdout.

    Flushed before the file closes, so nothing buffered is lost or written to a closed file.
    """
    with path.open("w+") as stream:
        log.configure(stream=stream, level=level)
        yield stream
        log.flush()
    log.configure(stream=sys.__stdout__)


def events(stream: TextIO, name: str) -> list[dict[str, Any]]:
    """Every record named `name` logged to `stream` so far."""
    log.flush()
    stream.seek(0)
    found = [json.loads(line) for line in stream.read().splitlines()]
    return [record for record in found if record["event"] == name]
