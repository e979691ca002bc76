"""The admin listener: liveness, readiness, Prometheus metrics and the bearer-protected API."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import orjson
from aiohttp import web

from .config import GatewayConfig, redacted
from .errors import NoRoute, Unauthorized, error_body
from .metrics import CONTENT_TYPE, exposition
from .requestid import new_request_id

__all__ = ["AdminController", "ReloadOutcome", "make_admin_app"]


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    applied: bool
    generation: int
    errors: tuple[str, ...] = ()


class AdminController(Protocol):
    """What the admin API needs from the daemon (single process or supervisor)."""

    @property
    def ready(self) -> bool: ...
    @property
    def draining(self) -> bool: ...
    @property
    def config(self) -> GatewayConfig: ...
    async def reload(self) -> ReloadOutcome: ...


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _error(exc: Unauthorized | NoRoute, headers: dict[str, str] | None = None) -> web.Response:
    request_id = new_request_id()
    response = web.Response(
        body=error_body(exc.code, exc.message, request_id),
        status=exc.status,
        content_type="application/json",
        headers=headers,
    )
    response.headers["X-Request-ID"] = request_id
    return response


def make_admin_app(
    controller: AdminController, upstreams: Callable[[], object] | None = None
) -> web.Application:
    """`upstreams`: the `/admin/upstreams` document (the serving process's pools), if any."""

    async def healthz(_: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if controller.draining:
            return _json({"status": "draining"}, status=503)
        if not controller.ready:
            return _json({"status": "starting"}, status=503)
        return _json({"status": "ready"})

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=exposition())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    @web.middleware
    async def bearer(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if not request.path.startswith("/admin/"):
            return await handler(request)
        token = controller.config.admin.token
        if token is None:
            return _error(NoRoute("the admin API is off (admin.token is not set)"))
        sent = request.headers.get("Authorization", "")
        scheme, _, credential = sent.partition(" ")
        expected = token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credential.strip().encode(), expected
        ):
            return _error(
                Unauthorized("a valid admin bearer token is required"),
                {"WWW-Authenticate": 'Bearer realm="aiogate-admin"'},
            )
        return await handler(request)

    async def get_config(_: web.Request) -> web.Response:
        return _json(redacted(controller.config))

    async def post_reload(_: web.Request) -> web.Response:
        outcome = await controller.reload()
        body = {
            "status": "applied" if outcome.applied else "rejected",
            "generation": outcome.generation,
            "errors": list(outcome.errors),
        }
        return _json(body, status=200 if outcome.applied else 422)

    app = web.Application(middlewares=[bearer])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/config", get_config)
    app.router.add_post("/admin/reload", post_reload)

    async def get_upstreams(_: web.Request) -> web.Response:
        if upstreams is None:
            # With workers > 1 each worker has its own pools and health state.
            return _error(NoRoute("upstream state is per worker; not available with workers > 1"))
        return _json(upstreams())

    app.router.add_get("/admin/upstreams", get_upstreams)
    return app
