"""Header value templates: `X-Response-Time: "${latency}"`, parsed once, rendered per request.

Pure (no aiohttp): the config models use `parse` to reject unknown variables with a position,
and the transform stage compiles the parsed parts into getters once per Runtime.

A *lower-case* `${name}` is a gateway variable and must be one of `VARIABLES`; any other
`${...}` text (e.g. `${HOME}`) is kept verbatim, as the config loader already resolved every
`${env:NAME}` before we see the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["REQUEST_VARIABLES", "VARIABLES", "Part", "TemplateError", "Var", "parse"]

#: Every variable a header value may use.
VARIABLES: Final = frozenset(
    {"latency", "request_id", "consumer", "route", "client_ip", "upstream", "backend"}
)
#: The backend is chosen by the proxy, after the request headers are built.
REQUEST_VARIABLES: Final = VARIABLES - {"backend"}

_VARIABLE: Final = re.compile(r"\$\{([a-z_][a-z0-9_]*)\}")


class TemplateError(ValueError):
    """A template names a variable the gateway does not know (or cannot know there)."""


@dataclass(frozen=True, slots=True)
class Var:
    name: str


Part = str | Var


def parse(text: str, allowed: frozenset[str] = VARIABLES) -> tuple[Part, ...]:
    """Split `text` into literal strings and variables; adjacent literals are merged."""
    parts: list[Part] = []
    pos = 0
    for match in _VARIABLE.finditer(text):
        name = match.group(1)
        if name not in allowed:
            if name in VARIABLES:
                raise TemplateError(f"${{{name}}} is not known here (only in response headers)")
            known = ", ".join(f"${{{v}}}" for v in sorted(VARIABLES))
            raise TemplateError(f"unknown variable ${{{name}}} (known: {known})")
        if match.start() > pos:
            parts.append(text[pos : match.start()])
        parts.append(Var(name))
        pos = match.end()
    if pos < len(text):
        parts.append(text[pos:])
    return tuple(parts)
