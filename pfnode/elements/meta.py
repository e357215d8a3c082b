"""The mc (meta-compute) elements: the node's own lanes and scheduling, admins only.

- `mc:scale`  {"lane": "df", "workers": N} sets one lane's size;
              {"workers": "auto"} (optionally with "lane") applies the capacity recommendation.
              Replies {"before": {...}, "after": {...}, "capacity": {...}, "recommended": {...}}.
              Packets in flight are never lost: growing waits for the new workers, shrinking
              lets retiring workers finish what they hold. Requests are carried out one at a
              time (the pool serialises resizes), and sizes are absolute, so ten requests for
              8 workers leave 8, not 80.
- `mc:status` replies the lanes, workers, queue depths, counters and capacity.

Bad input is PF002 naming the field; a resize that fails is PF500. Each is logged with
who asked, before and after.
"""
from __future__ import annotations

import time
from typing import Any

import logging
from typing import TYPE_CHECKING

from .. import logs
from ..capacity import read_capacity, recommend
from ..errors import ErrorCode, HandlerError
from .base import node_element

if TYPE_CHECKING:
    from ..pool import Pool

log = logging.getLogger("pfnode.front")

MAX_WORKERS_PER_CORE = 4  # a lane larger than this is a typo, not a plan
SCALE_USAGE = 'mc:scale expects {"lane": "df", "workers": N} or {"workers": "auto"} (optionally with "lane")'


def _invalid(message: str) -> HandlerError:
    return HandlerError(ErrorCode.INVALID_PACKET, message)


def capacity_report(pool: "Pool") -> tuple[dict[str, Any], dict[str, int]]:
    cap = read_capacity(pool.worker_pids())
    advice = recommend(cap, rm_memory_limit_mb=pool.settings.rm_memory_limit_mb,
                       current=pool.lane_sizes(), df_max_workers=pool.settings.df_max_workers)
    return cap.to_dict(), advice


def scale_plan(data: Any, lanes: dict, advice: dict[str, int], usable_cores: int) -> dict[str, int]:
    """The lane sizes an `mc:scale` request asks for, checked; PF002 naming what is wrong."""
    if not isinstance(data, dict):
        raise _invalid(f"{SCALE_USAGE}; got {type(data).__name__}")
    unknown = sorted(set(data) - {"lane", "workers"})
    if unknown:
        raise _invalid(f"mc:scale: unknown field(s) {', '.join(map(repr, unknown))}; {SCALE_USAGE}")
    lane = data.get("lane")
    workers = data.get("workers")
    if lane is not None and (not isinstance(lane, str) or lane not in lanes):
        raise _invalid(f"mc:scale: \"lane\" must be one of {', '.join(lanes)}, got {lane!r}"[:300])
    if workers == "auto":
        plan = {lane: advice[lane]} if lane is not None else {k: v for k, v in advice.items() if k != "cf"}
    elif type(workers) is int:
        plan = {lane or "df": workers}
    else:
        raise _invalid(f"mc:scale: \"workers\" must be an integer or \"auto\", got {workers!r}"[:300])
    limit = MAX_WORKERS_PER_CORE * max(usable_cores, 1)
    for name, size in plan.items():
        spec = lanes[name]
        if not spec.resizable and size != spec.size:
            raise _invalid(f"mc:scale: the {name} lane has a fixed size of {spec.size} "
                           "(cf is sequential by definition)")
        low = 1 if name == "df" else 0
        if not low <= size <= limit:
            raise _invalid(f"mc:scale: {name} lane size must be {low}..{limit} on this machine, got {size}")
    return plan


async def resize_lanes(ctx, plan: dict[str, int], action: str) -> dict[str, Any]:
    """Carry out a plan of lane sizes, logging who asked, before and after."""
    pool = ctx.host.pool
    before = pool.lane_sizes()
    started = time.perf_counter()
    who = str(ctx.identity or "local")
    for name, size in plan.items():
        try:
            await pool.resize(name, size)
        except Exception as exc:
            ctx.host.metrics.admin_action(action, "failed")
            logs.admin_action(log, who=who, action=action, outcome="failed", detail=str(exc))
            raise HandlerError(ErrorCode.HANDLER_FAILED, f"resizing the {name} lane failed: {exc}") from exc
    after = pool.lane_sizes()
    ctx.host.metrics.admin_action(action, "ok")
    logs.admin_action(log, who=who, action=action, before=before, after=after)
    return {"before": before, "after": after, "targets": dict(pool.targets),
            "took_ms": round((time.perf_counter() - started) * 1000, 1)}


@node_element("mc:scale", role="admin")
async def scale(ctx, data: Any) -> dict[str, Any]:
    """Set lane sizes, or apply the capacity recommendation."""
    capacity, advice = capacity_report(ctx.host.pool)
    try:
        plan = scale_plan(data, ctx.host.pool.lanes, advice, capacity["usable_cores"])
    except HandlerError:
        ctx.host.metrics.admin_action("mc:scale", "invalid")
        raise
    return {**await resize_lanes(ctx, plan, "mc:scale"), "capacity": capacity, "recommended": advice}


@node_element("mc:status", role="admin")
async def status(ctx, data: Any) -> dict[str, Any]:
    """The node's lanes, workers, queues, counters, capacity and recommendation."""
    capacity, advice = capacity_report(ctx.host.pool)
    return {**ctx.host.health(), "capacity": capacity, "recommended": advice}
