"""Load a config file: YAML with marks -> ${env:} substitution -> pydantic models.

Every problem found is reported, each at the line and column of the offending key or value,
in one :class:`ConfigError`; a config either loads completely or not at all.
"""

from __future__ import annotations

import os
import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError

from ._checks import Path, PathIssue, Sections, format_path, reference_issues
from ._messages import error_at, error_message, unknown_key_message
from ._route import RouteConfig
from ._source import SOURCE_SECTIONS
from ._upstream import UpstreamConfig
from ._yaml import Document, Position, read_document
from .errors import ConfigError, ConfigIssue
from .model import SKIP_REFERENCE_CHECKS, GatewayConfig

__all__ = ["SourceValue", "load_config", "loaded_source"]

_CONTEXT = {SKIP_REFERENCE_CHECKS: True}
# Keys the YAML may spell differently from the model's field name.
_SPELLINGS = {"upstream": "upstreams", "types": "type"}
# References that would read the gateway host's environment or files: never from a source.
_HOST_REF = re.compile(r"\$\{(?:env|file|cred):")


@dataclass(frozen=True, slots=True)
class SourceValue:
    """A config source's document (the etcd key's value) and the name its errors carry."""

    name: str  # e.g. "etcd:/aiogate/config"
    raw: bytes


# The exact bytes each live config read from its file was parsed from (by id; an entry goes
# with its config). Re-reading the file later would race with a save made in between.
_SOURCES: dict[int, bytes] = {}


def loaded_source(config: GatewayConfig) -> bytes | None:
    """The file bytes `config` was loaded from; None if it came from `raw` or elsewhere."""
    return _SOURCES.get(id(config))


def _remember_source(config: GatewayConfig, raw: bytes) -> None:
    key = id(config)
    _SOURCES[key] = raw
    weakref.finalize(config, _SOURCES.pop, key, None)


def load_config(
    path: str | os.PathLike[str],
    env: Mapping[str, str] | None = None,
    *,
    raw: bytes | None = None,
    source: SourceValue | None = None,
) -> GatewayConfig:
    """Read, substitute, validate; raise ConfigError listing every issue found.

    With ``raw`` the config is those bytes (YAML, or JSON, which is YAML) instead of the file's
    content, and ``path`` only names it in the errors (`PUT /admin/config`). With ``source``
    (and a `config_source:` in the file) the source's `routes:`/`upstreams:` replace the
    file's before validation; issues inside them are reported against ``source.name``.
    """
    file = os.fspath(path)
    doc = read_document(file, os.environ if env is None else env, raw)
    if not isinstance(doc.data, dict):
        what = "the config file is empty" if doc.data is None else "the top level is not a mapping"
        hint = "expected a mapping of sections such as server, upstreams and routes"
        position = doc.values[()]
        raise ConfigError([ConfigIssue(file, position.line, position.col, f"{what}; {hint}")])
    taken: tuple[str, ...] = ()
    if source is not None and doc.data.get("config_source") is not None:
        taken = _overlay(doc, source)

    def origin(path: Path) -> str:
        return source.name if source is not None and path[:1] and path[0] in taken else file

    # (path, message, point at the key rather than the value)
    found: list[tuple[Path, str, bool]] = [(path, msg, False) for path, msg in doc.issues]
    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(doc.data, context=_CONTEXT)
    except ValidationError as exc:
        found += _validation_issues(doc.data, exc)
    for where, message in _references(doc.data, config):
        found.append((_resolve(doc.data, where)[0], message, False))

    # A value whose env reference failed holds the raw `${env:X}` text; any complaint about
    # that text (invalid size, unknown upstream ...) would be noise on top of the real issue.
    unresolved = [path for path, _ in doc.issues]
    issues = {
        _issue(origin(path), doc, path, message, at_key)
        for path, message, at_key in found
        if (path, message) in doc.issues or not any(path[: len(u)] == u for u in unresolved)
    }
    if issues:
        # The file's issues first, then the source's, each in document order.
        raise ConfigError(sorted(issues, key=lambda i: (i.file != file, i.line, i.col, i.message)))
    assert config is not None  # no issues means validation succeeded
    if raw is None:
        _remember_source(config, doc.raw)
    return config


