"""Files shipped inside the package: the example config, the systemd unit, the Grafana dashboard
and the Prometheus alert rules, as text (for `aiogate example-config`, `aiogate systemd-unit`).

The example config's one copy lives in `aiogate/data/`. The other three have their one source
of truth in the repository (systemd/, deploy/); the build copies them into `aiogate/data/` of
the wheel (see setup.py). An editable install has no such copy, so there they are read from the
checkout the package was imported from — never from a stale copy.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Final

__all__ = [
    "ResourceMissing",
    "example_config",
    "grafana_dashboard",
    "prometheus_alerts",
    "read_resource",
    "systemd_unit",
]

#: Name under aiogate/data/ -> path in a source checkout (None: the package copy is the source).
_CHECKOUT_PATHS: Final[dict[str, str | None]] = {
    "aiogate.example.yaml": None,
    "aiogate.service": "systemd/aiogate.service",
    "grafana-dashboard.json": "deploy/grafana/aiogate.json",
    "prometheus-alerts.yaml": "deploy/prometheus/alerts.yaml",
}

#: src/aiogate/resources.py -> the checkout's root (meaningful only in a source checkout).
_CHECKOUT_ROOT: Final = Path(__file__).resolve().parents[2]


class ResourceMissing(LookupError):
    """A shipped file is in neither the installed package nor a source checkout."""


def read_resource(name: str) -> str:
    """The text of the shipped file `name` (one of the keys of `_CHECKOUT_PATHS`)."""
    if name not in _CHECKOUT_PATHS:
        raise KeyError(name)
    packaged = resources.files("aiogate").joinpath("data", name)
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    relative = _CHECKOUT_PATHS[name]
    if relative is not None:
        in_checkout = _CHECKOUT_ROOT / relative
        if in_checkout.is_file():
            return in_checkout.read_text(encoding="utf-8")
    raise ResourceMissing(f"{name} is not part of this installation of aiogate")


def example_config() -> str:
    """An install-ready config: no secrets, `${env:...}` references, comments."""
    return read_resource("aiogate.example.yaml")


def systemd_unit() -> str:
    """The systemd service unit (`aiogate.service`)."""
    return read_resource("aiogate.service")


def grafana_dashboard() -> str:
    """The Grafana dashboard, JSON."""
    return read_resource("grafana-dashboard.json")


def prometheus_alerts() -> str:
    """The Prometheus alert rules, YAML."""
    return read_resource("prometheus-alerts.yaml")
