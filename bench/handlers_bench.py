"""Bench-only handlers, loaded by bench/run.py with `--handlers pfnode.handlers.examples,bench.handlers_bench`.

A no-op for each lane's own group (df:noop is in handlers/examples.py), so that every lane's
overhead can be measured with the same packet; df:sleep_ms and cf:sleep_ms, which keep a worker
busy without using the CPU (the "ed latency while df is saturated" and the fairness
measurements); df:spin_us, a little real work (the fault-recovery measurement's healthy packet),
df:crash, which kills its worker (the fault-recovery measurement's faulty packet),
df:numpy_5ms, 5 ms of numpy work (bench/dasklane.py: the local pool against a Dask cluster), and
the noisy neighbour's misbehaving packets (bench/neighbours.py): df:hang (sleeps until the node
kills its worker at the packet's deadline), df:segfault, df:raise and rm:over_cap (allocates
past the rm lane's memory cap).

The node's workers run with the repository root as their working directory, so this module
imports as `bench.handlers_bench` (bench/ has an __init__.py).
"""
from __future__ import annotations

import os
import time

from pfnode import handler


@handler("cf", "noop")
def cf_noop(data):
    """Returns its input unchanged, on the cf lane (one pinned worker, one packet at a time)."""
    return data


@handler("ed", "noop")
def ed_noop(data):
    """Returns its input unchanged, on the ed lane (a reserved worker)."""
    return data


@handler("rm", "noop")
def rm_noop(data):
    """Returns its input unchanged, on the rm lane (memory-capped worker)."""
    return data


def _amount(data, key: str) -> float:
    if isinstance(data, bool) or not isinstance(data, (int, float)) or data < 0:
        raise TypeError(f"{key} expects a number >= 0, got {data!r}")
    return data


@handler("df", "sleep_ms")
def df_sleep_ms(data):
    """Sleeps `data` milliseconds (a number >= 0) and returns `data`."""
    time.sleep(_amount(data, "df:sleep_ms") / 1000)
    return data


@handler("cf", "sleep_ms")
def cf_sleep_ms(data):
    """df:sleep_ms on the cf lane (its one pinned worker, strictly one packet at a time)."""
    time.sleep(_amount(data, "cf:sleep_ms") / 1000)
    return data


@handler("df", "spin_us")
def df_spin_us(data):
    """Keeps the CPU busy for `data` microseconds (a number >= 0) and returns `data`: a
    packet whose round trip is not only the network and the pipes."""
    end = time.perf_counter() + _amount(data, "df:spin_us") / 1e6
    while time.perf_counter() < end:
        pass
    return data


@handler("df", "hang")
def df_hang(data):
    """Never returns: sleeps (without using the CPU) until the node kills its worker at the
    packet's deadline (PF408), as a handler stuck on I/O or a lock would."""
    while True:
        time.sleep(3600)


@handler("df", "segfault")
def df_segfault(data):
    """Reads address 0: the worker dies of SIGSEGV; the node must answer PF502 and replace it."""
    import ctypes

    ctypes.string_at(0)


@handler("df", "raise")
def df_raise(data):
    """Raises: the node answers PF500, the worker lives on."""
    raise ValueError(f"df:raise was asked to fail ({data!r})")


@handler("rm", "over_cap")
def rm_over_cap(data):
    """Asks for `data` MiB at once (a number > 0): past the rm lane's address-space cap
    (--rm-memory-limit-mb) the allocation fails and the node answers PF501. The memory is
    never touched (calloc'd pages), so it costs nothing where no cap applies."""
    block = bytearray(int(_amount(data, "rm:over_cap") * (1 << 20)))
    return len(block)


@handler("df", "crash")
def df_crash(data):
    """Ends its worker process at once, with no answer (os._exit): the node must answer the
    packet PF502 and replace the worker."""
    os._exit(3)


NUMPY_MS = 5.0  # df:numpy_5ms's CPU time per packet
_MATRIX: list = []  # its operand, made once per process


def _numpy_for(ms: float, data):
    """`ms` of this thread's CPU time spent in numpy (64 x 64 matrix products), then `data`:
    work that costs the same CPU time on any machine (only the count of products varies)."""
    import numpy as np

    if not _MATRIX:
        _MATRIX.append(np.random.default_rng(0).random((64, 64)))
    a = _MATRIX[0]
    end = time.thread_time() + ms / 1000
    while time.thread_time() < end:
        a @ a
    return data


@handler("df", "numpy_5ms")
def numpy_5ms(data):
    """5 ms of CPU time in numpy, then `data` (bench/dasklane.py, bench/peers.py)."""
    return _numpy_for(NUMPY_MS, data)


@handler("df", "numpy_1ms")
def numpy_1ms(data):
    """1 ms of CPU time in numpy, then `data` (bench/scaling.py's 1 ms tasks)."""
    return _numpy_for(1.0, data)
