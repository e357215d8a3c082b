#!/usr/bin/env python3
"""pfnode beside its peers (issue 21, item 3): the same no-op and 5 ms CPU tasks through pfnode,
the stdlib ProcessPoolExecutor, Ray and Dask distributed, each driven through its own Python API,
with the same number of worker processes, one system after another.

    .venv/bin/python bench/peers.py             # full run (make bench), about 25 s on 2 cores
    .venv/bin/python bench/peers.py --quick     # smoke run, about 10 s

The tasks are the same two functions for every system: `pfnode.handlers.examples.noop` (returns
its input: df:noop on the node) and `bench.handlers_bench.numpy_5ms` (5 ms of its thread's CPU
time in numpy matrix products, then its input: df:numpy_5ms), each given bench/common.py's DATA,
every result checked equal to it (bench/peer_clients.py):

  pfnode    a node started here, `pfnode serve --workers W --ed-workers 0 --rm-workers 0`, driven by
            `pfnode.client.Reactor` over one WebSocket: --window submits in flight for throughput
  executor  `concurrent.futures.ProcessPoolExecutor(W)`: `map` for throughput, no network
  ray       `ray.init(num_cpus=W)`, the functions as `@ray.remote` tasks: every `.remote()`, then
            one `ray.get`. Optional (`pip install '.[peers]'`): without it a line says so and its
            column stays empty
  dask      a Dask distributed `LocalCluster` of W single-threaded worker processes: `client.map`
            (pure=False) + `client.gather`

For each: no-op tasks/s, 5 ms tasks/s (ideal W x 200), and the no-op round trip p50 with one task
in flight (`submit(...).result()`, `ray.get(f.remote())`, `await reactor.submit()`), then the
ratios pfnode / system. Dask and Ray get a quarter of the no-op tasks and round trips (they run
some hundreds to a few thousand no-ops per second). Each system runs in a fresh process; nothing
else is measured at the same time. Prints the table on stdout, progress on stderr, writes
bench/results/peers-<time>.json, bench/results/peers-latest.json and the plot
(peers-<time>.png, peers-latest.png). Every process it starts is stopped at the end, also on
Ctrl-C or SIGTERM. See bench/README.md.
"""
from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path, not bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import peer_clients, report  # noqa: E402 - after the path fix
from bench.common import BenchError, Options, elapsed_s, loadavg, progress  # noqa: E402
from bench.processes import Processes, node_health  # noqa: E402

HANDLERS = "pfnode.handlers.examples,bench.handlers_bench"
CPU_TASK_MS = 5.0  # bench.handlers_bench.numpy_5ms's CPU time per task
RAY_MISSING = "ray: not installed (pip install '.[peers]')"
# The goal issue 21 states for this table: the native Python client's no-op throughput.
NOOP_GOAL = 30_000


@dataclass(frozen=True)
class Peer:
    key: str
    label: str  # the table's column head; {w}: the worker count
    plot_label: str
    share: float = 1.0  # of --packets and --rtt-packets (the slow ones get fewer no-ops)


PEERS = (  # the table's column order, and the order they run in (rotated each repeat)
    Peer("pfnode", "pfnode (Reactor)", "pfnode\n(Reactor)"),
    Peer("executor", "ProcessPoolExecutor({w})", "ProcessPool\nExecutor({w})"),
    Peer("ray", "Ray", "Ray", share=0.25),
    Peer("dask", "Dask distributed", "Dask\ndistributed", share=0.25),
)
ROWS = (("noop", "no-op tasks/s"), ("cpu5", "{cpu_tasks_ms:g} ms CPU tasks/s (ideal {ideal:,.0f})"),
        ("rtt", "round trip p50, one at a time"))


def parse_args(argv: list[str] | None):
    opts = Options(__doc__, "worker processes of every system", (4_000, 1_000), (200, 60), repeats=1)
    opts.count("--cpu-tasks", 400, 120, "5 ms CPU tasks per throughput measurement")
    opts.add("--no-plot", action="store_true", help="do not draw the PNG")
    opts.parser.set_defaults(workers=2)
    return opts.parse(argv)


