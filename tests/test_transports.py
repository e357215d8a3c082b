"""Transport-specific pieces that the wire-level suites cannot see directly."""
from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from pfnode.transports.picows import text_header


def text_frame(payload: bytes) -> bytes:
    return text_header(len(payload)) + payload


def parse(data: bytes, mask: bool = False) -> Frame:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=mask, max_size=None)
    try:
        next(parser)
    except StopIteration as done:
        return done.value
    raise AssertionError("frame incomplete")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_text_frame_is_a_valid_unmasked_websocket_frame(size):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = parse(text_frame(payload))
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert frame.data == payload


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 200_000])
def test_masked_text_frame_is_a_valid_client_frame(size):
    """The dial-out uplink's frames (pfnode/transports/picows.py PicowsUplink): header with the mask
    bit, the key, the masked payload; websockets' parser, as a server, unmasks it."""
    from websockets.frames import apply_mask

    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    key = b"\x01\x7f\xa0\x33"
    frame = parse(text_header(size, masked=True) + key + apply_mask(payload, key), mask=True)
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert frame.data == payload


def test_batched_frames_parse_back_one_by_one():
    payloads = [b'{"a":1}', b"x" * 300, b"y" * 70_000]
    stream = b"".join(text_frame(p) for p in payloads)
    reader = StreamReader()
    reader.feed_data(stream)
    reader.feed_eof()
    seen = []
    for _ in payloads:
        parser = Frame.parse(reader.read_exact, mask=False, max_size=None)
        try:
            next(parser)
        except StopIteration as done:
            seen.append(done.value.data)
    assert seen == payloads
