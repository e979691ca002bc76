"""Checks that span sections: references between routes, upstreams, auth and redis.

They run on validated models, so each check sees normalised values (upper-cased methods,
parsed paths) and never has to second-guess YAML types.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ._auth import AuthConfig
from ._route import RouteConfig
from ._upstream import UpstreamConfig

__all__ = ["Path", "PathIssue", "Sections", "format_path", "reference_issues"]

Path = tuple[str | int, ...]
PathIssue = tuple[Path, str]

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]+")
_PARAM = re.compile(r"\{(\*?)[^{}]*\}")


def format_path(path: Path) -> str:
    """``("routes", 0, "upstream")`` -> ``routes[0].upstream``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


@dataclass(frozen=True, slots=True)
class Sections:
    """Which optional sections a config has: all that references to them need to know."""

    jwt: bool
    api_key: bool
    api_key_in_redis: bool
    redis: bool
    #: The listener is TLS with a `client_ca_file`: client certificates can be verified.
    mtls: bool = False

    @classmethod
    def of(cls, auth: AuthConfig, *, redis: bool, mtls: bool = False) -> Sections:
        return cls(
            jwt=auth.jwt is not None,
            api_key=auth.api_key is not None,
            api_key_in_redis=auth.api_key is not None and auth.api_key.store == "redis",
            redis=redis,
            mtls=mtls,
        )


def reference_issues(
    upstreams: Sequence[tuple[int, UpstreamConfig]],
    routes: Sequence[tuple[int, RouteConfig]],
    sections: Sections,
    *,
    upstream_names: Sequence[tuple[int, str]] | None = None,
    unmatched: frozenset[int] = frozenset(),
) -> list[PathIssue]:
    """Every cross-section problem, as (path, message).

    ``upstreams``/``routes`` carry their index in the file because the loader may pass only the
    items that validated. ``upstream_names`` (index, name) overrides the upstream names: the
    loader includes upstreams that failed validation, so a route is not blamed for its
    upstream's typo and a duplicate name is found even next to a broken upstream.
    ``unmatched`` are routes whose request matching (methods, hosts, headers) is unknown
    because it failed validation: they take no part in the duplicate check.
    """
    if upstream_names is None:
        upstream_names = [(index, upstream.name) for index, upstream in upstreams]
    issues: list[PathIssue] = []
    first_upstream: dict[str, int] = {}
    for index, name in upstream_names:
        first = first_upstream.setdefault(name, index)
        if first != index:
            issues.append(
                (
                    ("upstreams", index, "name"),
                    f"duplicate upstream name '{name}' (also upstreams[{first}])",
                )
            )
    names = list(first_upstream)
    for index, route in routes:
        if route.upstream not in names:
            known = f"known: {', '.join(names)}" if names else "no upstreams are defined"
            issues.append(
                (("routes", index, "upstream"), f"unknown upstream '{route.upstream}' ({known})")
            )
    issues += _route_overlaps([(i, route) for i, route in routes if i not in unmatched])
    issues += _auth_references(routes, sections)
    issues += _cache_references(routes, sections)
    return issues


def _route_overlaps(routes: Sequence[tuple[int, RouteConfig]]) -> list[PathIssue]:
    issues: list[PathIssue] = []
    # Parameter names do not change what a path matches: /a/{id} and /a/{key} collide.
    shapes: dict[str, list[tuple[int, RouteConfig]]] = {}
    names: dict[str, int] = {}
    for index, route in routes:
        shape = _PARAM.sub(lambda m: "{" + m.group(1) + "}", route.path)
        for other_index, other in shapes.get(shape, ()):
            common = _common_methods(route.methods, other.methods)
            if common and _same_requests(route, other):
                issues.append(
                    (
                        ("routes", index, "path"),
                        f"duplicate route: {route.path} {common}{_where(route, other)} is "
                        f"already served by routes[{other_index}]",
                    )
                )
                break
        shapes.setdefault(shape, []).append((index, route))
        if route.name is not None:
            first = names.setdefault(route.name, index)
            if first != index:
                issues.append(
                    (
                        ("routes", index, "name"),
                        f"duplicate route name '{route.name}' (also routes[{first}])",
                    )
                )
    return issues


def _same_requests(a: RouteConfig, b: RouteConfig) -> bool:
    """Both routes see the same requests: a host in common (or neither limits hosts) and the
    same header conditions. A route for `api.example.com` and one for every host are not
    duplicates: the first is preferred on its host, the second serves the others."""
    if bool(a.hosts) != bool(b.hosts) or (a.hosts and set(a.hosts).isdisjoint(b.hosts)):
        return False
    return _conditions(a) == _conditions(b)


def _conditions(route: RouteConfig) -> dict[str, str]:
    return {name.lower(): value for name, value in route.headers.items()}


def _where(a: RouteConfig, b: RouteConfig) -> str:
    hosts = [host for host in a.hosts if host in b.hosts]
    text = f" on host {', '.join(hosts)}" if hosts else ""
    if a.headers:
        text += " with the same headers"
    return text


def _common_methods(a: tuple[str, ...] | None, b: tuple[str, ...] | None) -> str:
    """The methods two routes both serve, as text; empty when they are disjoint."""
    if a is None and b is None:
        return "(every method)"
    if a is None or b is None:
        return ",".join(b or a or ())
    return ",".join(method for method in a if method in b)


def _auth_references(
    routes: Sequence[tuple[int, RouteConfig]], sections: Sections
) -> list[PathIssue]:
    issues: list[PathIssue] = []
    for index, route in routes:
        if route.auth is None:
            continue
        if "jwt" in route.auth.types and not sections.jwt:
            issues.append(
                (("routes", index, "auth", "type"), "type 'jwt' needs 'auth.jwt' to be configured")
            )
        if "api_key" in route.auth.types and not sections.api_key:
            issues.append(
                (
                    ("routes", index, "auth", "type"),
                    "type 'api_key' needs 'auth.api_key' to be configured",
                )
            )
        if "mtls" in route.auth.types and not sections.mtls:
            issues.append(
                (
                    ("routes", index, "auth", "type"),
                    "type 'mtls' needs 'server.tls.client_ca_file' (a TLS listener that"
                    " verifies client certificates)",
                )
            )
    if sections.api_key_in_redis and not sections.redis:
        issues.append(
            (("auth", "api_key", "store"), "store 'redis' needs a top-level 'redis' section")
        )
    return issues


def _cache_references(
    routes: Sequence[tuple[int, RouteConfig]], sections: Sections
) -> list[PathIssue]:
    return [
        (("routes", index, "cache", "store"), "store 'redis' needs a top-level 'redis' section")
        for index, route in routes
        if route.cache is not None and route.cache.store == "redis" and not sections.redis
    ]
