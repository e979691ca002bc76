"""Route table: segment-wise prefix matching with most-specific-wins, as in Kong and Envoy.

A pattern is a list of segments, each static text, ``{name}`` (one non-empty segment) or
``{*name}`` (the rest of the path, last only). Every pattern matches as a prefix on whole
segments, so ``/api/users`` serves ``/api/users/42`` but not ``/api/usersx``.

Specificity compares two patterns segment by segment, static over ``{param}`` over
``{*rest}``, and the longer one wins when one is a prefix of the other. That is exactly the
post-order of a depth-first walk of the segment trie that visits the static child, then the
param child, then the catch-all, then the node itself (the node itself first when the path
ends there: `/assets` beats `/assets/{*rest}` on `/assets`). So `match` walks the trie once
and stops at the first pattern that matches the path: no candidate list, no sort per request.

Methods do not take part in choosing the pattern (the contract: "route found but method not
allowed: 405"). Routes sharing the most specific pattern are told apart by method; if none
allows the request's method the answer is 405 with their methods, never a fall-through to a
less specific route, which would let a request slip past a route's method restriction.

Pure and on the per-request hot path: no aiohttp, no I/O, no regex; everything that can be
decided from the route table is decided in ``__init__``.

Routes may also be limited to hosts and to request header values (`ConditionalRouter`). The
host comes first: the routes of the request's exact host, then those of each matching
`*.domain` (longest domain first), then the routes without `hosts`; the first of these tables
with a pattern that matches the path serves the request (405 there stops the search, as a
less specific path does not take over either). Within a table the path rules above decide, and
a pattern's routes with header conditions come before its routes without: more conditions
first, then config order; a route whose headers do not match is not there for this request.
A config without hosts and headers builds the plain `Router`, so it pays nothing for this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, TypeVar
from urllib.parse import quote

from aiogate.pathnorm import ALLOW_PATH_PARAMETERS, InvalidPath, normalize_path

__all__ = [
    "ConditionalRouter",
    "HeaderField",
    "Match",
    "NoMatch",
    "Rule",
    "RoutePatternError",
    "Router",
    "request_host",
]

T = TypeVar("T")
E = TypeVar("E")


class RoutePatternError(ValueError):
    """A route pattern is malformed or clashes with another one."""


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    """The route that serves a request. ``pattern`` is the route's path as configured."""

    target: T
    params: Mapping[str, str]
    pattern: str


@dataclass(frozen=True, slots=True)
class NoMatch:
    """No route serves the request: 404 when ``allowed`` is empty, else 405 with ``Allow``."""

    allowed: frozenset[str]


_NOT_FOUND = NoMatch(frozenset())
_NO_PARAMS: Mapping[str, str] = MappingProxyType({})
# Printable ASCII other than space stays as written in a static segment; everything else can
# only reach us percent-encoded, so the pattern is encoded the same way (`/café` works).
_PATTERN_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


@dataclass(frozen=True, slots=True)
class _Route(Generic[T]):
    pattern: str
    methods: frozenset[str] | None
    target: T
    param_names: tuple[str, ...]
    rest_name: str | None
    # Routes without captures return this same immutable object every time: no allocation.
    prebuilt: Match[T] | None


class _Endpoint(Generic[T]):
    """All routes that share one pattern shape; their method sets are disjoint."""

    __slots__ = ("allowed", "by_method", "routes", "wildcard")

    def __init__(self) -> None:
        self.routes: list[_Route[T]] = []
        self.by_method: dict[str, _Route[T]] = {}
        self.wildcard: _Route[T] | None = None
        self.allowed: frozenset[str] = frozenset()

    def add(self, route: _Route[T]) -> None:
        for other in self.routes:
            if (
                route.methods is None
                or other.methods is None
                or not route.methods.isdisjoint(other.methods)
            ):
                raise RoutePatternError(
                    f"route {route.pattern!r} duplicates route {other.pattern!r}"
                    " with overlapping methods"
                )
        self.routes.append(route)

    def freeze(self) -> None:
        allowed: set[str] = set()
        for route in self.routes:
            if route.methods is None:
                self.wildcard = route
                continue
            for method in route.methods:
                self.by_method[method] = route
            allowed |= route.methods
        # GET implies HEAD, unless another route of the same shape claims HEAD explicitly.
        get_route = self.by_method.get("GET")
        if get_route is not None:
            self.by_method.setdefault("HEAD", get_route)
            allowed.add("HEAD")
        self.allowed = frozenset(allowed)


