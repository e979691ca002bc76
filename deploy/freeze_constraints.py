"""Write constraints.txt: the installed versions of what `aiogate[test,dev,tracing]` needs.

Run with the project's venv after `make venv` (or after changing setup.cfg's requirements):
`.venv/bin/python deploy/freeze_constraints.py`. It is `pip freeze --exclude-editable` kept to
the requirements setup.cfg names and their dependencies, so whatever else a developer installed
by hand stays out.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = frozenset({"test", "dev", "tracing"})
HEADER = """\
# Pinned versions of everything `pip install '.[test,dev,tracing]'` pulls in: CI (`make venv`)
# and the container image install with `-c constraints.txt`, so both get what was tested.
# Regenerate after changing setup.cfg's requirements: .venv/bin/python deploy/freeze_constraints.py
"""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def needed(root: str, extras: frozenset[str]) -> set[str]:
    """Names of every distribution `root[extras]` requires, transitively (markers evaluated)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        if (canonical(name), wanted) in seen:
            continue
        seen.add((canonical(name), wanted))
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue
        for raw in requires:
            req = Requirement(raw)
            environments = [{"extra": extra} for extra in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((req.name, frozenset(req.extras)))
    return {name for name, _ in seen} - {canonical(root)}


def main() -> int:
    keep = needed("aiogate", EXTRAS)
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    pins = [line for line in frozen if "==" in line and canonical(line.split("==")[0]) in keep]
    (ROOT / "constraints.txt").write_text(HEADER + "\n".join(pins) + "\n")
    print(f"constraints.txt: {len(pins)} pins", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
