"""The node's Prometheus metrics: plain counters on the hot path, metric families at scrape time.

The front's CPU per packet is the node's throughput limit, so nothing here calls a
prometheus_client instrument per packet (`Counter.labels().inc()` and `Histogram.observe()`
cost microseconds each). `Metrics` keeps plain Python state instead -- per lane, counts by
group and outcome and histogram buckets found with `bisect`; integer attributes for
frames and bytes -- and a collector registered in its own `CollectorRegistry` turns that
state into metric families when `/metrics` is scraped. Gauges that are node state (lane
sizes, queue depths, packets in flight, connections) are read at scrape time from the
`state` callable the node supplies (a `NodeState` dict; a key it leaves out is not exported).

Labels are low-cardinality by construction: group, lane, outcome (a PF code, "success" or
"cancelled"), cause, reason, close code; never packet ids, handler keys or peers. A value
outside the known set becomes "other", and every labelled family keeps at most
`MAX_SERIES` label sets (more go to "other" too), so a peer cannot grow the exposition.

docs/OBSERVABILITY.md lists every metric with its labels and example queries.
"""
from __future__ import annotations

import collections

import itertools
import logging
from bisect import bisect_left
from typing import Any, Callable, Iterable, Iterator, TypedDict

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from ..errors import ErrorCode
from ..core.protocol import GROUPS

log = logging.getLogger("pfnode.metrics")

__all__ = ["BUCKETS_S", "CAUSES", "DaskState", "Metrics", "NodeState", "exit_cause"]

# Upper bounds of the time histograms, in seconds: 10 µs (a no-op's run) to 5 min.
BUCKETS_S = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
             0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
             1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_BUCKETS_MS = tuple(round(b * 1000, 6) for b in BUCKETS_S)  # run times arrive in ms: no division per packet
_LE = tuple(repr(b) for b in BUCKETS_S) + ("+Inf",)

SUCCESS = "success"
CANCELLED = "cancelled"  # its submitter left before it ended; nothing was answered
OTHER = "other"
OUTCOMES = frozenset(c.value for c in ErrorCode) | {CANCELLED}
# Why a worker was replaced (pfnode_worker_restarts_total's `cause`; see exit_cause)
CAUSES = ("crash", "deadline", "memory", "exit", "protocol", "killed", "start")
CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011,
                         4401, 4403, 4408})
MAX_SERIES = 64  # label sets per labelled counter; past it new ones count under "other"
HUB_LANE = "hub"  # the lane label of forwarded packets (their Flight has lane None)
_UNTIMED = ""  # where packet_ended counts: packets_total only, no histograms


class LaneState(TypedDict, total=False):
    workers: int  # ready workers
    target: int  # workers the lane should have
    busy: int  # workers holding at least one packet
    held: int  # packets held by its workers (running or prefetched)
    queued: int  # packets waiting in the node's queue for the lane


class DaskState(TypedDict, total=False):
    """The dask lane's gauges and counters (pfnode/dask/lane.py's `gauges`)."""

    state: str  # one of DASK_STATES
    workers: int
    threads: int
    window: int  # packets the node lets be on the cluster at once
    on_cluster: int  # packets handed to the cluster
    running: int  # of those, started on a worker
    queued: int  # packets waiting in the node's queue for the cluster
    counters: dict[str, int]  # event (DASK_EVENTS) -> count since start


class NodeState(TypedDict, total=False):
    """What the node's state callable returns at each scrape; any key may be left out."""

    ready: bool
    draining: bool
    connections: int
    inflight: int
    blocked: int
    forwarded: int
    parked: int
    results_stored: int
    reactors: int
    lanes: dict[str, LaneState]
    elements: dict[str, tuple[int, int]]  # resource kind -> (count, bytes): the elements' state
    dask: DaskState  # with --dask only


