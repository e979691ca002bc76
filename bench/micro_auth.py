"""Microbenchmark: µs per credential verification (run: .venv/bin/python bench/micro_auth.py).

Measures the verifiers alone (no HTTP): HS256 and RS256 full verification (cache disabled),
a cached JWT hit, and an in-memory API key hit.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit" / "auth"))

from keys import SECRET, claims, public_pem, rsa_key, token

from aiogate.auth import ApiKeyVerifier, JwtVerifier
from aiogate.config import ApiKeyConfig, JwtConfig


async def per_call(fn, arg: str, n: int) -> float:  # type: ignore[no-untyped-def]
    for _ in range(min(n, 1000)):
        await fn(arg)
    start = time.perf_counter()
    for _ in range(n):
        await fn(arg)
    return (time.perf_counter() - start) / n * 1e6


async def main() -> None:
    hs = JwtVerifier(JwtConfig.model_validate({"secret": SECRET, "cache_size": 0}))
    rs = JwtVerifier(
        JwtConfig(algorithms=("RS256",), public_key=public_pem(rsa_key()), cache_size=0)
    )
    cached = JwtVerifier(JwtConfig.model_validate({"secret": SECRET}))
    keys = ApiKeyVerifier(ApiKeyConfig.model_validate({"keys": [{"key": "k" * 32,
                                                                 "consumer": "a"}]}))  # fmt: skip
    hs_token = token(claims(exp=int(time.time()) + 3600))
    rs_token = token(claims(exp=int(time.time()) + 3600), key=rsa_key(), alg="RS256")
    rows = [
        ("JWT HS256, full verification", await per_call(hs.verify, hs_token, 20_000)),
        ("JWT RS256 (2048), full verification", await per_call(rs.verify, rs_token, 5_000)),
        ("JWT cached hit", await per_call(cached.verify, hs_token, 200_000)),
        ("API key hit (memory)", await per_call(keys.verify, "k" * 32, 200_000)),
    ]
    for name, us in rows:
        print(f"{name:40s} {us:8.2f} µs")


if __name__ == "__main__":
    asyncio.run(main())
