"""Checks of the request head that no route may relax, run once before routing.

What is refused here would otherwise reach an upstream in a form it may read differently from
the gateway:

- a `Host` that is not `host[:port]` (it is relayed as `X-Forwarded-Host` and routed on), more
  than one `Host`, none on HTTP/1.1, or an absolute-form target naming another authority;
- more than one `Authorization` (RFC 9110 makes it a singleton: the gateway would verify the
  first while an upstream may read the last);
- header names with `_` under `server.underscore_headers: reject`. Under `drop` (the default)
  the proxy leaves them out of the upstream request; they are only counted here.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from typing import Final

from aiohttp import web
from aiohttp.http import HttpVersion11

from .config import ServerConfig
from .errors import BadRequest
from .metrics import UNDERSCORE_HEADERS

__all__ = ["check_request_head", "valid_host"]

# RFC 3986 host, stricter than its reg-name: dot-separated labels of unreserved characters
# (letters, digits, `-`, `_`, `~`), no empty label, an optional trailing dot. Sub-delimiters
# (`!$&'()*+,;=`) and percent-escapes are refused: no real host name has them, and they
# would be copied into X-Forwarded-Host and Forwarded. An IPv4 address is a reg-name to this
# grammar; an IP literal in brackets is checked by `ipaddress`. Linear: every `+` run ends at
# a mandatory `.`.
_HOST: Final = re.compile(
    r"(?:(?:[A-Za-z0-9_~-]+\.)*[A-Za-z0-9_~-]+\.?|\[([0-9A-Fa-f:.]+)\])(?::([0-9]{1,5}))?"
)
_DEFAULT_PORTS: Final = {"http": ":80", "https": ":443"}
_DROPPED: Final = UNDERSCORE_HEADERS.labels("dropped")
_REJECTED: Final = UNDERSCORE_HEADERS.labels("rejected")


def check_request_head(request: web.BaseRequest, server: ServerConfig) -> None:
    """Raise BadRequest (400) for a request head the gateway must not relay."""
    headers = request.headers
    hosts = headers.getall("Host", ())
    if len(hosts) > 1:
        raise BadRequest("more than one Host header")
    host = hosts[0] if hosts else None
    if host is None:
        if request.version >= HttpVersion11:
            raise BadRequest("an HTTP/1.1 request needs a Host header")
    elif not valid_host(host):
        raise BadRequest("invalid Host header")
    target = request.raw_path
    if not target.startswith("/"):
        _check_absolute_form(target, host)
    if len(headers.getall("Authorization", ())) > 1:
        raise BadRequest("more than one Authorization header")
    mode = server.underscore_headers
    # One C-level join over the names instead of a Python loop per header (~4x cheaper).
    if mode != "allow" and "_" in "".join(headers.keys()):
        if mode == "reject":
            _REJECTED.inc()
            raise BadRequest("header names with '_' are not accepted")
        _DROPPED.inc()


@functools.lru_cache(maxsize=1024)
def valid_host(value: str) -> bool:
    """`host[:port]` as RFC 9110 §7.2 allows it in Host (within the grammar above).

    Cached: clients send the same few Host values, and an IPv6 literal costs a parse.
    """
    match = _HOST.fullmatch(value)
    if match is None:
        return False
    literal, port = match.groups()
    if port is not None and not 0 < int(port) <= 65535:
        return False
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            return False
    return True


def _check_absolute_form(target: str, host: str | None) -> None:
    """`GET http://a.example/p`: its authority must be a valid host and agree with Host.

    RFC 9112 §3.2.2 lets the target's authority override Host; the gateway instead refuses a
    disagreement, so routing, X-Forwarded-Host and the upstream never see two different hosts.
    Other targets (`*`, authority-form) are refused later as paths.
    """
    scheme, sep, rest = target.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _DEFAULT_PORTS:
        return
    end = len(rest)
    for stop in "/?#":
        index = rest.find(stop)
        if 0 <= index < end:
            end = index
    authority = rest[:end]
    if not valid_host(authority):  # userinfo (`user@host`) fails here too
        raise BadRequest("invalid authority in the request target")
    if host is not None and _without_default_port(
        authority.lower(), scheme
    ) != _without_default_port(host.lower(), scheme):
        raise BadRequest("the request target's authority differs from the Host header")


def _without_default_port(authority: str, scheme: str) -> str:
    default = _DEFAULT_PORTS[scheme]
    return authority[: -len(default)] if authority.endswith(default) else authority
