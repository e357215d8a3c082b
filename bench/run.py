#!/usr/bin/env python3
"""pfnode df:noop benchmark, with its baselines measured in the same run, plus per-lane no-op
rows, ed latency under df load, payload sizes, and the two transports.

    .venv/bin/python bench/run.py             # full run (make bench), about 70 s on 2 cores
    .venv/bin/python bench/run.py --quick     # smoke run, about 25 s

Each repeat measures, a fresh client process each (bench/systems.py says what each is):

  systems   df:noop through the node (picows), the same node on the websockets transport, the
            stdlib ProcessPoolExecutor, and the same frames through a bare websockets echo server
            and a bare picows echo server (orjson decode + encode per frame), and the node once
            more with PFNODE_PURE=1 (no compiled module: what the compiled hot path saves); with
            the CPU per packet of each serving process
  lanes     cf:noop, df:noop, ed:noop, rm:noop (bench/handlers_bench.py) against the same node
  ed load   ed:noop one at a time with the df lane idle, kept busy by df:sleep_ms packets, and
            flooded with df:noop (the front itself saturated)
  payloads  df:noop with 100 B, 64 KiB and 1 MiB of float64 data, as a JSON list and as an
            $ndarray, against the node and the websockets echo server; the large ones also
            against a node with pipes only between front and workers (--worker-shm-bytes 0)
  fairness  client B's df:sleep_ms (cf:sleep_ms) one at a time, alone and while client A keeps
            a window of the same packets in flight on its own connection
  faults    healthy df:spin_us packets, fault-free and with every 20th a df:crash that kills its
            worker, against nodes of their own: workers forked by the fork server (the default),
            and, where `pfnode serve` takes --worker-start, started as new interpreters
  consume   10 000 df:noop runs sent by the client as 10 000 packets (window 256), as one
            df:consume packet, and as one df:consume with 100 items per sub-packet
  map       pfnode.Client.map over 100 000 df:noop items (window 256) with its progress bar on,
            against the raw frames of the first family's pfnode row: the ratio, goal >= 0.8

Every answer is checked and the nodes' counters must agree with the clients. Prints tables on
stdout (with the targets met or not), progress on stderr, and writes bench/results/bench-<time>.json,
bench/results/latest.json and the plot (bench-<time>.png, latest.png; skipped with a message
without matplotlib). Every process it starts is stopped at the end, also on Ctrl-C. See
bench/README.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path, not bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench import report, systems  # noqa: E402 - after the path fix
from bench.common import Options, progress  # noqa: E402
from bench.processes import Processes  # noqa: E402


def parse_args(argv: list[str] | None):
    # The full sizes keep `make bench` (run.py, hub.py, dasklane.py, peers.py, the micro-benchmarks) under
    # 3 min on 2 cores: each repeat takes about 30 s (the fairness and fault-recovery families about 9 s
    # of it), so 2 repeats, not 3, since peers.py joined (bench/README.md, "Running"); the Client.map
    # row 5-10 s (100 000 items at 10 000-30 000 a second).
    opts = Options(__doc__, "worker processes for pfnode and the executor", (10_000, 3_000), (1_000, 300),
                   repeats=2)
    opts.count("--group-packets", 2000, 1000, "packets per throughput measurement of each lane's no-op")
    opts.count("--group-rtt-packets", 300, 150, "round trips per RTT measurement of each lane's no-op")
    opts.count("--ed-seconds", 1.0, 0.5, "seconds of ed:noop round trips per phase (df idle, saturated, "
               "flooded)", kind=float, minimum=0.1)
    opts.add("--ed-df-inflight", type=int, default=None,
             help="df:sleep_ms packets kept in flight to saturate the df lane (default 16 per worker)")
    opts.count("--ed-df-sleep-ms", 50, 50, "milliseconds each of those df packets sleeps (0: a df:sleep_ms 0 "
               "flood)", minimum=0)
    opts.count("--ed-flood-inflight", 256, 256, "df:noop packets kept in flight to saturate the front")
    opts.count("--payload-packets", 800, 400, "packets per throughput measurement of the 100 B payloads; "
               "64 KiB gets a quarter, 1 MiB a 32nd, at least 10")
    opts.count("--payload-rtt-packets", 160, 80, "round trips per RTT measurement of the 100 B payloads; "
               "64 KiB gets a quarter, 1 MiB a 20th, at least 5")
    opts.count("--payload-window", 16, 16, "packets in flight for the payload throughput")
    opts.count("--payload-large-window", 4, 4, "packets in flight for the 1 MiB payload throughput")
    opts.count("--fair-window", 256, 256, "sleep_ms packets client A keeps in flight on the lane B shares "
               "(the fairness family)")
    opts.count("--fair-sleep-ms", 3, 3, "milliseconds each fairness packet (A's and B's) sleeps", kind=float,
               minimum=0.1)
    opts.count("--fair-samples", 80, 40, "client B's round trips per fairness phase (alone, under A's flood)")
    opts.count("--fault-seconds", 0.6, 0.3, "seconds of each fault-recovery condition with --fault-window packets "
               "in flight", kind=float, minimum=0.05)
    opts.count("--fault-rtt-seconds", 0.3, 0.2, "seconds of each fault-recovery condition with 1 packet in flight",
               kind=float, minimum=0.05)
    opts.count("--fault-window", 64, 64, "packets in flight in the fault-recovery family's loaded phase")
    opts.count("--fault-crash-every", 20, 20, "every Nth packet of the faulty condition crashes its worker "
               "(20: 5 %%)", minimum=2)
    opts.count("--fault-spin-us", 200, 200, "microseconds of CPU work per healthy fault-recovery packet",
               minimum=0)
    opts.count("--consume-items", 10_000, 2_000, "df:noop runs per df:consume measurement (as packets from the "
               "client, as one df:consume packet, chunked)")
    opts.count("--consume-chunk", 100, 100, "items per sub-packet of the chunked df:consume")
    opts.count("--map-items", 100_000, 10_000, "items of the pfnode.Client.map row (df:noop, progress bar on)")
    opts.add("--no-plot", action="store_true", help="do not draw the PNG")
    args = opts.parse(argv)
    if args.ed_df_inflight is None:
        args.ed_df_inflight = 16 * args.workers
    if args.ed_df_inflight < 1:
        opts.parser.error("--ed-df-inflight must be at least 1")
    return args


def run(args, procs: Processes) -> dict:
    machine = report.machine_info()
    load = machine["loadavg_at_start"]
    progress(f"{machine['cpu_count']} CPUs, Python {machine['python']}, load average "
             f"{f'{load[0]:.2f}' if load else '?'}; {args.packets} packets x {args.repeats} repeats, "
             f"{args.rtt_packets} RTT samples, {args.workers} workers; lanes {args.group_packets} packets, "
             f"{args.group_rtt_packets} RTT samples; ed load {args.ed_seconds:g} s per phase; payloads "
             f"{args.payload_packets} packets (100 B; fewer for larger), window {args.payload_window} "
             f"({args.payload_large_window} for 1 MiB); fairness window {args.fair_window} x sleep_ms "
             f"{args.fair_sleep_ms:g}, {args.fair_samples} round trips; faults {args.fault_seconds:g} s at window "
             f"{args.fault_window} + {args.fault_rtt_seconds:g} s 1 in flight, every {args.fault_crash_every}th "
             f"packet crashing")
    plan = systems.Plan.of_run(args)
    servers = systems.start_servers(procs, args.workers)
    results = systems.Results(lanes_at_start=servers.lanes_at_start, hot_paths=servers.hot_paths)
    for rep in range(args.repeats):
        for measure in systems.FAMILIES:
            measure(procs, servers, plan, rep, results)
        servers.check_alive()
    counters = systems.check_counters(servers, results)
    counters.update(systems.check_fault_counters(servers, results))
    node_status = systems.stop_servers(procs, servers, counters)
    procs.remove_logs()
    return report.bench_report(args, machine, plan, results, node_status)


def main(argv: list[str] | None = None) -> int:
    return report.run_and_report("bench", parse_args, run, "bench", report.print_bench, argv,
                                 latest="latest.json", plotter=report.write_plot)


if __name__ == "__main__":
    sys.exit(main())
