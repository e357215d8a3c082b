"""The live dashboard: its page (`/dashboard`, static files shipped in the package under
`pfnode/node/static/`) and the JSON it polls once a second (`/dashboard/data`).

The data is read the way /status reads the node (node/status.py's `gauges`, the one read of
the node's state, plus the detail around it) and holds only counts that grow and figures
of the moment: the page computes rates (packets/s, a worker's CPU) and recent latency
percentiles from the difference of two reads, so the node keeps no history for it. What
the JSON holds is documented in docs/OBSERVABILITY.md ("The dashboard").
"""
from __future__ import annotations

import functools
import importlib.resources
import os
import time
from typing import Any

from .. import __version__
from ..core.hub import link_name
from ..ops.metrics import BUCKETS_S
from ..pool.capacity import process_usage, read_capacity
from ..transports.base import HttpReply
from .shared import NodeShared
from .status import gauges

# The page's files, by the name they are served under (/dashboard/NAME), and their types
ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
PAGE = "dashboard.html"
# The page may load its own script and style sheet and fetch its data, nothing else: no CDN,
# no other host (it works offline, and a token in its URL goes nowhere else).
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = (("Content-Security-Policy", CSP), ("Referrer-Policy", "no-referrer"),
                ("X-Content-Type-Options", "nosniff"))
MAX_LINKS = 200  # hub links listed (the busiest first)
MAX_KEYS = 50  # keys listed per link


@functools.cache
def _file(name: str) -> bytes:
    return (importlib.resources.files("pfnode.node") / "static" / name).read_bytes()


def page() -> HttpReply:
    return HttpReply(200, "OK", "text/html; charset=utf-8", _file(PAGE), PAGE_HEADERS)


def asset(name: str) -> HttpReply | None:
    """One of the page's static files (it holds no data: served without a token), else None."""
    content_type = ASSETS.get(name)
    return HttpReply(200, "OK", content_type, _file(name), PAGE_HEADERS) if content_type else None


def data(node: NodeShared) -> dict[str, Any]:
    """What the page shows, read once."""
    state = gauges(node)
    metrics = node.metrics
    return {
        "time": time.time(),
        "node": _summary(node, state),
        "lanes": _lanes(node, state),
        "workers": _workers(node),
        "groups": metrics.by_group(),
        "buckets_s": list(BUCKETS_S),
        "errors": errors_by_code(metrics.counts),
        "hub": _hub(node, state),
        "elements": {"by_principal": node.elements.by_principal(),
                     "totals": {kind: list(v) for kind, v in state.get("elements", {}).items()}},
        "dask": node.pool.dask.stats() if node.pool.dask is not None else None,
    }


def _summary(node: NodeShared, state: dict) -> dict[str, Any]:
    s = node.settings
    capacity = read_capacity()
    return {"status": node.state, "version": __version__, "transport": s.transport,
            "scheme": s.scheme, "path": s.path if node.uplink is None else None, "pid": os.getpid(),
            "uptime_s": round(time.time() - node.started_at, 1), "connections": state["connections"],
            "inflight": state["inflight"], "blocked": state["blocked"], "forwarded": state["forwarded"],
            "parked": state["parked"], "results_stored": state["results_stored"],
            "handlers": len(node.keys()), "usable_cores": capacity.usable_cores,
            "load_1m": round(capacity.load_1m, 2), "memory_available_mb": round(capacity.memory_available_mb),
            "memory_total_mb": round(capacity.memory_total_mb)}


def _lanes(node: NodeShared, state: dict) -> dict[str, dict[str, Any]]:
    """Per lane: its workers (busy, idle, the target), the packets they hold, and the queue
    by priority; the node's own lane (`hosted`: the node elements) and `dask` have a queue only."""
    restarts = node.metrics.restarts()
    out = {}
    for lane, queue in node.scheduler.lanes.items():
        row: dict[str, Any] = {"queued": len(queue),
                               "queued_by_priority": {str(p): n for p, n in sorted(queue.by_priority().items(),
                                                                                    reverse=True)}}
        figures = state["lanes"].get(lane)
        if figures is not None:
            row.update(workers=figures["workers"], target=figures["target"], busy=figures["busy"],
                       idle=figures["workers"] - figures["busy"], held=figures["held"],
                       restarts=sum(restarts.get(lane, {}).values()), restart_causes=restarts.get(lane, {}))
        out[lane] = row
    return out


def _workers(node: NodeShared) -> list[dict[str, Any]]:
    """Each worker process (and the front's own): its lane, pid, what it holds and has run,
    and its CPU seconds and memory from psutil."""
    procs = sorted(node.pool.supervisor.procs.values(), key=lambda p: (p.lane, p.slot))
    usage = process_usage([p.pid for p in procs if p.pid] + [os.getpid()])
    rows = [{"lane": "front", "pid": os.getpid(), "state": "front", "held": len(node.scheduler.inflight),
             "packets": None, **usage.get(os.getpid(), {})}]
    for proc in procs:
        view = proc.view
        held = len(view.held) if view is not None else 0
        state = ("retiring" if view is None or view.retiring or view.retired
                 else "busy" if held else "idle" if view.ready else "starting")
        rows.append({"lane": proc.lane, "pid": proc.pid, "slot": proc.slot, "cpus": list(proc.cpus or ()),
                     "state": state, "held": held, "packets": view.ran if view is not None else 0,
                     **usage.get(proc.pid, {})})
    return rows


def _hub(node: NodeShared, state: dict) -> dict[str, Any]:
    """The links as the hub sees them: who, what each runs (announced, or answered for), what
    it holds for others now; and the dial-out uplink, when the node has one."""
    links = []
    for routes in node.hub.routes.values():
        link, profile = routes.link, routes.profile
        if link.closed:
            continue
        runs = sorted(profile.announced if profile.announced is not None else profile.can)
        links.append({"name": link_name(link), "peer": link.peer, "runs": runs[:MAX_KEYS], "runs_count": len(runs),
                      "announced": profile.announced is not None, "holds": routes.load, "own": routes.own_held,
                      "answered": profile.answered, "refused_keys": len(profile.cannot),
                      "state": "silent" if profile.silent else "unproven" if profile.unproven else "reactor"})
    links.sort(key=lambda row: (-row["holds"], row["name"]))
    uplink = node.uplink
    return {"links": links[:MAX_LINKS], "reactors": state["reactors"], "forwarded": state["forwarded"],
            "parked": state["parked"],
            "uplink": None if uplink is None else {"url": _without_token(str(uplink.url)),
                                                   "connected": bool(uplink.link.connected)}}


def _without_token(url: str) -> str:
    base, _, query = url.partition("?")
    return base + ("?token=…" if "token=" in query else "?" + query if query else "")


def errors_by_code(counts: Any) -> dict[str, dict[str, int]]:
    """The node's error counts by code: answered with it (`failed`), refused at admission
    (`refused`), frames rejected (`rejected`), and the `total`."""
    out: dict[str, dict[str, int]] = {}
    for name, n in counts.items():
        kind, _, code = name.partition("_")
        if kind in ("failed", "refused", "rejected") and code.startswith("PF"):
            row = out.setdefault(code, {"failed": 0, "refused": 0, "rejected": 0, "total": 0})
            row[kind] += n
            row["total"] += n
    return dict(sorted(out.items()))
