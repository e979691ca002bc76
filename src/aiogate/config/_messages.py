"""Turn pydantic's error records into config-author language."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from ._base import describe

__all__ = ["error_at", "error_message", "unknown_key_message"]

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


def unknown_key_message(model: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    """`unknown key`, with the closest known key at that place when there is a near one."""
    fields = _fields_at(model, loc[:-1])
    key = loc[-1] if loc else None
    if not isinstance(key, str) or not fields:
        return "unknown key"
    close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.7)
    return f"unknown key (did you mean '{close[0]}'?)" if close else "unknown key"


def _fields_at(model: type[BaseModel], loc: tuple[str | int, ...]) -> set[str]:
    """The keys the model at ``loc`` accepts (field names and their YAML spellings).

    Best effort: a location this walk cannot follow (a union member pydantic names by tag, a
    mapping of free-form keys) gives no names, and so no hint.
    """
    node: Any = model
    for part in loc:
        node = _step(node, part)
        if node is None:
            return set()
    models = _models(node)
    if len(models) != 1:
        return set()
    fields = models[0].model_fields
    return set(fields) | {f.alias for f in fields.values() if f.alias}


def _step(node: Any, part: str | int) -> Any:
    models = _models(node)
    if isinstance(part, str):
        for candidate in models:
            field = candidate.model_fields.get(part) or next(
                (f for f in candidate.model_fields.values() if f.alias == part), None
            )
            if field is not None:
                return field.annotation
        return None
    # A list index: step into the item type of a tuple/list field.
    for arg in _flatten(node):
        if typing.get_origin(arg) in (tuple, list):
            return typing.get_args(arg)[0]
    return None


def _flatten(node: Any) -> list[Any]:
    """The types a field can hold: Annotated, Optional and unions unwrapped."""
    origin = typing.get_origin(node)
    if origin is typing.Annotated:
        return _flatten(typing.get_args(node)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(node) for t in _flatten(arg)]
    return [node]


def _models(node: Any) -> list[type[BaseModel]]:
    return [t for t in _flatten(node) if isinstance(t, type) and issubclass(t, BaseModel)]
