"""The cache's rules: directives, what is stored and for how long, and the key."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from aiogate.cache import Directives, cache_key, directives, freshness
from aiogate.cache.freshness import parse_http_date

NOW = 1_800_000_000.0


def date(offset: float) -> str:
    return formatdate(NOW + offset, usegmt=True)


def test_directives_combine_fields_and_read_arguments() -> None:
    found = directives(
        [("Cache-Control", 'public, max-age="60"'), ("X", "no-store"), ("cache-control", "PRIVATE")]
    )
    assert found == Directives(private=True, max_age=60)
    assert directives([("Cache-Control", "no-cache, no-store, s-maxage=5")]) == Directives(
        no_store=True, no_cache=True, s_maxage=5
    )
    assert directives([]) == Directives()
    # An invalid freshness value makes the response stale; the first occurrence wins.
    assert directives([("Cache-Control", "max-age=soon")]).max_age == 0
    assert directives([("Cache-Control", "max-age=5, max-age=50")]).max_age == 5


def fresh(status: int = 200, *headers: tuple[str, str], vary: tuple[str, ...] = ()) -> float | None:
    result = freshness(status, list(headers), default_ttl=30, now=NOW, vary=vary)
    return None if result is None else result.remaining


@pytest.mark.parametrize("status", [200, 203, 301, 404, 410])
def test_storable_statuses_get_the_default_ttl(status: int) -> None:
    assert fresh(status) == 30


@pytest.mark.parametrize("status", [201, 204, 206, 302, 304, 400, 500, 502, 503])
def test_other_statuses_are_not_stored(status: int) -> None:
    assert fresh(status) is None


@pytest.mark.parametrize(
    "value", ["no-store", "private", 'private="Set-Cookie"', "no-cache", "max-age=0", "s-maxage=0"]
)
def test_directives_that_forbid_storing(value: str) -> None:
    assert fresh(200, ("Cache-Control", value)) is None


def test_lifetime_order_s_maxage_then_max_age_then_expires() -> None:
    assert fresh(200, ("Cache-Control", "max-age=60, s-maxage=5")) == 5
    assert fresh(200, ("Cache-Control", "max-age=60"), ("Expires", date(10))) == 60
    assert fresh(200, ("Expires", date(10)), ("Date", date(0))) == 10
    # Expires is measured from the upstream's Date (clock skew between hosts cancels out).
    assert fresh(200, ("Expires", date(110)), ("Date", date(100))) == 10
    assert fresh(200, ("Expires", date(-5))) is None
    assert fresh(200, ("Expires", "0")) is None  # invalid: already expired


def test_upstream_age_is_used_up_freshness() -> None:
    assert fresh(200, ("Cache-Control", "max-age=60"), ("Age", "45")) == 15
    assert fresh(200, ("Cache-Control", "max-age=60"), ("Age", "60")) is None
    result = freshness(200, [("Age", "7")], default_ttl=30, now=NOW)
    assert result is not None
    assert (result.lifetime, result.age) == (30, 7)


def test_set_cookie_and_vary() -> None:
    assert fresh(200, ("Set-Cookie", "a=b")) is None
    assert fresh(200, ("Vary", "*"), vary=("accept-language",)) is None
    assert fresh(200, ("Vary", "Accept-Encoding"), vary=("accept-language",)) is None
    assert fresh(200, ("Vary", "Accept-Language"), vary=("accept-language",)) == 30
    assert fresh(200, ("Vary", "accept-language, "), vary=("accept-language",)) == 30


def test_parse_http_date() -> None:
    assert parse_http_date(date(0)) == NOW
    assert parse_http_date("0") is None
    assert parse_http_date("Thu, 01 Jan 2030 00:00:00") is None  # no zone: not an HTTP date


def test_key_parts() -> None:
    base = cache_key("/r", "GET", "api.test", "/a", "x=1")
    assert len(base) == 64
    assert cache_key("/r", "HEAD", "API.test", "/a", "x=1") == base  # HEAD uses the GET entry
    assert cache_key("/r", "GET", "api.test", "/a", "x=2") != base
    assert cache_key("/r", "GET", "api.test", "/b", "x=1") != base
    assert cache_key("/r", "GET", "other.test", "/a", "x=1") != base
    assert cache_key("/other", "GET", "api.test", "/a", "x=1") != base
    en = cache_key("/r", "GET", "api.test", "/a", "x=1", vary=[("accept-language", "en")])
    assert en not in (base, cache_key("/r", "GET", "api.test", "/a", "x=1",
                                      vary=[("accept-language", "de")]))  # fmt: skip
    alice = cache_key("/r", "GET", "api.test", "/a", "x=1", consumer="alice")
    assert alice not in (base, cache_key("/r", "GET", "api.test", "/a", "x=1", consumer="bob"))
    # Length-prefixed fields: moving text from one part to the next is another key.
    assert cache_key("/r", "GET", "h", "/a", "b") != cache_key("/r", "GET", "h", "/ab", "")
