"""How the supervisor tells a worker process who it is: one environment variable.

A leaf module so that both sides (the command line, which must decide before anything imports
prometheus_client, and the supervisor) can use it without importing each other.
"""

from __future__ import annotations

from typing import Final

__all__ = ["HOSTVIEW_ENV", "SOURCE_ENV", "WORKER_ENV"]

#: Set by the supervisor in each worker's environment (the worker's index).
WORKER_ENV: Final = "AIOGATE_WORKER_ID"

#: Set by the supervisor in each worker's environment: the Unix socket of the host view.
HOSTVIEW_ENV: Final = "AIOGATE_HOSTVIEW_SOCKET"

#: Set by the supervisor in each worker's environment: its copy of the last good value of the
#: config source (`config_source:`), which the supervisor alone watches. No file: no value.
SOURCE_ENV: Final = "AIOGATE_SOURCE_FILE"
