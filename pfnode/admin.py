"""The node's own mc (meta-compute) handlers, run in the front process.

- `mc:scale`  {"lane": "df", "workers": N} sets one lane's size;
              {"workers": "auto"} (optionally with "lane") applies the capacity recommendation.
              Replies {"before": {...}, "after": {...}, "capacity": {...}, "recommended": {...}}.
              Packets in flight are never lost: growing waits for the new workers, shrinking
              lets retiring workers finish what they hold.
- `mc:status` replies the lanes, workers, queue depths, counters and capacity.

A user handler registered under mc:scale or mc:status is shadowed by these (the node
logs a warning at start); other mc and co handlers run on the df lane.
"""
from __future__ import annotations

import time
from typing import Any

from .capacity import read_capacity, recommend
from .errors import ErrorCode, HandlerError
from .pool import Pool

BUILTIN_KEYS = frozenset({"mc:scale", "mc:status"})
MAX_WORKERS_PER_CORE = 4  # a lane larger than this is a typo, not a plan


def capacity_report(pool: Pool) -> tuple[dict[str, Any], dict[str, int]]:
    cap = read_capacity(pool.worker_pids())
    advice = recommend(cap, rm_memory_limit_mb=pool.settings.rm_memory_limit_mb,
                       current=pool.lane_sizes(), df_max_workers=pool.settings.df_max_workers)
    return cap.to_dict(), advice


async def scale(pool: Pool, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise HandlerError(ErrorCode.HANDLER_FAILED,
                           'mc:scale expects {"lane": "df", "workers": N} or {"workers": "auto"}')
    workers = data.get("workers")
    lane = data.get("lane")
    capacity, advice = capacity_report(pool)
    if workers == "auto":
        plan = {lane: advice[lane]} if lane is not None else {k: v for k, v in advice.items() if k != "cf"}
    else:
        if lane is None:
            lane = "df"
        if type(workers) is not int:
            raise HandlerError(ErrorCode.HANDLER_FAILED,
                               f'mc:scale "workers" must be an integer or "auto", got {workers!r}')
        plan = {lane: workers}
    limit = MAX_WORKERS_PER_CORE * max(capacity["usable_cores"], 1)
    for name, size in plan.items():
        if name not in pool.lanes:
            raise HandlerError(ErrorCode.HANDLER_FAILED,
                               f"unknown lane {name!r}; lanes are {', '.join(pool.lanes)}")
        if not pool.lanes[name].resizable and size != pool.lanes[name].size:
            raise HandlerError(ErrorCode.HANDLER_FAILED, f"the {name} lane has a fixed size of "
                               f"{pool.lanes[name].size} (cf is sequential by definition)")
        low = 1 if name == "df" else 0
        if not low <= size <= limit:
            raise HandlerError(ErrorCode.HANDLER_FAILED,
                               f"{name} lane size must be {low}..{limit} on this machine, got {size}")
    before = pool.lane_sizes()
    started = time.perf_counter()
    for name, size in plan.items():
        try:
            await pool.resize(name, size)
        except Exception as exc:
            raise HandlerError(ErrorCode.HANDLER_FAILED, f"resizing the {name} lane failed: {exc}") from exc
    return {"before": before, "after": pool.lane_sizes(), "targets": dict(pool.targets),
            "took_ms": round((time.perf_counter() - started) * 1000, 1),
            "capacity": capacity, "recommended": advice}


async def status(pool: Pool, data: Any) -> dict[str, Any]:
    capacity, advice = capacity_report(pool)
    return {**pool.stats(), "capacity": capacity, "recommended": advice}


BUILTINS = {"mc:scale": scale, "mc:status": status}
