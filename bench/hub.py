#!/usr/bin/env python3
"""pfnode hub relay benchmark: what forwarding a packet through a hub costs (docs/PROTOCOL.md,
"Hub routing" and "Dial-out"), against the same packet run directly, in one run.

    .venv/bin/python bench/hub.py             # full run, about 35 s on 2 cores
    .venv/bin/python bench/hub.py --quick     # smoke run, about 5 s

Three systems, each measured R times (interleaved, the order rotated every repeat) and reported
as medians. The client is bench/run.py's (`ws_client`: one raw WebSocket, pre-encoded df:noop
submit frames, window 256 for throughput, 1 in flight for RTT, every answer checked):

  direct    `pfnode serve --workers W --handlers handlers.examples,bench.handlers_bench`, the
            same node as bench/run.py's pfnode row: df:noop runs on its own workers.
  dialout   a hub, `pfnode serve --workers 1 --ed-workers 0 --rm-workers 0 --handlers
            bench.handlers_bench` (no df:noop), and `pfnode connect HUB --workers W --handlers
            handlers.examples,bench.handlers_bench` dialled in to it: the client sends df:noop to
            the hub, the hub forwards each packet to the dial-out node and relays its answer.
  reactor   a second hub, the same command, and a `pfnode.client.Reactor` in its own process
            connected to it, with df:noop registered (an async function returning its data) and
            announced: the hub forwards each packet to the reactor and relays its answer.

Each hub has exactly one reactor, so every packet takes the one route. After the run the direct
node's /healthz must count every packet sent to it, the hubs' none run or held by themselves, the
dial-out node's final counters (its last log line) every packet forwarded to it, and the Python
reactor every packet, once. Prints a table on stdout, progress on stderr, writes
bench/results/hub-<time>.json and bench/results/hub-latest.json. Every process it starts is
stopped at the end, also on Ctrl-C, SIGTERM or an error. See bench/README.md.
"""
from __future__ import annotations

import argparse
import ast
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script, bench/ is on the path, not the repository root
    sys.path.insert(0, str(ROOT))

from bench import run as br  # noqa: E402 - after the path fix; the client, nodes and helpers
from bench.run import BenchError, Processes, run_with_cleanup, save_report  # noqa: E402

SYSTEMS = ("direct", "dialout", "reactor")
NAMES = {"direct": "direct: pfnode serve",
         "dialout": "relayed: hub -> pfnode connect",
         "reactor": "relayed: hub -> Python Reactor"}
# The hubs: no df:noop (bench.handlers_bench has cf/ed/rm:noop and df:sleep_ms), so df:noop is
# forwarded; they run nothing themselves, hence the smallest lanes.
HUB_HANDLERS = "bench.handlers_bench"
HUB_ARGS = ("--workers", "1", "--ed-workers", "0", "--rm-workers", "0")
# A hub logs this when a link announces what it runs (pfnode/hub.py, on_announce).
ANNOUNCED = re.compile(r"hub: \S+ runs .*\bdf:noop\b")
DIALOUT_CONNECTED = re.compile(r"dial-out: connected to ")
# The dial-out node's last line: `front: stopped ({pool counters})`.
STOPPED = re.compile(r"front: stopped \((\{.*\})\)")

_T0 = time.monotonic()


