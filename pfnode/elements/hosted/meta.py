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

from ...core.protocol import _ELEMENT_RE, GROUPS
from ...errors import ErrorCode, HandlerError
from ..base import ElementError, ElementFailed, check_keys, need_dict, need_int, need_str, node_element

MAX_WORKERS_PER_CORE = 4  # a lane larger than this is a typo, not a plan
SCALE_USAGE = 'mc:scale expects {"lane": "df", "workers": N} or {"workers": "auto"} (optionally with "lane")'


def _invalid(message: str) -> HandlerError:
    return HandlerError(ErrorCode.INVALID_PACKET, message)


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
    node = ctx.node
    before = node.lane_sizes()
    started = time.perf_counter()
    try:
        await node.resize(ctx.identity, plan)
    except Exception as exc:
        node.audit(ctx.identity, action, "failed", detail=str(exc))
        lane = getattr(exc, "lane", None) or ", ".join(plan)
        raise HandlerError(ErrorCode.HANDLER_FAILED, f"resizing the {lane} lane failed: {exc}") from exc
    after = node.lane_sizes()
    node.audit(ctx.identity, action, before=before, after=after)
    return {"before": before, "after": after, "targets": node.lane_targets(),
            "took_ms": round((time.perf_counter() - started) * 1000, 1)}


@node_element("mc:scale", role="admin")
async def scale(ctx, data: Any) -> dict[str, Any]:
    """Set lane sizes, or apply the capacity recommendation."""
    dask = ctx.node.dask
    if dask is not None and isinstance(data, dict) and data.get("lane") == "dask":  # pfnode/dask/lane.py
        return await dask_scale(ctx, dask, data)
    capacity, advice = ctx.node.capacity()
    try:
        plan = scale_plan(data, ctx.node.lanes(), advice, capacity["usable_cores"])
    except HandlerError:
        ctx.node.audit(ctx.identity, "mc:scale", "invalid")
        raise
    return {**await resize_lanes(ctx, plan, "mc:scale"), "capacity": capacity, "recommended": advice}


async def dask_scale(ctx, dask, data: dict) -> dict[str, Any]:
    """mc:scale of the dask lane: the cluster's size or adaptive range, logged like a lane's."""
    try:
        reply = await dask.scale(data)
    except HandlerError as exc:
        ctx.node.audit(ctx.identity, "mc:scale", "invalid" if exc.code == ErrorCode.INVALID_PACKET.value else "failed")
        raise
    ctx.node.audit(ctx.identity, "mc:scale", before=reply["before"], after=reply["after"])
    return reply


@node_element("mc:status", role="admin")
async def status(ctx, data: Any) -> dict[str, Any]:
    """The node's lanes, workers, queues, counters, capacity and recommendation."""
    capacity, advice = ctx.node.capacity()
    return {**ctx.node.status(), "capacity": capacity, "recommended": advice}


MAX_SPAWN = 1024
MAX_MIGRATIONS = 1024
MAX_WINDOW_MS = 10_000
MAX_PREFETCH = 1024
MAX_AGING_MS = 3_600_000


def _lane(ctx, value: Any) -> str:
    lanes = ctx.node.lanes()
    if not isinstance(value, str) or value not in lanes:
        raise ElementError("lane", f"must be one of {', '.join(lanes)}, got {value!r}"[:200])
    return value


def _refused(ctx, action: str, exc: ElementError) -> ElementError:
    ctx.node.audit(ctx.identity, action, "invalid")
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
    node = ctx.node
    async with node.resources.meta_lock:  # each spawn adds to what the one before left
        size = node.lane_targets()[lane] + added
        problem = lane_size_problem(node.lanes()[lane], size, node.capacity()[0]["usable_cores"])
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


@node_element("mc:migrate", role="admin")
async def migrate(ctx, data: Any) -> dict[str, Any]:
    """Move a key's packets to another lane, or to a connected reactor."""
    node = ctx.node
    lane = name = None
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
            if node.user_handler(key) is None:
                raise ElementError("key", f"no handler of this node runs {key}: only a handler's lane can change")
            if node.lane_sizes()[lane] == 0 and node.lane_targets()[lane] == 0:
                raise ElementError("lane", f"the {lane} lane has no workers (mc:spawn some first)")
        elif mode == "reactor":
            name = need_str(data["reactor"], "reactor")
            if node.is_node_element(key) and node.user_handler(key) is None:
                raise ElementError("key", f"{key} is a standard element the node runs itself; it cannot move")
        elif data["reset"] is not True:
            raise ElementError("reset", "must be true")
    except ElementError as exc:
        raise _refused(ctx, "mc:migrate", exc) from None
    migrated = node.migrated_keys()
    if mode != "reset" and key not in migrated and len(migrated) >= MAX_MIGRATIONS:
        raise ElementFailed(ErrorCode.OVERLOADED, f"{MAX_MIGRATIONS} keys are migrated already; reset some first")
    before = node.placement(key)
    node.migrate(ctx.identity, key, lane=lane, reactor=name)
    after = node.placement(key)
    node.audit(ctx.identity, "mc:migrate", before={key: before}, after={key: after})
    return {"key": key, "before": before, "after": after}


@node_element("mc:tune", role="admin")
async def tune(ctx, data: Any) -> dict[str, Any]:
    """Set a lane's scheduling parameters: prefetch work and count, aging."""
    node = ctx.node
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
            if not node.lanes()[lane].resizable and prefetch != 1:
                raise ElementError("prefetch", f"the {lane} lane takes one packet at a time (it runs them in "
                                               "priority order)")
        aging_ms = data.get("aging_ms")
        if aging_ms is not None:
            need_int(aging_ms, "aging_ms", low=0, high=MAX_AGING_MS)
    except ElementError as exc:
        raise _refused(ctx, "mc:tune", exc) from None
    before = node.tuning(lane)
    node.tune(ctx.identity, lane, window_ms=window_ms, prefetch=prefetch, aging_ms=aging_ms)
    after = node.tuning(lane)
    node.audit(ctx.identity, "mc:tune", before={lane: before}, after={lane: after})
    return {"lane": lane, "before": before, "after": after}
