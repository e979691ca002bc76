"""A JSON Web Key Set fetched from `jwks_url`: refreshed in the background, stale on outage.

Keys are replaced only by a successful fetch, so an endpoint that is down (or answers garbage)
leaves the last good keys in service. A token whose `kid` is unknown may mean the issuer
rotated: it triggers one refetch, but at most one per `cooldown` however many such tokens
arrive (concurrent callers wait for the one fetch in flight instead of starting their own).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from .. import log
from ..config.redact import redact_url  # a URL may carry credentials

__all__ = ["Fetch", "JwksKeySet", "family_of_algorithm"]

#: Fetches the URL's body; raises on any failure (network, status, size).
Fetch = Callable[[str], Awaitable[bytes]]

_FAMILIES: Final = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
#: After a failed fetch, the background task retries sooner than the full refresh interval.
_RETRY_AFTER_FAILURE: Final = 10.0


def family_of_algorithm(alg: str) -> str:
    """The JWK `kty` an algorithm needs: RSA, EC, OKP, or oct for HS*."""
    return _FAMILIES.get(alg[:2], "oct")


class JwksKeySet:
    __slots__ = (
        "_by_kid",
        "_clock",
        "_cooldown",
        "_fetch",
        "_last_attempt",
        "_lock",
        "_refresh",
        "_without_kid",
        "fetches",
        "url",
    )

    def __init__(
        self,
        url: str,
        fetch: Fetch,
        *,
        refresh: float,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._fetch = fetch
        self._refresh = refresh
        self._cooldown = cooldown
        self._clock = clock
        self._by_kid: dict[str, _Key] = {}
        self._without_kid: list[_Key] = []
        self._last_attempt = -math.inf
        self._lock = asyncio.Lock()
        #: Fetch attempts so far (tests and the cooldown guarantee).
        self.fetches = 0

    def adopt(self, previous: JwksKeySet) -> None:
        """Start with the keys a replaced key set already had, when it read the same URL."""
        if previous.url == self.url:
            self._by_kid = previous._by_kid
            self._without_kid = previous._without_kid

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(self._by_kid)

    async def keys_for(self, kid: str | None, alg: str) -> list[Any]:
        """Verification keys usable for `alg`: the `kid`'s, else (no kid) every fitting key."""
        found = self._lookup(kid, alg)
        if found or (kid is None and (self._by_kid or self._without_kid)):
            return found
        await self._refetch_rate_limited()
        return self._lookup(kid, alg)

    def _lookup(self, kid: str | None, alg: str) -> list[Any]:
        if kid is not None:
            key = self._by_kid.get(kid)
            candidates = [key] if key is not None else []
        else:
            candidates = [*self._without_kid, *self._by_kid.values()]
        family = family_of_algorithm(alg)
        # A key that declares its `alg` is used for that algorithm only.
        return [k.key for k in candidates if k.kty == family and k.alg in (None, alg)]

    async def _refetch_rate_limited(self) -> None:
        async with self._lock:
            if self._clock() - self._last_attempt < self._cooldown:
                return
            await self.refresh()

    async def refresh(self) -> bool:
        """Fetch once; True when the keys were replaced. Failures keep the old keys."""
        self._last_attempt = self._clock()
        self.fetches += 1
        logger = log.get_logger("aiogate.auth")
        try:
            body = await self._fetch(self.url)
            by_kid, without_kid = parse_jwks(body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the endpoint is down or broken: serve the keys we have
            shown = redact_url(self.url)
            logger.warning(
                log.JWKS_REFRESH_FAILED, url=shown,
                error=(str(exc) or type(exc).__name__).replace(self.url, shown),
                keys=len(self._by_kid) + len(self._without_kid),
            )  # fmt: skip
            return False
        changed = set(by_kid) != set(self._by_kid)
        self._by_kid, self._without_kid = by_kid, without_kid
        if changed:
            logger.info(log.JWKS_REFRESHED, url=redact_url(self.url), kids=sorted(by_kid))
        return True

    async def run(self) -> None:
        """The background refresh loop (owned, started and cancelled by AuthServices)."""
        while True:
            # Under the lock an unknown-kid lookup takes: a request arriving while this fetch
            # runs (the first one, right after start) waits for its keys instead of finding
            # the cooldown started and answering 401.
            async with self._lock:
                ok = await self.refresh()
            await asyncio.sleep(self._refresh if ok else min(self._refresh, _RETRY_AFTER_FAILURE))


@dataclass(frozen=True, slots=True)
class _Key:
    kty: str
    alg: str | None
    key: Any


def parse_jwks(body: bytes) -> tuple[dict[str, _Key], list[_Key]]:
    """Usable signature keys of a JWKS document; a key PyJWT cannot load is skipped."""
    document = orjson.loads(body)
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    by_kid: dict[str, _Key] = {}
    without_kid: list[_Key] = []
    for data in document["keys"]:
        if not isinstance(data, Mapping) or data.get("use", "sig") != "sig":
            continue
        if data.get("kty") == "oct":
            continue  # symmetric keys never come from a URL: that is how HS confusion starts
        try:
            jwk = PyJWK(dict(data))
        except (PyJWTError, ValueError, TypeError, KeyError):
            continue
        alg = data.get("alg")
        key = _Key(str(data.get("kty")), alg if isinstance(alg, str) else None, jwk.key)
        kid = data.get("kid")
        if isinstance(kid, str):
            by_kid[kid] = key
        else:
            without_kid.append(key)
    return by_kid, without_kid
