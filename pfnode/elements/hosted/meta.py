"""The mc (meta-compute) elements: the node's own lanes and scheduling, admins only.

- `mc:scale`  {"lane": "df", "workers": N} sets one lane's size;
              {"workers": "auto"} (optionally with "lane") applies the capacity recommendation.
              Replies {"before": {...}, "after": {...}, "capacity": {...}, "recommended": {...}}.
              Packets in flight are never lost: growing waits for the new workers, shrinking
              lets retiring workers finish what they hold. Requests are carried out one at a
              time (the pool serialises resizes), and sizes are absolute, so ten requests for
              8 workers leave 8, not 80.
- `mc:status` replies the lanes, workers, queue depths, counters and capacity.
- `mc:spawn`  {"lane", "workers": n} adds n workers to a lane's wanted size (its target);
              bounded as mc:scale (the lane's size at most 4 per usable core; cf fixed).
              Replies mc:scale's {"before", "after", "targets", "took_ms"} and "lane",
              "added". Spawns are carried out one at a time, each adding to what the one
              before left, so ten spawns of 1 add 10.
- `mc:migrate` {"key": "group:element", "lane"} runs the key's packets on that lane from
              now on (a local handler's key; the lane must have workers);
              {"key", "reactor": name} prefers the connected reactor whose token name
              (without tokens: its peer address, "127.0.0.1:50312") is `name`: the hub asks
              it first, and a key the node has a handler for is forwarded to it while it is
              connected (and runs here while it is not); {"key", "reset": true} undoes
              both. Packets already queued stay where they are. Replies {"key", "before",
              "after"}, each {"lane"?, "reactor"?, "connected"?, "hub"?}. At most 1024
              keys are migrated at once (PF004).
- `mc:tune`   {"lane", "window_ms"?, "prefetch"?, "aging_ms"?} sets a lane's scheduling:
              `window_ms` the estimated work (ms, 0..10000) a worker of the lane holds
              beyond the packet it runs (the dispatcher's prefetch_ms), `prefetch` the most
              packets one worker of the lane holds (1..1024; cf stays 1: it runs in
              priority order), `aging_ms` the lane queue's aging (0..3600000; 0: strict
              priorities). Replies {"lane", "before", "after"} with all three.

Migrations and tunings are the node's configuration, not resources: they last until
changed, reset, or the node restarts, whoever asked and whether they stay connected.

Bad input is PF002 naming the field; a resize that fails is PF500. Each is logged with
who asked, before and after.
"""
from __future__ import annotations

import time
from typing import Any

import logging
from typing import TYPE_CHECKING

from ...ops import logs
from ...pool.capacity import read_capacity, recommend
from ...errors import ErrorCode, HandlerError
from ...core.protocol import _ELEMENT_RE, GROUPS
from ..base import (NODE_ELEMENTS, ElementError, ElementFailed, check_keys, need_dict, need_int, need_str,
                    node_element)

if TYPE_CHECKING:
    from ...pool.pool import Pool

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
    for name, size in plan.items():
        problem = lane_size_problem(lanes[name], size, usable_cores)
        if problem is not None:
            raise _invalid(f"mc:scale: {problem}")
    return plan


def lane_size_problem(spec, size: int, usable_cores: int) -> str | None:
    """What is wrong with `size` workers for a lane (mc:scale, mc:spawn), or None."""
    if not spec.resizable and size != spec.size:
        return f"the {spec.name} lane has a fixed size of {spec.size} (cf is sequential by definition)"
    limit = MAX_WORKERS_PER_CORE * max(usable_cores, 1)
    low = 1 if spec.name == "df" else 0
    if not low <= size <= limit:
        return f"{spec.name} lane size must be {low}..{limit} on this machine, got {size}"
    return None


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
    dask = ctx.host.pool.dask
    if dask is not None and isinstance(data, dict) and data.get("lane") == "dask":  # pfnode/dasklane.py
        return await dask_scale(ctx, dask, data)
    capacity, advice = capacity_report(ctx.host.pool)
    try:
        plan = scale_plan(data, ctx.host.pool.lanes, advice, capacity["usable_cores"])
    except HandlerError:
        ctx.host.metrics.admin_action("mc:scale", "invalid")
        raise
    return {**await resize_lanes(ctx, plan, "mc:scale"), "capacity": capacity, "recommended": advice}


