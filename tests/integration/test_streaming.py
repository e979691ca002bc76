"""200 MiB each way through the gateway, byte-exact and in flat memory (VmRSS sampled)."""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from backend import BackendThread
from gateway import Gateway
from gwconfigs import wide_config
from wire import new_id, seen_with

MiB = 1024 * 1024
SIZE = 200 * MiB
MAX_GROWTH = 60 * MiB
BLOCK = bytes(range(256)) * 256  # what backend.py's /download sends, repeated


@pytest.fixture(scope="module")
def stream_gw(
    backends: BackendThread, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = wide_config(backends, max_body_size="300MiB")
    config["upstreams"][0]["timeout"] = "120s"
    gw = Gateway(config, tmp_path_factory.mktemp("stream")).start()
    yield gw
    gw.stop()


class RssSampler:
    """Samples a process's VmRSS from /proc every few milliseconds in a thread."""

    def __init__(self, pid: int) -> None:
        self._path = Path(f"/proc/{pid}/status")
        self.baseline = self.read()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> int:
        for line in self._path.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.read())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, self.read())

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def _warm_up(gw: Gateway) -> None:
    """One small transfer each way first, so one-off allocations are in the baseline."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("POST", "/upload", body=b"w" * (4 * MiB))
        conn.getresponse().read()
        conn.request("GET", f"/download/{4 * MiB}")
        conn.getresponse().read()
    finally:
        conn.close()


def _body(size: int) -> Iterator[bytes]:
    sent = 0
    while sent < size:
        piece = BLOCK[: min(len(BLOCK), size - sent)]
        sent += len(piece)
        yield piece


def _expected_sha(size: int) -> str:
    digest = hashlib.sha256()
    for piece in _body(size):
        digest.update(piece)
    return digest.hexdigest()


@pytest.mark.parametrize("path", ["/upload", "/upload-late/1"])
def test_200mib_upload_in_flat_memory(
    stream_gw: Gateway, backends: BackendThread, path: str
) -> None:
    """`/upload-late/1` lets a second pass before the backend reads: the client must be held
    back (back-pressure) rather than the gateway buffering what it sends meanwhile."""
    assert stream_gw.proc is not None
    _warm_up(stream_gw)
    rid = new_id()
    conn = http.client.HTTPConnection("127.0.0.1", stream_gw.port, timeout=120)
    try:
        with RssSampler(stream_gw.proc.pid) as rss:
            conn.request(
                "POST", path, body=_body(SIZE),
                headers={"Content-Length": str(SIZE), "X-Request-ID": rid},
            )  # fmt: skip
            resp = conn.getresponse()
            answer = resp.read()
        assert resp.status == 200, answer
    finally:
        conn.close()
    (seen,) = seen_with(backends, rid)
    assert seen["body_len"] == SIZE
    assert seen["sha256"] == _expected_sha(SIZE)
    assert rss.growth < MAX_GROWTH, f"RSS grew by {rss.growth / MiB:.1f} MiB"


def test_200mib_chunked_upload_in_flat_memory(stream_gw: Gateway, backends: BackendThread) -> None:
    assert stream_gw.proc is not None
    _warm_up(stream_gw)
    rid = new_id()
    conn = http.client.HTTPConnection("127.0.0.1", stream_gw.port, timeout=120)
    try:
        with RssSampler(stream_gw.proc.pid) as rss:
            conn.request(
                "POST", "/upload", body=_body(SIZE), headers={"X-Request-ID": rid},
                encode_chunked=True,
            )  # fmt: skip
            resp = conn.getresponse()
            resp.read()
        assert resp.status == 200
    finally:
        conn.close()
    (seen,) = seen_with(backends, rid)
    assert (seen["body_len"], seen["sha256"]) == (SIZE, _expected_sha(SIZE))
    assert rss.growth < MAX_GROWTH, f"RSS grew by {rss.growth / MiB:.1f} MiB"


@pytest.mark.parametrize("query", ["", "?cl=1"])
def test_200mib_download_in_flat_memory(stream_gw: Gateway, query: str) -> None:
    """The client stops reading for a second midway: the backend, which could push the
    whole body meanwhile, must be held back instead of the gateway buffering it."""
    assert stream_gw.proc is not None
    _warm_up(stream_gw)
    conn = http.client.HTTPConnection("127.0.0.1", stream_gw.port, timeout=120)
    digest = hashlib.sha256()
    received = 0
    try:
        with RssSampler(stream_gw.proc.pid) as rss:
            conn.request("GET", f"/download/{SIZE}{query}")
            resp = conn.getresponse()
            assert resp.status == 200
            if query:
                assert resp.getheader("Content-Length") == str(SIZE)
            paused = False
            while True:
                piece = resp.read(256 * 1024)
                if not piece:
                    break
                digest.update(piece)
                received += len(piece)
                if not paused and received >= 20 * MiB:
                    paused = True
                    time.sleep(1.0)  # a slow reader, not a wait for a condition
    finally:
        conn.close()
    assert received == SIZE
    assert digest.hexdigest() == _expected_sha(SIZE)
    assert rss.growth < MAX_GROWTH, f"RSS grew by {rss.growth / MiB:.1f} MiB"
