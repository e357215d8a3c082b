"""The pipe between the front and a worker: named, versioned messages, both ways.

Both sides import this module. Each message is a 4-byte little-endian length and a
msgpack body (msgspec): a struct encoded as an array whose first item is its tag, so
the wire stays compact while the code names every field. `VERSION` goes into the
worker's start-up configuration and comes back in its `Hello`; the front refuses a
worker that speaks another version.

front -> worker: `Tasks` (a batch of `Task`), `Cancel` (drop these if not started).
worker -> front: `Hello` (ready, with its handlers), `Fatal` (cannot start), `Done`,
`Failed`, `Skipped` (one per task, in the order the tasks were sent), `Retire` (it exits
now; nothing after its last answer has started).

A payload too large for the pipe travels through shared memory (pfnode/pool/arena.py): the
message then carries a `ShmRef` where the bytes would be.
"""
from __future__ import annotations

import struct
from typing import Union

import msgspec

VERSION = 3
_HEADER = struct.Struct("<I")


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What a worker process is told when it starts (`python -m pfnode.pool.worker JSON`, or
    the fork server's `Spawn`): the documented subset of the node's settings a worker acts
    on, and its place in the pool. docs/ARCHITECTURE.md, "The pool", lists the fields."""

    version: int = VERSION  # the pipe's; a worker of another version refuses to start
    lane: str
    slot: int
    handler_modules: tuple[str, ...] = ()  # imported in this order (the standard elements first)
    cpu: Union[int, None] = None  # pinned to this core (the cf lane)
    nice: int = 0  # added to the node's niceness (the batch lanes)
    memory_limit_mb: Union[int, None] = None  # the lane's default cap for its handlers
    arenas: Union[tuple[str, str], None] = None  # its two shared-memory rings: in, out
    shm_threshold_bytes: int = 0  # results larger than this go through the out ring
    buffer_table: Union[str, None] = None  # rm:alloc's buffers, for ctx.buffer(name)
    max_result_bytes: Union[int, None] = None  # a larger result is answered PF413 (the node's max_frame_bytes)

    def encode(self) -> bytes:
        return msgspec.json.encode(self)

    @classmethod
    def decode(cls, text: Union[str, bytes]) -> "WorkerSettings":
        return msgspec.json.decode(text, type=cls)


class ShmRef(msgspec.Struct, array_like=True, frozen=True, tag=99):
    """Where a payload lies in an arena: `length` bytes at `offset`; consuming it moves the
    arena's consumed mark to `end`."""

    offset: int
    length: int
    end: int


class Task(msgspec.Struct, array_like=True, tag=1):
    no: int  # the task's number on this worker's pipe; answers carry it
    key: str  # "group:element"
    data: Union[bytes, ShmRef]  # the packet's data as JSON text, not parsed by the front
    packet_id: str
    priority: int
    metadata: Union[dict, None]
    deadline: float  # time.monotonic() after which it must not start
    dependencies: Union[dict[str, bytes], None]  # dependency id -> its result as JSON
    memory_limit_mb: Union[int, None]
    # whose names it uses (core/names.py), with tokens: (token name, its namespaces); None without
    principal: Union[tuple[str, tuple[str, ...]], None] = None


class Tasks(msgspec.Struct, array_like=True, tag=2):
    tasks: list[Task]


class Cancel(msgspec.Struct, array_like=True, tag=3):
    nos: list[int]


class Hello(msgspec.Struct, array_like=True, tag=10):
    version: int
    pid: int
    handlers: dict[str, dict]  # key -> options (lane, timeout_ms, memory_limit_mb)
    cpus: list[int]


class Fatal(msgspec.Struct, array_like=True, tag=11):
    message: str
    pid: int


class Done(msgspec.Struct, array_like=True, tag=12):
    no: int
    body: Union[bytes, ShmRef]  # the handler's return value as JSON
    duration_ms: float


class Failed(msgspec.Struct, array_like=True, tag=13):
    no: int
    code: str
    message: str
    duration_ms: float
    traceback: str | None = None  # where a handler raised (PF500), for the node's log


class Skipped(msgspec.Struct, array_like=True, tag=14):
    no: int  # cancelled by the front before it started


class Retire(msgspec.Struct, array_like=True, tag=15):
    reason: str
    pid: int


ToWorker = Union[Tasks, Cancel]
FromWorker = Union[Hello, Fatal, Done, Failed, Skipped, Retire]
ANSWERS = (Done, Failed, Skipped)

_encoder = msgspec.msgpack.Encoder()


def pack(message: msgspec.Struct) -> bytes:
    """One framed message."""
    body = _encoder.encode(message)
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into messages of the given union; `feed` returns the complete ones."""

    def __init__(self, kind=FromWorker) -> None:
        self._buf = bytearray()
        self._decoder = msgspec.msgpack.Decoder(kind)

    def feed(self, data: bytes) -> list:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        size = len(buf)
        decode = self._decoder.decode
        while size - pos >= 4:
            (length,) = _HEADER.unpack_from(buf, pos)
            if size - pos - 4 < length:
                break
            out.append(decode(memoryview(buf)[pos + 4:pos + 4 + length]))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return out


def passable(value) -> bool:
    """Whether `value` (a packet's metadata) can cross the pipe: msgpack holds integers
    of at most 64 bits, JSON any."""
    try:
        _encoder.encode(value)
    except (OverflowError, TypeError, ValueError, msgspec.EncodeError):
        return False
    return True


def decode_one(body: bytes, kind=ToWorker):
    return msgspec.msgpack.decode(body, type=kind)


def header_length(header: bytes) -> int:
    return _HEADER.unpack(header)[0]