async def dask_scale(ctx, dask, data: dict) -> dict[str, Any]:
    """mc:scale of the dask lane: the cluster's size or adaptive range, logged like a lane's."""
    who = str(ctx.identity or "local")
    try:
        reply = await dask.scale(data)
    except HandlerError as exc:
        ctx.host.metrics.admin_action("mc:scale", "invalid" if exc.code == ErrorCode.INVALID_PACKET.value else "failed")
        raise
    ctx.host.metrics.admin_action("mc:scale", "ok")
    logs.admin_action(log, who=who, action="mc:scale", before=reply["before"], after=reply["after"])
    return reply


@node_element("mc:status", role="admin")
async def status(ctx, data: Any) -> dict[str, Any]:
    """The node's lanes, workers, queues, counters, capacity and recommendation."""
    capacity, advice = capacity_report(ctx.host.pool)
    return {**ctx.host.health(), "capacity": capacity, "recommended": advice}


MAX_SPAWN = 1024
MAX_MIGRATIONS = 1024
MAX_WINDOW_MS = 10_000
MAX_PREFETCH = 1024
MAX_AGING_MS = 3_600_000


def _lane(ctx, value: Any) -> str:
    lanes = ctx.host.pool.lanes
    if not isinstance(value, str) or value not in lanes:
        raise ElementError("lane", f"must be one of {', '.join(lanes)}, got {value!r}"[:200])
    return value


def _refused(ctx, action: str, exc: ElementError) -> ElementError:
    ctx.host.metrics.admin_action(action, "invalid")
    return exc


@node_element("mc:spawn", role="admin")
async def spawn(ctx, data: Any) -> dict[str, Any]:
    """Add workers to a lane."""
    try:
        data = need_dict(data, "data")
        check_keys(data, "", {"lane", "workers"})
        lane = _lane(ctx, data.get("lane"))
        added = need_int(data.get("workers"), "workers", low=1, high=MAX_SPAWN)
    except ElementError as exc:
        raise _refused(ctx, "mc:spawn", exc) from None
    pool = ctx.host.pool
    async with ctx.host.elements.meta_lock:  # each spawn adds to what the one before left
        size = pool.targets[lane] + added
        problem = lane_size_problem(pool.lanes[lane], size, read_capacity().usable_cores)
        if problem is not None:
            raise _refused(ctx, "mc:spawn", ElementError("workers", f"{added} more: {problem}"))
        result = await resize_lanes(ctx, {lane: size}, "mc:spawn")
    return {"lane": lane, "added": result["after"][lane] - result["before"][lane], **result}


def _key(value: Any) -> str:
    key = need_str(value, "key", max_chars=80)
    group, _, element = key.partition(":")
    if group not in GROUPS or not _ELEMENT_RE.fullmatch(element):
        raise ElementError("key", f"must be group:element (a group of {', '.join(sorted(GROUPS))}), got {key!r}"[:200])
    return key


def where(host, key: str) -> dict[str, Any]:
    """Where packets of `key` run now (mc:migrate's before and after)."""
    out: dict[str, Any] = {}
    if key in host.pool.handlers and not host.pool.handlers[key].get("standard"):
        out["lane"] = host.pool.lane_of(key, key.partition(":")[0])
    name = host.hub.preferences.get(key)
    if name is not None:
        out["reactor"] = name
        out["connected"] = host.migrated_link(key) is not None
    if not out:
        out["hub" if key not in NODE_ELEMENTS else "front"] = True
    return out


