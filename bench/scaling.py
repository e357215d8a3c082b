#!/usr/bin/env python3
"""pfnode's scaling with its worker count (issue 21, item 4): no-op and 1 ms CPU tasks on 1 to 15
df workers, pfnode against the stdlib ProcessPoolExecutor with as many workers, and the worker
count at which the node's front process saturates.

    .venv/bin/python bench/scaling.py                    # 1, 2, 4, 8, 12, 15 workers, up to cores - 1
    .venv/bin/python bench/scaling.py --workers-list 1,2 --quick    # a smoke run (2 cores: ~20 s)

Made for a machine with many cores (a 16-core one: 1 to 15 workers, one core left to the front
and the client); not part of `make bench`. For each worker count W, one after the other:

  pfnode    `pfnode serve --workers W --ed-workers 0 --rm-workers 0` (a fresh node), driven by its
            own Reactor client in a fresh process (bench/peer_clients.py's `pfnode_client`):
            df:noop, then df:numpy_1ms (1 ms of CPU time in numpy), `--window` in flight, each
            in a client run of its own; the front's CPU time per packet of the no-op run, times
            its no-op throughput, is the front's busy share while it runs no-ops
  executor  ProcessPoolExecutor(W) driven directly, no network (`executor_client`): the same two
            task functions

Reported per W: tasks/s of each system and workload, pfnode / executor, the 1 ms tasks' speed-up
over W = 1 and its efficiency against the ideal W x 1 000/s, and the front's busy share. The
front's saturation point is the first W at which its busy share reaches --saturated (0.9), or
the no-op throughput stops growing (under 5 % more than the W before). Every answer is checked.
Writes bench/results/scaling-<time>.json and scaling-latest.json. See bench/README.md.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path, not bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import peer_clients, report  # noqa: E402 - after the path fix
from bench.common import BenchError, Options, elapsed_s, loadavg, progress  # noqa: E402
from bench.processes import Processes, cpu_s  # noqa: E402

HANDLERS = "pfnode.handlers.examples,bench.handlers_bench"
WORKER_COUNTS = (1, 2, 4, 8, 12, 15)
GROWTH = 0.05  # no-op throughput growing less than this from one W to the next: the front is the limit


def parse_args(argv: list[str] | None):
    opts = Options(__doc__, "(unused: see --workers-list)", (20_000, 3_000), (10, 10), repeats=1)
    opts.count("--ms-tasks", 3_000, 600, "1 ms CPU tasks per throughput measurement, per worker")
    opts.add("--workers-list", default=None,
             help=f"worker counts to measure, comma-separated (default {','.join(map(str, WORKER_COUNTS))}, "
                  f"those up to the cores - 1)")
    opts.add("--saturated", type=float, default=0.9, help="the front's busy share that counts as saturated")
    return opts.parse(argv)


def worker_counts(args) -> list[int]:
    if args.workers_list:
        counts = sorted({int(w) for w in args.workers_list.split(",") if w.strip()})
        if not counts or counts[0] < 1:
            raise BenchError(f"--workers-list: worker counts of 1 or more, not {args.workers_list!r}")
        return counts
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [w for w in WORKER_COUNTS if w <= max(1, cores - 1)]


def measure_pfnode(procs: Processes, args, workers: int, counts: dict, timeout_s: float) -> dict:
    name = f"scaling-pfnode-{workers}"
    node = procs.wait_node(procs.launch_node(name, [
        "serve", "--port", "0", "--workers", str(workers), "--ed-workers", "0", "--rm-workers", "0",
        "--handlers", HANDLERS]), timeout_s=120)
    r: dict = {}
    warmup = min(2_000, counts["noop"] // 5)
    for workload, count in counts.items():  # one client run each: the front's CPU is measured on the no-ops'
        cpu0 = cpu_s([node.front_pid])
        one = procs.call(f"pfnode, {workers} workers, {workload}", peer_clients.pfnode_client, 2 * timeout_s + 60,
                         endpoint=node.endpoint, counts={workload: count}, rtt_count=args.rtt_packets,
                         window=args.window, warmup=warmup, timeout_s=timeout_s)
        r[workload] = one[workload]
        if workload == "noop":  # every packet of the run: warm-up, numpy's 4, the no-ops, the round trips
            r["front_us"] = (cpu_s([node.front_pid]) - cpu0) / (warmup + 4 + count + args.rtt_packets) * 1e6
            r["front_busy"] = r["front_us"] * one["noop"]["tasks_per_s"] / 1e6
    status = procs.stop_node(name)
    if status != 0:
        raise BenchError(f"the pfnode node ({workers} workers) exited with status {status}:\n{node.log_text()}")
    return r


def run(args, procs: Processes) -> dict:
    ws = worker_counts(args)
    machine = report.machine_at_start(f"worker counts {ws}, {args.packets:,} no-ops and {args.ms_tasks:,} "
                                      f"1 ms tasks per worker, window {args.window}")
    rows = []
    for w in ws:
        counts = {"noop": args.packets, "cpu1": args.ms_tasks * w}
        timeout_s = 60 + counts["noop"] / 100 + counts["cpu1"] / 50
        p = measure_pfnode(procs, args, w, counts, timeout_s)
        e = procs.call(f"executor, {w} workers", peer_clients.executor_client, 2 * timeout_s + 60, workers=w,
                       counts=counts, rtt_count=args.rtt_packets, warmup=min(2_000, counts["noop"] // 5), timeout_s=timeout_s)
        row = {"workers": w, "pfnode_noop": p["noop"]["tasks_per_s"], "pfnode_1ms": p["cpu1"]["tasks_per_s"],
               "executor_noop": e["noop"]["tasks_per_s"], "executor_1ms": e["cpu1"]["tasks_per_s"],
               "front_us_per_noop": p["front_us"], "front_busy": p["front_busy"]}
        rows.append(row)
        progress(f"{w} workers: pfnode {row['pfnode_noop']:,.0f} no-ops/s, {row['pfnode_1ms']:,.0f} 1 ms tasks/s "
                 f"(front busy {row['front_busy']:.0%}); executor {row['executor_noop']:,.0f} and "
                 f"{row['executor_1ms']:,.0f}/s")
    return {"schema": 1, "benchmark": "scaling with the worker count: pfnode against the ProcessPoolExecutor",
            "machine": machine, "config": {"packets": args.packets, "ms_tasks_per_worker": args.ms_tasks,
                                            "window": args.window, "saturated": args.saturated,
                                            "loadavg_at_end": loadavg()},
            "rows": summarise(rows, args.saturated), "elapsed_s": round(elapsed_s(), 1)}


def summarise(rows: list[dict], saturated: float) -> list[dict]:
    """Each row's ratios, speed-up and efficiency, and whether the front is saturated at it."""
    base = next((r for r in rows if r["workers"] == 1), None)
    previous = None
    for r in rows:
        r["noop_vs_executor"] = r["pfnode_noop"] / r["executor_noop"]
        r["ms_vs_executor"] = r["pfnode_1ms"] / r["executor_1ms"]
        r["ms_speedup"] = r["pfnode_1ms"] / base["pfnode_1ms"] if base else None
        r["ms_efficiency"] = r["pfnode_1ms"] / (1000 * r["workers"])
        stalled = previous is not None and r["pfnode_noop"] < previous["pfnode_noop"] * (1 + GROWTH)
        r["front_saturated"] = r["front_busy"] >= saturated or stalled
        previous = r
    return rows


