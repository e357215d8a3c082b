"""One source for what the node shows: `gauges` reads the node's state once, as /metrics's
gauges (ops/metrics.NodeState); `status` (/status and mc:status) is those same figures
with the detail an operator reads (pids, cpus, the hub's reactors, the elements'
resources) and the counts the metrics' event calls keep (`Metrics.counts`).
"""
from __future__ import annotations

import time
from typing import Any

from ..ops.metrics import NodeState
from .shared import NodeShared



def gauges(node: NodeShared) -> NodeState:
    """The gauges of /metrics, read at each scrape."""
    s = node.scheduler
    pool = node.pool
    lanes = {}
    for lane in pool.lanes:
        stats = pool.dispatcher.lane_stats(lane)
        lanes[lane] = {"workers": stats["workers"], "busy": stats["busy"], "held": stats["running"],
                       "target": pool.targets[lane], "queued": s.depth(lane)}
    state: NodeState = {"ready": node.ready, "draining": node.draining, "connections": len(node.links),
                        "inflight": len(s.inflight), "blocked": s.blocked, "forwarded": s.forwarded,
                        "parked": len(node.hub.parked), "results_stored": len(s.results),
                        "reactors": node.hub.stats(s.forwarded)["reactors"], "lanes": lanes,
                        "elements": node.elements.gauges()}
    if pool.dask is not None:  # --dask: the cluster and the dask lane (pfnode/dask/lane.py)
        state["dask"] = pool.dask.gauges()
    return state


def status(node: NodeShared) -> dict[str, Any]:
    """/status: the gauges' figures, their detail, and every count."""
    state = gauges(node)
    pool = node.pool.stats()
    return {"status": node.state, "endpoint": node.settings.path, "connections": state["connections"],
            "uptime_s": round(time.time() - node.started_at, 3), "handlers": node.keys(),
            "hot_path": {key: node.hot_path[key] for key in ("mode", "of", "stale")}
            | {"compiled": len(node.hot_path["compiled"])}, **pool,
            "queued": node.scheduler.queued, "blocked": state["blocked"], "inflight": state["inflight"],
            "results_stored": state["results_stored"], "hub": node.hub.stats(state["forwarded"]),
            "elements": node.elements.stats(), "counters": {**pool["counters"], **node.metrics.counts}}


def heartbeat_payload(node: NodeShared) -> dict[str, Any]:
    """What the node's heartbeats say of it (the spec's `timestamp`, and a `node` summary)."""
    s = node.scheduler
    return {"timestamp": int(time.time() * 1000),
            "node": {"status": "draining" if node.draining else "ready",
                     "workers": sum(node.pool.lane_sizes().values()), "queued": s.queued,
                     "inflight": len(s.inflight)}}
