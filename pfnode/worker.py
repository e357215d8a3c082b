"""A worker process: imports the handler modules, then runs packets sent by the front.

Started by the pool as `python -m pfnode.worker CONFIG_JSON`. The channel is a pair
of pipes: batches of tasks arrive on stdin, results leave on the original stdout;
fd 1 is then pointed at stderr so that a handler's print() cannot corrupt the channel.
Each frame on either pipe is a 4-byte little-endian length and a pickle.

Tasks in one batch run in order, one at a time; the front relies on this to know
which packet a worker was running when it died.
"""
from __future__ import annotations

import collections
import os
import pickle
import resource
import select
import struct
import sys
import time
import traceback

import orjson

_HEADER = struct.Struct("<I")

# The second item of every frame a worker sends says what it is.
OK = 0  # (task_no, OK, result_json, duration_ms)
FAILED = 1  # (task_no, FAILED, (code, message), duration_ms)
HELLO = 2  # (0, HELLO, {key: options}, pid, [cpus]): ready
FATAL = 3  # (0, FATAL, message, pid): the worker cannot start
RETIRE = 4  # (0, RETIRE, reason, pid): the worker exits now; nothing after its last result started
SKIPPED = 5  # (task_no, SKIPPED, None, 0.0): cancelled by the front before it started

# The first item of every frame the front sends says what it is.
TASKS = 0  # (TASKS, [task, ...])
CANCEL = 1  # (CANCEL, [task_no, ...]): drop these if they have not started


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


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


class MemoryCap:
    """Caps the address space a handler may add to this worker (RLIMIT_AS, soft limit),
    measured from the worker's size after start-up, and lifts the cap afterwards."""

    def __init__(self) -> None:
        self.baseline = _address_space_bytes()
        self.soft, self.hard = resource.getrlimit(resource.RLIMIT_AS)

    def limit(self, limit_mb: int | None) -> None:
        if limit_mb is not None:
            cap = self.baseline + limit_mb * 1024 * 1024
            if self.hard != resource.RLIM_INFINITY:
                cap = min(cap, self.hard)
            resource.setrlimit(resource.RLIMIT_AS, (cap, self.hard))

    def lift(self, limit_mb: int | None) -> None:
        if limit_mb is not None:
            resource.setrlimit(resource.RLIMIT_AS, (self.soft, self.hard))


def run_task(registry, task, memory_cap: MemoryCap | None = None) -> tuple:
    from .errors import PayloadError
    from .protocol import RawJSON, ndarray_opted_in
    from .registry import Context

    (task_no, key, data, packet_id, group, element, priority, metadata, deadline,
     dependencies, memory_limit_mb) = task
    if time.monotonic() >= deadline:
        return (task_no, FAILED, ("PF408", "deadline passed before the packet started"), 0.0)
    spec = registry.get(key)
    if spec is None:  # the front checks keys first; this guards a mismatch between workers
        return (task_no, FAILED, ("PF001", f"no handler for {key}"), 0.0)
    deps = {dep: orjson.loads(raw) for dep, raw in dependencies.items()} if dependencies else {}
    ctx = Context(packet_id, group, element, priority, metadata, deadline, deps)
    if memory_cap is None:
        memory_limit_mb = None
    start = time.perf_counter()
    try:
        if memory_limit_mb is not None:
            memory_cap.limit(memory_limit_mb)
        try:
            if type(data) is RawJSON:  # the front forwarded the data's JSON text unparsed
                data = orjson.loads(memoryview(data))  # orjson reads it through the buffer protocol
            nd = None
            if ndarray_opted_in(metadata):
                from . import ndarray as nd  # imported (with numpy) only by packets that opt in
                try:
                    data = nd.decode_tree(data)
                except PayloadError as exc:
                    return (task_no, FAILED, ("PF002", str(exc)), _ms_since(start))
            value = spec(data, ctx)
            try:  # orjson's error is a TypeError: encode apart so a handler's TypeError stays as raised
                if nd is not None:
                    value = nd.encode_tree(value)
                body = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
            except orjson.JSONEncodeError as exc:
                return (task_no, FAILED, ("PF500", f"{key} returned a value that is not "
                                                   f"JSON-serialisable: {exc}"), _ms_since(start))
            except PayloadError as exc:  # from nd.encode_tree: e.g. an object-dtype array
                return (task_no, FAILED, ("PF500", f"{key} returned a value that cannot be "
                                                   f"encoded as ndarrays: {exc}"), _ms_since(start))
        finally:
            if memory_limit_mb is not None:
                memory_cap.lift(memory_limit_mb)
    except MemoryError:
        limit = f" of {memory_limit_mb} MiB" if memory_limit_mb is not None else ""
        return (task_no, FAILED, ("PF501", f"{key} exceeded its memory limit{limit}"), _ms_since(start))
    except Exception as exc:
        return (task_no, FAILED, ("PF500", f"{type(exc).__name__}: {exc}"), _ms_since(start))
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
        if config.get("cpu") is not None:
            os.sched_setaffinity(0, {config["cpu"]})
        load_handler_modules(config.get("handler_modules", []))
    except Exception as exc:
        _write_all(out_fd, pack((0, FATAL, str(exc), os.getpid())))
        return 2
    memory_cap = MemoryCap()
    lane_limit_mb = config.get("memory_limit_mb")
    inbound = outbound = None
    if config.get("arenas"):
        from .arena import Arena, ShmRef
        from .protocol import RawJSON

        inbound, outbound = (Arena.attach(path) for path in config["arenas"])
        threshold = config.get("shm_threshold_bytes", 0)
    _write_all(out_fd, pack((0, HELLO, default_registry.describe(), os.getpid(),
                             sorted(os.sched_getaffinity(0)))))

    inbox: collections.deque = collections.deque()
    cancelled: set[int] = set()
    open_channel = True
    while True:
        # Block for input only when idle; otherwise just take what has arrived, so a
        # cancel notice reaches packets that were handed over but have not started.
        while open_channel and (not inbox or select.select([in_fd], [], [], 0)[0]):
            frame = _read_frame(in_fd)
            if frame is None:
                open_channel = False  # the front closed the channel: finish what we hold
                break
            kind, items = frame
            if kind == TASKS:
                inbox.extend(items)
            elif kind == CANCEL:
                cancelled.update(items)
        if not inbox:
            return 0
        task = inbox.popleft()
        if inbound is not None and type(task[2]) is ShmRef:
            # copied out (and its space freed) before anything else, skipped or not
            task = task[:2] + (RawJSON(inbound.take(task[2])),) + task[3:]
        if task[0] in cancelled:
            cancelled.discard(task[0])
            _write_all(out_fd, pack((task[0], SKIPPED, None, 0.0)))
            continue
        if task[10] is None and lane_limit_mb is not None:
            task = task[:10] + (lane_limit_mb,)
        result = run_task(default_registry, task, memory_cap)
        if outbound is not None and result[1] == OK and len(result[2]) > threshold:
            ref = outbound.put(result[2])
            if ref is not None:
                result = (result[0], OK, ref, result[3])
        _write_all(out_fd, pack(result))
        if result[1] == FAILED and result[2][0] == "PF501":
            # A worker that hit its cap may be left fragmented or half-initialised:
            # replace it rather than trust it with the next packet.
            _write_all(out_fd, pack((0, RETIRE, "memory limit exceeded", os.getpid())))
            return 0


def _read_frame(fd: int):
    header = _read_exact(fd, 4)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    body = _read_exact(fd, length)
    return None if body is None else pickle.loads(body)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Exception:
        traceback.print_exc()
        raise
