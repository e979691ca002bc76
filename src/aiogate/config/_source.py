"""`config_source:` — routes and upstreams kept outside the config file (etcd).

The file stays the source of everything else (listeners, auth, limits ...); the source's
document replaces the file's `routes:` and `upstreams:` and is validated and applied like a
reload whenever it changes.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from ._base import Model, fail
from ._discovery import EtcdClientSettings

__all__ = ["ConfigSourceConfig", "EtcdConfigSource", "SOURCE_SECTIONS"]

#: The top-level keys a config source may set; every other section comes from the file.
SOURCE_SECTIONS = ("routes", "upstreams")


class EtcdConfigSource(EtcdClientSettings):
    """One etcd (v3) key whose value is YAML (or JSON) with `routes:` and `upstreams:`."""

    #: The key itself (not a prefix), e.g. `/aiogate/config`.
    key: str = Field(min_length=1)

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
