"""`make bench` uses an nginx that is already installed instead of installing nginx-light."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _stub(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_bench_installs_only_what_is_missing(tmp_path: Path) -> None:
    """nginx on PATH (e.g. from nginx-full) and no Debian package known to dpkg: only wrk is
    asked for. As a non-root user make names the missing packages and stops there."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    _stub(stubs, "dpkg", "exit 1")  # no package installed
    _stub(stubs, "id", "echo 1000")  # not root: nothing is installed, only named
    _stub(stubs, "nginx", "exit 0")
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed").touch()  # newer than setup.cfg & co: the venv step is skipped
    env = dict(os.environ, PATH=f"{stubs}:/usr/bin:/bin")
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), "bench", f"VENV={venv}"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "missing Debian packages: wrk\n" in result.stdout, result.stdout + result.stderr
    assert "nginx-light" not in result.stdout