def progress(msg: str) -> None:
    print(f"[hub-bench {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ============================================================================ the Python reactor
# Runs in a child process (multiprocessing, spawn).

def reactor_process(conn, endpoint: str) -> None:
    """A pfnode.client.Reactor connected to `endpoint` that runs df:noop and announces it.
    Sends ("ok", pid) once started; on "stop" (or the parent gone) stops and sends
    ("ok", {"answered": n, "duplicates": d})."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    br.die_with_parent()
    import asyncio

    from pfnode.client import Reactor

    seen: set[str] = set()
    counts = {"answered": 0, "duplicates": 0}

    async def noop(data, ctx):
        counts["answered"] += 1
        if ctx.packet_id in seen:
            counts["duplicates"] += 1
        seen.add(ctx.packet_id)
        return data

    async def main() -> None:
        reactor = Reactor(endpoint)
        reactor.register("df", "noop", noop)  # registered before start: announced at start
        await reactor.start()
        conn.send(("ok", os.getpid()))
        try:
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
        except EOFError:  # the parent went away
            return
        finally:
            await reactor.stop()
        conn.send(("ok", counts))

    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(main())
        else:
            uvloop.run(main())
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass


class ReactorProc:
    """The parent's handle on reactor_process."""

    def __init__(self, procs: Processes, endpoint: str, timeout_s: float = 30.0) -> None:
        self.procs = procs
        self.conn, child_conn = procs.ctx.Pipe(duplex=True)
        self.proc = procs.ctx.Process(target=reactor_process, args=(child_conn, endpoint),
                                      name="bench-python-reactor")
        self.proc.start()
        child_conn.close()
        procs.children.add(self.proc)  # stopped by procs.stop_all() whatever happens
        self.pid = self._answer("start", timeout_s)

    def _answer(self, what: str, timeout_s: float):
        try:
            if not self.conn.poll(timeout_s):
                raise BenchError(f"Python reactor: no answer to {what} within {timeout_s:.0f} s")
            status, payload = self.conn.recv()
        except EOFError:
            self.proc.join(5)
            raise BenchError(f"Python reactor died ({what}; exit code {self.proc.exitcode})") from None
        if status != "ok":
            raise BenchError(f"Python reactor failed ({what}): {payload}")
        return payload

    def alive(self) -> bool:
        return self.proc.is_alive()

    def stop(self, timeout_s: float = 15.0) -> dict:
        """Stop the reactor; its counts."""
        try:
            self.conn.send("stop")
            return self._answer("stop", timeout_s)
        except OSError as exc:  # it is gone already
            raise BenchError(f"Python reactor: cannot stop it ({exc}; exit code {self.proc.exitcode})") from None
        finally:
            self.conn.close()
            self.procs.stop_child(self.proc, wait_s=5.0)


# ============================================================================ parent side

def wait_log(node: br.NodeProcess, pattern: re.Pattern, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pattern.search(node.log_path.read_text(errors="replace")):
            return
        if not node.alive():
            raise BenchError(f"the {node.name} node exited while waiting for {what}:\n{node.log_text()}")
        time.sleep(0.05)
    raise BenchError(f"{what}: not within {timeout_s:.0f} s; {node.name} node log:\n{node.log_text()}")


def log_problems(node: br.NodeProcess) -> list[str]:
    return [line for line in node.log_path.read_text(errors="replace").splitlines()
            if " WARNING " in line or " ERROR " in line]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = br.common_parser(__doc__, 5, "df workers of the direct node and of the dial-out node")
    parser.add_argument("--uplink-transport", choices=["picows", "websockets"], default="picows",
                        help="the dial-out node's --transport (default %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help="where to write the JSON results (default bench/results)")
    args = parser.parse_args(argv)
    br.common_defaults(parser, args)
    return args


def run(args: argparse.Namespace, procs: Processes) -> dict:
    machine = br.machine_info()
    load = machine["loadavg_at_start"]
    progress(f"{machine['cpu_count']} CPUs, Python {machine['python']}, load average "
             f"{f'{load[0]:.2f}' if load else '?'}; {args.packets} packets x {args.repeats} repeats, "
             f"{args.rtt_packets} RTT samples, window {args.window}, {args.workers} workers")
    warmup = min(1000, max(200, args.packets // 10))
    # Generous: a run fails only if a system manages under 200 packets/s or hangs.
    timeout_s = 30 + (warmup + args.packets) / 200 + args.rtt_packets / 100
    child_timeout = 2 * timeout_s + 30

    log_dir = Path(tempfile.mkdtemp(prefix="pfnode-hub-bench-"))
    progress("starting the direct node, two hubs, the dial-out node and the Python reactor ...")
    direct = procs.start_node(args.workers, log_dir, "picows", name="direct")
    progress(f"direct node at {direct.endpoint} (front pid {direct.front_pid}, workers {direct.worker_pids})")
    hub_argv = ["serve", "--port", "0", "--transport", "picows", *HUB_ARGS, "--handlers", HUB_HANDLERS]
    hub_d = procs.launch_node("hub-dialout", hub_argv, log_dir)
    hub_r = procs.launch_node("hub-reactor", hub_argv, log_dir)
    for hub in (hub_d, hub_r):
        handlers = br._node_health(hub.endpoint).get("handlers", [])
        if "df:noop" in handlers:
            raise BenchError(f"the {hub.name} node has df:noop itself ({handlers}): nothing would be relayed")
    dialout = procs.launch_node("dialout", ["connect", hub_d.endpoint, "--workers", str(args.workers),
                                            "--transport", args.uplink_transport,
                                            "--handlers", br.NODE_HANDLERS], log_dir, ready=DIALOUT_CONNECTED)
    wait_log(hub_d, ANNOUNCED, "the dial-out node's announcement of df:noop to its hub")
    progress(f"hub {hub_d.endpoint} (front pid {hub_d.front_pid}) <- dial-out node (front pid "
             f"{dialout.front_pid}, workers {dialout.worker_pids})")
    reactor = ReactorProc(procs, hub_r.endpoint)
    wait_log(hub_r, ANNOUNCED, "the Python reactor's announcement of df:noop to its hub")
    progress(f"hub {hub_r.endpoint} (front pid {hub_r.front_pid}) <- Python reactor (pid {reactor.pid})")
    for hub in (hub_d, hub_r):
        connections = br._node_health(hub.endpoint).get("connections")
        if connections != 1:
            raise BenchError(f"the {hub.name} node has {connections} connections before the run, expected 1 "
                             f"(its reactor)")

    cpu_pids = {"direct": {"front": [direct.front_pid], "workers": direct.worker_pids},
                "dialout": {"hub": [hub_d.front_pid], "front": [dialout.front_pid],
                            "workers": dialout.worker_pids},
                "reactor": {"hub": [hub_r.front_pid], "reactor": [reactor.pid]}}
    endpoints = {"direct": direct.endpoint, "dialout": hub_d.endpoint, "reactor": hub_r.endpoint}
    runs: dict[str, list[dict]] = {system: [] for system in SYSTEMS}
    common = dict(packets=args.packets, rtt_packets=args.rtt_packets, window=args.window,
                  warmup=warmup, timeout_s=timeout_s)
    for rep in range(args.repeats):
        n = len(SYSTEMS)
        for system in SYSTEMS[rep % n:] + SYSTEMS[:rep % n]:  # rotate: no system always goes first
            label = f"repeat {rep + 1}/{args.repeats} {system}"
            r = procs.call(label, "ws_client", child_timeout, endpoint=endpoints[system],
                           mode="pfnode", tag=f"{system[0]}{rep}", cpu_pids=cpu_pids[system], **common)
            # the CPU of whatever runs the packet, and of the whole serving side
            if system == "reactor":
                r["runner_cpu_us_per_packet"] = r["reactor_cpu_us_per_packet"]
            else:
                r["runner_cpu_us_per_packet"] = r["front_cpu_us_per_packet"] + r["workers_cpu_us_per_packet"]
            r["server_cpu_us_per_packet"] = r["runner_cpu_us_per_packet"] + r.get("hub_cpu_us_per_packet", 0.0)
            runs[system].append(r)
            hub_cpu = f", hub front {r['hub_cpu_us_per_packet']:.1f} µs/pkt" if "hub_cpu_us_per_packet" in r else ""
            progress(f"{label}: {r['throughput']:,.0f} packets/s, RTT p50 {r['rtt_p50_us']:,.0f} µs, "
                     f"p99 {r['rtt_p99_us']:,.0f} µs{hub_cpu}")
        for node in (direct, hub_d, hub_r, dialout):
            if not node.alive():
                raise BenchError(f"the {node.name} node exited during the run:\n{node.log_text()}")
        if not reactor.alive():
            raise BenchError("the Python reactor exited during the run")

    # Every packet answered once, by the system meant to run it.
    per_run = warmup + args.packets + args.rtt_packets
    expected = args.repeats * per_run
    checks: dict[str, dict] = {}
    direct_counters = br._node_health(direct.endpoint).get("counters", {})
    checks["direct"] = {"counters": direct_counters, "expected_completed": expected}
    if direct_counters.get("failed", 0) or direct_counters.get("completed", 0) != expected:
        raise BenchError(f"direct node counters disagree with the client: {direct_counters}, expected "
                         f"completed {expected}")
    for hub in (hub_d, hub_r):
        health = br._node_health(hub.endpoint)
        counters = health.get("counters", {})
        checks[hub.name] = {"counters": counters, "inflight": health.get("inflight"),
                            "queued": health.get("queued"), "connections": health.get("connections")}
        if counters.get("completed", 0) or counters.get("failed", 0) or health.get("inflight"):
            raise BenchError(f"the {hub.name} node ran packets itself or still holds some: {checks[hub.name]}")
    progress("stopping the dial-out node and the Python reactor ...")
    rc = procs.stop_node("dialout")
    match = STOPPED.search(dialout.log_path.read_text(errors="replace"))
    dialout_counters = ast.literal_eval(match.group(1)) if match else None
    checks["dialout"] = {"exit_status": rc, "counters": dialout_counters, "expected_completed": expected}
    if dialout_counters is None:
        raise BenchError(f"the dial-out node (exit status {rc}) logged no final counters:\n{dialout.log_text()}")
    if dialout_counters.get("failed", 0) or dialout_counters.get("completed", 0) != expected:
        raise BenchError(f"dial-out node counters disagree with the client: {dialout_counters}, expected "
                         f"completed {expected}")
    reactor_counts = reactor.stop()
    checks["reactor"] = {**reactor_counts, "expected_answered": expected}
    if reactor_counts["answered"] != expected or reactor_counts["duplicates"]:
        raise BenchError(f"the Python reactor ran {reactor_counts['answered']} packets "
                         f"({reactor_counts['duplicates']} twice), expected {expected} once each")
    progress(f"counters agree: direct node completed {expected}, dial-out node completed "
             f"{dialout_counters.get('completed')}, Python reactor ran {reactor_counts['answered']} "
             f"(none twice), hubs ran none")
    progress("stopping the hubs and the direct node ...")
    nodes = {}
    for node in (dialout, hub_d, hub_r, direct):
        rc = node.returncode if node is dialout else procs.stop_node(node.name)
        problems = log_problems(node)
        if rc != 0:
            progress(f"{node.name} node exited with status {rc}")
        if problems:
            progress(f"{node.name} node logged {len(problems)} warnings/errors, e.g.: {problems[0]}")
        nodes[node.name] = {"argv": node.argv, "exit_status": rc, "log_warnings": problems[:20]}
    for child in log_dir.iterdir():
        child.unlink()
    log_dir.rmdir()

    medians = {system: br.summarise(rs) for system, rs in runs.items()}
    for system, rs in runs.items():
        for key in ("hub_cpu_us_per_packet", "runner_cpu_us_per_packet", "reactor_cpu_us_per_packet"):
            values = [r[key] for r in rs if key in r]
            if values:
                medians[system][key] = statistics.median(values)
    d = medians["direct"]
    ratios = {system: {"throughput": medians[system]["throughput"] / d["throughput"],
                       "rtt_p50": medians[system]["rtt_p50_us"] / d["rtt_p50_us"],
                       "rtt_p99": medians[system]["rtt_p99_us"] / d["rtt_p99_us"],
                       "server_cpu": medians[system]["server_cpu_us_per_packet"] / d["server_cpu_us_per_packet"],
                       "added_rtt_p50_us": medians[system]["rtt_p50_us"] - d["rtt_p50_us"]}
              for system in ("dialout", "reactor")}
    return {
        "schema": 1,
        "benchmark": "hub relay cost: df:noop direct vs forwarded by a hub to a dial-out pfnode node "
                     "and to a Python Reactor",
        "machine": machine,
        "config": {"packets": args.packets, "rtt_packets": args.rtt_packets, "repeats": args.repeats,
                   "workers": args.workers, "window": args.window, "warmup": warmup, "quick": args.quick,
                   "frame_bytes": runs["direct"][0].get("frame_bytes"),
                   "client_loop": "uvloop" if machine["uvloop"] else "asyncio",
                   "reactor_loop": "uvloop" if machine["uvloop"] else "asyncio"},
        "systems": {system: NAMES[system] for system in SYSTEMS},
        "medians": medians,
        "ratios_relayed_over_direct": ratios,
        "runs": runs,
        "checks": checks,
        "nodes": nodes,
        "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "elapsed_s": round(time.monotonic() - _T0, 1),
    }


def print_table(report: dict) -> None:
    cfg, med, ratios = report["config"], report["medians"], report["ratios_relayed_over_direct"]
    fmt = br.fmt
    print()
    print(f"hub relay benchmark: df:noop, {cfg['packets']:,} packets x {cfg['repeats']} repeats, window "
          f"{cfg['window']}, RTT over {cfg['rtt_packets']:,} round trips 1 in flight; medians "
          f"({report['machine']['cpu_count']} CPUs, Python {report['machine']['python']}, "
          f"{cfg['workers']} df workers)")
    header = (f"{'system':<32} {'packets/s':>10} {'(min-max)':>17} {'RTT p50 µs':>11} {'RTT p99 µs':>11} "
              f"{'hub front µs/pkt':>17} {'runner µs/pkt':>14} {'server µs/pkt':>14} {'client µs/pkt':>14}")
    print(header)
    print("-" * len(header))
    for system in SYSTEMS:
        m = med[system]
        spread = f"({fmt(m['throughput_min'])}-{fmt(m['throughput_max'])})"
        print(f"{NAMES[system]:<32} {fmt(m['throughput']):>10} {spread:>17} {fmt(m['rtt_p50_us']):>11} "
              f"{fmt(m['rtt_p99_us']):>11} {fmt(m.get('hub_cpu_us_per_packet'), '.1f'):>17} "
              f"{fmt(m.get('runner_cpu_us_per_packet'), '.1f'):>14} "
              f"{fmt(m.get('server_cpu_us_per_packet'), '.1f'):>14} "
              f"{fmt(m.get('client_cpu_us_per_packet'), '.1f'):>14}")
    d, o = med["direct"], med["dialout"]
    print(f"  runner: the direct node (front {fmt(d.get('front_cpu_us_per_packet'), '.1f')} + workers "
          f"{fmt(d.get('workers_cpu_us_per_packet'), '.1f')}), the dial-out node (front "
          f"{fmt(o.get('front_cpu_us_per_packet'), '.1f')} + workers "
          f"{fmt(o.get('workers_cpu_us_per_packet'), '.1f')}), the reactor process; server = hub front + runner")
    print()
    print("ratios (relayed / direct)          throughput   RTT p50   RTT p99  server CPU   added RTT p50")
    for system in ("dialout", "reactor"):
        r = ratios[system]
        print(f"  {NAMES[system]:<32} {r['throughput']:>10.2f}x {r['rtt_p50']:>8.2f}x {r['rtt_p99']:>8.2f}x "
              f"{r['server_cpu']:>10.2f}x {round(r['added_rtt_p50_us']):>+11,d} µs")
    start, end = report["machine"].get("loadavg_at_start"), report.get("loadavg_at_end")
    if start and end:
        print(f"  (1-minute load average {start[0]:.2f} at the start, {end[0]:.2f} at the end: other processes "
              f"on these {report['machine']['cpu_count']} CPUs show up in the tails)")
    print()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_with_cleanup(run, args)
    if isinstance(report, int):
        return report
    print_table(report)
    save_report(report, args.out, "hub", "hub-latest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
