from __future__ import annotations

import pytest

from aiogate.config import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("3600s", 3600.0),
        (" 30s ", 30.0),
        ("30", 30.0),
        (0, 0.0),
        (30, 30.0),
        (0.25, 0.25),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert isinstance(parse_duration(text), float)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10", None),
        ("5min", "invalid duration '5min' (use e.g. 250ms, 10s, 5m, 1h or a number of seconds)"),
        ("10us", "invalid duration '10us'"),
        ("s", "invalid duration 's'"),
        ("", "invalid duration ''"),
        ("1 s", "invalid duration '1 s'"),
        ("-5s", "invalid duration '-5s': must not be negative"),
        (-1, "must be a finite number >= 0"),
        (float("inf"), "must be a finite number >= 0"),
        (float("nan"), "must be a finite number >= 0"),
        (True, "invalid duration True"),
        ([1], "invalid duration of type list"),
        (None, "invalid duration of type NoneType"),
    ],
)
def test_bad_durations(value: object, message: str | None) -> None:
    if message is None:
        assert parse_duration(value) == 10.0
        return
    with pytest.raises(ValueError, match="invalid duration") as info:
        parse_duration(value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        (512, 512),
        (0, 0),
        (512.0, 512),
        ("512B", 512),
        ("64KiB", 64 * 1024),
        ("10MiB", 10 * 1024 * 1024),
        ("1GiB", 1024**3),
        ("1KB", 1000),
        ("1MB", 1000**2),
        ("1GB", 1000**3),
        ("1.5MiB", 1572864),
        ("0.5KB", 500),
        (" 8KiB ", 8192),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size
    assert type(parse_size(text)) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("10XB", "invalid size '10XB' (use e.g. 512, 64KiB, 10MiB, 1GB)"),
        ("1k", "invalid size '1k'"),
        ("1kb", "invalid size '1kb'"),
        ("1M", "invalid size '1M'"),
        ("MiB", "invalid size 'MiB'"),
        ("-1KiB", "invalid size '-1KiB': must not be negative"),
        (-1, "invalid size -1: must not be negative"),
        (1.5, "must be a whole number of bytes"),
        ("1.0001KB", "not a whole number of bytes"),
        (False, "invalid size False"),
        ({}, "invalid size of type dict"),
    ],
)
def test_bad_sizes(value: object, message: str) -> None:
    with pytest.raises(ValueError, match="invalid size") as info:
        parse_size(value)
    assert message in str(info.value)
