#!/usr/bin/env python3
"""pfnode dask lane benchmark: a 5 ms numpy handler on the local pool against a Dask LocalCluster
(docs/DASK.md), and the per-packet overhead each adds over the bare handler time.

    .venv/bin/python bench/dasklane.py            # full run (make bench), about 30 s on 2 cores
    .venv/bin/python bench/dasklane.py --quick    # smoke run, about 15 s

The handler is `df:numpy_5ms` (bench/handlers_bench.py): 5 ms of its thread's CPU time in numpy
matrix products, then its input back. Its bare time is measured first, called in this process.
Then, one after the other (never at once: they would share the CPUs):

  pool   `pfnode serve --workers W --ed-workers 0 --rm-workers 0`: the df lane on W local workers
  dask   `pfnode serve --dask local:W --workers 1 --ed-workers 0 --rm-workers 0`: the df lane on a
         Dask LocalCluster of W single-threaded worker processes (the node's own df worker idles)

Each gets one fresh client process (bench/clients.py's `ws_client`: one WebSocket, pre-encoded
frames, every answer checked): warm-up, N packets with up to --window in flight, then RTT one at
a time. Reported per system: packets/s; the worker time per packet (W / throughput) and its
overhead over the bare handler time (what each packet costs a worker slot beyond its handler:
scheduling, transport, and the contention of the serving processes for the same CPUs); the RTT
p50 and its overhead over the bare time; the CPU per packet of the front and of every serving
process (the front, its workers, and for dask the cluster's scheduler and workers). Writes
bench/results/dask-<time>.json and bench/results/dask-latest.json. See bench/README.md.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path, not bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import clients, report  # noqa: E402 - after the path fix
from bench.common import BenchError, Options, elapsed_s, loadavg, progress  # noqa: E402
from bench.processes import Processes, node_health  # noqa: E402

HANDLERS = "pfnode.handlers.examples,bench.handlers_bench"
ELEMENT = "numpy_5ms"
SYSTEMS = {  # name -> (label, extra serve arguments for W workers)
    "pool": ("local pool, {w} df workers", lambda w: ["--workers", str(w)]),
    "dask": ("Dask LocalCluster, {w} workers", lambda w: ["--workers", "1", "--dask", f"local:{w}"]),
}


def parse_args(argv: list[str] | None):
    opts = Options(__doc__, "df workers of the pool, and Dask workers of the LocalCluster", (2_000, 500),
                   (60, 30), repeats=1)  # one repeat: make bench must stay within 3 minutes
    opts.count("--bare-calls", 200, 60, "calls of the handler in this process to time it bare")
    opts.parser.set_defaults(workers=2)
    return opts.parse(argv)


def bare_ms(calls: int) -> float:
    """The handler's median wall time per call, run here (no node, no pipes)."""
    from bench.handlers_bench import numpy_5ms

    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        numpy_5ms(None)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(procs: Processes, args, name: str, extra: list[str], rep: int) -> dict:
    node = procs.wait_node(procs.launch_node(f"{name}-{rep}", [
        "serve", "--port", "0", "--ed-workers", "0", "--rm-workers", "0", "--handlers", HANDLERS, *extra]),
        timeout_s=120)
    warmup = min(50, max(20, args.packets // 20))
    timeout_s = 60 + (warmup + args.packets) * 0.05 + args.rtt_packets * 0.1
    progress(f"{name}: {warmup} warm-up, {args.packets} packets, {args.rtt_packets} round trips ...")
    result = procs.call(f"{name}-client", clients.ws_client, timeout_s + 30, endpoint=node.endpoint, mode="pfnode",
                        packets=args.packets, rtt_packets=args.rtt_packets, window=args.window, warmup=warmup,
                        tag=f"{name}{rep}", cpu_pids={"front": [node.front_pid], "serving": node.pids},
                        timeout_s=timeout_s, element=ELEMENT)
    status_page = node_health(node.endpoint)  # its /status
    counters = status_page["counters"]
    sent = warmup + args.packets + args.rtt_packets
    if counters.get("completed", 0) < sent or counters.get("failed", 0):
        raise BenchError(f"the {name} node counts {counters.get('completed', 0)} completed and "
                         f"{counters.get('failed', 0)} failed packets; its client sent {sent}")
    status = procs.stop_node(f"{name}-{rep}")
    if status != 0:
        raise BenchError(f"the {name} node exited with status {status}:\n{node.log_text()}")
    result["serving_processes"] = len(node.pids)
    result["dask_counters"] = (status_page.get("dask") or {}).get("counters")
    progress(f"{name}: {result['throughput']:.0f} packets/s, RTT p50 {result['rtt_p50_us'] / 1000:.2f} ms")
    return result


def run(args, procs: Processes) -> dict:
    machine = report.machine_at_start(f"df:{ELEMENT} x {args.packets} packets, window {args.window}, "
                                      f"{args.workers} workers")
    bare = bare_ms(args.bare_calls)
    progress(f"bare handler: {bare:.3f} ms per call (median of {args.bare_calls})")
    runs: dict[str, list[dict]] = {name: [] for name in SYSTEMS}
    for rep in range(args.repeats):
        order = list(SYSTEMS)[rep % 2:] + list(SYSTEMS)[:rep % 2]  # who goes first alternates
        for name in order:
            runs[name].append(measure(procs, args, name, SYSTEMS[name][1](args.workers), rep))
    rows = {}
    for name, (label, _) in SYSTEMS.items():
        r = {key: statistics.median(run[key] for run in runs[name]) for key in
             ("throughput", "rtt_p50_us", "rtt_p99_us", "front_cpu_us_per_packet", "serving_cpu_us_per_packet",
              "client_cpu_us_per_packet")}
        r["dask_counters"] = runs[name][-1]["dask_counters"]
        per_packet_ms = args.workers / r["throughput"] * 1000
        rows[name] = {
            "label": label.format(w=args.workers), **r,
            "worker_ms_per_packet": per_packet_ms, "overhead_ms": per_packet_ms - bare,
            "rtt_p50_ms": r["rtt_p50_us"] / 1000, "rtt_overhead_ms": r["rtt_p50_us"] / 1000 - bare,
            "serving_cpu_overhead_ms": r["serving_cpu_us_per_packet"] / 1000 - bare}
    procs.remove_logs()
    return {"schema": 1, "benchmark": f"df:{ELEMENT} on the local pool and on a Dask LocalCluster",
            "machine": machine, "config": {"packets": args.packets, "rtt_packets": args.rtt_packets,
                                           "window": args.window, "workers": args.workers, "quick": args.quick,
                                           "repeats": args.repeats,
                                           "bare_calls": args.bare_calls},
            "bare_handler_ms": bare, "systems": rows, "loadavg_at_end": loadavg(), "elapsed_s": round(elapsed_s(), 1)}


def print_report(result: dict) -> None:
    cfg, bare = result["config"], result["bare_handler_ms"]
    print()
    print(f"dask lane benchmark: df:{ELEMENT}, {cfg['packets']:,} packets, window {cfg['window']}, RTT over "
          f"{cfg['rtt_packets']} round trips 1 in flight; bare handler {bare:.2f} ms "
          f"({result['machine']['cpu_count']} CPUs, {cfg['workers']} workers each)")
    header = (f"{'system':<32} {'packets/s':>10} {'worker ms/pkt':>14} {'overhead ms':>12} {'RTT p50 ms':>11} "
              f"{'RTT overhead':>13} {'front CPU ms':>13} {'all CPU ms':>11}")
    print(header)
    print("-" * len(header))
    for row in result["systems"].values():
        print(f"{row['label']:<32} {row['throughput']:>10.0f} {row['worker_ms_per_packet']:>14.2f} "
              f"{row['overhead_ms']:>12.2f} {row['rtt_p50_ms']:>11.2f} {row['rtt_overhead_ms']:>13.2f} "
              f"{row['front_cpu_us_per_packet'] / 1000:>13.3f} {row['serving_cpu_us_per_packet'] / 1000:>11.2f}")
    print("  worker ms/pkt = workers / throughput; overhead = that - the bare handler time; all CPU = every "
          "serving process (front, workers, Dask scheduler and nannies) per packet")
    report.print_load(result)
    print()


def main(argv: list[str] | None = None) -> int:
    return report.run_and_report("dask-bench", parse_args, run, "dask", print_report, argv)


if __name__ == "__main__":
    sys.exit(main())
