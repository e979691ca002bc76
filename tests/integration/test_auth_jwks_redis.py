"""A real JWKS endpoint (rotation, outage, unknown-kid cooldown) and Redis-backed API keys
against a real redis-server that is killed mid-test."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import web
from backend import BackendThread
from gwconfigs import basic_config
from wire import assert_gateway_error, new_id, request

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "auth"))
from keys import claims, ec_key, jwk, rsa_key, token


class JwksServer:
    """An aiohttp JWKS endpoint in its own thread; `keys` and `down` are switched live."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.down = False
        self.hits = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _jwks(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.down:
            return web.Response(status=503, text="down")
        return web.json_response({"keys": self.keys})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/jwks.json", self._jwks)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def start(self) -> JwksServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer().start()
    yield server
    server.stop()


def status(port: int, path: str, *headers: tuple[str, str]) -> int:
    return request(port, "GET", path, [("X-Request-ID", new_id()), *headers]).status


def test_jwks_rotation_outage_and_kid_cooldown(
    jwks: JwksServer, backends: BackendThread, make_gateway: Any
) -> None:
    jwks.keys = [jwk(rsa_key(), "k1", "RS256")]
    config = basic_config(backends)
    config["auth"] = {"jwt": {"algorithms": ["RS256", "ES256"], "jwks_url": jwks.url,
                              "jwks_refresh": "1h", "jwks_cooldown": "1s"}}  # fmt: skip
    config["routes"] = [*config["routes"], {"path": "/p", "upstream": "user-service",
                                            "auth": {"type": "jwt"}}]  # fmt: skip
    gw = make_gateway(config)
    k1 = token(claims(), key=rsa_key(), alg="RS256", kid="k1")
    assert status(gw.port, "/p", ("Authorization", f"Bearer {k1}")) == 200

    # Rotation: the issuer adds k2; the first k2 token triggers a refetch.
    jwks.keys = [jwk(rsa_key(), "k1", "RS256"), jwk(ec_key(), "k2", "ES256")]
    gw.wait_event("jwks_refreshed")
    time.sleep(1.1)  # let the unknown-kid cooldown pass (it is a time rule by design)
    k2 = token(claims(), key=ec_key(), alg="ES256", kid="k2")
    assert status(gw.port, "/p", ("Authorization", f"Bearer {k2}")) == 200

    # 200 tokens with random kids: at most one fetch per cooldown (1 s) while they run.
    before = jwks.hits
    started = time.monotonic()
    for _ in range(200):
        kid = uuid.uuid4().hex
        forged = token(claims(), key=ec_key(), alg="ES256", kid=kid)
        assert status(gw.port, "/p", ("Authorization", f"Bearer {forged}")) == 401
    elapsed = time.monotonic() - started
    assert jwks.hits - before <= int(elapsed / 1.0) + 1, (jwks.hits - before, elapsed)

    # Outage: the endpoint fails; known keys keep working, a new token's kid stays unknown.
    jwks.down = True
    time.sleep(1.1)
    fresh = token(claims(n=1), key=ec_key(), alg="ES256", kid="k2")
    assert status(gw.port, "/p", ("Authorization", f"Bearer {fresh}")) == 200
    unknown = token(claims(), key=ec_key(), alg="ES256", kid="k3")
    assert status(gw.port, "/p", ("Authorization", f"Bearer {unknown}")) == 401
    gw.wait_event("jwks_refresh_failed")
    reasons = {e["reason"] for e in gw.events("auth_failed")}
    assert "unknown_kid" in reasons


def test_redis_keys_and_outage(
    redis_server: Any, backends: BackendThread, make_gateway: Any
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    digest = hashlib.sha256(b"redis-key-1").hexdigest()
    client.set(f"aiogate:apikey:{digest}", json.dumps({"consumer": "acme", "tier": "pro"}))
    off = hashlib.sha256(b"disabled-key").hexdigest()
    client.set(f"aiogate:apikey:{off}", json.dumps({"consumer": "old", "disabled": True}))
    client.close()
    config = basic_config(backends)
    config["redis"] = {"url": redis_server.url, "timeout": "200ms"}
    config["auth"] = {"api_key": {"store": "redis", "cache_ttl": "1s"}}
    config["routes"] = [*config["routes"], {"path": "/k", "upstream": "user-service",
                                            "auth": {"type": "api_key"}}]  # fmt: skip
    gw = make_gateway(config)
    assert status(gw.port, "/k", ("X-API-Key", "redis-key-1")) == 200
    unknown = request(gw.port, "GET", "/k", [("X-API-Key", "nope")])
    disabled = request(gw.port, "GET", "/k", [("X-API-Key", "disabled-key")])
    a, b = assert_gateway_error(unknown, 401), assert_gateway_error(disabled, 401)
    assert (a["error"], a["message"]) == (b["error"], b["message"])

    redis_server.kill()
    time.sleep(1.1)  # past cache_ttl: the gateway must ask Redis, fail, and use the stale entry
    assert status(gw.port, "/k", ("X-API-Key", "redis-key-1")) == 200
    reply = request(gw.port, "GET", "/k", [("X-API-Key", "never-seen")])
    body = assert_gateway_error(reply, 503, "auth_unavailable")
    assert "never-seen" not in json.dumps(body)
    gw.wait_event("auth_store_unavailable")
    assert not [line for line in gw.lines if "Traceback" in line]
