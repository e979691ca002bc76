"""`reload:` — how the config file is re-read while the gateway runs."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ._base import Model
from .units import Duration

__all__ = ["ReloadConfig"]


class ReloadConfig(Model):
    #: Reload when the config file changes on disk (as SIGHUP would). Off by default.
    watch: bool = False
    #: The file must have been quiet this long before it is read: an editor's save, or a
    #: deploy tool writing several times, becomes one reload.
    debounce: Annotated[Duration, Field(ge=0, le=60)] = 0.5
