"""The response cache on the real daemon, against a backend that counts what reaches it."""

from __future__ import annotations

import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from cache_support import CountingBackend, cache_config
from gateway import Gateway, wait_until
from wire import Reply, request

from redis_server import RedisServer


@pytest.fixture(scope="module")
def origin() -> Iterator[CountingBackend]:
    backend = CountingBackend().start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def gw(origin: CountingBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(cache_config(origin), tmp_path_factory.mktemp("cache")).start()
    yield gateway
    gateway.stop()


def get(
    gw: Gateway, target: str, headers: list[tuple[str, str]] | None = None, method: str = "GET"
) -> Reply:
    reply = request(gw.port, method, target, headers)
    assert reply.status < 500, reply
    return reply


def results(replies: list[Reply]) -> list[str | None]:
    return [reply.header("X-Cache") for reply in replies]


def test_miss_then_hit_with_age_and_head_from_the_get(gw: Gateway, origin: CountingBackend) -> None:
    first = get(gw, "/c/basic?x=1")
    assert first.status == 200
    assert first.header("X-Cache") == "MISS"
    assert first.header("Age") is None
    second = get(gw, "/c/basic?x=1")
    assert second.header("X-Cache") == "HIT"
    assert second.body == first.body
    assert second.header("X-Seen") == "1"
    assert int(second.header("Age") or "-1") >= 0
    assert second.header("X-Request-ID") != first.header("X-Request-ID")
    assert origin.count("/c/basic?x=1") == 1
    time.sleep(1.1)
    assert int(get(gw, "/c/basic?x=1").header("Age") or "0") >= 1
    head = get(gw, "/c/basic?x=1", method="HEAD")
    assert head.header("X-Cache") == "HIT"
    assert head.body == b""
    assert head.header("Content-Length") == str(len(first.body))
    # Another query is another key; a HEAD miss goes upstream and is not kept.
    assert get(gw, "/c/basic?x=2").header("X-Cache") == "MISS"
    assert get(gw, "/c/head-only", method="HEAD").header("X-Cache") == "MISS"
    assert get(gw, "/c/head-only", method="HEAD").header("X-Cache") == "MISS"
    assert origin.count("/c/basic?x=1") == 1


def test_ttl_expiry(gw: Gateway, origin: CountingBackend) -> None:
    assert results([get(gw, "/short/a"), get(gw, "/short/a")]) == ["MISS", "HIT"]
    time.sleep(2.2)
    assert get(gw, "/short/a").header("X-Cache") == "MISS"
    assert origin.count("/short/a") == 2


@pytest.mark.parametrize("directive", ["no-store", "private", "no-cache", "max-age=0"])
def test_upstream_cache_control_that_forbids_storing(
    gw: Gateway, origin: CountingBackend, directive: str
) -> None:
    target = f"/c/forbid?cc={quote(directive)}"
    assert results([get(gw, target), get(gw, target)]) == ["MISS", "MISS"]
    assert origin.count(target) == 2


def test_upstream_max_age_and_s_maxage_override_the_ttl(
    gw: Gateway, origin: CountingBackend
) -> None:
    for target in (f"/c/maxage?cc={quote('max-age=2')}",
                   f"/c/smaxage?cc={quote('max-age=60, s-maxage=2')}"):  # fmt: skip
        assert results([get(gw, target), get(gw, target)]) == ["MISS", "HIT"]
    time.sleep(2.2)
    for target in (f"/c/maxage?cc={quote('max-age=2')}",
                   f"/c/smaxage?cc={quote('max-age=60, s-maxage=2')}"):  # fmt: skip
        assert get(gw, target).header("X-Cache") == "MISS"
        assert origin.count(target) == 2


def test_expires(gw: Gateway, origin: CountingBackend) -> None:
    expires = formatdate(time.time() + 3, usegmt=True)
    target = f"/c/expires?expires={quote(expires)}"
    assert results([get(gw, target), get(gw, target)]) == ["MISS", "HIT"]
    time.sleep(4)
    assert get(gw, target).header("X-Cache") == "MISS"
    # An invalid Expires means already expired.
    zero = "/c/expires?expires=0"
    assert results([get(gw, zero), get(gw, zero)]) == ["MISS", "MISS"]


def test_client_no_cache_goes_upstream_and_no_store_bypasses(
    gw: Gateway, origin: CountingBackend
) -> None:
    target = "/c/client"
    assert results([get(gw, target), get(gw, target)]) == ["MISS", "HIT"]
    refreshed = get(gw, target, [("Cache-Control", "no-cache")])
    assert refreshed.header("X-Cache") == "MISS"
    assert refreshed.header("X-Seen") == "2"
    bypassed = get(gw, target, [("Cache-Control", "no-store")])
    assert bypassed.header("X-Cache") == "BYPASS"
    assert bypassed.header("X-Seen") == "3"
    # The no-cache answer replaced the entry; the no-store one did not.
    after = get(gw, target)
    assert (after.header("X-Cache"), after.header("X-Seen")) == ("HIT", "2")
    assert origin.count(target) == 3


def test_vary_header_is_part_of_the_key(gw: Gateway, origin: CountingBackend) -> None:
    target = "/c/vary"
    en, de = [("Accept-Language", "en")], [("Accept-Language", "de")]
    assert results([get(gw, target, en), get(gw, target, de), get(gw, target)]) == ["MISS"] * 3
    again = get(gw, target, en)
    assert again.header("X-Cache") == "HIT"
    assert b"lang=en " in again.body
    assert get(gw, target, de).header("X-Cache") == "HIT"
    assert origin.count(target) == 3


@pytest.mark.parametrize(
    ("vary", "stored"), [("Accept-Language", True), ("Accept-Encoding", False), ("*", False)]
)
def test_upstream_vary_outside_the_configured_headers_is_not_stored(
    gw: Gateway, origin: CountingBackend, vary: str, stored: bool
) -> None:
    target = f"/c/upstream-vary?vary={quote(vary)}"
    expected = ["MISS", "HIT"] if stored else ["MISS", "MISS"]
    assert results([get(gw, target), get(gw, target)]) == expected


def test_set_cookie_is_not_stored(gw: Gateway) -> None:
    target = "/c/cookie?cookie=1"
    assert results([get(gw, target), get(gw, target)]) == ["MISS", "MISS"]


def test_authenticated_requests_are_not_cached_by_default(
    gw: Gateway, origin: CountingBackend
) -> None:
    alice = [("X-API-Key", "k-alice")]
    assert results([get(gw, "/auth/a", alice), get(gw, "/auth/a", alice)]) == ["BYPASS"] * 2
    assert origin.count("/auth/a") == 2
    # A public route: a request with Authorization is personal, so it bypasses too.
    auth = [("Authorization", "Bearer x")]
    assert results([get(gw, "/c/authz", auth), get(gw, "/c/authz", auth)]) == ["BYPASS"] * 2
    assert request(gw.port, "GET", "/auth/a").status == 401


def test_authenticated_true_keys_by_consumer(gw: Gateway, origin: CountingBackend) -> None:
    alice, bob = [("X-API-Key", "k-alice")], [("X-API-Key", "k-bob")]
    replies = [get(gw, "/auth-shared/a", who) for who in (alice, alice, bob, bob)]
    assert results(replies) == ["MISS", "HIT", "MISS", "HIT"]
    assert origin.count("/auth-shared/a") == 2
    assert request(gw.port, "GET", "/auth-shared/a").status == 401  # a hit is still authorised


def test_size_bounds_and_unknown_length(gw: Gateway, origin: CountingBackend) -> None:
    big = "/small/big?size=5000"
    assert results([get(gw, big), get(gw, big)]) == ["MISS", "MISS"]
    assert len(get(gw, big).body) > 5000
    fits = "/small/fits?size=100"
    assert results([get(gw, fits), get(gw, fits)]) == ["MISS", "HIT"]
    # Larger than the relay reads whole (64 KiB): captured while it streams, then a hit.
    streamed = "/c/streamed?size=300000"
    first, second = get(gw, streamed), get(gw, streamed)
    assert results([first, second]) == ["MISS", "HIT"]
    assert second.body == first.body
    assert len(second.body) > 300000
    chunked = "/c/chunked?chunked=1"
    assert results([get(gw, chunked), get(gw, chunked)]) == ["MISS", "MISS"]


@pytest.mark.parametrize(("status", "stored"), [(500, False), (503, False), (404, True),
                                                (410, True), (201, False)])  # fmt: skip
def test_only_storable_statuses_are_kept(
    gw: Gateway, origin: CountingBackend, status: int, stored: bool
) -> None:
    target = f"/c/status?status={status}"
    replies = [request(gw.port, "GET", target) for _ in range(2)]
    assert [r.status for r in replies] == [status, status]
    assert results(replies) == (["MISS", "HIT"] if stored else ["MISS", "MISS"])


def test_concurrent_misses_make_one_upstream_request(gw: Gateway, origin: CountingBackend) -> None:
    target = "/c/slow?delay=0.5"
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda _: request(gw.port, "GET", target), range(20)))
    assert [r.status for r in replies] == [200] * 20
    assert origin.count(target) == 1
    assert Counter(results(replies)) == {"MISS": 1, "HIT": 19}
    assert len({r.body for r in replies}) == 1