# state key -> (metric, help), for the node-wide gauges
_NODE_GAUGES = (
    ("ready", "pfnode_ready", "1 when the node takes packets (workers started, not draining)"),
    ("draining", "pfnode_draining", "1 while the node drains for shutdown"),
    ("connections", "pfnode_connections", "open WebSocket connections"),
    ("inflight", "pfnode_inflight_packets", "packets accepted and not yet answered"),
    ("blocked", "pfnode_blocked_packets", "packets waiting for their dependencies"),
    ("forwarded", "pfnode_forwarded_packets", "packets the hub has forwarded to connected reactors, unanswered"),
    ("parked", "pfnode_parked_packets", "forwarded packets waiting for a reactor after theirs went away"),
    ("results_stored", "pfnode_result_store_entries", "completed results kept for dependencies"),
    ("reactors", "pfnode_reactors", "connected links known to run packets for the hub"),
)
# lane state key -> (metric, help), one series per lane
_LANE_GAUGES = (
    ("workers", "pfnode_lane_workers", "ready workers in the lane"),
    ("target", "pfnode_lane_target_workers", "workers the lane should have (after mc:scale or autoscaling)"),
    ("busy", "pfnode_lane_busy_workers", "workers of the lane holding at least one packet"),
    ("held", "pfnode_lane_held_packets", "packets held by the lane's workers, running or prefetched"),
    ("queued", "pfnode_lane_queued_packets", "packets waiting in the node's queue for the lane (queue depth)"),
)
# --dask: the cluster's state (one series per state, 1 for the current one), its gauges and its events
DASK_STATES = ("starting", "ready", "unreachable", "restarting")
_DASK_GAUGES = (
    ("workers", "pfnode_dask_workers", "workers of the Dask cluster"),
    ("threads", "pfnode_dask_threads", "worker threads of the Dask cluster"),
    ("window", "pfnode_dask_window", "packets the node lets be on the Dask cluster at once (--dask-window)"),
    ("on_cluster", "pfnode_dask_packets_on_cluster", "packets handed to the Dask cluster, not yet ended"),
    ("running", "pfnode_dask_packets_running", "packets on the Dask cluster that started on a worker"),
    ("queued", "pfnode_dask_queued_packets", "packets waiting in the node's queue for the Dask cluster"),
)
DASK_EVENTS = ("submitted", "completed", "failed", "worker_lost", "retried", "requeued", "expired", "cancelled",
               "unavailable", "reclaimed")
# Metrics attribute -> (metric, help), for the unlabelled counters
_PLAIN_COUNTERS = (
    ("frames_in", "pfnode_received_frames_total", "WebSocket messages received from peers"),
    ("bytes_in", "pfnode_received_bytes_total", "payload bytes of the WebSocket messages received"),
    ("frames_out", "pfnode_sent_frames_total", "WebSocket messages sent to peers"),
    ("bytes_out", "pfnode_sent_bytes_total", "payload bytes of the WebSocket messages sent"),
    ("connections_opened", "pfnode_connections_opened_total", "WebSocket connections accepted"),
    ("internal_errors", "pfnode_internal_errors_total", "internal errors (each logged with an incident id)"),
)


def exit_cause(*, running: bool, kill_reason: str | None, retired: bool) -> str:
    """Why a worker that ended unplanned is replaced, as pfnode_worker_restarts_total's
    `cause`: "deadline" (killed for a packet's deadline), "protocol" (killed: it broke the
    pipe protocol), "killed" (killed by the node for another reason), "memory" (it retired
    itself after a handler exceeded its memory cap), "crash" (it died running a packet),
    "exit" (it died on its own, idle). The seventh cause, "start" (a replacement failed to
    start), is the supervisor's to report. A worker retired by a resize, or stopped at
    shutdown, is not a restart: do not count those."""
    if kill_reason is not None:
        return {"deadline": "deadline", "protocol error": "protocol"}.get(kill_reason, "killed")
    if retired:
        return "memory"
    return "crash" if running else "exit"


