"""A worker process: imports the handler modules, then runs packets sent by the front.

Started by the pool as `python -m pfnode.worker CONFIG_JSON`. The channel is a pair
of pipes speaking `pfnode.pipe`: batches of tasks arrive on stdin, answers leave on the
original stdout; fd 1 is then pointed at stderr so that a handler's print() cannot
corrupt the channel.

Tasks in one batch run in order, one at a time; the front relies on this to know
which packet a worker was running when it died.
"""
from __future__ import annotations

import collections
import os
import resource
import select
import sys
import time
import traceback
from typing import Any

import orjson

from . import pipe
from .pipe import Done, Failed, Task


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


def run_task(registry, task: Task, memory_cap: MemoryCap | None = None,
             max_result_bytes: int | None = None) -> Done | Failed:
    """Run one task (its data already out of shared memory) and say how it ended. A result
    larger than `max_result_bytes` is answered PF413, not sent."""
    from ..elements.errors import ElementError
    from ..errors import PayloadError
    from ..core.protocol import ndarray_opted_in
    from ..core.names import Principal
    from ..registry import Context

    no = task.no
    if time.monotonic() >= task.deadline:
        return Failed(no, "PF408", "deadline passed before the packet started", 0.0)
    key = task.key
    spec = registry.get(key)
    if spec is None:  # the front checks keys first; this guards a mismatch between workers
        return Failed(no, "PF001", f"no handler for {key}", 0.0)
    deps = task.dependencies
    deps = {dep: orjson.loads(raw) for dep, raw in deps.items()} if deps else {}
    group, _, element = key.partition(":")
    metadata = task.metadata
    principal = task.principal
    ctx = Context(task.packet_id, group, element, task.priority, metadata, task.deadline, deps,
                  None if principal is None else Principal(principal[0], frozenset(principal[1])),
                  max_result_bytes)
    memory_limit_mb = task.memory_limit_mb if memory_cap is not None else None
    start = time.perf_counter()
    try:
        if memory_limit_mb is not None:
            memory_cap.limit(memory_limit_mb)
        try:
            try:  # the front forwarded the data's JSON text unparsed
                data = orjson.loads(task.data)
            except orjson.JSONDecodeError as exc:  # the front checked it: a mismatch, not a user error
                return Failed(no, "PF002", f"data is not valid JSON: {exc}", _ms_since(start))
            nd = None
            if ndarray_opted_in(metadata):
                from .. import ndarray as nd  # imported (with numpy) only by packets that opt in
                try:
                    data = nd.decode_tree(data)
                except PayloadError as exc:
                    return Failed(no, "PF002", str(exc), _ms_since(start))
            body = _encode(key, spec(data, ctx), nd)  # a bytes, or the reason it cannot be sent
            if type(body) is not bytes:
                return Failed(no, "PF500", body, _ms_since(start))
        finally:
            if memory_limit_mb is not None:
                memory_cap.lift(memory_limit_mb)
    except MemoryError:
        limit = f" of {memory_limit_mb} MiB" if memory_limit_mb is not None else ""
        return Failed(no, "PF501", f"{key} exceeded its memory limit{limit}", _ms_since(start))
    except ElementError as exc:  # bad input, named by the element (pfnode/elements/errors.py)
        return Failed(no, "PF002", str(exc), _ms_since(start))
    except Exception as exc:
        return Failed(no, "PF500", f"{type(exc).__name__}: {exc}", _ms_since(start), handler_traceback(exc))
    if max_result_bytes is not None and len(body) > max_result_bytes:
        return Failed(no, "PF413", f"{key}'s result is {len(body)} bytes of JSON, over the node's result limit "
                                   f"of {max_result_bytes} (its max_frame_bytes)", _ms_since(start))
    return Done(no, body, _ms_since(start))


MAX_TRACEBACK_CHARS = 8192  # the end of a longer one: where it raised


def handler_traceback(exc: BaseException) -> str:
    """The traceback of a handler's exception from the handler down (run_task's own frame
    left out), at most MAX_TRACEBACK_CHARS of it."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next))
    return text if len(text) <= MAX_TRACEBACK_CHARS else "…" + text[-MAX_TRACEBACK_CHARS:]


def _encode(key: str, value: Any, nd: Any) -> bytes | str:
    """A handler's value as JSON (its arrays as $ndarray objects when the packet opted in),
    or why it cannot be (a str). orjson's error is a TypeError: encoded apart from the call,
    so that a handler's own TypeError stays as raised."""
    from ..errors import PayloadError

    try:
        if nd is not None:
            value = nd.encode_tree(value)
        return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        return f"{key} returned a value that is not JSON-serialisable: {exc}"
    except PayloadError as exc:  # from nd.encode_tree: e.g. an object-dtype array
        return f"{key} returned a value that cannot be encoded as ndarrays: {exc}"


