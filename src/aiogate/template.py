"""Header value templates: `X-Response-Time: "${latency}"`, parsed once, rendered per request.

Pure (no aiohttp): the config models use `parse` to reject unknown variables with a position,
and the transform stage compiles the parsed parts into getters once per Runtime.

A `${...}` whose text starts with a lower-case letter or `_` is a gateway variable: one of
`VARIABLES`, or `claims.NAME` / `header.NAME` / `query.NAME` / `tls.client_subject`
(`NAMESPACES`). Anything else of
that form is an error, never literal text; other `${...}` text (e.g. `${HOME}`) is kept
verbatim, as the config loader already resolved every `${env:NAME}` before we see the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "NAMESPACES",
    "REQUEST_VARIABLES",
    "TLS_FIELDS",
    "VARIABLES",
    "Part",
    "TemplateError",
    "Var",
    "parse",
]

#: Every plain variable a header value may use.
VARIABLES: Final = frozenset(
    {"latency", "request_id", "consumer", "route", "client_ip", "upstream", "backend"}
)
#: The backend is chosen by the proxy, after the request headers are built.
REQUEST_VARIABLES: Final = VARIABLES - {"backend"}
#: `${NAMESPACE.NAME}`: a JWT claim, the client's request header or query parameter, or a
#: fact about the client's TLS connection (`TLS_FIELDS`).
NAMESPACES: Final = frozenset({"claims", "header", "query", "tls"})
#: `${tls.NAME}`: the verified client certificate's subject (RFC 4514), "" without one.
TLS_FIELDS: Final = frozenset({"client_subject"})

# RFC 9110 token: what a header name may be.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VARIABLE: Final = re.compile(r"\$\{([a-z_][^{}]*)\}")
# What is left of a `${x` once every complete variable is taken out: one never closed.
_UNCLOSED: Final = re.compile(r"\$\{[a-z_]")


class TemplateError(ValueError):
    """A template names a variable the gateway does not know (or cannot know there)."""


@dataclass(frozen=True, slots=True)
class Var:
    """A variable: ``name`` alone (``latency``), or a namespace and a ``key`` (claims, sub)."""

    name: str
    key: str = ""


Part = str | Var


def parse(text: str, allowed: frozenset[str] = VARIABLES) -> tuple[Part, ...]:
    """Split `text` into literal strings and variables; adjacent literals are merged."""
    parts: list[Part] = []
    pos = 0
    for match in _VARIABLE.finditer(text):
        _literal(parts, text[pos : match.start()])
        parts.append(_variable(match.group(1), allowed))
        pos = match.end()
    _literal(parts, text[pos:])
    return tuple(parts)


def _literal(parts: list[Part], text: str) -> None:
    if _UNCLOSED.search(text):
        raise TemplateError(f"'${{' starts a variable that is not closed with '}}': {text!r}")
    if text:
        parts.append(text)


def _variable(body: str, allowed: frozenset[str]) -> Var:
    namespace, dot, key = body.partition(".")
    if dot:
        if namespace not in NAMESPACES:
            raise TemplateError(f"unknown variable ${{{body}}} ({_known()})")
        if not key or key.strip() != key:
            raise TemplateError(f"${{{namespace}.NAME}} needs a name without spaces: ${{{body}}}")
        if namespace == "header" and not _TOKEN.fullmatch(key):
            raise TemplateError(f"${{{body}}}: '{key}' is not a valid header name")
        if namespace == "tls" and key not in TLS_FIELDS:
            known = ", ".join(f"${{tls.{name}}}" for name in sorted(TLS_FIELDS))
            raise TemplateError(f"unknown variable ${{{body}}} (known: {known})")
        return Var(namespace, key)
    if body not in allowed:
        if body in VARIABLES:
            raise TemplateError(f"${{{body}}} is not known here (only in response headers)")
        raise TemplateError(f"unknown variable ${{{body}}} ({_known()})")
    return Var(body)


def _known() -> str:
    names = [f"${{{v}}}" for v in sorted(VARIABLES)]
    names += [f"${{{ns}.NAME}}" for ns in sorted(NAMESPACES - {"tls"})]
    names += [f"${{tls.{name}}}" for name in sorted(TLS_FIELDS)]
    return "known: " + ", ".join(names)