class _Node(Generic[E]):
    """A trie node; `E` is what a pattern ends in (`_Endpoint`, or `_Variants` by headers)."""

    __slots__ = ("catch_all", "end", "param", "static")

    def __init__(self) -> None:
        self.static: dict[str, _Node[E]] = {}
        self.param: _Node[E] | None = None
        # `end` holds patterns that stop at this node; `catch_all` those ending in `{*rest}`
        # here. They are separate because `{*rest}` counts as one more (least specific) segment.
        self.end: E | None = None
        self.catch_all: E | None = None

    def endpoints(self) -> Iterable[E]:
        for child in self.static.values():
            yield from child.endpoints()
        if self.param is not None:
            yield from self.param.endpoints()
        if self.catch_all is not None:
            yield self.catch_all
        if self.end is not None:
            yield self.end


def _param_name(segment: str, pattern: str) -> str:
    name = segment[1:-1]
    if name.startswith("*"):
        name = name[1:]
    if not (name.isascii() and name.isidentifier()):
        raise RoutePatternError(
            f"route {pattern!r}: parameter name {name!r} must be a letter or '_'"
            " followed by letters, digits or '_'"
        )
    return name


def _static_segment(segment: str, pattern: str) -> str:
    """Bring a static segment to the form `normalize_path` gives the request path."""
    if "{" in segment or "}" in segment:
        raise RoutePatternError(
            f"route {pattern!r}: a parameter must be a whole segment, '{{name}}' or"
            " '{*name}'; write a literal brace as %7B or %7D"
        )
    try:
        # Strict about encoded slashes (no request keeps one, so such a route could never
        # match), lenient about `;`, which requests carry under `server.path_parameters: allow`.
        canonical = normalize_path("/" + quote(segment, safe=_PATTERN_SAFE), ALLOW_PATH_PARAMETERS)
    except InvalidPath as exc:
        raise RoutePatternError(f"route {pattern!r}: {exc}") from None
    if canonical == "/":
        # It was `.` or `..` (maybe encoded): a normalised path never has such a segment, so
        # the route could never match.
        raise RoutePatternError(f"route {pattern!r}: '.' and '..' segments are not allowed")
    return canonical[1:]


def _parse(pattern: str) -> list[str]:
    """Split a pattern into validated segments: canonical static text, `{}` or `{*}`.

    Parameters are reduced to their kind (names dropped) so that patterns differing only in
    parameter names share a trie node and count as duplicates.
    """
    if not pattern:
        raise RoutePatternError("route path must not be empty")
    if not pattern.startswith("/"):
        raise RoutePatternError(f"route {pattern!r}: path must start with '/'")
    raw_segments = pattern[1:].split("/")
    if raw_segments[-1] == "":
        raw_segments.pop()  # A trailing slash means nothing under prefix matching.
    shape: list[str] = []
    for index, segment in enumerate(raw_segments):
        if not segment:
            raise RoutePatternError(f"route {pattern!r}: empty segment ('//')")
        if segment.startswith("{") and segment.endswith("}") and len(segment) > 1:
            _param_name(segment, pattern)
            if segment.startswith("{*"):
                if index != len(raw_segments) - 1:
                    raise RoutePatternError(
                        f"route {pattern!r}: '{segment}' must be the last segment"
                    )
                shape.append("{*}")
            else:
                shape.append("{}")
        else:
            shape.append(_static_segment(segment, pattern))
    return shape


def _names(pattern: str) -> tuple[tuple[str, ...], str | None]:
    """The `{name}` names in order and the `{*name}` name; parse() has validated the syntax."""
    names: list[str] = []
    rest: str | None = None
    for segment in pattern.split("/"):
        if segment.startswith("{") and segment.endswith("}") and len(segment) > 1:
            name = _param_name(segment, pattern)
            if name in names or name == rest:
                raise RoutePatternError(f"route {pattern!r}: parameter {name!r} appears twice")
            if segment.startswith("{*"):
                rest = name
            else:
                names.append(name)
    return tuple(names), rest


class Router(Generic[T]):
    """An immutable route table; build one per config and share it across requests."""

    __slots__ = ("_root",)

    def __init__(self, routes: Iterable[tuple[str, frozenset[str] | None, T]]) -> None:
        self._root: _Node[_Endpoint[T]] = _Node()
        for pattern, methods, target in routes:
            route, shape = _route(pattern, methods, target)
            _slot(self._root, shape, _Endpoint).add(route)
        for endpoint in self._root.endpoints():
            endpoint.freeze()

    def match(self, method: str, path: str) -> Match[T] | NoMatch:
        """Route a normalised path (see `aiogate.pathnorm.normalize_path`)."""
        # segments[0] is what precedes the leading '/', so it must be empty. A trailing '/'
        # yields a final "" that no static or param child accepts, as prefix matching needs.
        segments = path.split("/")
        if segments[0]:
            return _NOT_FOUND
        captures: list[str] = []
        found = _find(self._root, segments, 1, captures)
        if found is None:
            return _NOT_FOUND
        endpoint, rest_at = found
        route = endpoint.by_method.get(method, endpoint.wildcard)
        if route is None:
            return NoMatch(endpoint.allowed)
        return _build(route, segments, rest_at, captures)


