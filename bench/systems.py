"""What each measured system is, and one function per family of measurements.

The declarations first (the nodes and servers started, the df:noop rows, the lanes, the ed load
phases, the payloads, the fairness lanes, the fault-recovery nodes), then `start_servers`, then the
families, each called once per repeat: `measure_systems`, `measure_lanes`, `measure_ed_load`,
`measure_payloads`, `measure_fairness`, `measure_faults`, `measure_consume`, `measure_client_map`; then the
checks of the nodes' own counters against what the clients sent, and `stop_servers`. bench/run.py calls them in
that order; the hub relay's systems (bench/hub.py) are at the end.
"""
from __future__ import annotations

import argparse
import ast
import re
from dataclasses import dataclass, field

from bench import clients, servers
from bench.common import DATA, BenchError, progress
from bench.processes import ChildServer, NodeProcess, Processes, node_health, serve_takes, worker_start_of

# The node loads the spec's examples (df:noop) and the bench-only handlers (cf/ed/rm:noop,
# df/cf:sleep_ms, df:spin_us, df:crash); its workers run with the repository root as cwd, so
# `bench.handlers_bench` imports.
NODE_HANDLERS = "pfnode.handlers.examples,bench.handlers_bench"
# The pipes-only node: the main node's command with no shared memory between front and workers.
PIPES_ONLY_ARGS = ("--worker-shm-bytes", "0")
# The nodes run.py starts: name -> (transport, extra arguments).
NODES = {"picows": ("picows", ()), "websockets": ("websockets", ()), "pipes": ("picows", PIPES_ONLY_ARGS),
         "pure": ("picows", ())}
# The pure node: the main node's command with every compiled module's .py (pfnode/native.py): what
# the compiled hot path saves, measured side by side.
NODE_ENVS = {"pure": {"PFNODE_PURE": "1"}}
# The bare echo servers (bench/servers.py): the transport's cost with no node behind it.
ECHO_SERVERS = {"websockets": servers.websockets_echo_server, "picows": servers.picows_echo_server}


def serve_argv(workers: int, transport: str = "picows", extra: tuple[str, ...] = (),
               handlers: str = NODE_HANDLERS) -> list[str]:
    return ["serve", "--port", "0", "--transport", transport, "--workers", str(workers),
            "--handlers", handlers, *extra]


@dataclass(frozen=True)
class Row:
    """One df:noop system of the main table: sent to a node (NODES), an echo server
    (ECHO_SERVERS), or neither (the executor, driven in-process)."""
    key: str  # its key in the report (runs, medians)
    label: str  # its name in the table; {w}: the worker count
    plot_label: str
    node: str | None = None
    echo: str | None = None
    tag: str = "r"  # packet ids start with this and the repeat


SYSTEMS = (
    Row("pfnode", "pfnode df:noop, {w} workers", "pfnode\n(picows)", node="picows", tag="r"),
    Row("executor", "ProcessPoolExecutor({w}), no network", "ProcessPool\nExecutor"),
    Row("echo", "websockets echo server, no workers", "websockets\necho server", echo="websockets", tag="r"),
    Row("pfnode_websockets", "pfnode df:noop, websockets transport", "pfnode\n(websockets\ntransport)",
        node="websockets", tag="w"),
    Row("echo_picows", "picows echo server (orjson), no workers", "picows\necho server\n(orjson)",
        echo="picows", tag="p"),
    Row("pfnode_pure", "pfnode df:noop, PFNODE_PURE=1", "pfnode\n(pure\nPython)", node="pure", tag="u"),
)
GROUPS = ("cf", "df", "ed", "rm")  # the lanes, each measured with its own no-op
# Payload sizes: float64 arrays of this many bytes (12, 8 192 and 131 072 values), each sent as a
# JSON list of floats and as an $ndarray object. The larger ones get fewer packets.
PAYLOAD_SIZES = (("100 B", 96), ("64 KiB", 64 * 1024), ("1 MiB", 1024 * 1024))
PAYLOAD_PACKET_DIVISOR = {"100 B": 1, "64 KiB": 4, "1 MiB": 32}
PAYLOAD_RTT_DIVISOR = {"100 B": 1, "64 KiB": 4, "1 MiB": 20}
LARGE_PAYLOAD_BYTES = 1024 * 1024  # from this size on the throughput window is --payload-large-window
ENCODINGS = ("json", "ndarray")
# The payload rows over the node's shared-memory threshold (32 KiB), also sent to the pipes-only node.
SHM_COMPARE_SIZES = ("64 KiB", "1 MiB")

# Fairness between clients: the lanes client A floods while client B sends one packet at a time,
# each with its own sleep_ms handler (bench/handlers_bench.py), so the lane is full, the CPUs not.
FAIR_LANES = ("df", "cf")
# Fault recovery: nodes of their own (crashes would show in the main node's counters and replace
# the workers whose CPU the other families read), by how their workers start. The fork server is
# the default; `spawn` (a new interpreter per worker) only where `pfnode serve` takes the flag.
WORKER_START_FLAG = "--worker-start"
FAULT_NODES = {"fork": "fault-fork", "spawn": "fault-spawn"}  # worker start -> node name
FAULT_NODE_ARGS = ("--ed-workers", "0", "--rm-workers", "0")  # only df (and the one cf) workers
# Each client's conditions: no crashes, then every crash_every-th packet a df:crash (rotated).
FAULT_CONDITIONS = ("clean", "faulty")
# df:consume: the same df:noop runs sent by the client one packet each, as one df:consume packet,
# and as one with `chunk` items per sub-packet; against the main node.
CONSUME_WAYS = ("separate", "consume", "chunked")


