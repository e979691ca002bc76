"""log: buffered JSON lines, per-logger levels, the access line, reconfiguration."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import pytest

from aiogate import log

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def out(tmp_path: Path) -> Iterator[TextIO]:
    with (tmp_path / "stdout").open("w+") as stream:
        yield stream
    log.configure(stream=sys.__stdout__)


def lines(stream: TextIO) -> list[str]:
    log.flush()
    stream.seek(0)
    return stream.read().splitlines()


def records(stream: TextIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(stream)]


def test_event_lines_are_json(out: TextIO) -> None:
    log.configure(stream=out)
    log.get_logger("aiogate.test").info("thing_happened", answer=42, who="me")
    (record,) = records(out)
    assert record["event"] == "thing_happened"
    assert record["answer"] == 42
    assert record["level"] == "info"
    assert record["logger"] == "aiogate.test"
    assert TIMESTAMP.fullmatch(record["timestamp"])


def test_levels_and_per_logger_levels(out: TextIO) -> None:
    log.configure(
        level="warning", levels={"aiogate.proxy": "error", "aiogate.noisy": "debug"}, stream=out
    )
    log.get_logger("aiogate.other").info("dropped")
    log.get_logger("aiogate.other").warning("kept_base")
    log.get_logger("aiogate.proxy.pool").warning("dropped_by_parent_level")
    log.get_logger("aiogate.proxy").error("kept_proxy")
    log.get_logger("aiogate.noisy.deep").debug("kept_debug")
    assert [r["event"] for r in records(out)] == ["kept_base", "kept_proxy", "kept_debug"]


def test_access_line_shape(out: TextIO) -> None:
    log.configure(stream=out)
    log.access({"request_id": "r1", "method": "GET", "path": "/a", "status": 200})
    (record,) = records(out)
    assert record["event"] == "request"
    assert record["logger"] == "aiogate.access"
    assert record["level"] == "info"
    assert record["request_id"] == "r1"
    assert TIMESTAMP.fullmatch(record["timestamp"])


@pytest.mark.parametrize(
    "settings",
    [{"access_log": False}, {"levels": {"aiogate.access": "warning"}}, {"level": "error"}],
)
def test_access_lines_can_be_switched_off(out: TextIO, settings: dict[str, Any]) -> None:
    log.configure(stream=out, **settings)
    log.access({"request_id": "r1"})
    assert lines(out) == []


ACCESS = {"request_id": "r9", "method": "POST", "path": "/api/users", "route": "/api/users",
          "status": 201, "duration_ms": 1.5, "upstream": "users", "backend": "http://b:1",
          "client_ip": "192.0.2.7", "consumer": "alice", "bytes_in": 10, "bytes_out": 20,
          "trace_id": "0af7651916cd43dd8448eb211c80319c"}  # fmt: skip


def test_default_access_line_is_byte_for_byte_unchanged(out: TextIO) -> None:
    """`format: json` (the default): the fields in order, then event, level, logger, time."""
    log.configure(stream=out)
    log.access(dict(ACCESS))
    (line,) = lines(out)
    stamp = json.loads(line)["timestamp"]
    expected = (
        '{"request_id":"r9","method":"POST","path":"/api/users","route":"/api/users",'
        '"status":201,"duration_ms":1.5,"upstream":"users","backend":"http://b:1",'
        '"client_ip":"192.0.2.7","consumer":"alice","bytes_in":10,"bytes_out":20,'
        '"trace_id":"0af7651916cd43dd8448eb211c80319c","event":"request","level":"info",'
        f'"logger":"aiogate.access","timestamp":"{stamp}"}}'
    )
    assert line == expected


def test_ecs_field_names(out: TextIO) -> None:
    log.configure(fmt="ecs", stream=out)
    log.access(dict(ACCESS))
    log.get_logger("aiogate.test").warning("thing_happened", answer=42)
    access, event = records(out)
    assert TIMESTAMP.fullmatch(access["@timestamp"])
    assert access["ecs.version"]
    assert access["log.level"] == "info"
    assert access["log.logger"] == "aiogate.access"
    assert access["message"] == access["event.action"] == "request"
    assert access["http.request.method"] == "POST"
    assert access["url.path"] == "/api/users"
    assert access["http.response.status_code"] == 201
    assert access["event.duration"] == 1_500_000  # nanoseconds
    assert access["client.ip"] == "192.0.2.7"
    assert access["trace.id"] == ACCESS["trace_id"]
    assert access["http.request.id"] == "r9"
    assert access["user.name"] == "alice"
    assert access["aiogate.route"] == "/api/users"
    assert access["aiogate.upstream"] == "users"
    assert not {"event", "level", "timestamp", "status", "path"} & access.keys()
    assert (event["message"], event["log.level"], event["aiogate.answer"]) == (
        "thing_happened",
        "warning",
        42,
    )


def test_otel_field_names(out: TextIO) -> None:
    log.configure(fmt="otel", stream=out)
    log.access(dict(ACCESS))
    log.get_logger("aiogate.test").error("thing_failed", answer=42)
    access, event = records(out)
    assert int(access["Timestamp"]) > 1_600_000_000 * 10**9  # nanoseconds since the epoch
    assert (access["SeverityText"], access["SeverityNumber"]) == ("INFO", 9)
    assert access["Body"] == "request"
    assert access["TraceId"] == ACCESS["trace_id"]
    assert access["InstrumentationScope"] == {"Name": "aiogate.access"}
    attributes = access["Attributes"]
    assert attributes["http.request.method"] == "POST"
    assert attributes["url.path"] == "/api/users"
    assert attributes["http.route"] == "/api/users"
    assert attributes["http.response.status_code"] == 201
    assert attributes["client.address"] == "192.0.2.7"
    assert attributes["aiogate.request_id"] == "r9"
    assert attributes["aiogate.duration_ms"] == 1.5
    assert (event["Body"], event["SeverityNumber"], event["Attributes"]["aiogate.answer"]) == (
        "thing_failed",
        17,
        42,
    )


def test_console_format(out: TextIO) -> None:
    log.configure(fmt="console", stream=out)
    log.get_logger("aiogate.test").info("human_readable", key="value")
    log.access({"request_id": "r2", "status": 404})
    text = lines(out)
    assert len(text) == 2
    assert "human_readable" in text[0]
    assert "key" in text[0]
    assert "value" in text[0]
    assert "request" in text[1]
    assert not text[0].startswith("{")


def test_a_logger_taken_before_a_reconfigure_writes_to_the_new_sink(
    out: TextIO, tmp_path: Path
) -> None:
    """Regression: the daemon binds its logger at start; after a reload (configure) its
    shutdown lines went into the replaced sink and were lost at exit."""
    log.configure(stream=out)
    early = log.get_logger("aiogate.daemon")
    log.configure(stream=out)
    early.info("shutdown_complete")
    assert [r["event"] for r in records(out)] == ["shutdown_complete"]


def test_without_a_loop_lines_are_written_through() -> None:
    read, write = os.pipe()
    try:
        sink = log.BufferedSink(write)
        sink.write(b'{"a":1}')
        assert os.read(read, 100) == b'{"a":1}\n'
    finally:
        os.close(read)
        os.close(write)


async def test_in_a_loop_lines_are_batched() -> None:
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    try:
        sink = log.BufferedSink(write)
        sink.write(b"one")
        sink.write(b"two")
        with pytest.raises(BlockingIOError):
            os.read(read, 100)  # nothing written yet: a flush is scheduled
        deadline = asyncio.get_running_loop().time() + 2
        data = b""
        while not data and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
            try:
                data = os.read(read, 100)
            except BlockingIOError:
                continue
        assert data == b"one\ntwo\n"
    finally:
        os.close(read)
        os.close(write)


def test_a_full_pipe_keeps_the_rest_for_the_next_flush() -> None:
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        sink = log.BufferedSink(write)
        payload = bytes(range(256)) * 400  # 100 KiB: more than the pipe holds
        sink.write(payload)  # past the size threshold: flushed at once, partially
        first = os.read(read, 1 << 20)
        assert 0 < len(first) < len(payload) + 1
        sink.flush()
        rest = os.read(read, 1 << 20)
        assert first + rest == payload + b"\n"
    finally:
        os.close(read)
        os.close(write)


def test_a_slow_reader_keeps_the_rest_for_later(monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[bytes] = []
    calls = iter([5, None, 100])

    def fake_write(fd: int, data: Any) -> int:
        size = next(calls)
        if size is None:
            raise BlockingIOError
        chunk = bytes(data[:size])
        written.append(chunk)
        return len(chunk)

    monkeypatch.setattr(log.os, "write", fake_write)
    sink = log.BufferedSink(99)
    sink._buffer += b"0123456789\n"
    sink.flush()
    assert written == [b"01234"]
    sink.flush()
    assert written == [b"01234", b"56789\n"]


def test_a_closed_stdout_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fd: int, data: Any) -> int:
        raise BrokenPipeError

    monkeypatch.setattr(log.os, "write", broken)
    sink = log.BufferedSink(99)
    sink.write(b"lost")  # no loop: written through, and the error swallowed
    sink.flush()


def test_whole_lines_for_shared_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    pieces: list[bytes] = []

    def fake_write(fd: int, data: Any) -> int:
        pieces.append(bytes(data))
        return len(data)

    monkeypatch.setattr(log.os, "write", fake_write)
    sink = log.BufferedSink(99, whole_lines=True)  # type: ignore[call-arg]
    body = b"".join(b"%05d" % i + b"y" * 300 + b"\n" for i in range(40))
    sink._buffer += body
    sink.flush()
    assert b"".join(pieces) == body
    assert len(pieces) > 1
    assert all(len(p) <= select.PIPE_BUF and p.endswith(b"\n") for p in pieces)


def test_a_logger_works_before_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiogate import log as logmod

    read, write = os.pipe()
    monkeypatch.setattr(logmod._State, "processors", [])
    monkeypatch.setattr(logmod._State, "cache", {})
    monkeypatch.setattr(logmod._State, "sink", logmod.BufferedSink(write))
    logmod.get_logger("aiogate.early").warning("early_event", answer=42)
    logmod.flush()
    os.close(write)
    line = os.read(read, 65536).decode()
    os.close(read)
    assert '"event":"early_event"' in line
    assert '"answer":42' in line
