"""The rate-limit stage: headers on success and on 429, the most restrictive limit reported,
Retry-After (ceil, at least 1), dimension fallbacks, tier selection. Fake clock, no network."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import REGISTRY

# rl_helpers lives with the rate-limit tests (see tests/unit/ratelimit/conftest.py).
sys.path.insert(0, str(Path(__file__).parents[1] / "ratelimit"))

from log_testing import log_to_file
from rl_helpers import FakeClock, make_limit

from aiogate import log
from aiogate.context import RequestContext
from aiogate.errors import TooManyRequests
from aiogate.ratelimit.base import Limit, Verdict
from aiogate.ratelimit.local import LocalLimiter
from aiogate.ratelimit.plan import dimension_value
from aiogate.stages.ratelimit import RateLimit

IP = "192.0.2.7"


@pytest.fixture(autouse=True)
def log_lines(tmp_path: Path) -> Iterator[Path]:
    """The stage logs `ratelimit_rejected` (at debug): send the lines to a file the test reads."""
    path = tmp_path / "log"
    with log_to_file(path, level="debug"):
        yield path


def logged(path: Path, event: str) -> list[dict[str, Any]]:
    log.flush()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["event"] == event]


def context(headers: dict[str, str] | None = None, **fields: Any) -> RequestContext:
    request = make_mocked_request("GET", "/r/x")
    # As aiohttp's parser makes them: obs-text bytes decoded with surrogateescape, which
    # make_mocked_request (it encodes its headers strictly) cannot take.
    request._headers = CIMultiDictProxy(CIMultiDict(headers or {}))
    return RequestContext(
        request=request,
        request_id="rid-1",
        method="GET",
        path="/r/x",
        query="",
        client_ip=IP,
        forwarded_for=IP,
        started=0.0,
        **fields,
    )


class Terminal:
    """The rest of the chain: counts the requests that got through."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, ctx: RequestContext) -> web.StreamResponse:
        self.calls += 1
        return web.Response(text="ok")


class FixedLimiter:
    """Answers every request with one verdict and records what it was asked."""

    def __init__(self, **verdict: Any) -> None:
        self.verdict = verdict
        self.asked: list[tuple[tuple[str, ...], tuple[str, ...]]] = []

    async def start(self) -> None:
        return None

    async def acquire(self, limits: Sequence[Limit], values: Sequence[str]) -> Verdict:
        self.asked.append((tuple(limit.id for limit in limits), tuple(values)))
        fields = {"admitted": True, "limit": limits[0].limit, "remaining": 1, "reset": 1.0,
                  "retry_after": 0.0, **self.verdict}  # fmt: skip
        admitted = fields.pop("admitted")
        return Verdict(admitted, limits[0], **fields)


def headers(ctx: RequestContext) -> dict[str, str]:
    out = dict(ctx.response_headers)
    assert len(out) == len(ctx.response_headers), "a rate-limit header was added twice"
    return out


def rejections(route: str, dimension: str) -> float:
    value = REGISTRY.get_sample_value(
        "aiogate_ratelimit_rejections_total", {"route": route, "dimension": dimension}
    )
    return value or 0.0


async def run(stage: RateLimit, ctx: RequestContext, terminal: Terminal) -> TooManyRequests | None:
    try:
        await stage(ctx, terminal)
    except TooManyRequests as err:
        return err
    return None


async def test_headers_on_success() -> None:
    clock = FakeClock(1000.0)
    limit = make_limit(id="route./r.0", limit=10, window=60.0)
    stage = RateLimit("/r", (limit,), {}, LocalLimiter(clock), shared=False)
    terminal = Terminal()
    ctx = context()
    assert await run(stage, ctx, terminal) is None
    assert terminal.calls == 1
    assert headers(ctx) == {
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Remaining": "9",
        "X-RateLimit-Reset": "6",  # one token back every 6 s
        "RateLimit-Policy": '"route./r.0";q=10;w=60',
        "RateLimit": '"route./r.0";r=9;t=6',
    }
    # Half a token later the reset (time to a full bucket) is rounded up, never down.
    clock.now += 1.0
    ctx = context()
    await run(stage, ctx, terminal)
    assert headers(ctx)["X-RateLimit-Reset"] == str(11)  # (10 - 8.1666) * 6 = 11.0 -> 11
    assert headers(ctx)["X-RateLimit-Remaining"] == "8"


