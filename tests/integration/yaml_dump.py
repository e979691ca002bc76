"""Dump test configs as YAML (ruamel.yaml is already a dependency of the gateway)."""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML


def dump(data: dict[str, Any]) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()
