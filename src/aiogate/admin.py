"""The admin listener: liveness, readiness, Prometheus metrics and the bearer-protected API."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import orjson
from aiohttp import web

from .config import ConfigError, GatewayConfig, RouteConfig, load_config, redacted
from .config.persist import write_atomically
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
    @property
    def config_path(self) -> Path: ...
    async def reload(self, raw: bytes | None = None) -> ReloadOutcome:
        """Reload the config file, or apply `raw` (a whole config) instead of reading it."""
        ...


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: The largest config `PUT /admin/config` takes (a config of thousands of routes is < 1 MiB).
_MAX_CONFIG_BYTES: Final = 16 * 1024 * 1024


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
        return _outcome(await controller.reload())

    async def put_config(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            # Validated as if it were the config file (a relative `${file:}` resolves from the
            # file's folder, as it will when applied); the errors give line:col only.
            await asyncio.to_thread(load_config, controller.config_path, raw=raw)
        except ConfigError as exc:
            errors = [f"{issue.line}:{issue.col}: {issue.message}" for issue in exc.issues]
            return _json(
                {"error": "invalid_config", "message": "the config is not valid", "errors": errors},
                status=400,
            )
        outcome = await controller.reload(raw)
        persist = request.query.get("persist", "").lower() in ("true", "1", "yes")
        if not (outcome.applied and persist):
            return _outcome(outcome, persisted=False)
        try:
            await asyncio.to_thread(write_atomically, controller.config_path, raw)
        except OSError as exc:
            message = f"the config was applied but could not be written to the file: {exc}"
            return _json({"error": "persist_failed", "message": message}, status=500)
        return _outcome(outcome, persisted=True)

    async def get_routes(_: web.Request) -> web.Response:
        return _json({"routes": [_route_entry(route) for route in controller.config.routes]})

    app = web.Application(middlewares=[bearer], client_max_size=_MAX_CONFIG_BYTES)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/config", get_config)
    app.router.add_post("/admin/reload", post_reload)
    app.router.add_put("/admin/config", put_config)
    app.router.add_get("/admin/routes", get_routes)

    async def get_upstreams(_: web.Request) -> web.Response:
        if upstreams is None:
            # With workers > 1 each worker has its own pools and health state.
            return _error(NoRoute("upstream state is per worker; not available with workers > 1"))
        return _json(upstreams())

    app.router.add_get("/admin/upstreams", get_upstreams)
    return app


def _outcome(outcome: ReloadOutcome, *, persisted: bool | None = None) -> web.Response:
    """200 applied, or 422 with why the config could not be applied (nothing changed)."""
    body: dict[str, object] = {
        "status": "applied" if outcome.applied else "rejected",
        "generation": outcome.generation,
        "errors": list(outcome.errors),
    }
    if persisted is not None:
        body["persisted"] = persisted
    return _json(body, status=200 if outcome.applied else 422)


def _route_entry(route: RouteConfig) -> dict[str, object]:
    return {
        "name": route.label,
        "path": route.path,
        "methods": list(route.methods) if route.methods is not None else None,
        "hosts": list(route.hosts),
        "headers": dict(route.headers),
        "upstream": route.upstream,
        "auth": list(route.auth.types) if route.auth is not None else [],
        "rate_limited": bool(route.rate_limit),
    }
