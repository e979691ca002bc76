"""A small etcd v3 client over the JSON gRPC gateway (`/v3/kv/range`, `/v3/watch`).

etcd serves its v3 API as JSON over plain HTTP next to gRPC (keys and values base64, int64s
as strings, enum and zero values omitted). That is all discovery needs: one range read and
one streaming watch, over the aiohttp client the gateway already has. See ADR 0010.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

__all__ = ["EtcdClient", "EtcdError", "KeyValue", "WatchCompacted", "WatchEvent", "prefix_end"]


class EtcdError(Exception):
    """etcd could not be reached or answered something unusable."""


class WatchCompacted(EtcdError):
    """The watch's start revision was compacted away: re-read everything."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def prefix_end(prefix: str) -> bytes:
    """The smallest key after every key starting with `prefix` (etcd's `range_end`)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"  # every key


def _kv(item: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=base64.b64decode(item.get("key", "")).decode("utf-8", "replace"),
        value=base64.b64decode(item.get("value", "")),
        mod_revision=int(item.get("mod_revision", 0)),
    )


def parse_range(body: dict[str, Any]) -> tuple[int, list[KeyValue]]:
    """(revision of the read, the keys) from a `/v3/kv/range` answer."""
    revision = int(body.get("header", {}).get("revision", 0))
    return revision, [_kv(item) for item in body.get("kvs", ())]


def parse_watch_message(message: dict[str, Any]) -> list[WatchEvent]:
    """The events of one streamed watch message; raises on cancellation or compaction."""
    if "error" in message:
        raise EtcdError(f"watch failed: {message['error']}")
    result = message.get("result", {})
    compacted = int(result.get("compact_revision", 0) or 0)
    if compacted:
        raise WatchCompacted(f"revision compacted (oldest kept: {compacted})")
    if result.get("canceled"):
        raise EtcdError(f"watch canceled: {result.get('cancel_reason', 'no reason given')}")
    return [
        # PUT is the enum's zero value, which the JSON gateway leaves out.
        WatchEvent("DELETE" if e.get("type") == "DELETE" else "PUT", _kv(e.get("kv", {})))
        for e in result.get("events", ())
    ]


class EtcdClient:
    """One etcd cluster, tried endpoint by endpoint; the caller owns and closes it."""

    def __init__(self, endpoints: Sequence[str], timeout: float) -> None:
        self._endpoints = tuple(endpoints)
        self._current = 0
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def endpoint(self) -> str:
        return self._endpoints[self._current]

    def rotate(self) -> None:
        """Use the next endpoint from now on (after this one failed)."""
        self._current = (self._current + 1) % len(self._endpoints)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # A watch stays open for as long as etcd is up: no total timeout.
                timeout=aiohttp.ClientTimeout(
                    total=None, connect=self._timeout, sock_connect=self._timeout
                ),
                # Endpoints are infrastructure, never a proxy from the environment.
                trust_env=False,
            )
        return self._session

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{self.endpoint}{path}"
        try:
            async with self._http().post(
                url, json=body, timeout=aiohttp.ClientTimeout(total=self._timeout)
            ) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise EtcdError(f"{url}: HTTP {resp.status}: {text[:200]}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EtcdError(f"{url}: {type(exc).__name__}: {exc}") from exc
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise EtcdError(f"{url}: not JSON: {text[:200]!r}") from exc
        if not isinstance(data, dict):
            raise EtcdError(f"{url}: unexpected answer {text[:200]!r}")
        return data

    async def range_prefix(self, prefix: str) -> tuple[int, list[KeyValue]]:
        """Every key under `prefix` and the store revision they were read at."""
        body = await self._post(
            "/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        )
        return parse_range(body)

    async def get(self, key: str) -> tuple[int, KeyValue | None]:
        """One key (None when it does not exist) and the store revision it was read at."""
        revision, kvs = parse_range(await self._post("/v3/kv/range", {"key": _b64(key)}))
        return revision, next(iter(kvs), None)

    async def status(self) -> None:
        """A cheap request that succeeds only while the endpoint serves (liveness probe)."""
        await self._post("/v3/maintenance/status", {})

    async def watch_prefix(
        self, prefix: str, start_revision: int
    ) -> AsyncIterator[list[WatchEvent]]:
        """Batches of changes under `prefix` from `start_revision` on, until the stream ends.

        Ends by raising EtcdError (WatchCompacted when the revision is gone): a watch stream
        that closes is a lost connection, never a normal end.
        """
        async for events in self._watch(prefix, prefix_end(prefix), start_revision):
            yield events

    async def watch_key(self, key: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Changes of exactly `key` (not of longer keys it is a prefix of); as `watch_prefix`."""
        async for events in self._watch(key, None, start_revision):
            yield events

    async def _watch(
        self, key: str, range_end: bytes | None, start_revision: int
    ) -> AsyncIterator[list[WatchEvent]]:
        url = f"{self.endpoint}/v3/watch"
        create: dict[str, str] = {"key": _b64(key), "start_revision": str(start_revision)}
        if range_end is not None:
            create["range_end"] = _b64(range_end)
        request = {"create_request": create}
        try:
            async with self._http().post(url, json=request) as resp:
                if resp.status != 200:
                    raise EtcdError(f"{url}: HTTP {resp.status}")
                buffer = b""
                # Messages are newline-delimited JSON; a batch may exceed any line limit.
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        if line.strip():
                            yield parse_watch_message(_message(url, line))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EtcdError(f"{url}: {type(exc).__name__}: {exc}") from exc
        raise EtcdError(f"{url}: watch stream closed")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _message(url: str, line: bytes) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise EtcdError(f"{url}: not JSON: {line[:200]!r}") from exc
    if not isinstance(data, dict):
        raise EtcdError(f"{url}: unexpected message {line[:200]!r}")
    return data
