"""Handlers that misbehave on purpose, for the end-to-end tests."""
from __future__ import annotations

import ctypes
import os
import signal
import time

from pfnode import handler


@handler("df", "sleep")
def sleep(data):
    """Sleep `data` seconds (or data["s"]), then return what it was given."""
    seconds = data["s"] if isinstance(data, dict) else data
    time.sleep(seconds)
    return data


@handler("df", "hang")
def hang(data):
    while True:  # a hung CPU loop that no signal short of SIGKILL stops in time
        pass


@handler("df", "exit")
def exit_worker(data):
    os._exit(int(data or 3))


@handler("df", "segfault")
def segfault(data):
    ctypes.string_at(0)


@handler("df", "sigkill")
def sigkill(data):
    os.kill(os.getpid(), signal.SIGKILL)


@handler("df", "boom")
def boom(data):
    raise ValueError(f"boom: {data}")


@handler("df", "chatty")
def chatty(data):
    """Prints to stdout: must not corrupt the worker's result channel."""
    print("chatty handler says hello", data)
    return data


@handler("df", "unserialisable")
def unserialisable(data):
    return object()


@handler("df", "ctx")
def with_context(data, ctx):
    return {"packet_id": ctx.packet_id, "key": f"{ctx.group}:{ctx.element}",
            "priority": ctx.priority, "metadata": ctx.metadata,
            "remaining_ms_positive": ctx.remaining_ms() > 0, "pid": os.getpid()}


@handler("df", "pid")
def pid(data):
    return os.getpid()


# -- added for tests/test_e2e.py and tests/test_faults.py --------------------------------

@handler("df", "touch")
def touch(data):
    """Create the file named by `data` (evidence that this packet really ran); return its path."""
    with open(data, "a") as f:
        f.write(f"{os.getpid()}\n")
    return data


@handler("df", "stamp")
def stamp(data):
    """Return `data` with the worker's monotonic clock in ns: shows the order packets ran in."""
    return {"data": data, "ns": time.monotonic_ns()}


@handler("df", "chatty_fd")
def chatty_fd(data):
    """Writes straight to file descriptor 1 (as C extensions do), plus a large print()."""
    os.write(1, b"raw bytes on fd 1 \x00\x01\x02 that look like nothing\n")
    print("x" * 100_000)
    return data


@handler("df", "ctx_deps")
def ctx_deps(data, ctx):
    """The results of the packet's dependencies, as its handler sees them."""
    return ctx.dependencies


@handler("df", "inc")
def inc(data):
    return data + 1


@handler("df", "double")
def double(data):
    return data * 2


@handler("df", "inc_all")
def inc_all(data):
    """A vectorised step for df:consume with chunk: a list in, a list out."""
    return [x + 1 for x in data]


# -- added for tests/test_elements_stateful.py --------------------------------------------

@handler("df", "span")
def span(data):
    """Sleep `data` seconds; when it ran (monotonic ns) and where: shows packets' overlap."""
    start = time.monotonic_ns()
    time.sleep(data)
    return {"start": start, "end": time.monotonic_ns(), "pid": os.getpid()}


@handler("df", "buf_fill")
def buf_fill(data, ctx):
    """Fill the node's buffer `data["name"]` with `data["value"]` through ctx.buffer."""
    array = ctx.buffer(data["name"])
    array[...] = data["value"]
    return {"pid": os.getpid(), "shape": list(array.shape), "dtype": array.dtype.str}


@handler("df", "buf_sum")
def buf_sum(data, ctx):
    """The sum of the node's buffer `data` as this worker sees it, and the worker's pid."""
    return {"pid": os.getpid(), "sum": float(ctx.buffer(data).sum())}


@handler("df", "blob")
def blob(data):
    """A string of `data` x's: a result of a chosen size."""
    return "x" * data


@handler("mc", "pid")
def mc_pid(data):
    """A user's mc handler (admins only): the worker's pid."""
    return os.getpid()


# -- added for tests/test_client.py -------------------------------------------------------

@handler("df", "logged_run")
def logged_run(data, ctx):
    """Append "start <packet id>" to the file data["file"], sleep data["s"] seconds, append
    "end <packet id>": when each packet started and ended, and how often it ran."""
    for mark in ("start", "end"):
        with open(data["file"], "a") as f:
            f.write(f"{mark} {ctx.packet_id}\n")
        if mark == "start":
            time.sleep(data.get("s", 0))
    return {"id": ctx.packet_id}
