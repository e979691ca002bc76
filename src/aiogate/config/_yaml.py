"""Read a YAML config into plain Python data, remembering where every key and value was.

ruamel's round-trip loader keeps line/column marks on mappings and sequences; they are copied
into flat lookup tables keyed by the config path, so error reporting never needs ruamel types
and validation never sees them. ``${env:NAME}`` references are resolved on the way.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from ._checks import Path, PathIssue
from .errors import ConfigError, ConfigIssue

__all__ = ["Document", "Position", "read_document"]

# Only `${env:...}` is ours; any other `${...}` (e.g. the roadmap's "${latency}") stays verbatim.
_ENV_REF = re.compile(r"\$\{env:([^}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class Position:
    line: int  # 1-based
    col: int  # 1-based


@dataclass(slots=True)
class Document:
    """A parsed config file: plain data plus the positions of its keys and values."""

    data: Any
    keys: dict[Path, Position] = field(default_factory=dict)
    values: dict[Path, Position] = field(default_factory=dict)
    # Problems found while reading values (unset env vars, unsupported tags).
    issues: list[PathIssue] = field(default_factory=list)


def read_document(file: str, env: Mapping[str, str], raw: bytes | None = None) -> Document:
    """Parse ``file`` (or ``raw``, named ``file`` in errors); raise ConfigError for an
    unreadable file or invalid YAML."""
    if raw is None:
        try:
            with open(file, "rb") as stream:
                raw = stream.read()
        except OSError as exc:
            issue = ConfigIssue(file, 1, 1, f"cannot read config file: {exc}")
            raise ConfigError([issue]) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError([ConfigIssue(file, line, col, "file is not valid UTF-8")]) from exc
    try:
        # A fresh loader per read: YAML instances keep state and are not thread-safe.
        root = YAML(typ="rt").load(text)
    except MarkedYAMLError as exc:
        raise ConfigError([_yaml_issue(file, exc)]) from exc
    except YAMLError as exc:  # pragma: no cover - every ruamel parse error carries a mark
        raise ConfigError([ConfigIssue(file, 1, 1, f"invalid YAML: {exc}")]) from exc
    doc = Document(data=None)
    start = Position(1, 1)
    if isinstance(root, CommentedMap | CommentedSeq):
        start = Position(root.lc.line + 1, root.lc.col + 1)
    doc.values[()] = start
    doc.data = _convert(root, (), doc, env)
    return doc


def _yaml_issue(file: str, exc: MarkedYAMLError) -> ConfigIssue:
    mark = exc.problem_mark or exc.context_mark
    message = f"invalid YAML: {exc.problem or exc.context}"
    if exc.problem and exc.context:
        where = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        message += f" ({exc.context}{where})"
    if mark is None:  # pragma: no cover - ruamel sets at least one mark
        return ConfigIssue(file, 1, 1, message)
    return ConfigIssue(file, mark.line + 1, mark.column + 1, message)


def _convert(node: Any, path: Path, doc: Document, env: Mapping[str, str]) -> Any:
    """Turn ruamel nodes into dict/list/str/int/float/bool/None, recording positions."""
    if isinstance(node, CommentedMap):
        own = node.lc.data  # merge-key (`<<`) entries have no marks of their own
        result: dict[str, Any] = {}
        for key, value in node.items():
            name = key if isinstance(key, str) else str(key)
            child = (*path, name)
            if key in own:
                key_line, key_col, value_line, value_col = own[key]
                doc.keys[child] = Position(key_line + 1, key_col + 1)
                doc.values[child] = Position(value_line + 1, value_col + 1)
            result[name] = _convert(value, child, doc, env)
        return result
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            child = (*path, index)
            if index in node.lc.data:
                line, col = node.lc.data[index][:2]
                doc.values[child] = Position(line + 1, col + 1)
            items.append(_convert(value, child, doc, env))
        return items
    if isinstance(node, str):
        return _substitute(str(node), path, doc, env)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)  # drop ruamel's ScalarInt formatting subclass
    if isinstance(node, float):
        return float(node)
    if isinstance(node, datetime.date):
        # YAML 1.2 timestamps: a config author writing `2024-01-01` meant text.
        return node.isoformat()
    if isinstance(node, TaggedScalar):
        doc.issues.append((path, f"unsupported YAML tag '{node.tag.value}'"))
        return node.value
    doc.issues.append((path, f"unsupported YAML value of type {type(node).__name__}"))
    return None


def _substitute(text: str, path: Path, doc: Document, env: Mapping[str, str]) -> str:
    if "${env:" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        name, has_default, default = match[1].partition(":-")
        if not _ENV_NAME.fullmatch(name):
            doc.issues.append((path, f"malformed environment reference '{match[0]}'"))
            return match[0]
        value = env.get(name)
        if value is not None:
            return value
        if has_default:
            return default
        hint = f"set it, or give a default: ${{env:{name}:-default}}"
        doc.issues.append((path, f"environment variable {name} is not set ({hint})"))
        return match[0]

    result = _ENV_REF.sub(replace, text)
    if text.count("${env:") > len(_ENV_REF.findall(text)):
        doc.issues.append((path, "unterminated '${env:' reference (missing '}')"))
    return result
