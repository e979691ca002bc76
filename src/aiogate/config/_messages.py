"""Turn pydantic's error records into config-author language."""

from __future__ import annotations

from typing import Any

from pydantic_core import ErrorDetails

from ._base import describe

__all__ = ["error_at", "error_message"]

_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "mapping_type": "a mapping",
    "tuple_type": "a list",
    "list_type": "a list",
    "iterable_type": "a list",
}
_COMPARISONS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def error_at(error: ErrorDetails) -> tuple[str | int, ...]:
    """The error's location, extended by the sub-key our own validators point at."""
    ctx: dict[str, Any] = error.get("ctx") or {}
    at = ctx.get("at", ()) if error["type"] == "aiogate" else ()
    if error["type"] == "union_tag_invalid":
        at = ("type",)  # every tagged union of the config (`discovery:`) is keyed on `type`
    return (*error["loc"], *at)


def error_message(error: ErrorDetails) -> str:
    kind = error["type"]
    ctx: dict[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    if kind == "aiogate":
        return str(ctx["message"])
    if kind == "value_error":
        return str(ctx["error"])
    if kind == "missing":
        return "missing required key"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe(value)}"
    if kind in _COMPARISONS:
        name, op = _COMPARISONS[kind]
        return f"must be {op} {ctx[name]}"
    if kind == "literal_error":
        return f"invalid value {describe(value)} (expected {ctx['expected']})"
    if kind == "union_tag_invalid":
        tag = value.get("type") if isinstance(value, dict) else ctx["tag"]
        expected = ctx["expected_tags"].replace(", ", " or ")
        return f"invalid value {describe(tag)} (expected {expected})"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "too_short":
        count = ctx["min_length"]
        return f"must have at least {count} item{'s' if count != 1 else ''}"
    return error["msg"]