POLL_S = 0.001  # how often a busy worker looks for new messages (cancels, more tasks)


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


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


def _read_message(fd: int):
    header = _read_exact(fd, 4)
    if header is None:
        return None
    body = _read_exact(fd, pipe.header_length(header))
    return None if body is None else pipe.decode_one(body)


def main(argv: list[str]) -> int:
    """The worker process: `python -m pfnode.pool.worker SETTINGS` (a `pipe.WorkerSettings`
    as JSON). Starts, says Hello, then runs its tasks in order until the front closes the
    channel or the worker must retire."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front owns shutdown; it closes our stdin
    _die_with_parent()
    out_fd = os.dup(1)
    os.dup2(2, 1)  # print() in handlers goes to stderr, not into the channel
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)

    def send(message) -> None:
        _write_all(out_fd, pipe.pack(message))

    try:
        settings = _start(argv)
    except Exception as exc:
        send(pipe.Fatal(str(exc), os.getpid()))
        return 2
    return _serve(settings, 0, send)


def _start(argv: list[str]) -> pipe.WorkerSettings:
    """Read the settings and act on them: pinning, niceness, the handler modules."""
    from ..registry import load_handler_modules

    if len(argv) > 1:
        version = orjson.loads(argv[1]).get("version", pipe.VERSION)
        if version != pipe.VERSION:
            raise RuntimeError(f"the front speaks pipe version {version}, this worker {pipe.VERSION}")
        settings = pipe.WorkerSettings.decode(argv[1])
    else:
        settings = pipe.WorkerSettings(lane="df", slot=0)
    if settings.cpu is not None:
        os.sched_setaffinity(0, {settings.cpu})
    if settings.nice:
        os.nice(settings.nice)  # a batch lane: the front and the ed lane go first
    load_handler_modules(list(settings.handler_modules))
    if settings.buffer_table:
        from .buffers import configure

        configure(settings.buffer_table)  # rm:alloc's buffers, for ctx.buffer(name)
    return settings


def _serve(settings: pipe.WorkerSettings, in_fd: int, send) -> int:
    """Say Hello, then run tasks strictly in order (see the module's docstring)."""
    from ..registry import default_registry

    pid = os.getpid()
    memory_cap = MemoryCap()
    inbound = outbound = None
    threshold = settings.shm_threshold_bytes
    if settings.arenas:
        from .arena import Arena

        inbound, outbound = (Arena.attach(path) for path in settings.arenas)
    send(pipe.Hello(pipe.VERSION, pid, default_registry.describe(), sorted(os.sched_getaffinity(0))))
    inbox: collections.deque[Task] = collections.deque()
    cancelled: set[int] = set()
    open_channel = True
    ShmRef = pipe.ShmRef
    clock = time.monotonic
    polled = clock()
    while True:
        # Block for input only when idle; otherwise take what has arrived, looking at most
        # every POLL_S (a syscall per packet costs more than a no-op handler), so a cancel
        # notice still reaches packets that were handed over but have not started.
        if open_channel and (not inbox or clock() - polled >= POLL_S):
            open_channel = _take_messages(in_fd, inbox, cancelled)
            polled = clock()
        if not inbox:
            return 0
        task = inbox.popleft()
        if type(task.data) is ShmRef:
            # copied out (and its space freed) before anything else, skipped or not
            task.data = inbound.take(task.data)
        if task.no in cancelled:
            cancelled.discard(task.no)
            send(pipe.Skipped(task.no))
            continue
        if task.memory_limit_mb is None:
            task.memory_limit_mb = settings.memory_limit_mb
        answer = run_task(default_registry, task, memory_cap, settings.max_result_bytes)
        if outbound is not None and type(answer) is Done and len(answer.body) > threshold:
            ref = outbound.put(answer.body)
            if ref is not None:
                answer.body = ref
        send(answer)
        if type(answer) is Failed and answer.code == "PF501":
            # A worker that hit its cap may be left fragmented or half-initialised:
            # replace it rather than trust it with the next packet.
            send(pipe.Retire("memory limit exceeded", pid))
            return 0


def _take_messages(in_fd: int, inbox: collections.deque, cancelled: set[int]) -> bool:
    """Read what the front sent (blocking only while `inbox` is empty); False once the
    front has closed the channel."""
    while not inbox or _readable(in_fd):
        message = _read_message(in_fd)
        if message is None:
            return False  # the front closed the channel: finish what we hold
        if type(message) is pipe.Tasks:
            inbox.extend(message.tasks)
        else:
            cancelled.update(message.nos)
    return True


def run_main(argv: list[str]) -> None:
    """A worker process's entry (pool/workerproc.py's WORKER_ENTRY, and `python -m` of this module
    where it is not compiled): main, its traceback on stderr should it raise."""
    try:
        sys.exit(main(argv))
    except Exception:
        traceback.print_exc()
        raise


if __name__ == "__main__":
    run_main(sys.argv)