def test_hits_get_the_response_edits_and_the_stored_answer_is_the_upstreams(
    gw: Gateway, origin: CountingBackend
) -> None:
    origin_header = [("Origin", "https://app.test")]
    replies = [get(gw, "/edited/a?status=404", origin_header) for _ in range(2)]
    assert results(replies) == ["MISS", "HIT"]
    assert origin.count("/edited/a?status=404&via=gw") == 1
    for reply in replies:
        assert reply.status == 200  # status_map runs on hits too
        assert reply.header("X-Edited") == "yes"
        assert reply.header("X-Seen") is None
        assert reply.header("Access-Control-Allow-Origin") == "https://app.test"
    assert replies[1].header("Age") is not None


def test_cache_metrics(gw: Gateway) -> None:
    get(gw, "/c/metrics")
    get(gw, "/c/metrics")
    with urllib.request.urlopen(f"{gw.admin_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("aiogate_cache_")
    )
    assert float(samples['aiogate_cache_requests_total{result="hit",route="/c"}']) >= 1
    assert float(samples['aiogate_cache_requests_total{result="miss",route="/c"}']) >= 1
    assert float(samples['aiogate_cache_bytes{route="/c"}']) > 0
    assert 'aiogate_cache_requests_total{result="bypass",route="/auth"}' in samples


