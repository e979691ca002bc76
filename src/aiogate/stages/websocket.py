"""The proxy's WebSocket handshake: what goes upstream, and the tunnel after a `101`.

The handshake travels the route's whole chain (IP rules, CORS, auth, rate limit, transform)
like any request; only the proxy's last steps differ. The upstream gets the client's
`Upgrade`/`Connection: Upgrade` (hop-by-hop, so otherwise dropped) and its end-to-end
`Sec-WebSocket-*` headers; its `101` must accept the client's key (else 502). Any other
answer is relayed as an ordinary response.
"""

from __future__ import annotations

import asyncio
from typing import Final

from ..context import RequestContext
from ..errors import BadGateway, BadRequest
from ..tunnel import Tunnel, TunnelResponse, client_transport
from ..upstream.attempt import Attempt
from ..upstream.forward import UpstreamResponse
from ..websocket import accept_key, check_handshake
from .relay import filter_response_headers

__all__ = ["UPGRADE_HEADERS", "WebSocketDisabled", "handshake_head", "open_tunnel"]

#: Added to the upstream handshake (the client's own copy is hop-by-hop, never forwarded);
#: `Connection: Upgrade` is framing, written by the upstream client itself (`upgrade=True`).
UPGRADE_HEADERS: Final = (("Upgrade", "websocket"),)
_SWITCHING: Final = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
)


class WebSocketDisabled(BadRequest):
    code = "websocket_not_allowed"


def handshake_head(
    ctx: RequestContext, head: list[tuple[str, str]], *, allowed: bool
) -> list[tuple[str, str]]:
    """The upstream handshake's headers (before `Host`), once the client's is valid."""
    if not allowed:
        raise WebSocketDisabled("WebSockets are not enabled on this route")
    check_handshake(ctx.request)
    return [*head, *UPGRADE_HEADERS]


def open_tunnel(
    ctx: RequestContext,
    upstream: UpstreamResponse,
    attempt: Attempt,
    seconds: float,
    idle_timeout: float,
) -> TunnelResponse:
    """Check the upstream's `101`, send it to the client and start splicing bytes.

    Raises BadGateway (the upstream connection closed; a failure of the backend) for a 101
    that does not accept the client's key, and ConnectionResetError (the server logs 499) when
    the client is gone. `seconds`: the head's latency, for the attempt's verdict.
    """
    conn = upstream.upgraded
    assert conn is not None
    now = asyncio.get_running_loop().time()
    expected = accept_key(ctx.request.headers["Sec-WebSocket-Key"])
    accepts = [
        value.strip() for name, value in upstream.headers if name.lower() == "sec-websocket-accept"
    ]
    if accepts != [expected]:
        conn.close()
        attempt.failed(now)
        raise BadGateway(
            "upstream answered the WebSocket handshake without a matching Sec-WebSocket-Accept",
            code="bad_upstream_response",
        )
    client = client_transport(ctx.request)
    taken = conn.take_over()
    if client is None or taken is None:
        conn.close()
        if client is None:
            raise ConnectionResetError("the client went away during the WebSocket handshake")
        attempt.failed(now)
        raise BadGateway(
            "upstream closed the connection after its 101", code="bad_upstream_response"
        )
    attempt.succeeded(now, seconds)
    host, transport = client
    headers = filter_response_headers(upstream.headers, ctx.response_drop)
    headers.append(("X-Request-ID", ctx.request_id))
    headers += ctx.response_headers
    lines = b"".join(
        b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("utf-8", "surrogateescape"))
        for name, value in headers
    )
    transport.write(_SWITCHING + lines + b"\r\n")
    upstream_transport, tail = taken
    tunnel = Tunnel(upstream_transport, tail, idle_timeout=idle_timeout, route=ctx.route_label)
    host.start_tunnel(tunnel)
    return TunnelResponse(tunnel)
