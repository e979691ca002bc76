"""The credentials a client sends never reach the daemon's log, whatever happens to them.

test_auth.py checks the `auth_failed` event itself; this checks every line the daemon writes
(stdout and stderr, at `debug` level) after successes and every kind of failure, for JWTs
(header, query parameter, cookie) and API keys (header, query parameter, memory and Redis
stores, Redis down).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from backend import BackendThread
from gateway import Gateway, wait_until
from wire import new_id, request

from redis_server import RedisServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "auth"))
from keys import SECRET, claims, token

LIVE_KEY = "ak-live-SECRETKEY-7c1f0e9d2b"
REDIS_KEY = "ak-redis-SECRETKEY-44aa90ff"


def _config(backends: BackendThread, redis_url: str | None = None) -> dict[str, Any]:
    upstream = {"name": "svc", "backends": [{"url": backends.url("backend-1")}]}
    api_key: dict[str, Any] = {"query_param": "api_key"}
    if redis_url is None:
        api_key["keys"] = [{"key": "${env:TEST_LIVE_KEY}", "consumer": "live"}]
    else:
        api_key.update(store="redis", cache_ttl="50ms", negative_cache_ttl="50ms")
    config: dict[str, Any] = {
        "logging": {"level": "debug"},
        "auth": {
            "jwt": {"algorithms": ["HS256"], "secret": "${env:TEST_JWT_SECRET}",
                    "query_param": "access_token", "cookie": "session",
                    "max_token_size": "2KiB"},
            "api_key": api_key,
        },
        "upstreams": [upstream],
        "routes": [
            {"path": "/jwt", "upstream": "svc", "auth": {"type": "jwt"}},
            {"path": "/key", "upstream": "svc", "auth": {"type": "api_key"}},
            {"path": "/either", "upstream": "svc", "auth": {"type": ["jwt", "api_key"]}},
            {"path": "/role", "upstream": "svc",
             "auth": {"type": "jwt", "claims": {"role": "admin"}}},
        ],
    }  # fmt: skip
    if redis_url is not None:
        config["redis"] = {"url": redis_url}
    return config


def _send(gw: Gateway, path: str, *headers: tuple[str, str]) -> tuple[int, str]:
    rid = new_id()
    reply = request(gw.port, "GET", path, [("X-Request-ID", rid), *headers])
    return reply.status, rid


def _assert_never_logged(gw: Gateway, rids: list[str], secrets: list[str]) -> None:
    # Every request's access line is out, then stop: the log buffer is flushed at exit.
    wait_until(
        lambda: {e.get("request_id") for e in gw.events("request")} >= set(rids),
        10,
        "the access lines",
    )
    assert gw.stop() == 0
    text = "\n".join(gw.lines + gw.stderr)
    assert gw.events("auth_failed"), "the failures were logged (as events, without secrets)"
    for secret in secrets:
        assert secret not in text, f"{secret[:12]}... is in the log"
        # Nor in an escaped form (JSON escaping of '/' or unicode, percent-encoding).
        assert json.dumps(secret)[1:-1] not in text
    # Every line is JSON: nothing was dumped raw (a traceback with locals, say).
    for line in gw.lines:
        json.loads(line)


def test_tokens_and_keys_never_reach_the_log(
    backends: BackendThread, make_gateway: Callable[..., Gateway]
) -> None:
    env = {"TEST_JWT_SECRET": SECRET, "TEST_LIVE_KEY": LIVE_KEY}
    gw = make_gateway(_config(backends), env)
    good = token(claims(sub="carol"))
    expired = token(claims(exp=1_000_000))
    forged = token(claims(), key="forged-secret-" + "z" * 50)
    user = token(claims(role="user"))
    huge = token(claims(pad="p" * 3000))
    garbage = "garbage-TOKEN-SECRETMARK-0123456789"
    wrong_key = LIVE_KEY[:-1] + "X"  # one character off
    cases: list[tuple[str, tuple[tuple[str, str], ...], int]] = [
        ("/jwt", (("Authorization", f"Bearer {good}"),), 200),
        ("/jwt", (("Authorization", f"Bearer {expired}"),), 401),
        ("/jwt", (("Authorization", f"Bearer {forged}"),), 401),
        ("/jwt", (("Authorization", f"Bearer {garbage}"),), 401),
        ("/jwt", (("Authorization", f"Bearer {huge}"),), 401),
        ("/jwt", (("Cookie", f"session={expired}"),), 401),
        (f"/jwt?access_token={forged}", (), 401),
        (f"/jwt?access_token={good}", (), 200),
        ("/role", (("Authorization", f"Bearer {user}"),), 403),
        ("/key", (("X-API-Key", LIVE_KEY),), 200),
        ("/key", (("X-API-Key", wrong_key),), 401),
        (f"/key?api_key={wrong_key}", (), 401),
        (f"/key?api_key={LIVE_KEY}", (), 200),
        ("/either", (("X-API-Key", wrong_key),), 401),
        ("/either", (("Authorization", f"Bearer {garbage}"),), 401),
    ]
    rids = []
    for path, headers, expected in cases:
        status, rid = _send(gw, path, *headers)
        assert status == expected, (path, headers, status)
        rids.append(rid)
    secrets = [LIVE_KEY, wrong_key, SECRET, garbage]
    for tok in (good, expired, forged, user):
        _head, payload, signature = tok.split(".")
        secrets += [tok, payload, signature]
    secrets.append(huge.split(".")[2])
    _assert_never_logged(gw, rids, secrets)


def test_redis_store_keys_never_reach_the_log_even_with_redis_down(
    backends: BackendThread, make_gateway: Callable[..., Gateway], redis_server: RedisServer
) -> None:
    digest = hashlib.sha256(REDIS_KEY.encode()).hexdigest()
    client = redis.Redis.from_url(redis_server.url)
    client.set(f"aiogate:apikey:{digest}", json.dumps({"consumer": "redis-user"}))
    # A record that is not valid JSON: logged as a bad record, by a truncated Redis key only.
    broken = "ak-broken-SECRETKEY-31337"
    client.set(f"aiogate:apikey:{hashlib.sha256(broken.encode()).hexdigest()}", "{not json")
    env = {"TEST_JWT_SECRET": SECRET}
    gw = make_gateway(_config(backends, redis_server.url), env)
    unknown = "ak-unknown-SECRETKEY-9999"
    rids = []
    for key, expected in [(REDIS_KEY, 200), (unknown, 401), (broken, 401)]:
        status, rid = _send(gw, "/key", ("X-API-Key", key))
        assert status == expected, (key, status)
        rids.append(rid)
    redis_server.kill()
    down = "ak-while-down-SECRETKEY-5555"

    def unavailable() -> bool:
        status, rid = _send(gw, "/key", ("X-API-Key", down))
        rids.append(rid)
        return status == 503

    wait_until(unavailable, 10, "503 auth_unavailable with Redis down")
    _assert_never_logged(gw, rids, [REDIS_KEY, unknown, broken, down])
