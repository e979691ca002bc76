"""The backend's `Server` header is replaced by aiogate's (as nginx and Envoy do), unless
`server.server_header: pass`: the backends' software and versions are not advertised."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from gateway import Gateway
from gwconfigs import wide_config
from wire import request


@pytest.mark.parametrize(("mode", "expected"), [(None, "aiogate"), ("pass", "rawbackend/1.0")])
def test_backend_server_header(
    raw_backend: Any,
    backends: Any,
    make_gateway: Callable[..., Gateway],
    mode: str | None,
    expected: str,
) -> None:
    server = {} if mode is None else {"server_header": mode}
    gw = make_gateway(wide_config(backends, raw_backend.url, **server))
    # The raw backend answers `/raw/server` with its own `Server: rawbackend/1.0`.
    reply = request(gw.port, "GET", "/raw/server")
    assert reply.status == 200
    servers = reply.all("Server")
    assert len(servers) == 1, reply.headers
    assert servers == [expected]