def _route(pattern: str, methods: frozenset[str] | None, target: T) -> tuple[_Route[T], list[str]]:
    shape = _parse(pattern)
    names, rest = _names(pattern)
    if methods is not None and not methods:
        raise RoutePatternError(
            f"route {pattern!r}: empty method list (omit it to allow every method)"
        )
    prebuilt = None if names or rest is not None else Match(target, _NO_PARAMS, pattern)
    return _Route(pattern, methods, target, names, rest, prebuilt), shape


def _slot(root: _Node[E], shape: list[str], new: Callable[[], E]) -> E:
    """The endpoint of `shape` in the trie, created (with `new`) on first use."""
    node = root
    for segment in shape:
        if segment == "{*}":
            if node.catch_all is None:
                node.catch_all = new()
            return node.catch_all
        if segment == "{}":
            if node.param is None:
                node.param = _Node()
            node = node.param
        else:
            node = node.static.setdefault(segment, _Node())
    if node.end is None:
        node.end = new()
    return node.end


def _build(route: _Route[T], segments: list[str], rest_at: int, captures: list[str]) -> Match[T]:
    if route.prebuilt is not None:
        return route.prebuilt
    # The walk captures exactly one segment per `{param}` of the route's shape, so the lengths
    # agree by construction; strict=True would only add cost here.
    params = dict(zip(route.param_names, captures, strict=False))
    if route.rest_name is not None:
        params[route.rest_name] = "/".join(segments[rest_at:])
    return Match(route.target, params, route.pattern)


def _find(
    node: _Node[_Endpoint[T]], segments: list[str], index: int, captures: list[str]
) -> tuple[_Endpoint[T], int] | None:
    """The most specific pattern matching the path, and where its `{*rest}` starts.

    Recursion depth is bounded by the depth of the trie, not by the length of the path.
    ``captures`` holds the `{param}` segments of the current branch; it is valid on return.
    """
    if index < len(segments):
        segment = segments[index]
        child = node.static.get(segment)
        if child is not None:
            found = _find(child, segments, index + 1, captures)
            if found is not None:
                return found
        if node.param is not None and segment:
            captures.append(segment)
            found = _find(node.param, segments, index + 1, captures)
            if found is not None:
                return found
            captures.pop()
        # Segments remain: `{*rest}` takes them, so it is the longer, more specific match.
        if node.catch_all is not None:
            return node.catch_all, index
        if node.end is not None:
            return node.end, index
        return None
    # The path ends here: the pattern that ends here too is exact, `{*rest}` would match "".
    if node.end is not None:
        return node.end, index
    if node.catch_all is not None:
        return node.catch_all, index
    return None


# -- hosts and headers -------------------------------------------------------------------

#: The whole value of a request header field (repeated lines joined with ", "), or None.
HeaderField = Callable[[str], str | None]
Conditions = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Rule(Generic[T]):
    """A route for `ConditionalRouter`: a pattern, its methods, and where it applies.

    ``hosts`` are lower-case host names without a port, or `*.domain` wildcards; empty means
    every host. ``headers`` are (lower-case name, exact value) pairs that must all match.
    """

    pattern: str
    methods: frozenset[str] | None
    target: T
    hosts: tuple[str, ...] = ()
    headers: Conditions = ()


class _Variants(Generic[T]):
    """The routes of one pattern shape, grouped by their header conditions."""

    __slots__ = ("_by_conditions", "always", "order", "plain")

    def __init__(self) -> None:
        self._by_conditions: dict[Conditions, _Endpoint[T]] = {}
        self.order: tuple[tuple[Conditions, _Endpoint[T]], ...] = ()
        #: A route without header conditions is there for every request.
        self.always = False
        #: The only routes have no header conditions: no header is read.
        self.plain: _Endpoint[T] | None = None

    def add(self, route: _Route[T], conditions: Conditions) -> None:
        # Same conditions: the methods must be disjoint, exactly as without conditions.
        self._by_conditions.setdefault(conditions, _Endpoint()).add(route)

    def freeze(self) -> None:
        for endpoint in self._by_conditions.values():
            endpoint.freeze()
        # More conditions are more specific; sorted() is stable, so config order breaks ties.
        self.order = tuple(sorted(self._by_conditions.items(), key=lambda item: -len(item[0])))
        self.always = () in self._by_conditions
        if self.always and len(self.order) == 1:
            self.plain = self._by_conditions[()]

    def accepts(self, header: HeaderField) -> bool:
        return self.always or any(_satisfied(conditions, header) for conditions, _ in self.order)

    def select(self, method: str, header: HeaderField) -> _Route[T] | NoMatch:
        """The first variant whose headers match and which allows `method`; else 405."""
        plain = self.plain
        if plain is not None:
            route = plain.by_method.get(method, plain.wildcard)
            return route if route is not None else NoMatch(plain.allowed)
        allowed: set[str] = set()
        for conditions, endpoint in self.order:
            if _satisfied(conditions, header):
                route = endpoint.by_method.get(method, endpoint.wildcard)
                if route is not None:
                    return route
                allowed |= endpoint.allowed
        return NoMatch(frozenset(allowed))


