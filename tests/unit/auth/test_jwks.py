"""JwksKeySet: rotation, stale keys on outage, the unknown-kid cooldown."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import pytest
from keys import claims, ec_key, jwk, rsa_key, token

from aiogate.auth import AuthFailure, JwksKeySet, JwtVerifier
from aiogate.config import JwtConfig


class FakeEndpoint:
    def __init__(self, *keys: dict[str, Any]) -> None:
        self.keys = list(keys)
        self.down = False
        self.calls = 0
        self.delay = 0.0

    async def __call__(self, url: str) -> bytes:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise ConnectionError("endpoint down")
        return json.dumps({"keys": self.keys}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup(endpoint: FakeEndpoint, clock: Clock, cooldown: float = 30.0) -> JwtVerifier:
    keyset = JwksKeySet("http://idp/jwks", endpoint, refresh=300, cooldown=cooldown, clock=clock)
    config = JwtConfig(algorithms=("RS256", "ES256"), jwks_url="http://idp/jwks")
    return JwtVerifier(config, jwks=keyset)


async def test_kid_selects_the_key_and_rotation_is_picked_up() -> None:
    endpoint, clock = FakeEndpoint(jwk(rsa_key(), "k1", "RS256")), Clock()
    v = setup(endpoint, clock)
    assert (await v.verify(token(key=rsa_key(), alg="RS256", kid="k1"))).name == "alice"
    assert endpoint.calls == 1
    # The issuer rotates to k2: the first k2 token triggers one refetch (cooldown passed).
    endpoint.keys = [jwk(ec_key(), "k2", "ES256")]
    clock.now += 31
    assert (await v.verify(token(key=ec_key(), alg="ES256", kid="k2"))).name == "alice"
    assert endpoint.calls == 2


async def test_unknown_kids_fetch_at_most_once_per_cooldown() -> None:
    endpoint, clock = FakeEndpoint(jwk(rsa_key(), "k1", "RS256")), Clock()
    v = setup(endpoint, clock)
    await v.verify(token(key=rsa_key(), alg="RS256", kid="k1"))
    endpoint.delay = 0.01
    clock.now += 31

    async def attempt() -> str:
        kid = uuid.uuid4().hex
        try:
            await v.verify(token(claims(n=kid), key=rsa_key(), alg="RS256", kid=kid))
        except AuthFailure as failure:
            return failure.reason
        return "accepted"

    reasons = await asyncio.gather(*(attempt() for _ in range(1000)))
    assert set(reasons) == {"unknown_kid"}
    assert endpoint.calls == 2  # the initial fetch plus one refetch for all 1,000
    clock.now += 31
    await attempt()
    assert endpoint.calls == 3


async def test_outage_keeps_serving_stale_keys() -> None:
    endpoint, clock = FakeEndpoint(jwk(rsa_key(), "k1", "RS256")), Clock()
    v = setup(endpoint, clock, cooldown=0)
    keyset = v._jwks
    assert keyset is not None
    assert await keyset.refresh()
    endpoint.down = True
    assert not await keyset.refresh()
    assert keyset.kids == {"k1"}
    assert (await v.verify(token(key=rsa_key(), alg="RS256", kid="k1"))).name == "alice"
    endpoint.down = False
    endpoint.keys = [{"kty": "RSA", "kid": "junk"}, "not a key"]  # type: ignore[list-item]
    assert await keyset.refresh()
    assert keyset.kids == set()


async def test_garbage_document_keeps_old_keys() -> None:
    endpoint, clock = FakeEndpoint(jwk(rsa_key(), "k1", "RS256")), Clock()
    keyset = JwksKeySet("u", endpoint, refresh=300, cooldown=0, clock=clock)
    await keyset.refresh()

    async def garbage(url: str) -> bytes:
        return b"<html>"

    keyset._fetch = garbage
    assert not await keyset.refresh()
    assert keyset.kids == {"k1"}


async def test_key_declaring_alg_is_used_for_that_alg_only() -> None:
    endpoint, clock = FakeEndpoint(jwk(rsa_key(), "k1", "RS256")), Clock()
    keyset = JwksKeySet("u", endpoint, refresh=300, cooldown=30, clock=clock)
    config = JwtConfig(algorithms=("RS256", "PS256"), jwks_url="http://idp/jwks")
    v = JwtVerifier(config, jwks=keyset)
    with pytest.raises(AuthFailure) as info:
        await v.verify(token(key=rsa_key(), alg="PS256", kid="k1"))
    assert info.value.reason == "unknown_kid"


async def test_symmetric_keys_from_the_url_are_ignored() -> None:
    endpoint = FakeEndpoint({"kty": "oct", "kid": "h", "k": "c2VjcmV0"})
    keyset = JwksKeySet("u", endpoint, refresh=300, cooldown=30, clock=Clock())
    assert await keyset.refresh()
    assert keyset.kids == set()


async def test_run_loop_refreshes_and_is_cancellable() -> None:
    third = asyncio.Event()

    class Counting(FakeEndpoint):
        async def __call__(self, url: str) -> bytes:
            body = await super().__call__(url)
            if self.calls >= 3:
                third.set()
            return body

    endpoint = Counting(jwk(rsa_key(), "k1", "RS256"))
    keyset = JwksKeySet("u", endpoint, refresh=0.01, cooldown=30)
    task = asyncio.create_task(keyset.run())
    await asyncio.wait_for(third.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_reloaded_key_set_starts_with_the_keys_already_fetched() -> None:
    # A reload while the JWKS endpoint is down must not lock out tokens that verified before.
    endpoint, clock = FakeEndpoint(jwk(rsa_key(), "k1", "RS256")), Clock()
    old = JwksKeySet("u", endpoint, refresh=300, cooldown=0, clock=clock)
    assert await old.refresh()
    endpoint.down = True
    new = JwksKeySet("u", endpoint, refresh=300, cooldown=0, clock=clock)
    new.adopt(old)
    assert new.kids == {"k1"}
    assert await new.keys_for("k1", "RS256")
    other = JwksKeySet("elsewhere", endpoint, refresh=300, cooldown=0, clock=clock)
    other.adopt(old)  # a different URL: its keys are not this issuer's
    assert other.kids == set()


async def test_a_lookup_during_the_background_fetch_waits_for_its_keys() -> None:
    # Right after start the refresh task's first fetch is in flight; a token arriving then must
    # get the keys it brings, not a 401 because the unknown-kid cooldown has just begun.
    gate = asyncio.Event()
    document = json.dumps({"keys": [jwk(rsa_key(), "k1", "RS256")]}).encode()

    async def slow_fetch(url: str) -> bytes:
        await gate.wait()
        return document

    keyset = JwksKeySet("u", slow_fetch, refresh=300, cooldown=30, clock=Clock())
    runner = asyncio.create_task(keyset.run())
    await asyncio.sleep(0)  # the first fetch is now in flight
    lookup = asyncio.create_task(keyset.keys_for("k1", "RS256"))
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.wait_for(lookup, 5)
    assert keyset.fetches == 1
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