def _overlay(doc: Document, source: SourceValue) -> tuple[str, ...]:
    """Put the source's sections into `doc` (data, positions, issues) in place of the file's;
    return the sections taken from the source. Raise ConfigError for an unusable source."""
    refused = [
        ConfigIssue(source.name, *_offset_position(source.raw, match.start()), _HOST_REF_MESSAGE)
        for match in _HOST_REF.finditer(source.raw.decode("utf-8", "replace"))
    ]
    if refused:
        raise ConfigError(refused)
    # No environment: `${env:` was refused above, so nothing is left to substitute.
    other = read_document(source.name, {}, source.raw)
    if not isinstance(other.data, dict):
        what = "is empty" if other.data is None else "is not a mapping"
        position = other.values[()]
        message = f"the config source {what}; expected a mapping with routes: and upstreams:"
        raise ConfigError([ConfigIssue(source.name, position.line, position.col, message)])
    stray = [key for key in other.data if key not in SOURCE_SECTIONS]
    if stray:
        hint = "only routes and upstreams come from a config source; set {} in the config file"
        raise ConfigError(
            ConfigIssue(source.name, *_at(other.keys[(key,)]), hint.format(f"'{key}'"))
            for key in stray
        )
    taken = tuple(key for key in SOURCE_SECTIONS if key in other.data)
    doc.keys = {p: v for p, v in doc.keys.items() if p[:1] not in [(k,) for k in taken]}
    doc.values = {p: v for p, v in doc.values.items() if p[:1] not in [(k,) for k in taken]}
    doc.issues = [(p, m) for p, m in doc.issues if p[:1] not in [(k,) for k in taken]]
    for key in taken:
        doc.data[key] = other.data[key]
    doc.keys.update(other.keys)
    doc.values.update({p: v for p, v in other.values.items() if p})
    doc.issues.extend(other.issues)
    return taken


_HOST_REF_MESSAGE = (
    "${env:...} and ${file:...} are not resolved in a config source (they would read the"
    " gateway host's environment and files); put the value itself"
)


def _offset_position(raw: bytes, offset: int) -> tuple[int, int]:
    text = raw.decode("utf-8", "replace")[:offset]
    return text.count("\n") + 1, offset - (text.rfind("\n") + 1) + 1


def _at(position: Position) -> tuple[int, int]:
    return position.line, position.col


def _validation_issues(data: dict[str, Any], exc: ValidationError) -> list[tuple[Path, str, bool]]:
    resolved = [(error, *_resolve(data, error_at(error))) for error in exc.errors()]
    failed = [path for _, path, _ in resolved]
    found: list[tuple[Path, str, bool]] = []
    for error, path, at_key in resolved:
        kind = error["type"]
        # pydantic counts a list's length after dropping its invalid items; with `backends`
        # holding one bad entry, "must have at least 1 item" would be false.
        if kind == "too_short" and any(
            len(p) > len(path) and p[: len(path)] == path for p in failed
        ):
            continue
        message = error_message(error)
        if kind == "extra_forbidden":
            message = unknown_key_message(GatewayConfig, error["loc"])
        if kind == "extra_forbidden" and path[-1:] == ("upstreams",) and len(path) > 1:
            parent = _lookup(data, path[:-1])
            if isinstance(parent, dict) and "upstream" in parent:
                message = "give either 'upstream' or 'upstreams', not both"
        found.append((path, message, at_key or kind == "extra_forbidden"))
    return found


def _references(data: dict[str, Any], config: GatewayConfig | None) -> list[PathIssue]:
    """Cross-section checks, on the whole config or, if it failed, on the parts that passed."""
    if config is not None:
        return reference_issues(
            list(enumerate(config.upstreams)),
            list(enumerate(config.routes)),
            Sections.of(
                config.auth,
                redis=config.redis is not None,
                mtls=config.server.tls is not None and config.server.tls.client_ca_file is not None,
            ),
        )
    raw_upstreams = _items(data.get("upstreams"))
    names = [
        (index, item["name"])
        for index, item in enumerate(raw_upstreams)
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    ]
    # Judged from the raw data: a typo inside `auth.jwt` must not also blame every jwt route.
    auth = data.get("auth")
    auth = auth if isinstance(auth, dict) else {}
    api_key = auth.get("api_key")
    sections = Sections(
        jwt=auth.get("jwt") is not None,
        api_key=api_key is not None,
        api_key_in_redis=isinstance(api_key, dict) and api_key.get("store") == "redis",
        redis=data.get("redis") is not None,
        mtls=_raw_mtls(data),
    )
    routes, unknown, unmatched = _route_references(_items(data.get("routes")))
    issues = reference_issues(
        _valid(UpstreamConfig, raw_upstreams),
        routes,
        sections,
        upstream_names=names,
        unmatched=unmatched,
    )
    return [issue for issue in issues if issue[0][:3] not in unknown]


