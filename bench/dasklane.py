#!/usr/bin/env python3
"""pfnode dask lane benchmark: a 5 ms numpy handler and a no-op on the local pool, through a node
whose df lane is a Dask LocalCluster, and through Dask used directly on the same kind of
LocalCluster (docs/DASK.md); the per-packet overhead each adds over the bare handler time, and the
Dask lane's throughput over Dask's own (issue 21's goals: >= 0.9x for 5 ms tasks, >= 0.8x for no-ops).

    .venv/bin/python bench/dasklane.py            # full run (make bench), about 35 s on 2 cores
    .venv/bin/python bench/dasklane.py --quick    # smoke run, about 15 s

The handlers are `df:numpy_5ms` (bench/handlers_bench.py: 5 ms of its thread's CPU time in numpy
matrix products, then its input back) and `df:noop` (pfnode.handlers.examples.noop: its input
back). The 5 ms handler's bare time is measured first, called in this process. Then, one after
the other (never at once: they would share the CPUs):

  pool    `pfnode serve --workers W --ed-workers 0 --rm-workers 0`: the df lane on W local workers
  dask    `pfnode serve --dask local:W --workers 1 --ed-workers 0 --rm-workers 0`: the df lane on a
          Dask LocalCluster of W single-threaded worker processes (the node's own df worker idles)
  direct  Dask without pfnode: a client process of its own starts a LocalCluster of W
          single-threaded worker processes and runs the same two functions with `client.map`
          (pure=False) + `client.gather` (bench/peer_clients.py's `dask_client`, the peers family's)

The nodes each get fresh client processes (bench/clients.py's `ws_client`: one WebSocket,
pre-encoded frames, every answer checked): warm-up, N packets with up to --window in flight, then
RTT one at a time, for df:numpy_5ms and then for df:noop. Reported per system: packets/s of each;
the worker time per 5 ms packet (W / throughput) and its overhead over the bare handler time (what
each packet costs a worker slot beyond its handler: scheduling, transport, and the contention of
the serving processes for the same CPUs); the RTT p50 and its overhead over the bare time; the
no-op RTT p50; the CPU per packet of the front and of every serving process (the front, its
workers, and for dask the cluster's scheduler and workers). Then the dask lane's throughput over
Dask direct's for each task kind, against the goals. Writes bench/results/dask-<time>.json and
bench/results/dask-latest.json. See bench/README.md.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path, not bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import clients, peer_clients, report  # noqa: E402 - after the path fix
from bench.common import BenchError, Options, elapsed_s, loadavg, progress  # noqa: E402
from bench.processes import Processes, node_health  # noqa: E402

HANDLERS = "pfnode.handlers.examples,bench.handlers_bench"
ELEMENT = "numpy_5ms"
SYSTEMS = {  # name -> (label, extra serve arguments for W workers; None: Dask direct, no node)
    "pool": ("local pool, {w} df workers", lambda w: ["--workers", str(w)]),
    "dask": ("pfnode via Dask, {w} workers", lambda w: ["--workers", "1", "--dask", f"local:{w}"]),
    "direct": ("Dask direct, {w} workers", None),
}
# issue 21: the dask lane's throughput over Dask's own client.map, same run, same cluster shape
GOALS = {"cpu5": 0.9, "noop": 0.8}
KEYS = ("throughput", "rtt_p50_us", "rtt_p99_us", "noop_throughput", "noop_rtt_p50_us", "front_cpu_us_per_packet",
        "serving_cpu_us_per_packet", "client_cpu_us_per_packet")


def parse_args(argv: list[str] | None):
    opts = Options(__doc__, "df workers of the pool, and Dask workers of the LocalClusters", (2_000, 500),
                   (60, 30), repeats=1)  # one repeat: make bench must stay within 3 minutes
    opts.count("--noop-packets", 1_000, 500, "no-op packets (tasks) per throughput measurement")
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
    sent = 0
    result: dict = {}
    for element, packets, warm in ((ELEMENT, args.packets, warmup), ("noop", args.noop_packets, 20)):
        timeout_s = 60 + (warm + packets) * 0.05 + args.rtt_packets * 0.1
        progress(f"{name}: df:{element}: {warm} warm-up, {packets} packets, {args.rtt_packets} round trips ...")
        r = procs.call(f"{name}-client", clients.ws_client, timeout_s + 30, endpoint=node.endpoint, mode="pfnode",
                       packets=packets, rtt_packets=args.rtt_packets, window=args.window, warmup=warm,
                       tag=f"{name}{rep}{element}", cpu_pids={"front": [node.front_pid], "serving": node.pids},
                       timeout_s=timeout_s, element=element)
        sent += warm + packets + args.rtt_packets
        if element == ELEMENT:
            result = r
        else:
            result.update(noop_throughput=r["throughput"], noop_rtt_p50_us=r["rtt_p50_us"])
    status_page = node_health(node.endpoint)  # its /status
    counters = status_page["counters"]
    if counters.get("completed", 0) < sent or counters.get("failed", 0):
        raise BenchError(f"the {name} node counts {counters.get('completed', 0)} completed and "
                         f"{counters.get('failed', 0)} failed packets; its clients sent {sent}")
    status = procs.stop_node(f"{name}-{rep}")
    if status != 0:
        raise BenchError(f"the {name} node exited with status {status}:\n{node.log_text()}")
    result["serving_processes"] = len(node.pids)
    result["dask_counters"] = (status_page.get("dask") or {}).get("counters")
    progress(f"{name}: {result['throughput']:.0f} 5 ms packets/s, {result['noop_throughput']:.0f} no-ops/s, "
             f"RTT p50 {result['rtt_p50_us'] / 1000:.2f} ms")
    return result


def measure_direct(procs: Processes, args) -> dict:
    """Dask without pfnode: the peers family's client (a LocalCluster of W single-threaded worker
    processes, client.map + gather), the same task counts as the nodes get."""
    counts = {"noop": args.noop_packets, "cpu5": args.packets}
    timeout_s = 60 + (args.noop_packets + args.packets) * 0.05 + args.rtt_packets * 0.1
    progress(f"direct: Dask client.map, {args.noop_packets} no-ops, {args.packets} 5 ms tasks, "
             f"{args.rtt_packets} no-op round trips ...")
    r = procs.call("direct-client", peer_clients.dask_client, 2 * timeout_s + 60, workers=args.workers,
                   counts=counts, rtt_count=args.rtt_packets, warmup=50, timeout_s=timeout_s)
    progress(f"direct: {r['cpu5']['tasks_per_s']:.0f} 5 ms tasks/s, {r['noop']['tasks_per_s']:.0f} no-ops/s "
             f"(started in {r['start_s']:.1f} s)")
    return {"throughput": r["cpu5"]["tasks_per_s"], "noop_throughput": r["noop"]["tasks_per_s"],
            "noop_rtt_p50_us": r["rtt"]["p50_us"], "start_s": r["start_s"], "dask_counters": None}


def run(args, procs: Processes) -> dict:
    machine = report.machine_at_start(f"df:{ELEMENT} x {args.packets} and df:noop x {args.noop_packets} packets, "
                                      f"window {args.window}, {args.workers} workers")
    bare = bare_ms(args.bare_calls)
    progress(f"bare handler: {bare:.3f} ms per call (median of {args.bare_calls})")
    runs: dict[str, list[dict]] = {name: [] for name in SYSTEMS}
    for rep in range(args.repeats):
        k = rep % len(SYSTEMS)
        for name in list(SYSTEMS)[k:] + list(SYSTEMS)[:k]:  # who goes first rotates
            extra = SYSTEMS[name][1]
            runs[name].append(measure_direct(procs, args) if extra is None
                              else measure(procs, args, name, extra(args.workers), rep))
    rows = {name: row(runs[name], label.format(w=args.workers), args.workers, bare)
            for name, (label, _) in SYSTEMS.items()}
    procs.remove_logs()
    return {"schema": 2, "benchmark": f"df:{ELEMENT} and df:noop on the local pool, on a Dask LocalCluster "
                                      "through pfnode, and on Dask directly",
            "machine": machine, "config": {"packets": args.packets, "noop_packets": args.noop_packets,
                                           "rtt_packets": args.rtt_packets, "window": args.window,
                                           "workers": args.workers, "quick": args.quick, "repeats": args.repeats,
                                           "bare_calls": args.bare_calls},
            "bare_handler_ms": bare, "systems": rows, **versus_direct(rows),
            "loadavg_at_end": loadavg(), "elapsed_s": round(elapsed_s(), 1)}


def row(runs: list[dict], label: str, workers: int, bare: float) -> dict:
    """A system's medians over its repeats, and what follows from them."""
    r = {key: statistics.median(run[key] for run in runs) if key in runs[0] else None for key in KEYS}
    r["dask_counters"] = runs[-1]["dask_counters"]
    per_packet_ms = workers / r["throughput"] * 1000

    def less_bare(us: float | None) -> float | None:
        return None if us is None else us / 1000 - bare

    return {"label": label, **r, "runs": len(runs), "worker_ms_per_packet": per_packet_ms,
            "overhead_ms": per_packet_ms - bare,
            "rtt_p50_ms": None if r["rtt_p50_us"] is None else r["rtt_p50_us"] / 1000,
            "rtt_overhead_ms": less_bare(r["rtt_p50_us"]),
            "serving_cpu_overhead_ms": less_bare(r["serving_cpu_us_per_packet"])}


