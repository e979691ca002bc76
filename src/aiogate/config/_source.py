"""`config_source:` — routes and upstreams kept outside the config file (etcd).

The file stays the source of everything else (listeners, auth, limits ...); the source's
document replaces the file's `routes:` and `upstreams:` and is validated and applied like a
reload whenever it changes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator, model_validator

from ._base import Model, fail, one_or_many
from ._discovery import _endpoint_issue
from .units import Duration

__all__ = ["ConfigSourceConfig", "EtcdConfigSource", "SOURCE_SECTIONS"]

#: The top-level keys a config source may set; every other section comes from the file.
SOURCE_SECTIONS = ("routes", "upstreams")


class EtcdConfigSource(Model):
    """One etcd (v3) key whose value is YAML (or JSON) with `routes:` and `upstreams:`."""

    #: Members of the etcd cluster (client URLs); tried in turn until one answers.
    endpoints: Annotated[tuple[str, ...], BeforeValidator(one_or_many), Field(min_length=1)] = (
        "http://127.0.0.1:2379",
    )
    #: The key itself (not a prefix), e.g. `/aiogate/config`.
    key: str = Field(min_length=1)
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

    @model_validator(mode="after")
    def _ordered(self) -> EtcdConfigSource:
        if self.max_backoff < self.backoff:
            fail("must be >= backoff", "max_backoff")
        return self

    @property
    def name(self) -> str:
        """How errors in the key's value are located: `etcd:/aiogate/config:LINE:COL`."""
        return f"etcd:{self.key}"


class ConfigSourceConfig(Model):
    etcd: EtcdConfigSource