async def test_429_headers_retry_after_and_rejection_count(log_lines: Path) -> None:
    clock = FakeClock(1000.0)
    limit = make_limit(id="route./r429.0", limit=2, window=60.0)
    stage = RateLimit("/r429", (limit,), {}, LocalLimiter(clock), shared=False)
    terminal = Terminal()
    before = rejections("/r429", "ip")
    for _ in range(2):
        assert await run(stage, context(), terminal) is None
    ctx = context()
    err = await run(stage, ctx, terminal)
    assert err is not None
    assert err.status == 429
    assert terminal.calls == 2  # the rejected request never went further
    # One token every 30 s; the bucket is empty: the retry is 30 s away.
    assert err.headers == {"Retry-After": "30"}
    assert headers(ctx) == {
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "60",
        "RateLimit-Policy": '"route./r429.0";q=2;w=60',
        "RateLimit": '"route./r429.0";r=0;t=60',
    }
    # 29.5 s later half a second is left: Retry-After rounds up to 1, never 0.
    clock.now += 29.5
    ctx = context()
    err = await run(stage, ctx, terminal)
    assert err is not None
    assert err.headers["Retry-After"] == "1"
    assert rejections("/r429", "ip") - before == 2
    events = logged(log_lines, "ratelimit_rejected")
    assert [(e["route"], e["limit"], e["dimension"], e["retry_after"]) for e in events] == [
        ("/r429", "route./r429.0", "ip", 30),
        ("/r429", "route./r429.0", "ip", 1),
    ]
    assert events[0]["client_ip"] == IP
    assert events[0]["request_id"] == "rid-1"


@pytest.mark.parametrize(
    ("retry_after", "reset", "expected_retry", "expected_reset"),
    [(0.0, 0.0, "1", "0"), (0.2, 0.2, "1", "1"), (1.0, 1.0, "1", "1"),
     (1.01, 2.3, "2", "3"), (59.9, 60.0, "60", "60")],
)  # fmt: skip
async def test_retry_after_is_ceil_and_at_least_one(
    retry_after: float, reset: float, expected_retry: str, expected_reset: str
) -> None:
    limit = make_limit(id="route./c.0", limit=5, window=60.0)
    limiter = FixedLimiter(admitted=False, remaining=0, reset=reset, retry_after=retry_after)
    stage = RateLimit("/c", (limit,), {}, limiter, shared=False)  # type: ignore[arg-type]
    ctx = context()
    err = await run(stage, ctx, Terminal())
    assert err is not None
    assert err.headers["Retry-After"] == expected_retry
    assert headers(ctx)["X-RateLimit-Reset"] == expected_reset
    assert headers(ctx)["RateLimit"] == f'"route./c.0";r=0;t={expected_reset}'


async def test_most_restrictive_limit_is_reported() -> None:
    clock = FakeClock(1000.0)
    loose = make_limit(id="global.0", limit=100, window=60.0, dimension="ip")
    tight = make_limit(id="route./m.0", limit=3, window=60.0, dimension="route")
    stage = RateLimit("/m", (loose, tight), {}, LocalLimiter(clock), shared=False)
    terminal = Terminal()
    ctx = context()
    await run(stage, ctx, terminal)
    got = headers(ctx)
    # The fewest remaining wins: 2 of 3, not 99 of 100.
    assert (got["X-RateLimit-Limit"], got["X-RateLimit-Remaining"]) == ("3", "2")
    assert got["X-RateLimit-Reset"] == "20"
    assert got["RateLimit"] == '"route./m.0";r=2;t=20'
    # The policy header lists every limit that applies.
    assert got["RateLimit-Policy"] == '"global.0";q=100;w=60, "route./m.0";q=3;w=60'
    before_ip, before_route = rejections("/m", "ip"), rejections("/m", "route")
    await run(stage, context(), terminal)
    await run(stage, context(), terminal)
    ctx = context()
    err = await run(stage, ctx, terminal)
    assert err is not None
    assert headers(ctx)["X-RateLimit-Limit"] == "3"
    assert err.headers["Retry-After"] == "20"
    # Counted under the dimension of the limit that refused the request.
    assert rejections("/m", "route") - before_route == 1
    assert rejections("/m", "ip") == before_ip
    # A rejected request consumes from no limit: the loose one still has 97.
    assert terminal.calls == 3