class _Counter:
    """One labelled counter family as plain counts; bounded label sets."""

    __slots__ = ("name", "help", "labels", "values")

    def __init__(self, name: str, help: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.help = help
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, *labelvalues: str, amount: float = 1) -> None:
        values = self.values
        if labelvalues not in values:
            if len(values) >= MAX_SERIES:
                labelvalues = (OTHER,) * len(labelvalues)
            values.setdefault(labelvalues, 0)
        values[labelvalues] += amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.help, labels=self.labels)
        for labelvalues, value in sorted(self.values.items()):
            family.add_metric(labelvalues, value)
        return family


class _Lane:
    """One lane's counts: packets by group (succeeded) and by (group, code) (failed), and
    its two histograms as bucket counts (the last slot is +Inf) and sums."""

    __slots__ = ("ok", "failed", "rtt", "rtt_sum", "run", "run_sum_ms")

    def __init__(self) -> None:
        self.ok: dict[str, int] = {}
        self.failed: dict[tuple[str, str], int] = {}
        self.rtt = [0] * (len(BUCKETS_S) + 1)
        self.rtt_sum = 0.0
        self.run = [0] * (len(BUCKETS_S) + 1)
        self.run_sum_ms = 0.0


def _cumulative(counts: list[int]) -> list[tuple[str, int]]:
    total, out = 0, []
    for le, count in zip(_LE, counts):
        total += count
        out.append((le, total))
    return out