def print_scaling(result: dict) -> None:
    rows = result["rows"]
    print()
    print(f"scaling: pfnode (Reactor client) against ProcessPoolExecutor(W), {result['machine']['cpu_count']} CPUs")
    print(f"{'W':>3} {'pfnode no-op/s':>15} {'executor':>10} {'ratio':>6} {'pfnode 1 ms/s':>14} {'executor':>10} "
          f"{'ratio':>6} {'speed-up':>9} {'of ideal':>9} {'front µs/no-op':>15} {'busy':>6}")
    print("-" * 114)
    for r in rows:
        speedup = f"{r['ms_speedup']:.2f}x" if r["ms_speedup"] is not None else "-"
        print(f"{r['workers']:>3} {r['pfnode_noop']:>15,.0f} {r['executor_noop']:>10,.0f} "
              f"{r['noop_vs_executor']:>5.2f}x {r['pfnode_1ms']:>14,.0f} {r['executor_1ms']:>10,.0f} "
              f"{r['ms_vs_executor']:>5.2f}x {speedup:>9} {r['ms_efficiency']:>8.0%} "
              f"{r['front_us_per_noop']:>15.1f} {r['front_busy']:>5.0%}{' *' if r['front_saturated'] else ''}")
    first = next((r["workers"] for r in rows if r["front_saturated"]), None)
    print(f"  front saturated (busy >= {result['config']['saturated']:.0%}, or no-ops growing under "
          f"{GROWTH:.0%}; marked *): " + (f"from {first} workers" if first else "at none of these counts"))
    start, end = result["machine"].get("loadavg_at_start"), result["config"]["loadavg_at_end"]
    if start and end:
        print(f"  (1-minute load average {start[0]:.2f} at the start, {end[0]:.2f} at the end)")


def main(argv: list[str] | None = None) -> int:
    return report.run_and_report("scaling", parse_args, run, "scaling", print_scaling, argv)


if __name__ == "__main__":
    sys.exit(main())
