"""Opening listeners: a bind error names the address it was for.

`[Errno 98] Address already in use` alone does not say whether the proxy or the admin port is
taken; `cannot listen on 127.0.0.1:9901: [Errno 98] ...` does.
"""

from __future__ import annotations

import os

from aiohttp import web

__all__ = ["ListenError", "format_address", "start_site"]


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ListenError(OSError):
    """A listener could not be opened (`cannot listen on HOST:PORT: <the OS error>`)."""

    def __init__(self, host: str, port: int, cause: OSError) -> None:
        # The event loop words its bind errors at length ("error while attempting to bind on
        # address ..."); the errno and its standard text say it all, the same for every listener.
        reason = f"[Errno {cause.errno}] {os.strerror(cause.errno)}" if cause.errno else cause
        super().__init__(f"cannot listen on {format_address(host, port)}: {reason}")


async def start_site(runner: web.AppRunner, host: str, port: int) -> None:
    """Serve `runner`'s app on `host:port`; a bind error becomes a ListenError."""
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        raise ListenError(host, port, exc) from exc