def counts(args, peer: Peer) -> tuple[dict, int, int]:
    """A system's task counts per workload, round trips, and warm-up no-ops."""
    noop = max(50, round(args.packets * peer.share))
    return ({"noop": noop, "cpu5": args.cpu_tasks}, max(10, round(args.rtt_packets * peer.share)),
            min(500, max(20, noop // 10)))


def timeout_for(tasks: dict, rtt: int, warmup: int) -> float:
    """Generous: a measurement fails only under 20 no-ops/s, 10 5-ms tasks/s or 10 round trips/s."""
    return 60 + (tasks["noop"] + warmup) / 20 + tasks["cpu5"] / 10 + rtt / 10


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def measure(procs: Processes, args, peer: Peer, rep: int) -> dict | None:
    tasks, rtt, warmup = counts(args, peer)
    timeout_s = timeout_for(tasks, rtt, warmup)
    common = dict(counts=tasks, rtt_count=rtt, warmup=warmup, timeout_s=timeout_s)
    label = f"repeat {rep + 1}/{args.repeats} {peer.key}"
    progress(f"{label}: {tasks['noop']:,} no-op tasks, {tasks['cpu5']:,} 5 ms tasks, {rtt} round trips ...")
    limit_s = 2 * timeout_s + 60
    if peer.key == "pfnode":
        r = measure_pfnode(procs, args, label, limit_s, common, rep)
    elif peer.key == "executor":
        r = procs.call(label, peer_clients.executor_client, limit_s, workers=args.workers, **common)
    elif peer.key == "dask":
        r = procs.call(label, peer_clients.dask_client, limit_s, workers=args.workers, **common)
    elif peer.key == "ray":
        if not ray_installed():
            return None
        r = procs.call(label, peer_clients.ray_client, limit_s, workers=args.workers, **common)
        if "skipped" in r:
            progress(f"{label}: {r['skipped']}")
            return None
    else:
        raise BenchError(f"no client for {peer.key}")
    progress(f"{label}: {r['noop']['tasks_per_s']:,.0f} no-op tasks/s, {r['cpu5']['tasks_per_s']:,.0f} 5 ms tasks/s, "
             f"round trip p50 {r['rtt']['p50_us']:,.0f} µs (started in {r['start_s']:.1f} s)")
    return r


def measure_pfnode(procs: Processes, args, label: str, limit_s: float, common: dict, rep: int) -> dict:
    """A node of its own for this repeat (2 df workers and the one cf worker), its Reactor client
    in a fresh process, then the node's counters checked against what the client sent."""
    name = f"peers-pfnode-{rep}"
    t0 = time.perf_counter()
    node = procs.wait_node(procs.launch_node(name, [
        "serve", "--port", "0", "--workers", str(args.workers), "--ed-workers", "0", "--rm-workers", "0",
        "--handlers", HANDLERS]), timeout_s=120)
    node_start_s = time.perf_counter() - t0
    r = procs.call(label, peer_clients.pfnode_client, limit_s, endpoint=node.endpoint, window=args.window, **common)
    c = node_health(node.endpoint)["counters"]
    sent = common["warmup"] + 4 + sum(common["counts"].values()) + common["rtt_count"]
    if c.get("completed", 0) != sent or c.get("failed", 0):
        raise BenchError(f"the pfnode node counts {c.get('completed', 0)} completed and {c.get('failed', 0)} "
                         f"failed packets; its client sent {sent}")
    status = procs.stop_node(name)
    if status != 0:
        raise BenchError(f"the pfnode node exited with status {status}:\n{node.log_text()}")
    r["start_s"] += node_start_s
    r["node_start_s"] = node_start_s
    r["node_args"] = node.argv
    r["counters_checked"] = {"completed": c.get("completed", 0), "failed": c.get("failed", 0), "sent": sent}
    return r


def run(args, procs: Processes) -> dict:
    machine = report.machine_at_start(f"{args.workers} workers each, {args.repeats} repeat(s)")
    ray_missing = None if ray_installed() else RAY_MISSING
    if ray_missing:
        progress(ray_missing)
    runs: dict[str, list[dict]] = {peer.key: [] for peer in PEERS}
    for rep in range(args.repeats):
        k = rep % len(PEERS)
        for peer in PEERS[k:] + PEERS[:k]:
            r = measure(procs, args, peer, rep)
            if r is not None:
                runs[peer.key].append(r)
    if not ray_missing and not runs["ray"]:
        ray_missing = "ray: import ray failed (see the progress lines above)"
    procs.remove_logs()
    return summarise(args, machine, runs, ray_missing)


def _median(runs: list[dict], *path: str) -> float:
    values = []
    for r in runs:
        for key in path:
            r = r[key]
        values.append(r)
    return statistics.median(values)


def summarise(args, machine: dict, runs: dict[str, list[dict]], ray_missing: str | None) -> dict:
    ideal = args.workers * 1000 / CPU_TASK_MS
    systems = {}
    for peer in PEERS:
        rs = runs[peer.key]
        if not rs:
            systems[peer.key] = {"label": peer.label.format(w=args.workers),
                                 "plot_label": peer.plot_label.format(w=args.workers), "measured": False}
            continue
        tasks, rtt, warmup = counts(args, peer)
        systems[peer.key] = {
            "label": peer.label.format(w=args.workers), "plot_label": peer.plot_label.format(w=args.workers),
            "measured": True,
            "noop_tasks_per_s": _median(rs, "noop", "tasks_per_s"),
            "cpu5_tasks_per_s": _median(rs, "cpu5", "tasks_per_s"),
            "rtt_p50_us": _median(rs, "rtt", "p50_us"), "rtt_p99_us": _median(rs, "rtt", "p99_us"),
            "start_s": _median(rs, "start_s"), "tasks": tasks, "rtt_samples": rtt, "warmup": warmup}
        if peer.key == "ray":
            systems[peer.key]["version"] = rs[0].get("version")
            systems[peer.key]["label"] = systems[peer.key]["plot_label"] = f"Ray {rs[0].get('version')}"
    p = systems["pfnode"]
    for s in systems.values():
        if s["measured"]:
            s["pfnode_over"] = {"noop": p["noop_tasks_per_s"] / s["noop_tasks_per_s"],
                                "cpu5": p["cpu5_tasks_per_s"] / s["cpu5_tasks_per_s"],
                                "rtt_p50": p["rtt_p50_us"] / s["rtt_p50_us"]}
        s["cpu5_vs_ideal"] = s["cpu5_tasks_per_s"] / ideal if s["measured"] else None
    goals = [report._goal("reactor_noop_tasks_per_s", f"pfnode.client.Reactor no-op throughput >= {_n(NOOP_GOAL)}/s "
                          "on this machine (issue 21)", p["noop_tasks_per_s"], NOOP_GOAL,
                          f"{_n(p['noop_tasks_per_s'])} tasks/s, window {args.window}", unit="/s", at_least=True)]
    return {"schema": 1, "benchmark": "peers: no-op and 5 ms CPU tasks through pfnode (Reactor), the stdlib "
                                      "ProcessPoolExecutor, Ray and Dask distributed, each through its own API",
            "machine": machine,
            "config": {"workers": args.workers, "window": args.window, "packets": args.packets,
                       "cpu_tasks": args.cpu_tasks, "rtt_packets": args.rtt_packets, "repeats": args.repeats,
                       "quick": args.quick, "cpu_task_ms": CPU_TASK_MS, "ideal_cpu5_tasks_per_s": ideal,
                       "order": [peer.key for peer in PEERS],
                       "functions": {"noop": "pfnode.handlers.examples.noop",
                                     "cpu5": "bench.handlers_bench.numpy_5ms"}},
            "systems": systems, "ray_missing": ray_missing, "goals": goals, "runs": runs,
            "loadavg_at_end": loadavg(), "elapsed_s": round(elapsed_s(), 1)}


def _cell(s: dict, row: str) -> str:
    if not s["measured"]:
        return ""
    if row == "rtt":
        return f"{_n(s['rtt_p50_us'])} µs"
    return _n(s[f"{row}_tasks_per_s"])


def _n(value: float) -> str:
    """A count as the issue writes it: 27 004."""
    return f"{value:,.0f}".replace(",", " ")


def print_report(result: dict) -> None:
    cfg, systems = result["config"], result["systems"]
    first = {peer.key: systems[peer.key] for peer in PEERS}
    print()
    print(f"peers: the same tasks through each system's own Python API, {cfg['workers']} workers each, "
          f"{result['machine']['cpu_count']} CPUs, {cfg['repeats']} run(s), one system at a time; pfnode: window "
          f"{cfg['window']}")
    print("  tasks per system (no-op / {0:g} ms CPU / round trips): ".format(cfg["cpu_task_ms"]) + ", ".join(
        f"{s['label']} {_n(s['tasks']['noop'])} / {_n(s['tasks']['cpu5'])} / {_n(s['rtt_samples'])}"
        for s in first.values() if s["measured"]))
    width = 34
    cols = [max(14, len(s["label"]) + 2) for s in first.values()]
    head = f"{'':<{width}}" + "".join(f"{s['label']:>{c}}" for s, c in zip(first.values(), cols))
    report._rule(head)
    for row, text in ROWS:
        name = text.format(cpu_tasks_ms=cfg["cpu_task_ms"], ideal=cfg["ideal_cpu5_tasks_per_s"])
        print(f"{name:<{width}}" + "".join(f"{_cell(s, row):>{c}}" for s, c in zip(first.values(), cols)))
    print("pfnode / system (throughput above 1, RTT below 1: pfnode ahead)")
    for key, text in (("noop", "no-op tasks/s"), ("cpu5", "5 ms CPU tasks/s"), ("rtt_p50", "round trip p50")):
        print(f"{'  ' + text:<{width}}" + "".join(
            f"{report.ratio_text(s['pfnode_over'][key]) if s['measured'] else '':>{c}}"
            for s, c in zip(first.values(), cols)))
    print(f"{'started in (until warm)':<{width}}" + "".join(
        f"{(format(s['start_s'], '.1f') + ' s') if s['measured'] else '':>{c}}" for s, c in zip(first.values(), cols)))
    if result["ray_missing"]:
        print(f"  {result['ray_missing']}")
    for goal in result["goals"]:
        print(f"  {report._met(goal['met'])} {goal['name']}: {goal['value']}")
    report.print_load(result)
    print()


def main(argv: list[str] | None = None) -> int:
    return report.run_and_report("peers", parse_args, run, "peers", print_report, argv,
                                 plotter=report.write_peers_plot)


if __name__ == "__main__":
    sys.exit(main())
