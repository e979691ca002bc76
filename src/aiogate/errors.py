"""The gateway's own errors and the one place that renders them.

A stage stops a request only by raising a :class:`GatewayError`; the server turns it into the
contract's JSON body. Nothing else writes an error response, so every gateway-made error looks
the same and none can leak a traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import orjson
from aiohttp import web

__all__ = [
    "BadGateway",
    "BadRequest",
    "BodyTimeout",
    "ExpectationFailed",
    "Forbidden",
    "GatewayError",
    "GatewayTimeout",
    "HeaderFieldsTooLarge",
    "InternalError",
    "MethodNotAllowed",
    "NoRoute",
    "PayloadTooLarge",
    "RequestTimeout",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "UpstreamBodyBroken",
    "error_body",
    "render_error",
]


class GatewayError(Exception):
    """An error answered by the gateway itself (never by an upstream)."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance refinement of the class code
        self.headers: Mapping[str, str] = headers or {}


class BadRequest(GatewayError):
    status = 400
    code = "bad_request"


class Unauthorized(GatewayError):
    status = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    status = 403
    code = "forbidden"


class NoRoute(GatewayError):
    status = 404
    code = "no_route"


class MethodNotAllowed(GatewayError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    code = "request_timeout"


class BodyTimeout(RequestTimeout):
    """The client stopped sending its request body, or sent it too slowly (408, then close).

    The connection sets it on the request's body stream (server.py), so every reader of the
    body gets it from its read: a GatewayError already, it needs no mapping at each reader,
    and aborts an upstream request that was streaming the body as any other error does.
    """


class PayloadTooLarge(GatewayError):
    status = 413
    code = "body_too_large"


class ExpectationFailed(GatewayError):
    status = 417
    code = "expectation_failed"


class TooManyRequests(GatewayError):
    status = 429
    code = "rate_limited"


class HeaderFieldsTooLarge(GatewayError):
    status = 431
    code = "headers_too_large"


class InternalError(GatewayError):
    status = 500
    code = "internal_error"


class BadGateway(GatewayError):
    status = 502
    code = "upstream_unreachable"


class ServiceUnavailable(GatewayError):
    status = 503
    code = "no_healthy_backend"


class GatewayTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"


class UpstreamBodyBroken(ConnectionResetError):
    """The upstream's response body broke after the response head had gone to the client.

    Nothing can be rendered any more: the client's connection is cut so it sees a truncated
    response. It is still the upstream's failure, not the client's: the server records it as
    502 `bad_upstream_response` (a plain ConnectionError would be logged as the client's 499).
    A ConnectionError so that aiohttp ends the connection as it does for any broken response.
    """

    status: ClassVar[int] = 502
    code: ClassVar[str] = "bad_upstream_response"


def error_body(code: str, message: str, request_id: str) -> bytes:
    return orjson.dumps({"error": code, "message": message, "request_id": request_id})


def render_error(
    err: GatewayError,
    request_id: str,
    extra_headers: list[tuple[str, str]] | None = None,
) -> web.Response:
    """The single renderer of gateway-made errors (contract: JSON with `request_id`)."""
    response = web.Response(
        status=err.status,
        body=error_body(err.code, err.message, request_id),
        content_type="application/json",
    )
    headers = response.headers
    for name, value in err.headers.items():
        headers[name] = value
    if extra_headers:
        for name, value in extra_headers:
            headers.add(name, value)
    headers["X-Request-ID"] = request_id
    headers["Server"] = "aiogate"
    return response