def _raw_mtls(data: dict[str, Any]) -> bool:
    """`server.tls.client_ca_file` is set (judged from the raw data, like the auth sections)."""
    server = data.get("server")
    tls = server.get("tls") if isinstance(server, dict) else None
    return isinstance(tls, dict) and tls.get("client_ca_file") is not None


# What the cross-section checks read of a route (path, methods, hosts and headers for
# duplicates; upstream and auth for references).
_REFERENCE_KEYS = (
    "path",
    "methods",
    "hosts",
    "headers",
    "name",
    "upstream",
    "upstreams",
    "auth",
    "cache",
)
_PLACEHOLDER_UPSTREAM = "\0unknown"


def _route_references(
    items: list[Any],
) -> tuple[list[tuple[int, RouteConfig]], set[Path], frozenset[int]]:
    """The routes to check references of, the route keys whose findings are void, and the
    routes whose matching keys are invalid (not compared for duplicates).

    A route with an error elsewhere (a bad template, a typo in `rate_limit`) still takes part
    with the keys the checks read, so `check` also reports its unknown upstream or that it
    duplicates another route in the same run. A key that is itself invalid is left out; for a
    bad `upstream` a placeholder stands in, and what is found about it is dropped.
    """
    routes: list[tuple[int, RouteConfig]] = []
    unknown: set[Path] = set()
    unmatched: set[int] = set()
    for index, item in enumerate(items):
        try:
            routes.append((index, RouteConfig.model_validate(item, context=_CONTEXT)))
            continue
        except ValidationError as exc:
            if not isinstance(item, dict):
                continue
            bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
        if bad & {"methods", "hosts", "headers"}:
            unmatched.add(index)
        if "upstream" in bad or "upstreams" in bad:
            bad |= {"upstream", "upstreams"}
        keep = {k: v for k, v in item.items() if k in _REFERENCE_KEYS and k not in bad}
        if "upstream" not in keep and "upstreams" not in keep:
            keep["upstream"] = _PLACEHOLDER_UPSTREAM
            unknown.add(("routes", index, "upstream"))
        try:
            routes.append((index, RouteConfig.model_validate(keep, context=_CONTEXT)))
        except ValidationError:
            continue  # the path itself is invalid: nothing to compare it with
    return routes, unknown, frozenset(unmatched)


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


_M = TypeVar("_M", UpstreamConfig, RouteConfig)


def _valid(model: type[_M], items: list[Any]) -> list[tuple[int, _M]]:
    valid = []
    for index, item in enumerate(items):
        try:
            valid.append((index, model.model_validate(item, context=_CONTEXT)))
        except ValidationError:
            continue  # already reported by the whole-config validation
    return valid


def _resolve(data: Any, loc: tuple[str | int, ...]) -> tuple[Path, bool]:
    """Map a pydantic location onto the data's own path.

    Union members and validator names appear in pydantic locations but not in the data; they
    are skipped. A key that is missing from the data is kept, so the message can name it.
    """
    path: list[str | int] = []
    node = data
    at_key = False
    for index, part in enumerate(loc):
        if part == "[key]":
            at_key = True
        elif isinstance(node, dict) and isinstance(part, str):
            key = part if part in node else _SPELLINGS.get(part, part)
            if key in node:
                path.append(key)
                node = node[key]
            elif index == len(loc) - 1:
                path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
    return tuple(path), at_key


def _issue(file: str, doc: Document, path: Path, message: str, at_key: bool) -> ConfigIssue:
    message = _without_secrets(doc, path, message)
    text = f"{format_path(path)}: {message}" if path else message
    position = _position(doc, path, at_key)
    return ConfigIssue(file, position.line, position.col, text)


def _without_secrets(doc: Document, path: Path, message: str) -> str:
    """The message with what a `${file:}`/`${cred:}` reference read hidden: a validator may
    quote the value it rejects, and `check` output ends up in terminals and CI logs."""
    for where, contents in doc.secrets.items():
        # The value itself, or a mapping/list holding it (its message may show the whole).
        if where[: len(path)] == path or path[: len(where)] == where:
            for content in sorted(contents, key=len, reverse=True):
                message = message.replace(content, "***")
    return message


def _position(doc: Document, path: Path, at_key: bool) -> Position:
    key, value = doc.keys.get(path), doc.values.get(path)
    # A block mapping or list starts on the line after its key; the key is where readers look.
    if key is not None and (at_key or value is None or value.line != key.line):
        return key
    for end in range(len(path), -1, -1):
        position = doc.values.get(path[:end])
        if position is not None:
            return position
    return Position(1, 1)  # pragma: no cover - the root always has a position


def _lookup(data: Any, path: Path) -> Any:
    for part in path:
        data = data[part]
    return data
