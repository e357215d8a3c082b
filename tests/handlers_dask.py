"""Handlers for tests/test_dask.py: where a packet ran, when, and one a Dask worker lacks."""
from __future__ import annotations

import multiprocessing
import os
import time

from pfnode import handler


def _dask_worker() -> str | None:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


@handler("df", "where")
def where(data):
    """Which process ran the packet, and which Dask worker (None: the node's own pool)."""
    return {"pid": os.getpid(), "dask_worker": _dask_worker(), "data": data}


@handler("cf", "where")
def cf_where(data):
    return {"pid": os.getpid(), "dask_worker": _dask_worker()}


@handler("df", "run_for")
def run_for(data):
    """Runs `s` seconds; says when it started and ended (wall clock), in which process.
    With "pidfile", writes its pid there first (so a test can kill its worker mid-packet)."""
    start = time.time()
    if data.get("pidfile"):
        with open(data["pidfile"], "a") as f:
            f.write(f"{os.getpid()}\n")
    time.sleep(data.get("s", 0))
    return {"tag": data.get("tag"), "start": start, "end": time.time(), "pid": os.getpid(),
            "dask_worker": _dask_worker()}


if "Dask" not in multiprocessing.current_process().name:  # Dask's worker processes lack this one
    @handler("df", "front_only")
    def front_only(data):
        return data