@node_element("mc:migrate", role="admin")
async def migrate(ctx, data: Any) -> dict[str, Any]:
    """Move a key's packets to another lane, or to a connected reactor."""
    host = ctx.host
    try:
        data = need_dict(data, "data")
        key = _key(data.get("key"))
        modes = [m for m in ("lane", "reactor", "reset") if m in data]
        if len(modes) != 1:
            raise ElementError("lane", "give one of lane, reactor or reset")
        mode = modes[0]
        check_keys(data, "", {"key", mode})
        if mode == "lane":
            lane = _lane(ctx, data["lane"])
            options = host.pool.handlers.get(key)
            if options is None or options.get("standard"):
                raise ElementError("key", f"no handler of this node runs {key}: only a handler's lane can change")
            if host.pool.lane_size(lane) == 0 and host.pool.targets[lane] == 0:
                raise ElementError("lane", f"the {lane} lane has no workers (mc:spawn some first)")
        elif mode == "reactor":
            name = need_str(data["reactor"], "reactor")
            options = host.pool.handlers.get(key)
            if key in NODE_ELEMENTS and (options is None or options.get("standard")):
                raise ElementError("key", f"{key} is a standard element the node runs itself; it cannot move")
        elif data["reset"] is not True:
            raise ElementError("reset", "must be true")
    except ElementError as exc:
        raise _refused(ctx, "mc:migrate", exc) from None
    pool, hub = host.pool, host.hub
    migrated = pool.lane_overrides.keys() | hub.preferences.keys()
    if mode != "reset" and key not in migrated and len(migrated) >= MAX_MIGRATIONS:
        raise ElementFailed(ErrorCode.OVERLOADED, f"{MAX_MIGRATIONS} keys are migrated already; reset some first")
    before = where(host, key)
    pool.lane_overrides.pop(key, None)
    hub.preferences.pop(key, None)
    if mode == "lane":
        pool.lane_overrides[key] = lane
    elif mode == "reactor":
        hub.preferences[key] = name
    after = where(host, key)
    host.metrics.admin_action("mc:migrate", "ok")
    logs.admin_action(log, who=str(ctx.identity or "local"), action="mc:migrate", before={key: before},
                      after={key: after})
    return {"key": key, "before": before, "after": after}


def tuning(host, lane: str) -> dict[str, Any]:
    dispatcher = host.pool.dispatcher
    return {"window_ms": dispatcher.prefetch[lane], "prefetch": dispatcher.windows[lane],
            "aging_ms": round(host.scheduler.lanes[lane].aging_s * 1000)}


@node_element("mc:tune", role="admin")
async def tune(ctx, data: Any) -> dict[str, Any]:
    """Set a lane's scheduling parameters: prefetch work and count, aging."""
    host = ctx.host
    try:
        data = need_dict(data, "data")
        check_keys(data, "", {"lane", "window_ms", "prefetch", "aging_ms"})
        lane = _lane(ctx, data.get("lane"))
        if not data.keys() & {"window_ms", "prefetch", "aging_ms"}:
            raise ElementError("window_ms", "give window_ms, prefetch or aging_ms (or more)")
        window_ms = data.get("window_ms")
        if window_ms is not None and (isinstance(window_ms, bool) or not isinstance(window_ms, (int, float))
                                      or not 0 <= window_ms <= MAX_WINDOW_MS):
            raise ElementError("window_ms", f"must be a number 0..{MAX_WINDOW_MS}, got {window_ms!r}"[:200])
        prefetch = data.get("prefetch")
        if prefetch is not None:
            need_int(prefetch, "prefetch", low=1, high=MAX_PREFETCH)
            if not host.pool.lanes[lane].resizable and prefetch != 1:
                raise ElementError("prefetch", f"the {lane} lane takes one packet at a time (it runs them in "
                                               "priority order)")
        aging_ms = data.get("aging_ms")
        if aging_ms is not None:
            need_int(aging_ms, "aging_ms", low=0, high=MAX_AGING_MS)
    except ElementError as exc:
        raise _refused(ctx, "mc:tune", exc) from None
    before = tuning(host, lane)
    if window_ms is not None:
        host.pool.dispatcher.prefetch[lane] = float(window_ms)
    if prefetch is not None:
        host.pool.dispatcher.windows[lane] = prefetch
    if aging_ms is not None:
        host.scheduler.lanes[lane].aging_s = aging_ms / 1000
    after = tuning(host, lane)
    host.elements.tuned[lane] = after
    host.pool.pump()  # a wider window may take queued packets now
    host.metrics.admin_action("mc:tune", "ok")
    logs.admin_action(log, who=str(ctx.identity or "local"), action="mc:tune", before={lane: before},
                      after={lane: after})
    return {"lane": lane, "before": before, "after": after}