async def test_on_rejection_the_furthest_retry_is_reported() -> None:
    clock = FakeClock(1000.0)
    short = make_limit(id="short", limit=1, window=2.0)
    long = make_limit(id="long", limit=1, window=100.0)
    stage = RateLimit("/f", (short, long), {}, LocalLimiter(clock), shared=False)
    await run(stage, context(), Terminal())
    ctx = context()
    err = await run(stage, ctx, Terminal())
    assert err is not None
    assert err.headers["Retry-After"] == "100"
    assert headers(ctx)["RateLimit"] == '"long";r=0;t=100'


async def test_equal_remaining_reports_the_longest_reset() -> None:
    clock = FakeClock(1000.0)
    fast = make_limit(id="fast", limit=5, window=5.0)
    slow = make_limit(id="slow", limit=5, window=50.0)
    stage = RateLimit("/e", (fast, slow), {}, LocalLimiter(clock), shared=False)
    ctx = context()
    await run(stage, ctx, Terminal())
    assert headers(ctx)["RateLimit"] == '"slow";r=4;t=10'


async def test_policy_quota_is_the_local_share_without_a_shared_store() -> None:
    limit = make_limit(id="w", limit=10, window=60.0, local_limit=5)
    alone = RateLimit("/w", (limit,), {}, FixedLimiter(), shared=False)  # type: ignore[arg-type]
    shared = RateLimit("/w", (limit,), {}, FixedLimiter(), shared=True)  # type: ignore[arg-type]
    ctx_alone, ctx_shared = context(), context()
    await run(alone, ctx_alone, Terminal())
    await run(shared, ctx_shared, Terminal())
    assert headers(ctx_alone)["RateLimit-Policy"] == '"w";q=5;w=60'
    assert headers(ctx_shared)["RateLimit-Policy"] == '"w";q=10;w=60'


def _dimension_limit(dimension: str) -> Limit:
    limit = make_limit(id=f"dim.{dimension}", limit=5, window=60.0, dimension=dimension)
    limit.value = dimension_value(dimension, "/d")
    return limit


def _hashed(prefix: str, raw: bytes) -> str:
    return prefix + "#" + hashlib.blake2b(raw, digest_size=16).hexdigest()


@pytest.mark.parametrize(
    ("dimension", "headers_in", "fields", "expected"),
    [
        ("ip", {}, {}, IP),
        ("route", {}, {}, "/d"),
        ("user", {}, {}, f"ip:{IP}"),  # public route: no consumer
        ("user", {}, {"consumer": "alice"}, "u:alice"),
        ("user", {}, {"consumer": f"ip:{IP}"}, f"u:ip:{IP}"),  # never shares the fallback bucket
        ("header:X-Tenant", {}, {}, f"ip:{IP}"),
        ("header:X-Tenant", {"X-Tenant": ""}, {}, f"ip:{IP}"),
        ("header:X-Tenant", {"X-Tenant": "acme"}, {}, "h:acme"),
        ("api_key", {}, {}, f"ip:{IP}"),
        ("api_key", {}, {"api_key_id": "abc123"}, "k:abc123"),
        # An unverified key is whatever the client sends: it does not count, the IP does.
        ("api_key", {"X-API-Key": "sekrit"}, {}, f"ip:{IP}"),
        ("api_key", {"X-API-Key": "sekrit"}, {"api_key_id": "abc123"}, "k:abc123"),
        # aiohttp decodes an obs-text byte 0xE9 as "\udce9": hashed from the bytes that came.
        ("header:X-Tenant", {"X-Tenant": "caf\udce9"}, {}, _hashed("h:", b"caf\xe9")),
        ("header:X-Tenant", {"X-Tenant": "café"}, {}, _hashed("h:", "café".encode())),
        ("header:X-Tenant", {"X-Tenant": "t" * 64}, {}, "h:" + "t" * 64),
        ("header:X-Tenant", {"X-Tenant": "t" * 65}, {}, _hashed("h:", b"t" * 65)),
        # A plain value never poses as a hashed one.
        ("header:X-Tenant", {"X-Tenant": "#abc"}, {}, _hashed("h:", b"#abc")),
        ("user", {}, {"consumer": "\ud800x"},
         _hashed("u:", "\ud800x".encode("utf-8", "surrogatepass"))),
    ],
)  # fmt: skip
async def test_dimension_values_and_missing_value_fallback(
    dimension: str, headers_in: dict[str, str], fields: dict[str, Any], expected: str
) -> None:
    limiter = FixedLimiter()
    stage = RateLimit(
        "/d",
        (_dimension_limit(dimension),),
        {},
        limiter,
        shared=False,  # type: ignore[arg-type]
    )
    await run(stage, context(headers_in, **fields), Terminal())
    assert limiter.asked == [((f"dim.{dimension}",), (expected,))]