class Metrics:
    """The node's metrics. The node calls the event methods (the packet and frame ones are
    on the hot path and cost a few dict and integer operations); `render()` answers
    `GET /metrics`. `state`, when given, is called once per scrape for the gauges."""

    def __init__(self, state: Callable[[], NodeState] | None = None, *,
                 info: dict[str, str] | None = None, process: bool = True) -> None:
        self.state = state
        self.info = dict(info or {})
        self.process = process  # also export the front process's CPU, memory and open files
        # hot-path state: read by the collector only
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_out = 0
        self.bytes_out = 0
        self._lanes: dict[Any, _Lane] = {}  # lane (None: forwarded, _UNTIMED) -> its counts
        # group -> round-trip histogram bucket counts (the last slot is +Inf), for the dashboard
        self._group_rtt: dict[str, list[int]] = {}
        self.connections_opened = 0
        self.internal_errors = 0
        self.state_errors = 0
        self._closed = _Counter("pfnode_connections_closed_total",
                                "connections closed, by WebSocket close code (1006: dropped without a close frame)",
                                ("code",))
        self._refused = _Counter("pfnode_connections_refused_total",
                                 "connections refused before the WebSocket handshake completed",
                                 ("reason",))
        self._rejected = _Counter("pfnode_rejected_frames_total",
                                  "frames answered with an error frame (not a packet: malformed, invalid, too large)",
                                  ("code",))
        self._restarts = _Counter("pfnode_worker_restarts_total",
                                  "workers replaced after an unplanned end", ("lane", "cause"))
        self._auth = _Counter("pfnode_auth_failures_total",
                              "authentication and authorisation failures", ("reason",))
        self._admin = _Counter("pfnode_admin_actions_total",
                               "admin actions (mc:scale, ...) by outcome", ("action", "outcome"))
        self._registry: CollectorRegistry | None = None
        # the node's counts by name, as /status shows them ("completed", "failed_PF408",
        # "refused_PF004", "forbidden", ...): kept by the same event calls as the series above
        self.counts: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------ hot path
    def packet_done(self, group: str, lane: str | None, code: str | None, rtt_s: float,
                    run_ms: float | None) -> None:
        """A packet was settled: `code` None for success, else its PF code; `lane` None for
        a forwarded one; `rtt_s` from its admission to its answer; `run_ms` its handler's
        run time as reported (None or 0: it never ran)."""
        try:
            counts = self._lanes[lane]
            if code is None:
                counts.ok[group] += 1
            else:
                counts.failed[group, code] += 1
        except KeyError:
            counts = self._first_of(group, lane, code)
        slot = bisect_left(BUCKETS_S, rtt_s)
        counts.rtt[slot] += 1
        counts.rtt_sum += rtt_s
        by_group = self._group_rtt.get(group)
        if by_group is None:
            by_group = self._group_rtt_of(group)
        by_group[slot] += 1
        if run_ms:
            counts.run[bisect_left(_BUCKETS_MS, run_ms)] += 1
            counts.run_sum_ms += run_ms

    def _group_rtt_of(self, group: str) -> list[int]:
        """The round-trip buckets of a group first seen (one outside GROUPS counts as "other")."""
        name = group if group in GROUPS else OTHER
        return self._group_rtt.setdefault(name, [0] * (len(BUCKETS_S) + 1))

    def packet_submitted(self, from_cache: bool = False) -> None:
        """A packet was admitted (`from_cache`: and answered at once from rm:cache's memo)."""
        counts = self.counts
        counts["submitted"] += 1
        if from_cache:
            counts["answered_from_cache"] += 1

    def answered(self, code: str | None) -> None:
        """A packet's one answer went to a submitter still there (code None: success)."""
        counts = self.counts
        if code is None:
            counts["completed"] += 1
        else:
            counts["failed"] += 1
            counts[f"failed_{code}"] += 1

    def packet_refused(self, group: str, code: str) -> None:
        """A submit refused at admission (PF409, PF004, PF001, PF503 ...)."""
        self.counts[f"refused_{code}"] += 1
        self.packet_ended(group, code)

    def packet_cancelled(self, group: str, counted: bool = True) -> None:
        """A packet whose submitter left; `counted`: it never ran (a running one is counted
        in pfnode_packets_total when it ends)."""
        self.counts["cancelled"] += 1
        if counted:
            self.packet_ended(group, "cancelled")

    def packet_ended(self, group: str, outcome: str | None) -> None:
        """A packet that ended without running or being timed: refused at admission (PF409,
        PF004, PF001, ...), answered before the node was ready (PF503), or CANCELLED (its
        submitter left while it waited). Counted in pfnode_packets_total only."""
        try:
            counts = self._lanes[_UNTIMED]
            if outcome is None:
                counts.ok[group] += 1
            else:
                counts.failed[group, outcome] += 1
        except KeyError:
            self._first_of(group, _UNTIMED, outcome)

    def _first_of(self, group: str, lane: Any, code: str | None) -> _Lane:
        """Count the first packet of a (group, lane, outcome), its labels checked: a group
        or code outside the known ones counts as "other" (a reactor may relay any code).
        (An ErrorCode is counted by its value, but it comes here every time: pass `.value`.)"""
        code = getattr(code, "value", code)
        counts = self._lanes.get(lane)
        if counts is None:
            counts = self._lanes[lane] = _Lane()
        if group not in GROUPS:
            group = OTHER
        if code is None:
            counts.ok[group] = counts.ok.get(group, 0) + 1
        else:
            key = (group, code if code in OUTCOMES else OTHER)
            counts.failed[key] = counts.failed.get(key, 0) + 1
        return counts

    def frame_in(self, nbytes: int) -> None:
        """A complete WebSocket message from a peer (hot path)."""
        self.frames_in += 1
        self.bytes_in += nbytes

    def frame_out(self, nbytes: int) -> None:
        """A WebSocket message sent to a peer (hot path)."""
        self.frames_out += 1
        self.bytes_out += nbytes

    # ------------------------------------------------------------------ events
    def frame_rejected(self, code: str) -> None:
        code = getattr(code, "value", code)
        self.counts[f"rejected_{code}"] += 1
        self._rejected.inc(code if code in OUTCOMES else OTHER)

    def connection_opened(self) -> None:
        self.connections_opened += 1
        self.counts["connections"] += 1

    def connection_closed(self, code: int | None) -> None:
        self._closed.inc("none" if code is None else str(code) if code in CLOSE_CODES else OTHER)

    def connection_refused(self, reason: str) -> None:
        """reason: max_connections, draining, unauthenticated, tls, ... (a word of the code's, never the peer's)."""
        self.counts["connections_refused"] += 1
        self._refused.inc(reason)

    def worker_restart(self, lane: str, cause: str) -> None:
        """cause: one of CAUSES (see exit_cause)."""
        self._restarts.inc(lane, cause if cause in CAUSES else OTHER)

    def auth_failure(self, reason: str) -> None:
        """reason: missing_token, bad_token, forbidden, ... (a word of the code's)."""
        self.counts["forbidden" if reason == "forbidden" else "auth_failures"] += 1
        self._auth.inc(reason)

    def admin_action(self, action: str, outcome: str = "ok") -> None:
        """action: the built-in's key (mc:scale); outcome: ok, invalid, failed, forbidden."""
        self._admin.inc(action, outcome)

    def internal_error(self) -> None:
        self.internal_errors += 1
        self.counts["internal_errors"] += 1

    # ------------------------------------------------------------------ the dashboard's reads
    def by_group(self) -> dict[str, dict[str, Any]]:
        """Per group, the packets ended so far: `ok`, `failed` (a PF code), `cancelled`, and
        `rtt`, the round-trip histogram's bucket counts (BUCKETS_S, then +Inf) of those that
        were timed. Counts only grow: rates and recent percentiles are differences of two reads."""
        out: dict[str, dict[str, Any]] = {}

        def of(group: str) -> dict[str, Any]:
            return out.setdefault(group, {"ok": 0, "failed": 0, "cancelled": 0, "rtt": [0] * len(_LE)})

        for counts in self._lanes.values():
            for group, n in counts.ok.items():
                of(group)["ok"] += n
            for (group, outcome), n in counts.failed.items():
                of(group)["cancelled" if outcome == CANCELLED else "failed"] += n
        for group, buckets in self._group_rtt.items():
            of(group)["rtt"] = list(buckets)
        return out

    def restarts(self) -> dict[str, dict[str, int]]:
        """Workers replaced after an unplanned end: lane -> cause -> count."""
        out: dict[str, dict[str, int]] = {}
        for (lane, cause), n in self._restarts.values.items():
            out.setdefault(lane, {})[cause] = int(n)
        return out

    # ------------------------------------------------------------------ scrape
    @property
    def registry(self) -> CollectorRegistry:
        """The registry `render` exposes, built at the first scrape (so that a Metrics
        costs nothing until then); register more collectors here."""
        if self._registry is None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(self)  # prometheus_client calls collect() per scrape
            if self.process:
                ProcessCollector(registry=registry)
                PlatformCollector(registry=registry)
            self._registry = registry
        return self._registry

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition for `GET /metrics`: (body, content type). `accept`: the request's
        Accept header (OpenMetrics when it asks for it, else the Prometheus text format)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def collect(self) -> Iterator[Any]:
        """Every pfnode_* family, from the counts kept and one call of `state`."""
        yield from self._packet_families()
        yield from self._timing_families()
        for attr, name, help in _PLAIN_COUNTERS:
            yield CounterMetricFamily(name, help, value=getattr(self, attr))
        for counter in (self._closed, self._refused, self._rejected, self._restarts, self._auth, self._admin):
            yield counter.family()
        if self.info:
            family = GaugeMetricFamily("pfnode_info", "the node's version and configuration; always 1",
                                       labels=sorted(self.info))
            family.add_metric([self.info[k] for k in sorted(self.info)], 1)
            yield family
        yield from self._state_families()
        yield CounterMetricFamily("pfnode_state_errors_total",
                                  "scrapes whose node-state gauges could not be read", value=self.state_errors)

    def _packet_families(self) -> Iterator[CounterMetricFamily]:
        by_outcome: dict[tuple[str, str], int] = {}
        relays: dict[str, int] = {}
        for lane, counts in self._lanes.items():
            succeeded = (((group, SUCCESS), n) for group, n in counts.ok.items())
            for (group, outcome), count in itertools.chain(succeeded, counts.failed.items()):
                by_outcome[group, outcome] = by_outcome.get((group, outcome), 0) + count
                if lane is None:
                    relays[outcome] = relays.get(outcome, 0) + count
        family = CounterMetricFamily("pfnode_packets_total", "packets ended, by group and outcome "
                                     "(success, a PF code, or cancelled)", labels=("group", "outcome"))
        for labels, count in sorted(by_outcome.items()):
            family.add_metric(labels, count)
        yield family
        family = CounterMetricFamily("pfnode_hub_relays_total", "packets with no local handler, given to "
                                     "the hub to relay to a connected reactor, by how they ended",
                                     labels=("outcome",))
        for outcome, count in sorted(relays.items()):
            family.add_metric((outcome,), count)
        yield family

    def _timing_families(self) -> Iterator[HistogramMetricFamily]:
        rtt = HistogramMetricFamily("pfnode_packet_round_trip_seconds", "from a packet's admission "
                                    "to its answer, at the node", labels=("lane",))
        run = HistogramMetricFamily("pfnode_packet_run_seconds", "handler run time as the worker (or "
                                    "the remote reactor) reported it", labels=("lane",))
        lanes = [(_lane_label(lane), counts) for lane, counts in self._lanes.items() if lane != _UNTIMED]
        for label, counts in sorted(lanes, key=lambda item: item[0]):
            rtt.add_metric((label,), _cumulative(counts.rtt), counts.rtt_sum)
            if any(counts.run):
                run.add_metric((label,), _cumulative(counts.run), counts.run_sum_ms / 1000)
        yield rtt
        yield run

    def _state_families(self) -> Iterable[GaugeMetricFamily]:
        if self.state is None:
            return []
        try:
            state = self.state()
            families = []
            for key, name, help in _NODE_GAUGES:
                if key in state:
                    families.append(GaugeMetricFamily(name, help, value=float(state[key])))
            elements = state.get("elements")
            if elements:
                count = GaugeMetricFamily("pfnode_element_resources", "resources the standard elements hold "
                                          "(barriers, watchers, subscriptions, buffers, locks, cache entries)",
                                          labels=("kind",))
                size = GaugeMetricFamily("pfnode_element_resource_bytes", "bytes those resources hold",
                                         labels=("kind",))
                for kind, (n, nbytes) in sorted(elements.items()):
                    count.add_metric((kind,), float(n))
                    size.add_metric((kind,), float(nbytes))
                families += [count, size]
            if state.get("dask"):
                families += _dask_families(state["dask"])
            lanes = state.get("lanes") or {}
            for key, name, help in _LANE_GAUGES:
                family = GaugeMetricFamily(name, help, labels=("lane",))
                for lane, values in sorted(lanes.items()):
                    if key in values:
                        family.add_metric((lane,), float(values[key]))
                if family.samples:
                    families.append(family)
            return families
        except Exception:  # a scrape must still answer with what is known
            self.state_errors += 1
            log.exception("metrics: reading the node's state failed")
            return []


def _lane_label(lane: Any) -> str:
    return HUB_LANE if lane is None else str(lane)


def _dask_families(dask: DaskState) -> list[Any]:
    """--dask: the cluster's state, gauges and the dask lane's events (fixed label values)."""
    state = GaugeMetricFamily("pfnode_dask_state", "1 for the Dask cluster's current state (starting, ready, "
                              "unreachable, restarting), 0 for the others", labels=("state",))
    for name in DASK_STATES:
        state.add_metric((name,), 1.0 if dask.get("state") == name else 0.0)
    families: list[Any] = [state]
    for key, name, help in _DASK_GAUGES:
        if key in dask:
            families.append(GaugeMetricFamily(name, help, value=float(dask[key])))
    counters = dask.get("counters") or {}
    events = CounterMetricFamily("pfnode_dask_tasks_total", "the dask lane's events since start: packets "
                                 "submitted (runs), completed, failed, worker_lost, retried, requeued, expired, "
                                 "cancelled, unavailable (PF503), workers reclaimed", labels=("event",))
    for name in DASK_EVENTS:
        events.add_metric((name,), float(counters.get(name, 0)))
    families.append(events)
    return families
