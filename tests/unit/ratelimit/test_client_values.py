"""Dimension values a client controls: obs-text header bytes, unverified API keys, floods of
distinct values. Through the plan as configured, on the local limiter and on a fake Redis that
encodes keys as redis-py does (strict UTF-8). Fake clock, no network."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import ValidationError
from rl_helpers import FakeClock, make_limit

from aiogate.config import GatewayConfig
from aiogate.context import RequestContext
from aiogate.errors import TooManyRequests
from aiogate.ratelimit import LocalLimiter, RateLimitPlan, StoreRegistry
from aiogate.ratelimit.local import Store
from aiogate.ratelimit.redis import SCRIPT
from aiogate.stages.ratelimit import RateLimit

IP = "192.0.2.9"
# aiohttp decodes header bytes 0x80-0xFF with surrogateescape: b"caf\xe9" arrives like this.
OBS_TEXT = "caf\udce9"


class EncodingRedis:
    """Answers EVALSHA like the script (all admitted, 1 left), after encoding every argument
    the way redis-py's Encoder does: str -> UTF-8, strictly."""

    def __init__(self) -> None:
        self.keys: list[bytes] = []

    async def script_load(self, script: str) -> str:
        assert script == SCRIPT
        return "sha"

    async def evalsha(self, sha: str, numkeys: int, *args: Any) -> list[Any]:
        encoded = [arg.encode("utf-8") if isinstance(arg, str) else arg for arg in args]
        self.keys += encoded[:numkeys]
        return [1] + [1, "1", "0"] * numkeys


def config(route: dict[str, Any], **extra: Any) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "upstreams": [{"name": "u", "backends": [{"url": "http://127.0.0.1:1"}]}],
            "routes": [{"path": "/r", "upstream": "u", **route}],
            **extra,
        }
    )


def stage_of(cfg: GatewayConfig, client: Any = None) -> RateLimit:
    plan = RateLimitPlan(cfg, client, registry=StoreRegistry(), local=LocalLimiter(FakeClock(10.0)))
    limits = plan.route_limits(cfg.routes[0])
    assert limits is not None
    default, tiers = limits
    return RateLimit(cfg.routes[0].label, default, tiers, plan.limiter, shared=plan.shared)


def context(headers: dict[str, str] | None = None, **fields: Any) -> RequestContext:
    request = make_mocked_request("GET", "/r")
    # As aiohttp's parser makes them (make_mocked_request encodes its headers strictly).
    request._headers = CIMultiDictProxy(CIMultiDict(headers or {}))
    return RequestContext(
        request=request,
        request_id="rid",
        method="GET",
        path="/r",
        query="",
        client_ip=fields.pop("client_ip", IP),
        forwarded_for=IP,
        started=0.0,
        **fields,
    )


async def ok(ctx: RequestContext) -> web.StreamResponse:
    return web.Response(text="ok")


async def admitted(stage: RateLimit, ctx: RequestContext) -> bool:
    try:
        await stage(ctx, ok)
    except TooManyRequests:
        return False
    return True


@pytest.mark.parametrize("backend", ["local", "redis"])
@pytest.mark.parametrize(
    ("rules", "headers"),
    [
        # A global api_key limit applies to every route, public ones included.
        ({"rate_limits": [{"dimension": "api_key", "limit": 2, "window": "1h"}]},
         {"X-API-Key": OBS_TEXT}),
        ({"route": {"rate_limit": {"requests": 2, "window": "1h", "dimension": "header:X-T"}}},
         {"X-T": OBS_TEXT}),
        ({"route": {"rate_limit": {"requests": 2, "window": "1h", "dimension": "header:X-T"}}},
         {"X-T": "\udce9" * 100}),
    ],
)  # fmt: skip
async def test_obs_text_values_are_judged_never_raised(
    backend: str, rules: dict[str, Any], headers: dict[str, str]
) -> None:
    cfg = config(rules.get("route", {}), **{k: v for k, v in rules.items() if k != "route"})
    fake = EncodingRedis() if backend == "redis" else None
    stage = stage_of(cfg, fake)
    results = [await admitted(stage, context(headers)) for _ in range(3)]
    if fake is None:
        assert results == [True, True, False]
    else:
        assert results == [True] * 3  # the fake admits all: what counts is that Redis judged
        assert len(fake.keys) == 3
        assert all(key.isascii() and len(key) < 120 for key in fake.keys)


async def test_obs_text_header_bucket_is_the_hash_of_the_bytes_sent() -> None:
    cfg = config({"rate_limit": {"requests": 5, "window": "1h", "dimension": "header:X-T"}})
    fake = EncodingRedis()
    await admitted(stage_of(cfg, fake), context({"X-T": OBS_TEXT}))
    digest = hashlib.blake2b(b"caf\xe9", digest_size=16).hexdigest()
    assert fake.keys == [f"aiogate:rl:route./r.0:h:#{digest}".encode()]


async def test_unverified_api_keys_count_under_the_client_ip() -> None:
    # A public route: nobody verified the key, so a fresh random key must not be a fresh bucket.
    cfg = config({"rate_limit": {"requests": 2, "window": "1h", "dimension": "api_key"}})
    stage = stage_of(cfg)
    random_keys = [
        await admitted(stage, context({"X-API-Key": uuid.uuid4().hex})) for _ in range(3)
    ]
    assert random_keys == [True, True, False]
    # Another client IP has its own budget; a verified key (the auth stage set its id) too.
    assert await admitted(stage, context(client_ip="192.0.2.10"))
    assert await admitted(stage, context({"X-API-Key": "x"}, api_key_id="ab" * 32))
    verified = [await admitted(stage, context(api_key_id="cd" * 32)) for _ in range(3)]
    assert verified == [True, True, False]


async def test_a_flood_of_distinct_values_keeps_the_store_bounded() -> None:
    cfg = config(
        {"rate_limit": {"requests": 3, "window": "1h", "dimension": "header:X-T"}},
        rate_limiting={"local_max_buckets": 100},
    )
    stage = stage_of(cfg)
    store = stage._default[0].store
    for i in range(1000):
        assert await admitted(stage, context({"X-T": f"{i:08d}" + "v" * 8000}))
        assert len(store) <= 101


async def test_store_cap_swaps_early_and_keeps_buckets_in_use() -> None:
    clock = FakeClock(100.0)
    limiter = LocalLimiter(clock)
    limit = make_limit(limit=3, window=3600.0)
    limit.store = Store(7200.0, max_buckets=100)
    verdicts = []
    for i in range(10_000):
        await limiter.acquire([limit], [f"flood-{i}"])
        assert len(limit.store) <= 101
        if i % 40 == 0:  # a steady client, busier than the flood is wide: never forgotten
            verdicts.append((await limiter.acquire([limit], ["steady"])).admitted)
    assert verdicts == [True] * 3 + [False] * (len(verdicts) - 3)


def test_local_max_buckets_is_validated() -> None:
    assert config({}).rate_limiting.local_max_buckets == 100_000
    with pytest.raises(ValidationError):
        config({}, rate_limiting={"local_max_buckets": 10})
