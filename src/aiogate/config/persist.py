"""Write a config file the way an editor should: whole or not at all, keeping its mode."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["write_atomically"]

#: The mode of a config file written where none existed (it may hold secrets).
_NEW_FILE_MODE = 0o640


def write_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a temporary file in the same folder, flushed to disk, given
    the old file's mode (and owner, when allowed), then renamed over it. A reader (the daemon,
    the config watcher, an editor) sees the old file or the new one, never a part of it."""
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
            os.fchmod(stream.fileno(), stat.S_IMODE(old.st_mode) if old else _NEW_FILE_MODE)
            if old is not None:
                with contextlib.suppress(PermissionError):  # only root may give it away
                    os.fchown(stream.fileno(), old.st_uid, old.st_gid)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)