def ed_phases(args: argparse.Namespace, rep: int) -> list[dict]:
    """The ed load phases, rotated each repeat: df lane idle; kept busy by df:sleep_ms packets
    (the lane full, the CPUs not); flooded with df:noop (the front itself saturated)."""
    sleep_s = args.ed_df_sleep_ms / 1000
    phases = [{"name": "idle"},
              {"name": "loaded", "element": "sleep_ms", "data": args.ed_df_sleep_ms, "inflight": args.ed_df_inflight,
               "saturates": "lane", "saturate_s": 10 + args.ed_df_inflight * sleep_s},
              {"name": "flood", "element": "noop", "data": DATA, "inflight": args.ed_flood_inflight,
               "saturates": "front", "saturate_s": 10}]
    k = rep % len(phases)
    return phases[k:] + phases[:k]


def payload_variants(args: argparse.Namespace) -> list[dict]:
    """The payload measurements, in the order a client runs them: each size as a JSON list and
    as an $ndarray. Larger payloads get fewer packets (and the largest a smaller window)."""
    variants = []
    for size, nbytes in PAYLOAD_SIZES:
        packets = max(10, args.payload_packets // PAYLOAD_PACKET_DIVISOR[size])
        rtt_packets = max(5, args.payload_rtt_packets // PAYLOAD_RTT_DIVISOR[size])
        window = args.payload_large_window if nbytes >= LARGE_PAYLOAD_BYTES else args.payload_window
        for encoding in ENCODINGS:
            variants.append({"size": size, "nbytes": nbytes, "encoding": encoding, "packets": packets,
                             "rtt_packets": rtt_packets, "window": window,
                             "warmup": max(2 * window, packets // 10)})
    return variants


def fair_lanes(args: argparse.Namespace, rep: int) -> list[dict]:
    """fairness_client's lanes, rotated each repeat."""
    lanes = [{"lane": lane, "group": lane, "sleep_ms": args.fair_sleep_ms, "window": args.fair_window,
              "samples": args.fair_samples, "warmup": 5, "pause_s": args.fair_sleep_ms / 1000,
              "saturate_s": 10 + args.fair_window * args.fair_sleep_ms / 1000} for lane in FAIR_LANES]
    k = rep % len(lanes)
    return lanes[k:] + lanes[:k]


def fault_conditions(args: argparse.Namespace, rep: int) -> list[dict]:
    """fault_client's conditions, rotated each repeat."""
    conditions = [{"name": name, "crash_every": args.fault_crash_every if name == "faulty" else 0}
                  for name in FAULT_CONDITIONS]
    k = rep % len(conditions)
    return conditions[k:] + conditions[:k]


@dataclass
class Plan:
    """The counts and time limits of one run, derived from its arguments."""
    args: argparse.Namespace
    warmup: int = 0
    timeout_s: float = 0.0
    group_warmup: int = 0
    group_timeout_s: float = 0.0
    ed_timeout_s: float = 0.0
    variants: list[dict] = field(default_factory=list)
    pipes_variants: list[dict] = field(default_factory=list)
    payload_timeout_s: float = 0.0
    fair_timeout_s: float = 0.0
    fault_timeout_s: float = 0.0
    fault_warmup: int = 0
    consume_timeout_s: float = 0.0
    map_warmup: int = 0
    map_timeout_s: float = 0.0

    @classmethod
    def of(cls, args: argparse.Namespace) -> "Plan":
        """The df:noop rows' counts and limits (all bench/hub.py needs)."""
        plan = cls(args)
        plan.warmup = warmup_packets(args.packets)
        # Generous: a run fails only if a system manages under 200 packets/s or hangs.
        plan.timeout_s = 30 + (plan.warmup + args.packets) / 200 + args.rtt_packets / 100
        return plan

    @classmethod
    def of_run(cls, args: argparse.Namespace) -> "Plan":
        """bench/run.py's: also the lanes', the ed load's and the payloads'."""
        plan = cls.of(args)
        plan.group_warmup = warmup_packets(args.group_packets)
        plan.group_timeout_s = 30 + (plan.group_warmup + args.group_packets) / 200 + args.group_rtt_packets / 100
        # The drain after the loaded phase: every df:sleep_ms in flight run on one worker, and then some.
        plan.ed_timeout_s = 30 + args.ed_df_inflight * args.ed_df_sleep_ms / 1000
        plan.variants = payload_variants(args)
        plan.pipes_variants = [v for v in plan.variants if v["size"] in SHM_COMPARE_SIZES]
        # A 1 MiB JSON list goes at about 30 packets/s on 2 cores: allow 1 packet/s and then some.
        plan.payload_timeout_s = 30 + max(v["warmup"] + v["packets"] + v["rtt_packets"] for v in plan.variants)
        # The drain of client A's window on one worker, and B's round trips at 10x their sleep.
        plan.fair_timeout_s = 30 + (args.fair_window + 10 * args.fair_samples) * args.fair_sleep_ms / 1000
        # A replacement as a new interpreter can take seconds on a loaded machine: one per crash in a window.
        plan.fault_timeout_s = 30 + 5 * (args.fault_window // max(1, args.fault_crash_every) + 1)
        plan.fault_warmup = max(2 * args.fault_window, 200)
        # Generous: a run fails only under 100 items/s.
        plan.consume_timeout_s = 30 + args.consume_items / 100
        plan.map_warmup = warmup_packets(args.map_items)
        # Generous: a run fails only under 200 items/s.
        plan.map_timeout_s = 30 + (plan.map_warmup + args.map_items) / 200
        return plan

    def common(self) -> dict:
        """ws_client's arguments for a df:noop row."""
        a = self.args
        return dict(packets=a.packets, rtt_packets=a.rtt_packets, window=a.window, warmup=self.warmup,
                    timeout_s=self.timeout_s)


def warmup_packets(packets: int) -> int:
    return min(1000, max(200, packets // 10))


@dataclass
class Results:
    """Every measurement of a run, as the clients returned them, per repeat."""
    runs: dict[str, list[dict]] = field(default_factory=lambda: {row.key: [] for row in SYSTEMS})
    group_runs: dict[str, list[dict]] = field(default_factory=lambda: {group: [] for group in GROUPS})
    ed_runs: list[dict] = field(default_factory=list)
    payload_runs: dict[str, list[list[dict]]] = field(
        default_factory=lambda: {"pfnode": [], "echo": [], "pfnode_pipes": []})
    fair_runs: list[dict] = field(default_factory=list)
    fault_runs: dict[str, list[dict]] = field(default_factory=dict)  # worker start -> runs
    consume_runs: list[dict] = field(default_factory=list)
    map_runs: list[dict] = field(default_factory=list)  # pfnode.Client.map
    lanes_at_start: dict = field(default_factory=dict)  # the main node's /status lanes
    hot_paths: dict[str, dict] = field(default_factory=dict)  # each node's /status hot_path
    large_packets: int = 0  # the payload packets over the shm threshold sent to the main node
    fault_checks: dict[str, dict] = field(default_factory=dict)  # worker start -> counters, expected
    spawn_skipped: str | None = None  # why the fault-recovery family has no spawn node


# ---------------------------------------------------------------------------- the servers

@dataclass
class Servers:
    """The nodes and echo servers run.py measures, started once for the whole run."""
    nodes: dict[str, NodeProcess]
    echoes: dict[str, ChildServer]
    lanes_at_start: dict  # the main node's /status lanes
    lane_pids: dict[str, list[int]]  # the main node's workers of each lane
    pipes_df_pids: list[int]
    fault_nodes: dict[str, NodeProcess]  # the fault-recovery nodes, by how their workers start
    spawn_skipped: str | None  # why there is no spawn node (None: there is one)
    hot_paths: dict[str, dict] = field(default_factory=dict)  # each node's /status hot_path (pfnode/native.py)

    def endpoint(self, row: Row) -> str:
        return self.nodes[row.node].endpoint if row.node else f"ws://127.0.0.1:{self.echoes[row.echo].ready}/"

    def cpu_pids(self, row: Row) -> dict[str, list[int]]:
        if row.node:
            node = self.nodes[row.node]
            return {"front": [node.front_pid], "workers": node.worker_pids}
        return {"server": [self.echoes[row.echo].pid]}

    def check_alive(self) -> None:
        for name, echo in self.echoes.items():
            if not echo.alive():
                raise BenchError(f"the {name} echo server exited with {echo.proc.exitcode}")
        for node in (*self.nodes.values(), *self.fault_nodes.values()):
            if not node.alive():
                raise BenchError(f"the {node.name} node exited during the run:\n{node.log_text()}")


def fault_node_argvs(workers: int) -> tuple[dict[str, list[str]], str | None]:
    """The fault-recovery nodes' argv by worker start, and why the spawn node is left out (None:
    it is not): it needs `pfnode serve --worker-start`, which this checkout may not have yet."""
    if serve_takes(WORKER_START_FLAG):
        return {start: serve_argv(workers, extra=(*FAULT_NODE_ARGS, WORKER_START_FLAG, start))
                for start in FAULT_NODES}, None
    return {"fork": serve_argv(workers, extra=FAULT_NODE_ARGS)}, (
        f"this checkout's `pfnode serve` has no {WORKER_START_FLAG} flag (Settings.worker_start): "
        f"no spawn node to compare with")


def start_servers(procs: Processes, workers: int) -> Servers:
    progress("starting the nodes (picows, the default transport; websockets; picows with pipes only; "
             "the fault-recovery nodes) and the echo servers ...")
    fault_argvs, spawn_skipped = fault_node_argvs(workers)
    started = procs.start_nodes({**{name: serve_argv(workers, transport, extra)
                                    for name, (transport, extra) in NODES.items()},
                                 **{FAULT_NODES[start]: argv for start, argv in fault_argvs.items()}},
                                NODE_ENVS)
    nodes = {name: started[name] for name in NODES}
    fault_nodes = {start: started[FAULT_NODES[start]] for start in fault_argvs}
    for start, node in fault_nodes.items():
        if worker_start_of(node.front_pid) != start:
            raise BenchError(f"the {node.name} node's workers were not started by {start} "
                             f"(pfnode {' '.join(node.argv)})")
    if spawn_skipped:
        progress(f"fault recovery: {spawn_skipped}")
    for node in started.values():
        progress(f"{node.name} node at {node.endpoint} (front pid {node.front_pid}, workers {node.worker_pids}; "
                 f"pfnode {' '.join(node.argv)})")
    echoes = {name: procs.start_server(f"{name}-echo-server", func) for name, func in ECHO_SERVERS.items()}
    for name, echo in echoes.items():
        progress(f"{name} echo server at ws://127.0.0.1:{echo.ready}/ (pid {echo.pid})")
    main = nodes["picows"]
    lanes = node_health(main.endpoint).get("lanes", {})
    lane_pids = {lane: lanes.get(lane, {}).get("pids") or main.worker_pids for lane in GROUPS}
    progress("lane workers: " + ", ".join(f"{lane} {lane_pids[lane]}" for lane in GROUPS))
    pipes = nodes["pipes"]
    pipes_df = node_health(pipes.endpoint).get("lanes", {}).get("df", {}).get("pids") or pipes.worker_pids
    hot_paths = {name: node_health(node.endpoint).get("hot_path", {}) for name, node in nodes.items()}
    progress("hot path: " + ", ".join(f"{name} node {hot.get('mode', '?')} ({hot.get('compiled', '?')} of "
                                      f"{hot.get('of', '?')} modules compiled)" for name, hot in hot_paths.items()))
    return Servers(nodes, echoes, lanes, lane_pids, pipes_df, fault_nodes, spawn_skipped, hot_paths)


# ---------------------------------------------------------------------------- the families

def _label(plan: Plan, rep: int, what: str) -> str:
    return f"repeat {rep + 1}/{plan.args.repeats} {what}"


def _say(label: str, r: dict) -> None:
    progress(f"{label}: {r['throughput']:,.0f} packets/s, RTT p50 {r['rtt_p50_us']:,.0f} µs, "
             f"p99 {r['rtt_p99_us']:,.0f} µs")


def measure_systems(procs: Processes, servers: Servers, plan: Plan, rep: int, results: Results) -> None:
    """Each df:noop row once, a fresh client each, the order rotated so none always goes first."""
    k = rep % len(SYSTEMS)
    for row in SYSTEMS[k:] + SYSTEMS[:k]:
        label = _label(plan, rep, row.key)
        limit_s = 2 * plan.timeout_s + 30
        if row.node is None and row.echo is None:
            r = procs.call(label, clients.executor_client, limit_s, workers=plan.args.workers, **plan.common())
            r["server_cpu_us_per_packet"] = r["workers_cpu_us_per_packet"]
        else:
            r = procs.call(label, clients.ws_client, limit_s, endpoint=servers.endpoint(row),
                           mode="pfnode" if row.node else "echo", tag=f"{row.tag}{rep}",
                           cpu_pids=servers.cpu_pids(row), **plan.common())
            if row.node:
                r["server_cpu_us_per_packet"] = r["front_cpu_us_per_packet"] + r["workers_cpu_us_per_packet"]
        results.runs[row.key].append(r)
        _say(label, r)


def measure_lanes(procs: Processes, servers: Servers, plan: Plan, rep: int, results: Results) -> None:
    """Each lane's no-op against the main node, measured like the pfnode row; the order rotates."""
    a, k = plan.args, rep % len(GROUPS)
    node = servers.nodes["picows"]
    for group in GROUPS[k:] + GROUPS[:k]:
        label = _label(plan, rep, f"lane {group}:noop")
        r = procs.call(label, clients.ws_client, 2 * plan.group_timeout_s + 30, endpoint=node.endpoint,
                       mode="pfnode", tag=f"g{rep}{group}", group=group, element="noop",
                       cpu_pids={"front": [node.front_pid], "lane": servers.lane_pids[group]},
                       packets=a.group_packets, rtt_packets=a.group_rtt_packets, window=a.window,
                       warmup=plan.group_warmup, timeout_s=plan.group_timeout_s)
        results.group_runs[group].append(r)
        _say(label, r)


def measure_ed_load(procs: Processes, servers: Servers, plan: Plan, rep: int, results: Results) -> None:
    """ed latency with the df lane idle, kept busy, and flooded (the phase order rotates)."""
    a = plan.args
    node = servers.nodes["picows"]
    phases = ed_phases(a, rep)
    label = _label(plan, rep, "ed load")
    limit_s = len(phases) * (plan.ed_timeout_s + 2 * a.ed_seconds) + 30
    r = procs.call(label, clients.ed_load_client, limit_s, endpoint=node.endpoint, seconds=a.ed_seconds,
                   phases=phases, tag=f"e{rep}", timeout_s=plan.ed_timeout_s, front_pids=[node.front_pid])
    results.ed_runs.append(r)
    parts = [f"{name} p50 {r[name]['p50_ms']:.3f} / p99 {r[name]['p99_ms']:.3f} / max {r[name]['max_ms']:.3f} ms"
             + (f" (df {r[name]['df_throughput']:,.1f} packets/s, saturated: {r[name]['df_saturated']})"
                if name != "idle" else "") for name in r["order"]]
    progress(f"{label}: ed RTT " + "; ".join(parts))


def measure_payloads(procs: Processes, servers: Servers, plan: Plan, rep: int, results: Results) -> None:
    """The payload variants against the main node and the echo server, the large ones also against
    the pipes-only node, between the two: right after the main node one repeat, right before it
    the next."""
    main, pipes = servers.nodes["picows"], servers.nodes["pipes"]
    echo = servers.echoes["websockets"]
    calls = {
        "pfnode": dict(endpoint=main.endpoint, mode="pfnode", variants=plan.variants, tag=f"p{rep}",
                       cpu_pids={"front": [main.front_pid], "workers": servers.lane_pids["df"]}),
        "pfnode_pipes": dict(endpoint=pipes.endpoint, mode="pfnode", variants=plan.pipes_variants, tag=f"q{rep}",
                             cpu_pids={"front": [pipes.front_pid], "workers": servers.pipes_df_pids}),
        "echo": dict(endpoint=f"ws://127.0.0.1:{echo.ready}/", mode="echo", variants=plan.variants,
                     tag=f"p{rep}", cpu_pids={"server": [echo.pid]}),
    }
    order = ("pfnode", "pfnode_pipes", "echo") if rep % 2 == 0 else ("echo", "pfnode_pipes", "pfnode")
    limit_s = 60 + 2 * len(plan.variants) * plan.payload_timeout_s
    for system in order:
        label = _label(plan, rep, f"payloads {system}")
        rs = procs.call(label, clients.payload_client, limit_s, timeout_s=plan.payload_timeout_s, **calls[system])
        results.payload_runs[system].append(rs)
        progress(f"{label}: " + "; ".join(
            f"{r['size']} {r['encoding']} {r['throughput']:,.0f}/s"
            + (f" front {r['front_cpu_us_per_packet']:,.0f} µs/pkt" if system != "echo" else "") for r in rs))


def measure_fairness(procs: Processes, servers: Servers, plan: Plan, rep: int, results: Results) -> None:
    """Client B's round trips alone and while client A floods the same lane, for each fairness
    lane, against the main node; one client process with both connections. The lane order and
    whether B alone goes first rotate each repeat."""
    a = plan.args
    node = servers.nodes["picows"]
    lanes = fair_lanes(a, rep)
    label = _label(plan, rep, "fairness")
    r = procs.call(label, clients.fairness_client, len(lanes) * 2 * plan.fair_timeout_s + 30, endpoint=node.endpoint,
                   lanes=lanes, tag=f"f{rep}", timeout_s=plan.fair_timeout_s, alone_first=rep % 2 == 0)
    results.fair_runs.append(r)
    progress(f"{label}: " + "; ".join(
        f"{lane} B p50 alone {r[lane]['alone']['p50_ms']:.2f} ms, under A's flood {r[lane]['flood']['p50_ms']:.2f} ms "
        f"(A {r[lane]['flood']['a_throughput']:,.0f} packets/s, saturated: {r[lane]['flood']['a_saturated']})"
        for lane in FAIR_LANES))


def measure_faults(procs: Processes, servers: Servers, plan: Plan, rep: int, results: Results) -> None:
    """Healthy packets without and with crashing ones against each fault-recovery node, a fresh
    client each; the node order and the condition order rotate each repeat."""
    a = plan.args
    starts = list(servers.fault_nodes)
    k = rep % len(starts)
    conditions = fault_conditions(a, rep)
    limit_s = len(conditions) * (a.fault_seconds + a.fault_rtt_seconds + 3 * plan.fault_timeout_s) + 30
    for start in starts[k:] + starts[:k]:
        node = servers.fault_nodes[start]
        label = _label(plan, rep, f"faults ({start})")
        r = procs.call(label, clients.fault_client, limit_s, endpoint=node.endpoint, conditions=conditions,
                       workers=a.workers, seconds=a.fault_seconds, rtt_seconds=a.fault_rtt_seconds,
                       window=a.fault_window, spin_us=a.fault_spin_us, warmup=plan.fault_warmup, tag=f"x{rep}",
                       timeout_s=plan.fault_timeout_s)
        results.fault_runs.setdefault(start, []).append(r)
        progress(f"{label}: " + "; ".join(
            f"{name} {r[name]['loaded']['throughput']:,.0f} healthy/s, RTT p50 {r[name]['loaded']['rtt_p50_us']:,.0f} "
            f"µs (window {a.fault_window}) / {r[name]['one']['rtt_p50_us']:,.0f} µs (1 in flight), "
            f"{r[name]['loaded']['crashes_per_s']:,.1f} crashes/s" for name in FAULT_CONDITIONS))


def measure_consume(procs: Processes, servers: Servers, plan: Plan, rep: int, results: Results) -> None:
    """--consume-items df:noop runs three ways (CONSUME_WAYS) against the main node, one client;
    the order rotates each repeat."""
    a = plan.args
    node = servers.nodes["picows"]
    k = rep % len(CONSUME_WAYS)
    order = list(CONSUME_WAYS[k:] + CONSUME_WAYS[:k])
    label = _label(plan, rep, "df:consume")
    r = procs.call(label, clients.consume_client, 3 * 2 * plan.consume_timeout_s + 30, endpoint=node.endpoint,
                   items=a.consume_items, chunk=a.consume_chunk, window=a.window, tag=f"c{rep}",
                   timeout_s=plan.consume_timeout_s, order=order,
                   cpu_pids={"front": [node.front_pid], "workers": servers.lane_pids["df"]})
    results.consume_runs.append(r)
    progress(f"{label}: {a.consume_items:,} items: " + "; ".join(
        f"{way} {r[way]['items_per_s']:,.0f} items/s (front {r[way]['front_cpu_us_per_item']:.1f} µs/item)"
        for way in CONSUME_WAYS))


def measure_client_map(procs: Processes, servers: Servers, plan: Plan, rep: int, results: Results) -> None:
    """pfnode.Client.map over --map-items df:noop items against the main node, its progress bar
    forced on (to a file: not a terminal), at the raw pfnode row's window; set against that
    row's throughput of this repeat (measure_systems runs first)."""
    a = plan.args
    node = servers.nodes["picows"]
    label = _label(plan, rep, "Client.map")
    r = procs.call(label, clients.client_map_client, 2 * plan.map_timeout_s + 30, endpoint=node.endpoint,
                   items=a.map_items, warmup=plan.map_warmup, window=a.window,
                   cpu_pids={"front": [node.front_pid], "workers": servers.lane_pids["df"]})
    raw = results.runs["pfnode"][rep]["throughput"] if len(results.runs["pfnode"]) > rep else None
    r["raw_throughput"] = raw
    r["vs_raw"] = r["throughput"] / raw if raw else None
    results.map_runs.append(r)
    progress(f"{label}: {a.map_items:,} items, {r['throughput']:,.0f} items/s"
             + (f" = {r['vs_raw']:.2f}x the raw frames' {raw:,.0f} packets/s" if raw else "")
             + f", client CPU {r['client_cpu_us_per_packet']:.1f} µs/item; bar: {r['bar']}")


FAMILIES = (measure_systems, measure_lanes, measure_ed_load, measure_payloads, measure_fairness, measure_faults,
            measure_consume, measure_client_map)


# ---------------------------------------------------------------------------- after the repeats

def _answered(runs) -> int:
    return sum(r["packets_answered"] for r in runs)


def check_counters(servers: Servers, results: Results) -> dict[str, dict]:
    """Each node's /status counters must show exactly the packets its clients had answered and
    none failed; the large payloads must have used the main node's shared-memory rings (at most
    one each way per packet: a full ring sends a payload through the pipe) and never the
    pipes-only node's. Returns the counters by node name (and notes the large packets sent)."""
    counters = {name: node_health(node.endpoint).get("counters", {}) for name, node in servers.nodes.items()}
    main_payloads = [r for rs in results.payload_runs["pfnode"] for r in rs]
    expected = {"picows": _answered(results.runs["pfnode"]) + _answered(results.ed_runs) + _answered(main_payloads)
                + sum(_answered(rs) for rs in results.group_runs.values()) + _answered(results.fair_runs)
                + _answered(results.consume_runs) + sum(r["subpackets"] for r in results.consume_runs)
                + _answered(results.map_runs),
                "websockets": _answered(results.runs["pfnode_websockets"]),
                "pipes": _answered(r for rs in results.payload_runs["pfnode_pipes"] for r in rs),
                "pure": _answered(results.runs["pfnode_pure"])}
    for name, got in counters.items():
        progress(f"{name} node counters: {got}")
        if got.get("failed", 0) or got.get("completed", 0) != expected[name]:
            raise BenchError(f"{name} node counters disagree with the client: completed {got.get('completed')}, "
                             f"expected {expected[name]}, failed {got.get('failed', 0)}")
    large = _answered(r for r in main_payloads if r["size"] in SHM_COMPARE_SIZES)
    for key in ("shm_payloads_in", "shm_payloads_out"):
        if not 0 < counters["picows"].get(key, 0) <= large:
            raise BenchError(f"node counters: {key} {counters['picows'].get(key, 0)}, expected 1 to {large} "
                             f"(the {' and '.join(SHM_COMPARE_SIZES)} payload packets sent to it)")
        if counters["pipes"].get(key, 0):
            raise BenchError(f"pipes-only node ({' '.join(PIPES_ONLY_ARGS)}) counters: {key} "
                             f"{counters['pipes'][key]}, expected none")
    results.large_packets = large
    return counters


def check_fault_counters(servers: Servers, results: Results, timeout_s: float = 30.0) -> dict[str, dict]:
    """Each fault-recovery node's /status counters against its clients: every healthy packet
    completed, every crash failed PF502, and each crash one worker died running a packet and one
    replaced it (waited for: the last replacement may still be starting). Notes them, with the
    figures they were checked against, in `results.fault_checks`; returns them by node name."""
    import time

    checks = {}
    for start, node in servers.fault_nodes.items():
        runs = results.fault_runs.get(start, [])
        healthy, crashes = _answered(runs), sum(r["crashes"] for r in runs)
        expected = {"completed": healthy, "failed": crashes, "failed_PF502": crashes,
                    "worker_deaths_crash": crashes, "workers_replaced": crashes}
        deadline = time.monotonic() + timeout_s
        while True:
            got = node_health(node.endpoint).get("counters", {})
            wrong = {key: got.get(key, 0) for key, value in expected.items() if got.get(key, 0) != value}
            if not wrong or set(wrong) != {"workers_replaced"} or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        progress(f"{node.name} node counters: {got}")
        if wrong:
            raise BenchError(f"{node.name} node counters disagree with its clients: {wrong}, expected "
                             f"{ {key: expected[key] for key in wrong} }")
        results.fault_checks[start] = {"counters": got, "expected": expected}
        checks[node.name] = got
    results.spawn_skipped = servers.spawn_skipped
    return checks


def stop_node_and_say(procs: Processes, node: NodeProcess) -> dict:
    """Stop the node; its exit status, argv and the warnings/errors it logged."""
    rc = node.returncode if node.popen is None else procs.stop_node(node.name)
    problems = node.log_problems()
    if rc != 0:
        progress(f"{node.name} node exited with status {rc}")
    if problems:
        progress(f"{node.name} node logged {len(problems)} warnings/errors, e.g.: {problems[0]}")
    return {"exit_status": rc, "log_warnings": problems[:20], "argv": node.argv}


def stop_servers(procs: Processes, servers: Servers, counters: dict[str, dict]) -> dict[str, dict]:
    """Stop the echo servers and the nodes; each node's status (by node name), with its counters."""
    progress("stopping the nodes and the echo servers ...")
    for echo in servers.echoes.values():
        echo.stop()
    status = {}
    for name, node in servers.nodes.items():
        status[name] = stop_node_and_say(procs, node)
        status[name]["counters"] = counters[name]
    for start, node in servers.fault_nodes.items():
        status[node.name] = stop_node_and_say(procs, node)
        status[node.name]["counters"] = counters[node.name]
    return status


# ---------------------------------------------------------------------------- the hub relay (bench/hub.py)

# The hubs: no df:noop (bench.handlers_bench has cf/ed/rm:noop and df:sleep_ms), so df:noop is
# forwarded; they run nothing themselves, hence the smallest lanes.
HUB_ARGV = serve_argv(1, handlers="bench.handlers_bench",
                      extra=("--ed-workers", "0", "--rm-workers", "0"))
# A hub logs this when a link announces what it runs (pfnode/core/hub.py, on_announce).
ANNOUNCED = re.compile(r"hub: \S+ runs .*\bdf:noop\b")
DIALOUT_CONNECTED = re.compile(r"dial-out: connected to ")
# The dial-out node's last line: `front: stopped ({pool counters})`.
STOPPED = re.compile(r"front: stopped \((\{.*\})\)")
HUB_SYSTEMS = {"direct": "direct: pfnode serve",
               "dialout": "relayed: hub -> pfnode connect",
               "reactor": "relayed: hub -> Python Reactor"}


@dataclass
class Relay:
    """The hub benchmark's processes: a direct node; a hub with a dial-out node behind it; a hub
    with a Python reactor behind it."""
    direct: NodeProcess
    hub_d: NodeProcess
    hub_r: NodeProcess
    dialout: NodeProcess
    reactor: ChildServer

    def endpoints(self) -> dict[str, str]:
        return {"direct": self.direct.endpoint, "dialout": self.hub_d.endpoint, "reactor": self.hub_r.endpoint}

    def cpu_pids(self) -> dict[str, dict[str, list[int]]]:
        return {"direct": {"front": [self.direct.front_pid], "workers": self.direct.worker_pids},
                "dialout": {"hub": [self.hub_d.front_pid], "front": [self.dialout.front_pid],
                            "workers": self.dialout.worker_pids},
                "reactor": {"hub": [self.hub_r.front_pid], "reactor": [self.reactor.pid]}}

    def check_alive(self) -> None:
        for node in (self.direct, self.hub_d, self.hub_r, self.dialout):
            if not node.alive():
                raise BenchError(f"the {node.name} node exited during the run:\n{node.log_text()}")
        if not self.reactor.alive():
            raise BenchError("the Python reactor exited during the run")


def start_relay(procs: Processes, workers: int, uplink_transport: str) -> Relay:
    """Start the direct node and the two hubs, then the dial-out node and the Python reactor,
    and wait until each hub knows its one reactor runs df:noop."""
    progress("starting the direct node, two hubs, the dial-out node and the Python reactor ...")
    nodes = procs.start_nodes({"direct": serve_argv(workers), "hub-dialout": HUB_ARGV, "hub-reactor": HUB_ARGV})
    direct, hub_d, hub_r = nodes["direct"], nodes["hub-dialout"], nodes["hub-reactor"]
    for hub in (hub_d, hub_r):
        handlers = node_health(hub.endpoint).get("handlers", [])
        if "df:noop" in handlers:
            raise BenchError(f"the {hub.name} node has df:noop itself ({handlers}): nothing would be relayed")
    dialout = procs.launch_node("dialout", ["connect", hub_d.endpoint, "--workers", str(workers),
                                            "--transport", uplink_transport, "--handlers", NODE_HANDLERS])
    reactor = procs.start_server("python-reactor", servers.python_reactor, endpoint=hub_r.endpoint)
    procs.wait_node(dialout, ready=DIALOUT_CONNECTED)
    hub_d.wait_log(ANNOUNCED, "the dial-out node's announcement of df:noop to its hub")
    hub_r.wait_log(ANNOUNCED, "the Python reactor's announcement of df:noop to its hub")
    progress(f"direct node at {direct.endpoint} (front pid {direct.front_pid}, workers {direct.worker_pids})")
    progress(f"hub {hub_d.endpoint} (front pid {hub_d.front_pid}) <- dial-out node (front pid "
             f"{dialout.front_pid}, workers {dialout.worker_pids})")
    progress(f"hub {hub_r.endpoint} (front pid {hub_r.front_pid}) <- Python reactor (pid {reactor.pid})")
    for hub in (hub_d, hub_r):
        connections = node_health(hub.endpoint).get("connections")
        if connections != 1:
            raise BenchError(f"the {hub.name} node has {connections} connections before the run, expected 1 "
                             f"(its reactor)")
    return Relay(direct, hub_d, hub_r, dialout, reactor)


def measure_relay(procs: Processes, relay: Relay, plan: Plan, rep: int, runs: dict[str, list[dict]]) -> None:
    """Each hub system once, a fresh client each, the order rotated; with the CPU of whatever
    ran the packet (runner) and of the whole serving side (server = hub front + runner)."""
    systems, k = tuple(HUB_SYSTEMS), rep % len(HUB_SYSTEMS)
    endpoints, cpu_pids = relay.endpoints(), relay.cpu_pids()
    for system in systems[k:] + systems[:k]:
        label = _label(plan, rep, system)
        r = procs.call(label, clients.ws_client, 2 * plan.timeout_s + 30, endpoint=endpoints[system],
                       mode="pfnode", tag=f"{system[0]}{rep}", cpu_pids=cpu_pids[system], **plan.common())
        if system == "reactor":
            r["runner_cpu_us_per_packet"] = r["reactor_cpu_us_per_packet"]
        else:
            r["runner_cpu_us_per_packet"] = r["front_cpu_us_per_packet"] + r["workers_cpu_us_per_packet"]
        r["server_cpu_us_per_packet"] = r["runner_cpu_us_per_packet"] + r.get("hub_cpu_us_per_packet", 0.0)
        runs[system].append(r)
        hub_cpu = f", hub front {r['hub_cpu_us_per_packet']:.1f} µs/pkt" if "hub_cpu_us_per_packet" in r else ""
        progress(f"{label}: {r['throughput']:,.0f} packets/s, RTT p50 {r['rtt_p50_us']:,.0f} µs, "
                 f"p99 {r['rtt_p99_us']:,.0f} µs{hub_cpu}")


def check_relay(procs: Processes, relay: Relay, expected: int) -> dict[str, dict]:
    """Every packet answered once, by the system meant to run it: the direct node's /status,
    the hubs' (every answer a relayed one, none held), the dial-out node's final counters (its
    last log line, so it is stopped here), the Python reactor's own count (stopped here too)."""
    checks: dict[str, dict] = {}
    direct = node_health(relay.direct.endpoint).get("counters", {})
    checks["direct"] = {"counters": direct, "expected_completed": expected}
    if direct.get("failed", 0) or direct.get("completed", 0) != expected:
        raise BenchError(f"direct node counters disagree with the client: {direct}, expected completed {expected}")
    for hub in (relay.hub_d, relay.hub_r):
        health = node_health(hub.endpoint)
        checks[hub.name] = {"counters": health.get("counters", {}), "relayed": health.get("hub", {}).get("relayed"),
                            "inflight": health.get("inflight"), "queued": health.get("queued"),
                            "connections": health.get("connections"), "expected_relayed": expected}
        c = checks[hub.name]["counters"]
        # A hub counts each answer it relays as completed (Node._deliver): all of them must be relays.
        if (checks[hub.name]["relayed"] != expected or c.get("completed", 0) != expected or c.get("failed", 0)
                or health.get("inflight")):
            raise BenchError(f"the {hub.name} node ran packets itself, lost some or still holds some: "
                             f"{checks[hub.name]}")
    progress("stopping the dial-out node and the Python reactor ...")
    rc = procs.stop_node("dialout")
    match = STOPPED.search(relay.dialout.log())
    dialout = ast.literal_eval(match.group(1)) if match else None
    checks["dialout"] = {"exit_status": rc, "counters": dialout, "expected_completed": expected}
    if dialout is None:
        raise BenchError(f"the dial-out node (exit status {rc}) logged no final counters:\n{relay.dialout.log_text()}")
    # The line holds the pool's counters; a node that counts its answers in the node, not the
    # pool, leaves `completed` out: then the hub's relayed count (its one reactor) stands for it.
    checks["dialout"]["completed_checked"] = "completed" in dialout
    if dialout.get("failed", 0) or dialout.get("completed", expected) != expected:
        raise BenchError(f"dial-out node counters disagree with the client: {dialout}, expected completed {expected}")
    counts = relay.reactor.ask_stop()
    checks["reactor"] = {**counts, "expected_answered": expected}
    if counts["answered"] != expected or counts["duplicates"]:
        raise BenchError(f"the Python reactor ran {counts['answered']} packets ({counts['duplicates']} twice), "
                         f"expected {expected} once each")
    progress(f"counters agree: direct node completed {expected}, dial-out node completed "
             f"{dialout.get('completed', 'uncounted in its exit line')}, Python reactor ran {counts['answered']} (none twice), hubs relayed "
             f"every one and ran none")
    return checks
