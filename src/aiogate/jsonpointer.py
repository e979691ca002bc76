"""JSON Pointers (RFC 6901) for `json_body` edits: parsed once, applied per body.

Pure and small on purpose: a library (e.g. `jsonpointer`) resolves and sets, but the edits
here need their own rules anyway (create missing objects on `add`, skip what does not fit
instead of raising), which would be the bulk of the code around it.

Rules, for `add`: missing parents are created as objects; in an array a numeric segment
(``0``, ``12``, no leading zeros) names an existing element, which is replaced at the end of
the pointer, and ``-`` appends. A pointer that cannot apply (a parent is a string or number,
an index out of range) leaves the body as it was. For `remove`: a missing member is no error.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Final

__all__ = ["PointerError", "add", "parse", "remove"]

_INDEX: Final = re.compile(r"0|[1-9][0-9]*")
_BAD_ESCAPE: Final = re.compile(r"~(?![01])")


class PointerError(ValueError):
    """Not a JSON Pointer (a `~` not followed by 0 or 1)."""


def parse(key: str) -> tuple[str, ...]:
    """`/meta/source` -> ("meta", "source"); a key without a leading `/` is one field name."""
    if not key.startswith("/"):
        return (key,)
    if _BAD_ESCAPE.search(key):
        raise PointerError(f"'{key}': '~' must be followed by 0 or 1 (~0 is '~', ~1 is '/')")
    # RFC 6901 §4: ~1 first, then ~0, so "~01" is "~1" and not "/".
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in key[1:].split("/"))


def add(document: dict[str, Any], tokens: tuple[str, ...], value: Any) -> None:
    """Set the value at `tokens`, creating missing objects on the way."""
    parent = _walk(document, tokens[:-1], create=True)
    last = tokens[-1]
    # A copy: the value belongs to the config and must not be edited by a later pointer.
    value = copy.deepcopy(value) if isinstance(value, dict | list) else value
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif _INDEX.fullmatch(last) and int(last) < len(parent):
            parent[int(last)] = value


def remove(document: dict[str, Any], tokens: tuple[str, ...]) -> None:
    """Delete the member or element at `tokens`, if it is there."""
    parent = _walk(document, tokens[:-1], create=False)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent.pop(last, None)
    elif isinstance(parent, list) and _INDEX.fullmatch(last) and int(last) < len(parent):
        del parent[int(last)]


def _walk(node: Any, tokens: tuple[str, ...], *, create: bool) -> Any:
    """The container `tokens` leads to, or None when the path does not exist (or fit)."""
    for token in tokens:
        if isinstance(node, dict):
            child = node.get(token)
            if child is None and create and token not in node:
                child = node[token] = {}
            node = child
        elif isinstance(node, list) and _INDEX.fullmatch(token) and int(token) < len(node):
            node = node[int(token)]
        else:
            return None
    return node
