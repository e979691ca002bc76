"""Service discovery: where an upstream finds backends besides its static `backends:`.

`discovery:` is a union keyed on `type`; each source type is one model here plus one member of
`DiscoveryConfig` (its implementation is registered in `aiogate.discovery.registry`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)

from ._base import Model, fail, one_or_many
from .units import Duration

__all__ = [
    "ConsulDiscoveryConfig",
    "DiscoveryConfig",
    "EtcdClientSettings",
    "EtcdDiscoveryConfig",
]


def _endpoint_issue(value: str, what: str = "etcd endpoint") -> str | None:
    """Why `value` is not an http(s)://host:port base URL, or None when it is one."""
    hint = "expected http://host:port or https://host:port"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"invalid {what} '{value}': {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"invalid {what} '{value}' ({hint})"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"an {what} takes no path or query: '{value}' ({hint})"
    if parts.username is not None or parts.password is not None:
        return f"credentials in an {what} are not supported"
    return None


class EtcdClientSettings(Model):
    """How to reach an etcd (v3) cluster: shared by etcd discovery and the etcd config source."""

    #: Members of the etcd cluster (client URLs); tried in turn until one answers.
    endpoints: Annotated[tuple[str, ...], BeforeValidator(one_or_many), Field(min_length=1)] = (
        "http://127.0.0.1:2379",
    )
    #: Each request to etcd, and how long the start waits for the first read.
    timeout: Annotated[Duration, Field(gt=0)] = 2.0
    #: Reconnect back-off: starts at `backoff`, doubles up to `max_backoff` (with jitter).
    backoff: Annotated[Duration, Field(gt=0)] = 0.25
    max_backoff: Annotated[Duration, Field(gt=0)] = 5.0
    #: While watching, etcd is asked for its status this often; no answer -> reconnect.
    keepalive: Annotated[Duration, Field(gt=0)] = 10.0

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for index, item in enumerate(value):
            issue = _endpoint_issue(item)
            if issue is not None:
                fail(issue, index)
        return tuple(item.rstrip("/") for item in value)


class EtcdDiscoveryConfig(EtcdClientSettings):
    """Backends registered in etcd (v3) under a key prefix, one key per backend.

    A key's value is a backend URL or JSON `{"url": ..., "weight": ...}`; keys attached to a
    lease disappear with it, and the backend with them.
    """

    type: Literal["etcd"] = "etcd"
    #: Every key under it is one backend, e.g. `/services/user-service/`.
    prefix: str = Field(min_length=1)
    #: Changes arriving within this long of each other are applied as one new backend set.
    debounce: Annotated[Duration, Field(ge=0)] = 0.2

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        # An empty prefix would watch the whole keyspace: never what was meant.
        if not value.strip("/"):
            fail(f"must name a key prefix such as /services/user-service/, got '{value}'")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> EtcdDiscoveryConfig:
        if self.max_backoff < self.backoff:
            fail("must be >= backoff", "max_backoff")
        return self


#: Consul caps a blocking query's `wait` at 10 minutes.
_MAX_CONSUL_WAIT = 600.0


def _no_blank(value: Any) -> Any:
    """`token: "${env:CONSUL_TOKEN:-}"` with the variable unset means no token, not ""."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


class ConsulDiscoveryConfig(Model):
    """The instances of one Consul service, followed with blocking health queries.

    Each instance becomes a backend `SCHEME://ADDRESS:PORT`, ADDRESS being the service's own
    address or, when it has none, its node's (as Consul's DNS answers).
    """

    type: Literal["consul"] = "consul"
    #: The Consul agent's HTTP API (https:// is verified against the system trust store).
    address: str = "http://127.0.0.1:8500"
    #: The service name as registered in Consul.
    service: str = Field(min_length=1)
    #: Only instances whose checks all pass (Consul's `?passing`); false: every instance.
    passing_only: bool = True
    #: ACL token sent as `X-Consul-Token`; empty or absent: none (the agent's default).
    token: Annotated[SecretStr | None, BeforeValidator(_no_blank)] = None
    #: Only instances carrying this tag.
    tag: Annotated[str | None, BeforeValidator(_no_blank)] = None
    #: Ask this datacenter instead of the agent's own.
    datacenter: Annotated[str | None, BeforeValidator(_no_blank)] = None
    #: The scheme of the backend URLs built from the instances.
    scheme: Literal["http", "https"] = "http"
    #: How long Consul may hold a blocking query open when nothing changes.
    wait: Annotated[Duration, Field(gt=0)] = 55.0
    #: Each request beyond `wait`, and how long the start waits for the first read.
    timeout: Annotated[Duration, Field(gt=0)] = 2.0
    debounce: Annotated[Duration, Field(ge=0)] = 0.2
    backoff: Annotated[Duration, Field(gt=0)] = 0.25
    max_backoff: Annotated[Duration, Field(gt=0)] = 5.0

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        issue = _endpoint_issue(value, "Consul address")
        if issue is not None:
            fail(issue)
        return value.rstrip("/")

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        # It is a path segment of the query: a slash would ask for another endpoint.
        if "/" in value or value != value.strip():
            fail(f"a Consul service name has no '/' or surrounding spaces, got '{value}'")
        return value

    @field_validator("wait")
    @classmethod
    def _wait(cls, value: float) -> float:
        if value > _MAX_CONSUL_WAIT:
            fail("must be at most 10m (Consul's limit for a blocking query)")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ConsulDiscoveryConfig:
        if self.max_backoff < self.backoff:
            fail("must be >= backoff", "max_backoff")
        return self


def _source_type(value: Any) -> Any:
    """The member of `DiscoveryConfig` to validate `value` with.

    `type` may be left out and means etcd, the first (and once the only) type. A value that is
    not a mapping goes to etcd too, whose model then reports "expected a mapping".
    """
    if isinstance(value, dict):
        return value.get("type", "etcd")
    return getattr(value, "type", "etcd")


#: An upstream's `discovery:` block. A new source type adds `| Annotated[Model, Tag("name")]`.
DiscoveryConfig = Annotated[
    Annotated[EtcdDiscoveryConfig, Tag("etcd")] | Annotated[ConsulDiscoveryConfig, Tag("consul")],
    Discriminator(_source_type),
]
