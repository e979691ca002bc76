"""Service discovery: where an upstream finds backends besides its static `backends:`.

`discovery:` is a union keyed on `type`; each source type is one model here plus one member of
`DiscoveryConfig` (its implementation is registered in `aiogate.discovery.registry`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator, model_validator

from ._base import Model, fail, one_or_many
from .units import Duration

__all__ = ["DiscoveryConfig", "EtcdDiscoveryConfig"]


def _endpoint_issue(value: str) -> str | None:
    """Why `value` is not an etcd client URL, or None when it is one."""
    hint = "expected http://host:port or https://host:port"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"invalid etcd endpoint '{value}': {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"invalid etcd endpoint '{value}' ({hint})"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"an etcd endpoint takes no path or query: '{value}' ({hint})"
    if parts.username is not None or parts.password is not None:
        return "credentials in an etcd endpoint are not supported"
    return None


class EtcdDiscoveryConfig(Model):
    """Backends registered in etcd (v3) under a key prefix, one key per backend.

    A key's value is a backend URL or JSON `{"url": ..., "weight": ...}`; keys attached to a
    lease disappear with it, and the backend with them.
    """

    type: Literal["etcd"] = "etcd"
    #: Members of the etcd cluster (client URLs); tried in turn until one answers.
    endpoints: Annotated[tuple[str, ...], BeforeValidator(one_or_many), Field(min_length=1)] = (
        "http://127.0.0.1:2379",
    )
    #: Every key under it is one backend, e.g. `/services/user-service/`.
    prefix: str = Field(min_length=1)
    #: Each request to etcd, and how long the start waits for the first read.
    timeout: Annotated[Duration, Field(gt=0)] = 2.0
    #: Changes arriving within this long of each other are applied as one new backend set.
    debounce: Annotated[Duration, Field(ge=0)] = 0.2
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
    Annotated[EtcdDiscoveryConfig, Tag("etcd")],
    Discriminator(_source_type),
]
