"""Secrets that must not be used: too short, or published.

A value printed in our README, docs or demo config is known to everyone who read them; a
gateway started with one is as open as one without auth. `aiogate check` refuses them, so a
copied example cannot reach production.
"""

from __future__ import annotations

import hashlib

from ._base import fail

__all__ = ["MIN_HMAC_SECRET_BYTES", "check_hmac_secret", "check_not_published", "published_sha256"]

#: RFC 7518 3.2: an HS256 key must be at least as long as the hash output (32 bytes).
MIN_HMAC_SECRET_BYTES = 32

# Every credential that appears (or appeared) in the README, docs/, the demo and deploy files.
_PUBLISHED = frozenset(
    {
        "change-me-demo-secret-change-me-demo-secret",
        "demo-key",
        "change-me",
        "my-secret-key",
        "REPLACE-WITH-32-RANDOM-BYTES-HEX",
        "REPLACE-WITH-A-RANDOM-TOKEN",
    }
)
_PUBLISHED_SHA256 = frozenset(hashlib.sha256(v.encode()).hexdigest() for v in _PUBLISHED)


def check_not_published(value: str, *at: str | int) -> None:
    if value in _PUBLISHED:
        fail("this value is published in aiogate's documentation; use a random one", *at)


def published_sha256(digest: str) -> bool:
    """Whether a `key_sha256` is the digest of a published key."""
    return digest in _PUBLISHED_SHA256


def check_hmac_secret(value: str, *at: str | int) -> None:
    check_not_published(value, *at)
    size = len(value.encode())
    if size < MIN_HMAC_SECRET_BYTES:
        fail(
            f"too short for an HMAC key ({size} bytes; at least {MIN_HMAC_SECRET_BYTES}, e.g. "
            "`python3 -c 'import secrets; print(secrets.token_hex(32))'`)",
            *at,
        )
