#!/usr/bin/env python3
"""pfnode hub relay benchmark: what forwarding a packet through a hub costs (docs/PROTOCOL.md,
"Hub routing" and "Dial-out"), against the same packet run directly, in one run.

    .venv/bin/python bench/hub.py             # full run, about 15 s on 2 cores
    .venv/bin/python bench/hub.py --quick     # smoke run, about 6 s

Three systems (bench/systems.py, "the hub relay"), each measured R times, interleaved, the order
rotated every repeat, reported as medians. The client is bench/run.py's (`clients.ws_client`: one
raw WebSocket, pre-encoded df:noop submit frames, window 256 for throughput, 1 in flight for RTT,
every answer checked):

  direct    `pfnode serve --workers W --handlers pfnode.handlers.examples,bench.handlers_bench`, the
            same node as bench/run.py's pfnode row: df:noop runs on its own workers.
  dialout   a hub, `pfnode serve --workers 1 --ed-workers 0 --rm-workers 0 --handlers
            bench.handlers_bench` (no df:noop), and `pfnode connect HUB --workers W --handlers
            pfnode.handlers.examples,bench.handlers_bench` dialled in to it: the client sends df:noop to
            the hub, the hub forwards each packet to the dial-out node and relays its answer.
  reactor   a second hub, the same command, and a `pfnode.client.Reactor` in its own process
            connected to it, with df:noop registered (an async function returning its data) and
            announced: the hub forwards each packet to the reactor and relays its answer.

Each hub has exactly one reactor, so every packet takes the one route. After the run the direct
node's /status must count every packet sent to it, the hubs' every answer a relayed one (a hub
counts the answers it relays as completed) and none held, the dial-out node's final counters
(its last log line, where it has the count) every packet forwarded to it, and the Python
reactor every packet, once. Prints a table on stdout, progress on stderr, writes
bench/results/hub-<time>.json and bench/results/hub-latest.json. Every process it starts is
stopped at the end, also on Ctrl-C, SIGTERM or an error. See bench/README.md.
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
    opts = Options(__doc__, "df workers of the direct node and of the dial-out node", (6_000, 3_000), (600, 300))
    opts.add("--uplink-transport", choices=["picows", "websockets"], default="picows",
             help="the dial-out node's --transport (default %(default)s)")
    return opts.parse(argv)


def run(args, procs: Processes) -> dict:
    machine = report.machine_info()
    load = machine["loadavg_at_start"]
    progress(f"{machine['cpu_count']} CPUs, Python {machine['python']}, load average "
             f"{f'{load[0]:.2f}' if load else '?'}; {args.packets} packets x {args.repeats} repeats, "
             f"{args.rtt_packets} RTT samples, window {args.window}, {args.workers} workers")
    plan = systems.Plan.of(args)
    relay = systems.start_relay(procs, args.workers, args.uplink_transport)
    runs: dict[str, list[dict]] = {system: [] for system in systems.HUB_SYSTEMS}
    for rep in range(args.repeats):
        systems.measure_relay(procs, relay, plan, rep, runs)
        relay.check_alive()
    expected = args.repeats * (plan.warmup + args.packets + args.rtt_packets)
    checks = systems.check_relay(procs, relay, expected)
    progress("stopping the hubs and the direct node ...")
    nodes = {node.name: systems.stop_node_and_say(procs, node)
             for node in (relay.dialout, relay.hub_d, relay.hub_r, relay.direct)}
    procs.remove_logs()
    return report.hub_report(args, machine, plan, runs, checks, nodes)


def main(argv: list[str] | None = None) -> int:
    return report.run_and_report("hub-bench", parse_args, run, "hub", report.print_hub, argv)


if __name__ == "__main__":
    sys.exit(main())