def test_memory_store_evicts_and_survives_a_reload(
    origin: CountingBackend, make_gateway: Callable[..., Gateway]
) -> None:
    config = cache_config(origin, max_entries=2)
    gateway = make_gateway(config)
    for name in ("e1", "e2", "e3"):  # e1 is evicted by e3
        assert get(gateway, f"/c/evict/{name}").header("X-Cache") == "MISS"
    assert get(gateway, "/c/evict/e3").header("X-Cache") == "HIT"
    # A reload that leaves the route's cache settings alone keeps its entries.
    config["routes"].append({"path": "/other", "upstream": "origin"})
    gateway.write(config)
    gateway.signal(__import__("signal").SIGHUP)
    gateway.wait_event("config_reloaded")
    assert get(gateway, "/c/evict/e3").header("X-Cache") == "HIT"
    assert get(gateway, "/c/evict/e1").header("X-Cache") == "MISS"
    with urllib.request.urlopen(f"{gateway.admin_url}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'aiogate_cache_evictions_total{route="/c"} 2.0' in text


# -- Redis store ---------------------------------------------------------------------------


def test_redis_store_is_shared_by_two_gateways(
    origin: CountingBackend, make_gateway: Callable[..., Gateway], redis_server: RedisServer
) -> None:
    config = {**cache_config(origin, store="redis"), "redis": {"url": redis_server.url}}
    one, two = make_gateway(config), make_gateway(config)
    target = "/c/shared"
    assert get(one, target).header("X-Cache") == "MISS"
    hit = get(two, target)
    assert hit.header("X-Cache") == "HIT"
    assert hit.header("X-Seen") == "1"
    assert origin.count(target) == 1
    client = redis.Redis.from_url(redis_server.url)
    keys = client.keys("aiogate:cache:*")
    assert len(keys) == 1
    assert len(keys[0]) == len("aiogate:cache:") + 64
    assert 0 < client.pttl(keys[0]) <= 30_000


def test_redis_down_passes_through_then_caching_resumes(
    origin: CountingBackend,
    make_gateway: Callable[..., Gateway],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    config = {**cache_config(origin, store="redis"), "redis": {"url": redis_server.url}}
    gateway = make_gateway(config)
    target = "/c/outage"
    assert results([get(gateway, target), get(gateway, target)]) == ["MISS", "HIT"]
    redis_server.kill()
    replies = [request(gateway.port, "GET", target) for _ in range(5)]
    assert [r.status for r in replies] == [200] * 5
    assert results(replies) == ["BYPASS"] * 5
    assert origin.count(target) == 6
    warning = gateway.wait_event("cache_store_unavailable")[0]
    assert warning["level"] == "warning"
    redis_server.restart()

    def cached_again() -> bool:
        return get(gateway, "/c/after-outage").header("X-Cache") == "HIT"

    wait_until(cached_again, 20, "caching to resume after Redis is back")
    gateway.wait_event("cache_store_restored")
