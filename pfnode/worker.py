"""A worker process: imports the handler modules, then runs packets sent by the front.

Started by the pool as `python -m pfnode.worker CONFIG_JSON`. The channel is a pair
of pipes: batches of tasks arrive on stdin, results leave on the original stdout;
fd 1 is then pointed at stderr so that a handler's print() cannot corrupt the channel.
Each frame on either pipe is a 4-byte little-endian length and a pickle.

Tasks in one batch run in order, one at a time; the front relies on this to know
which packet a worker was running when it died.
"""
from __future__ import annotations

import os
import pickle
import struct
import sys
import time
import traceback

import orjson

_HEADER = struct.Struct("<I")

# status codes in result tuples
OK = 0
FAILED = 1
HELLO = 2  # (0, HELLO, [keys], pid): ready
FATAL = 3  # (0, FATAL, message, pid): the worker cannot start


def pack(obj) -> bytes:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into unpickled frames; feed() returns the complete ones."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        size = len(buf)
        while size - pos >= 4:
            (length,) = _HEADER.unpack_from(buf, pos)
            if size - pos - 4 < length:
                break
            out.append(pickle.loads(memoryview(buf)[pos + 4:pos + 4 + length]))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return out


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def run_task(registry, task) -> tuple:
    from .registry import Context

    task_no, key, data, packet_id, group, element, priority, metadata, deadline = task
    if time.monotonic() >= deadline:
        return (task_no, FAILED, ("PF408", "deadline passed before the packet started"), 0.0)
    spec = registry.get(key)
    if spec is None:  # the front checks keys first; this guards a mismatch between workers
        return (task_no, FAILED, ("PF001", f"no handler for {key}"), 0.0)
    ctx = Context(packet_id, group, element, priority, metadata, deadline)
    start = time.perf_counter()
    try:
        value = spec(data, ctx)
    except MemoryError:
        return (task_no, FAILED, ("PF501", f"{key} ran out of memory"), _ms_since(start))
    except Exception as exc:
        return (task_no, FAILED, ("PF500", f"{type(exc).__name__}: {exc}"), _ms_since(start))
    try:  # orjson's error is a TypeError: encode apart so a handler's TypeError stays PF500 as raised
        body = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        return (task_no, FAILED, ("PF500", f"{key} returned a value that is not JSON-serialisable: {exc}"),
                _ms_since(start))
    return (task_no, OK, body, _ms_since(start))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the front dies, so a handler stuck in a
    loop can never outlive the node (EOF on stdin covers every other case)."""
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    import signal

    config = orjson.loads(argv[1]) if len(argv) > 1 else {}
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front owns shutdown; it closes our stdin
    _die_with_parent()
    out_fd = os.dup(1)
    os.dup2(2, 1)  # print() in handlers goes to stderr, not into the channel
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    in_fd = 0

    from .registry import default_registry, load_handler_modules

    try:
        load_handler_modules(config.get("handler_modules", []))
    except Exception as exc:
        _write_all(out_fd, pack((0, FATAL, str(exc), os.getpid())))
        return 2
    _write_all(out_fd, pack((0, HELLO, default_registry.keys(), os.getpid())))

    while True:
        header = _read_exact(in_fd, 4)
        if header is None:
            return 0  # the front closed the channel: a clean stop
        (length,) = _HEADER.unpack(header)
        body = _read_exact(in_fd, length)
        if body is None:
            return 0
        for task in pickle.loads(body):
            _write_all(out_fd, pack(run_task(default_registry, task)))


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception:
        traceback.print_exc()
        raise
