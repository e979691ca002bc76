"""The handshake arithmetic and the framing the gateway writes itself (websocket.py)."""

from __future__ import annotations

import os
import struct

import pytest

from aiogate.websocket import FrameBoundary, accept_key, close_frame


def test_accept_key_matches_rfc_6455_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_close_frame_to_a_client_is_unmasked() -> None:
    assert close_frame(1001, masked=False) == b"\x88\x02\x03\xe9"


def test_close_frame_to_a_server_is_masked() -> None:
    frame = close_frame(1001, masked=True)
    assert frame[0] == 0x88
    assert frame[1] == 0x80 | 2
    mask, body = frame[2:6], frame[6:]
    assert bytes(b ^ mask[i % 4] for i, b in enumerate(body)) == struct.pack("!H", 1001)


def frame(payload: bytes, *, masked: bool) -> bytes:
    size = len(payload)
    bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((0x82, bit | size))
    elif size < 65536:
        head = bytes((0x82, bit | 126)) + struct.pack("!H", size)
    else:
        head = bytes((0x82, bit | 127)) + struct.pack("!Q", size)
    return head + (os.urandom(4) if masked else b"") + payload


@pytest.mark.parametrize("size", [0, 5, 125, 126, 1000, 65535, 65536, 200_000])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("step", [1, 3, 7, 4096, 1 << 20])
def test_frame_boundary_in_any_split(size: int, masked: bool, step: int) -> None:
    """Frames fed in pieces of any size: between frames (only there) it is at a boundary."""
    stream = frame(b"a" * size, masked=masked) + frame(b"b" * 3, masked=masked)
    first_end = len(stream) - len(frame(b"b" * 3, masked=masked))
    tracker = FrameBoundary()
    offset = 0
    while offset < len(stream):
        piece = stream[offset : offset + step]
        tracker.feed(piece)
        offset += len(piece)
        assert tracker.at_boundary == (offset in (first_end, len(stream))), offset
    assert tracker.at_boundary
