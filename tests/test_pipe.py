"""The pipe between the front and a worker (pfnode/pool/pipe.py): named, versioned messages in
length-prefixed msgpack frames, split back out of any chunking of the byte stream."""
from __future__ import annotations

import math
import random

import msgspec
import pytest

from pfnode.pool import pipe

FROM_WORKER = [
    pipe.Hello(pipe.VERSION, 1234, {"df:noop": {"lane": "df", "timeout_ms": None, "memory_limit_mb": None}}, [0, 1]),
    pipe.Done(5, b'"HELLO WORLD"', 0.25),
    pipe.Done(6, pipe.ShmRef(64, 200_000, 200_064), 3.5),
    pipe.Failed(7, "PF500", "ValueError: boom", 1.5),
    pipe.Skipped(8),
    pipe.Done(9, b"x" * 100_000, 0.0),
    pipe.Retire("memory limit exceeded", 1234),
    pipe.Fatal("cannot import handler module 'nope'", 1235),
]


def test_every_worker_message_round_trips_with_its_fields_named():
    stream = b"".join(pipe.pack(m) for m in FROM_WORKER)
    assert pipe.FrameReader().feed(stream) == FROM_WORKER


def test_tasks_and_cancels_round_trip_with_raw_json_data_as_a_view():
    raw = msgspec.json.decode(b'{"a": [1, 2.5, null]}', type=msgspec.Raw)
    task = pipe.Task(1, "df:noop", memoryview(raw), "pid", 7, {"trace": "t", "n": [1, 2]}, 123.5,
                     {"dep": b'"R"'}, 64)
    batch = pipe.Tasks([task, pipe.Task(2, "cf:x", pipe.ShmRef(0, 10, 10), "p2", 1, None, 1.0, None, None)])
    decoded = pipe.decode_one(pipe.pack(batch)[4:])
    assert decoded.tasks[0].data == b'{"a": [1, 2.5, null]}'  # the JSON text, not parsed
    assert decoded.tasks[0].metadata == {"trace": "t", "n": [1, 2]}
    assert decoded.tasks[0].dependencies == {"dep": b'"R"'} and decoded.tasks[0].memory_limit_mb == 64
    assert decoded.tasks[1].data == pipe.ShmRef(0, 10, 10)
    assert pipe.decode_one(pipe.pack(pipe.Cancel([3, 4]))[4:]) == pipe.Cancel([3, 4])


def test_a_frame_has_a_little_endian_length_header():
    frame = pipe.pack(pipe.Skipped(1))
    assert int.from_bytes(frame[:4], "little") == len(frame) - 4 == pipe.header_length(frame[:4])


@pytest.mark.parametrize("seed", range(5))
def test_frame_reader_arbitrary_chunks(seed):
    rng = random.Random(seed)
    stream = b"".join(pipe.pack(m) for m in FROM_WORKER)
    reader = pipe.FrameReader()
    got, pos = [], 0
    while pos < len(stream):
        size = rng.choice([1, 2, 3, 4, 5, 7, 64, 1000, rng.randrange(1, 50_000)])
        got.extend(reader.feed(stream[pos:pos + size]))
        pos += size
    assert got == FROM_WORKER
    assert reader.feed(b"") == []


def test_frame_reader_holds_partial_frames_until_complete():
    one, two = pipe.pack(pipe.Skipped(1)), pipe.pack(pipe.Done(2, b"2", 0.5))
    reader = pipe.FrameReader()
    assert reader.feed(one[:3]) == []  # not even a whole header
    assert reader.feed(one[3:-1]) == []  # header, but the body is one byte short
    assert reader.feed(one[-1:] + two[:5]) == [pipe.Skipped(1)]
    assert reader.feed(bytearray(two[5:])) == [pipe.Done(2, b"2", 0.5)]


def test_nan_duration_survives_and_big_metadata_ints_are_caught_before_the_pipe():
    (done,) = pipe.FrameReader().feed(pipe.pack(pipe.Done(1, b"null", float("nan"))))
    assert math.isnan(done.duration_ms)
    assert pipe.passable({"n": 2**63 - 1, "m": -(2**63)})
    assert not pipe.passable({"n": 2**64}) and not pipe.passable({"deep": [{"n": -(2**70)}]})


def test_a_message_of_another_version_or_kind_is_refused():
    with pytest.raises(msgspec.ValidationError):
        pipe.FrameReader().feed(pipe.pack(pipe.Cancel([1])))  # a front's message, read as a worker's