def _satisfied(conditions: Conditions, header: HeaderField) -> bool:
    return all(header(name) == value for name, value in conditions)


class _Table(Generic[T]):
    """The routes of one host key: a segment trie whose patterns hold header variants."""

    __slots__ = ("_root",)

    def __init__(self) -> None:
        self._root: _Node[_Variants[T]] = _Node()

    def add(self, route: _Route[T], shape: list[str], conditions: Conditions) -> None:
        _slot(self._root, shape, _Variants).add(route, conditions)

    def freeze(self) -> None:
        for variants in self._root.endpoints():
            variants.freeze()

    def match(self, method: str, segments: list[str], header: HeaderField) -> Match[T] | NoMatch:
        captures: list[str] = []
        found = _find_variants(self._root, segments, 1, captures, header)
        if found is None:
            return _NOT_FOUND
        variants, rest_at = found
        route = variants.select(method, header)
        if isinstance(route, NoMatch):
            return route
        return _build(route, segments, rest_at, captures)


class ConditionalRouter(Generic[T]):
    """A route table where routes may be limited to hosts and header values (see above)."""

    __slots__ = ("_any", "_exact", "_wildcard")

    def __init__(self, rules: Iterable[Rule[T]]) -> None:
        tables: dict[str, _Table[T]] = {}
        for rule in rules:
            route, shape = _route(rule.pattern, rule.methods, rule.target)
            conditions = tuple(sorted((name.lower(), value) for name, value in rule.headers))
            for host in dict.fromkeys(rule.hosts) or ("",):
                try:
                    tables.setdefault(host.lower(), _Table()).add(route, shape, conditions)
                except RoutePatternError as exc:
                    where = f" on host {host!r}" if host else ""
                    raise RoutePatternError(f"{exc}{where}") from None
        for table in tables.values():
            table.freeze()
        self._any = tables.pop("", None)
        self._exact = {host: t for host, t in tables.items() if not host.startswith("*.")}
        self._wildcard = {host[2:]: t for host, t in tables.items() if host.startswith("*.")}

    def match(self, method: str, path: str, host: str, header: HeaderField) -> Match[T] | NoMatch:
        """Route a normalised path; `host` as `request_host` gives it."""
        segments = path.split("/")
        if segments[0]:
            return _NOT_FOUND
        exact = self._exact.get(host)
        if exact is not None:
            found = exact.match(method, segments, header)
            if found is not _NOT_FOUND:
                return found
        if self._wildcard:
            # `*.example.com` needs at least one whole label before `example.com`: the
            # suffixes after each dot but the last, longest (most specific) first.
            dot = host.find(".", 1)
            while dot > 0:
                table = self._wildcard.get(host[dot + 1 :])
                if table is not None:
                    found = table.match(method, segments, header)
                    if found is not _NOT_FOUND:
                        return found
                dot = host.find(".", dot + 1)
        if self._any is not None:
            return self._any.match(method, segments, header)
        return _NOT_FOUND


def request_host(value: str | None) -> str:
    """A Host header as routes name hosts: lower-case, without port or trailing dot."""
    if not value:
        return ""
    host = value.lower()
    # An IPv6 literal keeps its brackets; the port after it (or after a name) goes.
    host = host.partition("]")[0] + "]" if host.startswith("[") else host.partition(":")[0]
    return host[:-1] if host.endswith(".") else host


def _find_variants(
    node: _Node[_Variants[T]],
    segments: list[str],
    index: int,
    captures: list[str],
    header: HeaderField,
) -> tuple[_Variants[T], int] | None:
    """`_find`, where a pattern whose routes all want other header values is not there."""
    if index < len(segments):
        segment = segments[index]
        child = node.static.get(segment)
        if child is not None:
            found = _find_variants(child, segments, index + 1, captures, header)
            if found is not None:
                return found
        if node.param is not None and segment:
            captures.append(segment)
            found = _find_variants(node.param, segments, index + 1, captures, header)
            if found is not None:
                return found
            captures.pop()
        order = (node.catch_all, node.end)
    else:
        order = (node.end, node.catch_all)
    for variants in order:
        if variants is not None and variants.accepts(header):
            return variants, index
    return None