async def test_missing_dimension_fallback_counts_per_client_ip() -> None:
    clock = FakeClock(1000.0)
    limit = _dimension_limit("user")
    limit.limit = limit.local_limit = 1
    stage = RateLimit("/d", (limit,), {}, LocalLimiter(clock), shared=False)
    assert await run(stage, context(), Terminal()) is None
    assert await run(stage, context(), Terminal()) is not None  # same IP, no user: same bucket
    assert await run(stage, context(consumer="bob"), Terminal()) is None  # bob has his own


async def test_tier_selects_its_limit_set() -> None:
    default = (make_limit(id="route./t.0", limit=2, window=60.0),)
    gold = (make_limit(id="tier.gold.0", limit=50, window=60.0),)
    silver = (make_limit(id="tier.silver.0", limit=10, window=60.0),)
    limiter = FixedLimiter()
    stage = RateLimit(
        "/t",
        default,
        {"gold": gold, "silver": silver},
        limiter,
        shared=False,  # type: ignore[arg-type]
    )
    cases = [(None, "route./t.0", "q=2"), ("gold", "tier.gold.0", "q=50"),
             ("silver", "tier.silver.0", "q=10"), ("platinum", "route./t.0", "q=2")]  # fmt: skip
    for tier, expected_id, quota in cases:
        ctx = context(tier=tier, consumer="c")
        await run(stage, ctx, Terminal())
        assert limiter.asked[-1][0] == (expected_id,), tier
        assert headers(ctx)["RateLimit-Policy"] == f'"{expected_id}";{quota};w=60', tier


async def test_tier_limits_are_enforced() -> None:
    clock = FakeClock(1000.0)
    default = (make_limit(id="route./u.0", limit=1, window=60.0),)
    gold = (make_limit(id="tier.gold.u", limit=3, window=60.0),)
    stage = RateLimit("/u", default, {"gold": gold}, LocalLimiter(clock), shared=False)
    gold_statuses = [await run(stage, context(tier="gold"), Terminal()) is None for _ in range(4)]
    assert gold_statuses == [True, True, True, False]
    plain = [await run(stage, context(), Terminal()) is None for _ in range(2)]
    assert plain == [True, False]


async def test_no_limit_in_the_selected_set_passes_without_headers() -> None:
    gold = (make_limit(id="tier.gold.n", limit=3, window=60.0),)
    limiter = FixedLimiter()
    stage = RateLimit("/n", (), {"gold": gold}, limiter, shared=False)  # type: ignore[arg-type]
    terminal = Terminal()
    ctx = context()
    await run(stage, ctx, terminal)
    assert terminal.calls == 1
    assert ctx.response_headers == []
    assert limiter.asked == []
    ctx = context(tier="gold")
    await run(stage, ctx, terminal)
    assert headers(ctx)["X-RateLimit-Limit"] == "3"
