"""Bench-only handlers, loaded by bench/run.py with `--handlers pfnode.handlers.examples,bench.handlers_bench`.

A no-op for each lane's own group (df:noop is in handlers/examples.py), so that every lane's
overhead can be measured with the same packet, and df:sleep_ms, which keeps a df worker busy
without using the CPU (for the "ed latency while df is saturated" measurement).

The node's workers run with the repository root as their working directory, so this module
imports as `bench.handlers_bench` (bench/ has an __init__.py).
"""
from __future__ import annotations

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


@handler("df", "sleep_ms")
def df_sleep_ms(data):
    """Sleeps `data` milliseconds (a number >= 0) and returns `data`."""
    if isinstance(data, bool) or not isinstance(data, (int, float)) or data < 0:
        raise TypeError(f"df:sleep_ms expects a number of milliseconds >= 0, got {data!r}")
    time.sleep(data / 1000)
    return data
