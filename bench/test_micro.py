"""pytest-benchmark micro-benchmarks of the pieces a packet goes through, in one process.

    .venv/bin/python -m pytest bench/test_micro.py --benchmark-only -q     # make bench runs this

Not part of `make test`: plain `pytest` collects tests/ only (pyproject's testpaths), and
`--benchmark-only` skips nothing here because every test is a benchmark. See bench/README.md.

"1 MiB" is the same payload as bench/run.py's largest: 131 072 float64 values (1 MiB of array),
as a JSON list of floats (a 2.6 MB submit frame) or as one $ndarray object (a 1.4 MB frame).
"""
from __future__ import annotations

import asyncio
import itertools

import numpy as np
import orjson
import pytest

from pfnode.core import protocol
from pfnode.ndarray import decode_tree, encode_array
from pfnode.transports.base import PeerLink
from pfnode.node.node import Node
from pfnode.core.protocol import Message, RawJSON
from pfnode.settings import Settings

# The same small packet data as bench/run.py (about 100 bytes of JSON).
SMALL_DATA = {"sensor": "bench-01", "ts": 1718000000123, "values": [20.5, 21.25, 19.75, 22.0],
              "tags": ["lab", "north"], "ok": True}
SMALL_JSON = orjson.dumps(SMALL_DATA)
LARGE_VALUES = np.random.default_rng(1 << 20).standard_normal((1 << 20) // 8)  # 1 MiB of float64
LARGE_TAGGED = encode_array(LARGE_VALUES)
LARGE_JSON = {"json": orjson.dumps(LARGE_VALUES.tolist()), "ndarray": orjson.dumps(LARGE_TAGGED)}


def submit_frame(data_json: bytes, ndarray: bool = False, seq: int = 1) -> bytes:
    meta = b',"metadata":{"ndarray":true}' if ndarray else b""
    return b"".join((b'{"type":"submit","seq":%d,"payload":{"version":"1.0","id":"micro-%d",'
                     b'"group":"df","element":"noop","priority":5%s,"data":' % (seq, seq, meta),
                     data_json, b"}}"))


SMALL_FRAME = submit_frame(SMALL_JSON)
LARGE_FRAMES = {enc: submit_frame(LARGE_JSON[enc], enc == "ndarray") for enc in LARGE_JSON}


def _check_submit(msg, raw: bool, data_json: bytes) -> None:
    assert isinstance(msg, Message) and msg.type == "submit", msg
    if raw:
        assert type(msg.payload.data) is RawJSON and bytes(msg.payload.data) == data_json
    else:
        assert msg.payload.data == orjson.loads(data_json)


# ---------------------------------------------------------------------------- protocol.decode

@pytest.mark.benchmark(group="protocol.decode: small submit (~230 B frame)")
@pytest.mark.parametrize("mode", ["full", "raw_data"])
def test_decode_small(benchmark, mode):
    raw = mode == "raw_data"
    msg = benchmark(protocol.decode, SMALL_FRAME, raw_data=raw)
    _check_submit(msg, raw, SMALL_JSON)


@pytest.mark.benchmark(group="protocol.decode: 1 MiB submit (131 072 float64)")
@pytest.mark.parametrize("mode", ["full", "raw_data"])
@pytest.mark.parametrize("encoding", ["json", "ndarray"])
def test_decode_1mib(benchmark, encoding, mode):
    """full: orjson builds every value (131 072 floats, or one 1.4 MB string); raw_data: the
    front's zero-parse path, msgspec checks the data is well-formed JSON and keeps its bytes."""
    raw = mode == "raw_data"
    msg = benchmark(protocol.decode, LARGE_FRAMES[encoding], raw_data=raw)
    _check_submit(msg, raw, LARGE_JSON[encoding])


# ---------------------------------------------------------------------------- encode_success_raw

@pytest.mark.benchmark(group="protocol.encode_success_raw")
@pytest.mark.parametrize("size", ["small", "1MiB-ndarray"])
def test_encode_success_raw(benchmark, size):
    """The front splices a worker's result JSON into the result frame without parsing it."""
    data_json = SMALL_JSON if size == "small" else LARGE_JSON["ndarray"]
    frame = benchmark(protocol.encode_success_raw, 12345, "micro-12345", data_json, 0.123)
    assert orjson.loads(frame)["payload"]["data"] == orjson.loads(data_json)


# ---------------------------------------------------------------------------- ndarray

@pytest.mark.benchmark(group="ndarray: 1 MiB float64")
def test_ndarray_encode_1mib(benchmark):
    tagged = benchmark(encode_array, LARGE_VALUES)
    assert tagged == LARGE_TAGGED


@pytest.mark.benchmark(group="ndarray: 1 MiB float64")
def test_ndarray_decode_1mib(benchmark):
    """decode_tree of the parsed tagged object: base64 decode and one copy into the array."""
    tagged = orjson.loads(LARGE_JSON["ndarray"])
    array = benchmark(decode_tree, tagged)
    assert array.dtype == LARGE_VALUES.dtype and np.array_equal(array, LARGE_VALUES)


# ---------------------------------------------------------------------------- the worker queue

class _AnswerLink(PeerLink):
    """A link with no socket: the frame the node sends resolves the waiting future."""

    def __init__(self, node: Node) -> None:
        super().__init__(node, "micro")
        self.waiting: asyncio.Future | None = None

    def _write(self, frame: bytes) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(frame)

    def _pause(self) -> None:
        pass

    def _resume(self) -> None:
        pass

    def close(self, code: int, reason: str) -> None:
        self.node.on_close(self, code)

    async def flush(self, timeout_s: float) -> None:
        pass


@pytest.fixture(scope="module")
def node_loop():
    """A real Node (df 1 worker, no ed or rm workers; cf always has its one) in its own event
    loop, with a socket-less link, closed at the end of the module."""
    try:
        import uvloop
    except ImportError:
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()

    async def start() -> tuple[Node, _AnswerLink]:
        node = Node(Settings(workers=1, ed_workers=0, rm_workers=0, handler_modules=("pfnode.handlers.examples",)))
        await node.start()
        link = _AnswerLink(node)
        node.on_open(link)
        return node, link

    node, link = loop.run_until_complete(start())
    try:
        yield loop, node, link
    finally:
        loop.run_until_complete(node.shutdown())
        loop.close()


@pytest.mark.benchmark(group="node: one df:noop round trip through a worker, no network")
def test_node_round_trip(benchmark, node_loop):
    """Hand the node one df:noop submit frame and await its result frame: decode, admit,
    dispatch, the pipe to the worker, its parse, handler and encode, the pipe back, the
    answer path. No network."""
    loop, node, link = node_loop
    numbers = itertools.count(1)

    async def round_trip():
        link.waiting = loop.create_future()
        seq = next(numbers)
        node.on_message(link, b'{"type":"submit","seq":%d,"payload":{"version":"1.0","id":"micro-%d",'
                              b'"group":"df","element":"noop","data":%s}}' % (seq, seq, SMALL_JSON))
        return await link.waiting

    frame = benchmark(lambda: loop.run_until_complete(round_trip()))
    payload = orjson.loads(frame)["payload"]
    assert payload["status"] == "success" and payload["data"] == SMALL_DATA, payload
