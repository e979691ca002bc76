"""Shared pieces of the config models: the frozen base class and small validators."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, NoReturn

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

# RFC 9110 token: header names and method names.
HTTP_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTNAME = re.compile(
    r"[A-Za-z0-9_]([A-Za-z0-9_\-]{0,62})(\.[A-Za-z0-9_][A-Za-z0-9_\-]{0,62})*\.?"
)


class Model(BaseModel):
    """Every config model is immutable and rejects keys it does not know."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        # Header values and names like `X-Version: 2` arrive from YAML as numbers.
        coerce_numbers_to_str=True,
        # Fields such as RouteAuth.types are spelled differently in YAML (`type`).
        validate_by_name=True,
        validate_by_alias=True,
    )


def fail(message: str, *at: str | int) -> NoReturn:
    """Reject a value with a human message.

    ``at`` names a key below the model being validated, so that the loader can point at the
    offending line instead of the start of the enclosing mapping.
    """
    # The message travels in ctx rather than in the template: templates expand `{...}`, and
    # route paths like `/users/{id}` would be mangled.
    raise PydanticCustomError("aiogate", "{message}", {"message": message, "at": at})


def one_or_many(value: Any) -> Any:
    """Let a single scalar stand for a one-item list (`type: jwt` == `type: [jwt]`)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    return value


def string_list(value: Any, what: str = "string") -> Any:
    """Check a list of strings up front, for fields typed as a union with ``str``.

    Without it pydantic would report a bad item once per union member.
    """
    value = one_or_many(value)
    if isinstance(value, tuple):
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                fail(f"expected a non-empty {what}, got {describe(item)}", index)
    return value


def describe(value: object) -> str:
    """Name a YAML value's type the way a config author thinks of it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"'{value}'" if value else "an empty string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def check_header_name(name: str, *at: str | int) -> str:
    if not HTTP_TOKEN.fullmatch(name):
        fail(f"invalid header name '{name}'", *at)
    return name


def check_host(host: str) -> str:
    """Accept an IP literal or a DNS name; nothing is resolved here."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host) or host.replace(".", "").isdigit():
            raise ValueError(f"invalid host '{host}'") from None
    return host


def split_host_port(listen: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; raise ValueError with a human message.

    ``:port`` means every IPv4 interface (``0.0.0.0``), as in nginx and Go; IPv6 as well
    needs ``[::]:port``, which on Linux also accepts IPv4 unless ``net.ipv6.bindv6only`` is set.
    """
    hint = "expected host:port, e.g. 0.0.0.0:8080 or [::1]:8080"
    if listen.startswith("["):
        host, sep, port_text = listen[1:].partition("]:")
        if not sep:
            raise ValueError(f"invalid listen address '{listen}' ({hint})")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address '{host}' in '{listen}'") from None
    else:
        host, sep, port_text = listen.rpartition(":")
        if not sep:
            raise ValueError(f"invalid listen address '{listen}' ({hint})")
        host = host or "0.0.0.0"  # `:8080` asks for every (IPv4) interface
        if ":" in host:
            raise ValueError(f"invalid listen address '{listen}' (write IPv6 as [{host}]:port)")
        check_host(host)
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"invalid port '{port_text}' in '{listen}' (0-65535)")
    return host, int(port_text)


def _header_name(value: str) -> str:
    return check_header_name(value)


def _header_value(value: str) -> str:
    # A CR or LF in a value would let the config split the header block.
    if "\r" in value or "\n" in value:
        fail("header value must not contain a line break")
    return value


def _method(value: str) -> str:
    if not HTTP_TOKEN.fullmatch(value):
        fail(f"invalid method '{value}'")
    return value.upper()


def _unique(values: tuple[str, ...]) -> tuple[str, ...]:
    # Order is kept (it is the order of an Allow header); repeats are harmless, so dropped.
    return tuple(dict.fromkeys(values))


def _not_empty(values: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        fail("must list at least one method (omit the key to allow every method)")
    return values


NonEmptyStr = Annotated[str, Field(min_length=1)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]
Method = Annotated[str, AfterValidator(_method)]
# Lists that also accept a single item: `type: jwt` == `type: [jwt]`.
StrList = Annotated[tuple[NonEmptyStr, ...], BeforeValidator(one_or_many)]
HeaderNames = Annotated[tuple[HeaderName, ...], BeforeValidator(one_or_many)]
Methods = Annotated[
    tuple[Method, ...],
    BeforeValidator(one_or_many),
    AfterValidator(_unique),
    AfterValidator(_not_empty),
]


def _network(value: Any) -> Any:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    if not isinstance(value, str):
        fail(f"expected a CIDR or an IP address, got {describe(value)}")
    try:
        # strict: `10.0.0.1/8` is more likely a typo than a wish for 10.0.0.0/8, and in an
        # allow/deny or trusted-proxy list a silently widened range is a security decision
        # nobody made.
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        fail(f"invalid CIDR or IP address: {exc}")


#: A CIDR (or a bare address) as written in trusted_proxies and ip_rules.
IpNetwork = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_network)]


def _readable_file(value: str) -> str:
    # Checked at load time so a typo fails `aiogate check`, not the first request.
    try:
        with open(value, "rb"):
            pass
    except OSError as exc:
        fail(f"cannot read '{value}': {exc.strerror or exc}")
    return value


#: A path that must name a readable file when the config is loaded (keys, CA bundles).
ReadableFile = Annotated[str, AfterValidator(_readable_file)]
