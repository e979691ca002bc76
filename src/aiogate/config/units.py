"""Durations and sizes as written in the config file, resolved to seconds and bytes.

Both parsers are strict on purpose: a typo such as ``10XB`` or ``5min`` must fail loudly at load
time rather than silently mean something else.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Annotated

from pydantic import BeforeValidator, Field

__all__ = ["Duration", "Size", "parse_duration", "parse_size"]

_NUMBER = r"(?P<num>\d+(?:\.\d+)?|\.\d+)"
_DURATION_RE = re.compile(_NUMBER + r"(?P<unit>ms|s|m|h)?")
_SIZE_RE = re.compile(_NUMBER + r"(?P<unit>B|KB|MB|GB|KiB|MiB|GiB)?")

_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}

_DURATION_HINT = "use e.g. 250ms, 10s, 5m, 1h or a number of seconds"
_SIZE_HINT = "use e.g. 512, 64KiB, 10MiB, 1GB"


def parse_duration(value: object) -> float:
    """Return ``value`` (``250ms``, ``10s``, ``5m``, ``1h`` or a number of seconds) in seconds."""
    # bool is an int subclass; `timeout: true` is a mistake, not one second.
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r} ({_DURATION_HINT})")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"invalid duration {value!r}: must be a finite number >= 0")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid duration of type {type(value).__name__} ({_DURATION_HINT})")
    text = value.strip()
    match = _DURATION_RE.fullmatch(text)
    if match is None:
        if text.startswith("-"):
            raise ValueError(f"invalid duration '{value}': must not be negative")
        raise ValueError(f"invalid duration '{value}' ({_DURATION_HINT})")
    return float(match["num"]) * _DURATION_UNITS[match["unit"]]


def parse_size(value: object) -> int:
    """Return ``value`` (``512``, ``64KiB``, ``10MiB``, ``1GB`` ...) in bytes."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r} ({_SIZE_HINT})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value}: must not be negative")
        return value
    if isinstance(value, float):
        if not value.is_integer() or value < 0:
            raise ValueError(f"invalid size {value!r}: must be a whole number of bytes >= 0")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"invalid size of type {type(value).__name__} ({_SIZE_HINT})")
    text = value.strip()
    match = _SIZE_RE.fullmatch(text)
    if match is None:
        if text.startswith("-"):
            raise ValueError(f"invalid size '{value}': must not be negative")
        raise ValueError(f"invalid size '{value}' ({_SIZE_HINT})")
    try:
        # Decimal keeps `1.5MiB` exact; float maths could land one byte off.
        amount = Decimal(match["num"]) * _SIZE_UNITS[match["unit"]]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only valid decimals
        raise ValueError(f"invalid size '{value}' ({_SIZE_HINT})") from exc
    if amount != amount.to_integral_value():
        raise ValueError(f"invalid size '{value}': not a whole number of bytes")
    return int(amount)


# What the JSON Schema of the config (`python -m aiogate.config.schema`) says a value may be.
_DurationText = Annotated[
    str, Field(pattern=r"^\s*(\d+(\.\d+)?|\.\d+)(ms|s|m|h)?\s*$", description=_DURATION_HINT)
]
_SizeText = Annotated[
    str,
    Field(pattern=r"^\s*(\d+(\.\d+)?|\.\d+)(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", description=_SIZE_HINT),
]

# pydantic field types: the parsers run before the numeric constraints (gt/ge) are checked.
Duration = Annotated[
    float, BeforeValidator(parse_duration, json_schema_input_type=float | _DurationText)
]
Size = Annotated[int, BeforeValidator(parse_size, json_schema_input_type=int | _SizeText)]
