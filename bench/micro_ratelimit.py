"""The rate-limit stage's own cost per request, in process (no HTTP): local and Redis.

    .venv/bin/python bench/micro_ratelimit.py [--redis redis://127.0.0.1:6379/0]

Runs the stage with a no-op next stage over a few thousand client IPs and prints µs/request.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from aiogate.config import GatewayConfig
from aiogate.context import RequestContext
from aiogate.ratelimit import RateLimitPlan, StoreRegistry
from aiogate.redisconn import make_redis


def config(redis_url: str | None) -> GatewayConfig:
    data: dict[str, Any] = {
        "upstreams": [{"name": "u", "backends": [{"url": "http://127.0.0.1:1"}]}],
        "routes": [{"path": "/", "upstream": "u",
                    "rate_limit": {"requests": 10**9, "window": "1s"}}],
    }  # fmt: skip
    if redis_url:
        data["redis"] = {"url": redis_url}
    return GatewayConfig.model_validate(data)


async def run(redis_url: str | None, n: int) -> float:
    cfg = config(redis_url)
    client = make_redis(cfg.redis) if cfg.redis is not None else None
    plan = RateLimitPlan(cfg, client, registry=StoreRegistry())
    await plan.start()
    stage = plan.stage(cfg.routes[0])
    assert stage is not None
    request = make_mocked_request("GET", "/")
    response = web.Response()

    async def nothing(_: RequestContext) -> web.StreamResponse:
        return response

    def ctx(i: int) -> RequestContext:
        return RequestContext(request, "id", "GET", "/", "", f"10.0.{i % 64}.{i % 250}", "", 0.0)

    contexts = [ctx(i) for i in range(4096)]
    for c in contexts:  # warm: every bucket exists
        c.response_headers = []
        await stage(c, nothing)
    started = time.perf_counter()
    for i in range(n):
        c = contexts[i & 4095]
        c.response_headers = []
        await stage(c, nothing)
    elapsed = time.perf_counter() - started
    if client is not None:
        await client.aclose()
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis")
    parser.add_argument("-n", type=int, default=100_000)
    args = parser.parse_args()
    print(f"local: {asyncio.run(run(None, args.n)):.2f} us/request")
    if args.redis:
        print(f"redis: {asyncio.run(run(args.redis, args.n // 10)):.2f} us/request (sequential)")


if __name__ == "__main__":
    main()
