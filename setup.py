"""Setuptools hook; all metadata lives in setup.cfg.

One build step lives here: files whose one source of truth sits outside the package (the systemd
unit, the Grafana dashboard, the Prometheus alert rules) are copied into `aiogate/data/` of the
build, so wheels and installs from the sdist carry them (`aiogate.resources` reads them there).
A symlink under src/ would not survive into a wheel; a second committed copy would drift.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent

#: repository path -> name under aiogate/data/ (keep in sync with aiogate.resources and MANIFEST.in)
SHIPPED = {
    "systemd/aiogate.service": "aiogate.service",
    "deploy/grafana/aiogate.json": "grafana-dashboard.json",
    "deploy/prometheus/alerts.yaml": "prometheus-alerts.yaml",
}


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        # An editable install reads these from the checkout instead (aiogate.resources).
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "aiogate" / "data"
        target.mkdir(parents=True, exist_ok=True)
        for source, name in SHIPPED.items():
            shutil.copyfile(ROOT / source, target / name)


setup(cmdclass={"build_py": BuildPyWithData})
