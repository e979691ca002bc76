from __future__ import annotations

import pytest

from aiogate.connection import after_each_head


@pytest.mark.parametrize(
    ("data", "pieces"),
    [
        (b"", []),
        (b"GET / HTTP/1.1\r\n", [b"GET / HTTP/1.1\r\n"]),
        (b"A\r\n\r\n", [b"A\r\n\r\n"]),
        (b"A\r\n\r\nB\r\n\r\n", [b"A\r\n\r\n", b"B\r\n\r\n"]),
        (b"A\r\n\r\nbodyB\r\n\r\nrest", [b"A\r\n\r\n", b"bodyB\r\n\r\n", b"rest"]),
    ],
)
def test_after_each_head_cuts_after_every_blank_line(data: bytes, pieces: list[bytes]) -> None:
    assert after_each_head(data) == pieces
    assert b"".join(after_each_head(data)) == data


def test_after_each_head_cuts_at_most_into_the_pieces_asked() -> None:
    """A read full of blank lines (a body) is not cut into thousands of parser calls."""
    data = b"\r\n\r\n" * 10_000
    pieces = after_each_head(data, 17)
    assert len(pieces) == 17
    assert b"".join(pieces) == data
    assert pieces[:16] == [b"\r\n\r\n"] * 16
