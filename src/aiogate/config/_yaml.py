"""Read a YAML config into plain Python data, remembering where every key and value was.

ruamel's round-trip loader keeps line/column marks on mappings and sequences; they are copied
into flat lookup tables keyed by the config path, so error reporting never needs ruamel types
and validation never sees them. ``${env:NAME}``, ``${file:PATH}`` and ``${cred:NAME}``
references are resolved on the way; what a file held is remembered per path so that no error
message can quote it.
"""

from __future__ import annotations

import datetime
import os
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

# Only `${env:...}`, `${file:...}` and `${cred:...}` are ours; any other `${...}` (e.g. the
# roadmap's "${latency}", a request template) stays verbatim.
_REF = re.compile(r"\$\{(env|file|cred):([^}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: A secret file larger than this is a mistake (a key ring, a log), not a secret.
MAX_SECRET_FILE = 1024 * 1024


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
    # What `${file:}`/`${cred:}` references put into each value: never shown in an error.
    secrets: dict[Path, list[str]] = field(default_factory=dict)
    # The bytes the document was parsed from.
    raw: bytes = b""
    # Where relative `${file:}` paths start: the config file's folder.
    folder: str = "."


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
    doc = Document(data=None, raw=raw, folder=os.path.dirname(os.path.abspath(file)))
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
    if "${" not in text:
        return text

    def replace(match: re.Match[str]) -> str:
        kind, ref = match[1], match[2]
        if kind == "env":
            return _env_value(match[0], ref, path, doc, env)
        found = _secret_value(kind, ref, doc, env)
        if isinstance(found, _Failure):
            doc.issues.append((path, found.message))
            return match[0]
        if found:
            doc.secrets.setdefault(path, []).append(found)
        return found

    result = _REF.sub(replace, text)
    for kind in ("env", "file", "cred"):
        opener = f"${{{kind}:"
        if text.count(opener) > sum(1 for m in _REF.finditer(text) if m[1] == kind):
            doc.issues.append((path, f"unterminated '{opener}' reference (missing '}}')"))
    return result


def _env_value(whole: str, ref: str, path: Path, doc: Document, env: Mapping[str, str]) -> str:
    name, has_default, default = ref.partition(":-")
    if not _ENV_NAME.fullmatch(name):
        doc.issues.append((path, f"malformed environment reference '{whole}'"))
        return whole
    value = env.get(name)
    if value is not None:
        return value
    if has_default:
        return default
    hint = f"set it, or give a default: ${{env:{name}:-default}}"
    doc.issues.append((path, f"environment variable {name} is not set ({hint})"))
    return whole


@dataclass(frozen=True, slots=True)
class _Failure:
    message: str


def _secret_value(kind: str, ref: str, doc: Document, env: Mapping[str, str]) -> str | _Failure:
    """The content of the file a `${file:PATH}` or `${cred:NAME}` reference names."""
    if kind == "cred":
        if not ref or "/" in ref or ref in (".", ".."):
            return _Failure(f"invalid credential name '{ref}' (a file name, without '/')")
        folder = env.get("CREDENTIALS_DIRECTORY")
        if not folder:
            return _Failure(
                f"credential '{ref}' needs CREDENTIALS_DIRECTORY, which is not set (systemd "
                "sets it for a unit with LoadCredential= or SetCredential=)"
            )
        return _read_secret(os.path.join(folder, ref), f"credential '{ref}'")
    if not ref:
        return _Failure("empty file reference '${file:}' (give a path)")
    return _read_secret(os.path.join(doc.folder, ref), f"file '{ref}'")


def _read_secret(file: str, what: str) -> str | _Failure:
    """The file's text minus one trailing newline. Errors name the file, never its content."""
    try:
        with open(file, "rb") as stream:
            data = stream.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return _Failure(f"cannot read {what} ({file}): {reason}")
    if len(data) > MAX_SECRET_FILE:
        return _Failure(f"{what} ({file}) is larger than {MAX_SECRET_FILE // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return _Failure(f"{what} ({file}) is not valid UTF-8")
    # Editors and `echo` end files with a newline that is no part of the secret; only one is
    # dropped, so a value that really ends in a newline can still be written with two.
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")