def versus_direct(rows: dict) -> dict:
    """The dask lane's throughput over Dask direct's, each task kind, against issue 21's goals."""
    dask, direct = rows["dask"], rows["direct"]
    ratios = {"cpu5": dask["throughput"] / direct["throughput"],
              "noop": dask["noop_throughput"] / direct["noop_throughput"]}
    names = {"cpu5": ("throughput", "5 ms tasks"), "noop": ("noop_throughput", "no-op tasks")}
    goals = [report._goal(f"dask_lane_{kind}_vs_direct", f"pfnode via Dask / Dask direct, {names[kind][1]} "
                          f"throughput >= {GOALS[kind]:g}x (issue 21)", ratios[kind], GOALS[kind],
                          f"{report.ratio_text(ratios[kind])}: {dask[names[kind][0]]:.0f} vs "
                          f"{direct[names[kind][0]]:.0f} /s", at_least=True)
             for kind in ("cpu5", "noop")]
    return {"dask_over_direct": ratios, "goals": goals}


def _ms(us: float | None, width: int, digits: int = 2) -> str:
    return f"{'-':>{width}}" if us is None else f"{us / 1000:>{width}.{digits}f}"


def print_report(result: dict) -> None:
    cfg, bare = result["config"], result["bare_handler_ms"]
    print()
    print(f"dask lane benchmark: df:{ELEMENT} x {cfg['packets']:,} and df:noop x {cfg['noop_packets']:,}, window "
          f"{cfg['window']}, RTT over {cfg['rtt_packets']} round trips 1 in flight; bare handler {bare:.2f} ms "
          f"({result['machine']['cpu_count']} CPUs, {cfg['workers']} workers each)")
    header = (f"{'system':<30} {'5 ms pkts/s':>11} {'worker ms':>10} {'overhead':>9} {'RTT p50':>8} "
              f"{'RTT over':>9} {'no-ops/s':>9} {'no-op RTT':>10} {'front CPU':>10} {'all CPU':>8}")
    print(header)
    print("-" * len(header))
    for r in result["systems"].values():
        rtt_over = None if r["rtt_overhead_ms"] is None else r["rtt_overhead_ms"] * 1000
        print(f"{r['label']:<30} {r['throughput']:>11.0f} {r['worker_ms_per_packet']:>10.2f} "
              f"{r['overhead_ms']:>9.2f} {_ms(r['rtt_p50_us'], 8)} {_ms(rtt_over, 9)} {r['noop_throughput']:>9.0f} "
              f"{_ms(r['noop_rtt_p50_us'], 10)} {_ms(r['front_cpu_us_per_packet'], 10, 3)} "
              f"{_ms(r['serving_cpu_us_per_packet'], 8)}")
    print("  ms; worker ms = workers / 5 ms throughput; overhead = that - the bare handler time; RTT over = RTT p50 - "
          "bare; CPU per 5 ms packet, all = every serving process (front, workers, Dask scheduler and nannies)")
    for goal in result["goals"]:
        print(f"  {report._met(goal['met'])} {goal['name']}: {goal['value']}")
    report.print_load(result)
    print()


def main(argv: list[str] | None = None) -> int:
    return report.run_and_report("dask-bench", parse_args, run, "dask", print_report, argv)


if __name__ == "__main__":
    sys.exit(main())
