"""Handlers that report where and when they ran, for the lane and scheduling tests."""
from __future__ import annotations

import os
import time

import numpy as np
import psutil

from pfnode import handler


def _span(data, ctx, seconds: float) -> dict:
    start = time.time()
    if seconds:
        time.sleep(seconds)
    return {"tag": data.get("tag") if isinstance(data, dict) else data, "start": start,
            "end": time.time(), "pid": os.getpid(), "cpu": psutil.Process().cpu_num(),
            "affinity": sorted(os.sched_getaffinity(0)), "priority": ctx.priority}


@handler("cf", "span")
def cf_span(data, ctx):
    """Sleeps data["s"] seconds; reports start/end, pid, the core it ran on, its affinity."""
    return _span(data, ctx, data.get("s", 0.0))


@handler("df", "span")
def df_span(data, ctx):
    return _span(data, ctx, data.get("s", 0.0))


@handler("ed", "span")
def ed_span(data, ctx):
    return _span(data, ctx, data.get("s", 0.0))


@handler("rm", "alloc")
def rm_alloc(data):
    """Allocates and touches data["mb"] MiB."""
    block = np.ones(int(data["mb"]) * 1024 * 1024 // 8)
    return {"mb": data["mb"], "sum": float(block[:10].sum()), "pid": os.getpid()}


@handler("df", "alloc_capped", memory_limit_mb=64)
def df_alloc_capped(data):
    """A df handler with its own memory cap (64 MiB)."""
    block = np.ones(int(data["mb"]) * 1024 * 1024 // 8)
    return {"mb": data["mb"], "pid": os.getpid(), "touched": float(block[-1])}


@handler("df", "deps")
def with_dependencies(data, ctx):
    """Returns the results of its dependencies, as the handler sees them."""
    return {"dependencies": ctx.dependencies, "data": data}


@handler("co", "gather")
def co_gather(data, ctx):
    """A user co handler: runs on the df lane."""
    return {"pid": os.getpid(), "sum": sum(data)}


@handler("df", "slow_timeout", timeout_ms=300)
def slow_with_default_timeout(data):
    """Declares a 300 ms default deadline; sleeps data seconds."""
    time.sleep(data)
    return data
