"""Everything authentication needs for one Runtime: verifiers, the JWKS client and its task.

The Runtime owns one AuthServices: `start()` launches the JWKS refresh task, `close()` cancels
and awaits it and closes the HTTP session, so a reload never leaks a task or a socket.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import aiohttp

from ..config import AuthConfig
from ..tasks import BackgroundTask
from .apikey import ApiKeyVerifier, RedisKeyStore
from .jwks import JwksKeySet
from .jwt import JwtVerifier
from .methods import ApiKeyMethod, AuthMethod, JwtMethod, MtlsMethod

if TYPE_CHECKING:
    import redis.asyncio as aioredis

__all__ = ["AuthServices"]

#: A JWKS document larger than this is refused (a real one is a few KiB).
_MAX_JWKS_BYTES: Final = 1024 * 1024


class AuthServices:
    def __init__(
        self,
        config: AuthConfig,
        *,
        redis: aioredis.Redis | None = None,
        previous: AuthServices | None = None,
    ) -> None:
        """`previous` is the replaced Runtime's: what it learned (JWKS keys, Redis key lookups)
        carries over, so a reload during a JWKS or Redis outage does not lock clients out."""
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._task = BackgroundTask("aiogate-jwks-refresh")
        self.jwks: JwksKeySet | None = None
        self.jwt: JwtVerifier | None = None
        self.api_key: ApiKeyVerifier | None = None
        jwt_config = config.jwt
        if jwt_config is not None:
            if jwt_config.jwks_url is not None:
                self.jwks = JwksKeySet(
                    jwt_config.jwks_url,
                    self._fetch,
                    refresh=jwt_config.jwks_refresh,
                    cooldown=jwt_config.jwks_cooldown,
                )
                if previous is not None and previous.jwks is not None:
                    self.jwks.adopt(previous.jwks)
            self.jwt = JwtVerifier(jwt_config, jwks=self.jwks)
        key_config = config.api_key
        if key_config is not None:
            store = None
            if key_config.store == "redis":
                assert redis is not None  # the config checks demand a `redis:` section
                store = RedisKeyStore(redis)
            self.api_key = ApiKeyVerifier(key_config, store=store)
            if store is not None and previous is not None and previous.api_key is not None:
                self.api_key.adopt(previous.api_key)
        #: The configured auth methods by name (a route's `auth: {type: NAME}`).
        self.methods: dict[str, AuthMethod] = {}
        if self.jwt is not None and jwt_config is not None:
            self.methods[JwtMethod.name] = JwtMethod(jwt_config, self.jwt)
        if self.api_key is not None and key_config is not None:
            self.methods[ApiKeyMethod.name] = ApiKeyMethod(key_config, self.api_key)
        # No section of its own: the config checks that routes using it have a listener that
        # verifies client certificates (`server.tls.client_ca_file`).
        self.methods[MtlsMethod.name] = MtlsMethod()

    async def start(self) -> None:
        if self.jwks is not None and not self._task.started:
            self._task.start(self.jwks.run())

    async def close(self) -> None:
        await self._task.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _fetch(self, url: str) -> bytes:
        assert self.config.jwt is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.jwt.jwks_timeout),
                headers={"Accept": "application/json"},
            )
        async with self._session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > _MAX_JWKS_BYTES:
                    raise ValueError(f"JWKS larger than {_MAX_JWKS_BYTES} bytes")
            return bytes(body)
