"""From measurements to the report: medians with min-max over the repeats, ratios, targets
marked met or not, the tables printed on stdout, the JSON written, the PNG drawn.

Nothing here measures or starts anything; it reads what bench/clients.py returned, as collected
by bench/systems.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

from bench.common import DATA, ROOT, elapsed_s, loadavg, progress
from bench.systems import (CONSUME_WAYS, ENCODINGS, FAIR_LANES, FAULT_CONDITIONS, FAULT_NODES, GROUPS, HUB_SYSTEMS,
                           LARGE_PAYLOAD_BYTES, NODE_ENVS, PAYLOAD_SIZES, PIPES_ONLY_ARGS, SYSTEMS, Plan, Results)

SUMMARY_KEYS = ("throughput", "rtt_p50_us", "rtt_p99_us", "rtt_mean_us", "client_cpu_us_per_packet",
                "server_cpu_us_per_packet", "front_cpu_us_per_packet", "workers_cpu_us_per_packet",
                "lane_cpu_us_per_packet", "hub_cpu_us_per_packet", "runner_cpu_us_per_packet",
                "reactor_cpu_us_per_packet", "array_mb_s", "wire_mb_s", "worker_codec_us")
ED_KEYS = ("p50_ms", "p99_ms", "p999_ms", "mean_ms", "df_throughput", "front_cpu_share")
LANE_NOTES = {"cf": "pinned, 1 at a time", "df": "window 4-32", "ed": "reserved, 1 at a time",
              "rm": "memory-capped, 1 at a time"}
SHM_COMPARE_KEYS = ("throughput", "rtt_p50_us", "front_cpu_us_per_packet")
FAIR_KEYS = ("p50_ms", "p99_ms", "mean_ms")
CONSUME_KEYS = ("items_per_s", "elapsed_s", "front_cpu_us_per_item", "workers_cpu_us_per_item")
CONSUME_NAMES = {"separate": "{n} df:noop packets from the client (window {window})",
                 "consume": "one df:consume over {n} items",
                 "chunked": "one df:consume, chunk {chunk} ({subs} sub-packets)"}
MAP_KEYS = ("throughput", "vs_raw", "client_cpu_us_per_packet", "front_cpu_us_per_packet", "workers_cpu_us_per_packet")
MAP_GOAL = 0.8  # Client.map's throughput over the raw frames' (issue 20)
FAULT_KEYS = ("throughput", "rtt_p50_us", "rtt_p99_us", "rtt_mean_us", "crashes_per_s")
FAULT_PHASES = ("loaded", "one")  # the windowed phase, then 1 in flight
FAULT_RTT_LIMIT = 3.0  # healthy packets' RTT p50 with crashes mixed in, at most this times fault-free
WORKER_STARTS = {"fork": "fork server (default)", "spawn": "new interpreters"}


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def _met(met: bool) -> str:
    return f"[{'met' if met else 'NOT MET':>7}]"


# ============================================================================ summaries

def machine_info() -> dict:
    import orjson
    import websockets

    info = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": None,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "websockets": websockets.__version__,
        "orjson": orjson.__version__,
        "uvloop": None,
        "loadavg_at_start": loadavg(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        import uvloop

        info["uvloop"] = uvloop.__version__
    except ImportError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import pfnode

        info["pfnode"] = pfnode.__version__
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pfnode", "handlers"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        info["git_commit"] = commit + ("+dirty" if dirty else "") if commit else None
    except (OSError, subprocess.SubprocessError, AttributeError):
        pass
    return info


def _stats(values: list[float], key: str, out: dict) -> None:
    if values:
        out[key] = statistics.median(values)
        out[key + "_min"] = min(values)
        out[key + "_max"] = max(values)


def summarise(runs: list[dict], keys=SUMMARY_KEYS) -> dict:
    """The median, min and max over the runs of each key they have."""
    out: dict = {}
    for key in keys:
        _stats([r[key] for r in runs if r.get(key) is not None], key, out)
    return out


def summarise_ed(runs: list[dict], args: argparse.Namespace) -> dict:
    """Per phase: medians over the repeats of p50/p99/p99.9/mean, the df throughput and the
    front's CPU share; the worst max of all; the ed packets in all. Ratios to the idle phase."""
    out: dict = {"df_inflight": args.ed_df_inflight, "df_sleep_ms": args.ed_df_sleep_ms,
                 "flood_inflight": args.ed_flood_inflight, "seconds_per_phase": args.ed_seconds,
                 # Each df worker sleeps sleep_ms per packet, so the lane can do no more than this.
                 "df_throughput_ceiling": args.workers * 1000 / args.ed_df_sleep_ms if args.ed_df_sleep_ms else None,
                 "df_saturated_runs": sum(1 for r in runs if r["loaded"]["df_saturated"]),
                 "flood_saturated_runs": sum(1 for r in runs if r["flood"]["df_saturated"])}
    for phase in ("idle", "loaded", "flood"):
        phase_out: dict = {}
        for key in ED_KEYS:
            _stats([r[phase][key] for r in runs if key in r[phase]], key, phase_out)
        phase_out["max_ms"] = max(r[phase]["max_ms"] for r in runs)
        phase_out["packets"] = sum(r[phase]["packets"] for r in runs)
        out[phase] = phase_out
    for phase, key in (("loaded", "ratios"), ("flood", "flood_ratios")):
        out[key] = {q: out[phase][f"{q}_ms"] / out["idle"][f"{q}_ms"] for q in ("p50", "p99", "max")}
    return out


def _find_payload(payloads: list[dict], size: str, encoding: str) -> dict:
    return next(p for p in payloads if p["size"] == size and p["encoding"] == encoding)


def summarise_payloads(variants: list[dict], payload_runs: dict[str, list[list[dict]]]) -> list[dict]:
    """One entry per variant: its configuration, frame sizes, and the medians over the repeats
    for pfnode and for the echo server."""
    out = []
    for i, v in enumerate(variants):
        entry = {key: v[key] for key in ("size", "encoding", "nbytes", "window", "packets", "rtt_packets")}
        entry["values"] = max(1, v["nbytes"] // 8)
        first = payload_runs["pfnode"][0][i]
        entry["data_bytes"], entry["frame_bytes"] = first["data_bytes"], first["frame_bytes"]
        for system in ("pfnode", "echo"):
            entry[system] = summarise([rs[i] for rs in payload_runs[system]])
        out.append(entry)
    return out


def _growth(small: dict, large: dict) -> dict:
    """How the front's, the workers' and the echo server's CPU per packet grow from the small
    to the large payload of one encoding, per added MB (and MiB) of frame."""
    added_mb = (large["frame_bytes"] - small["frame_bytes"]) / 1e6
    g: dict = {"added_frame_mb": added_mb}
    for name, system, key in (("front", "pfnode", "front_cpu_us_per_packet"),
                              ("workers", "pfnode", "workers_cpu_us_per_packet"),
                              ("echo_server", "echo", "server_cpu_us_per_packet")):
        lo, hi = small[system].get(key), large[system].get(key)
        extra = (hi - lo) / added_mb if None not in (lo, hi) else None
        g[name] = {"small_us": lo, "large_us": hi, "growth": hi / lo if lo else None,
                   "extra_us_per_mb": extra, "extra_us_per_mib": extra * 1.048576 if extra is not None else None}
    f_extra, e_extra, w_extra = (g[name]["extra_us_per_mb"] for name in ("front", "echo_server", "workers"))
    g["front_extra_vs_echo"] = f_extra / e_extra if f_extra is not None and e_extra else None
    g["front_extra_vs_workers"] = f_extra / w_extra if f_extra is not None and w_extra else None
    return g


def check_payloads(payloads: list[dict]) -> dict:
    """The growth of CPU per packet from the smallest to the largest payload, the 1 MiB ndarray
    RTT against its floor, and the two payload targets."""
    small_size, large_size = PAYLOAD_SIZES[0][0], PAYLOAD_SIZES[-1][0]
    growth = {enc: _growth(_find_payload(payloads, small_size, enc), _find_payload(payloads, large_size, enc))
              for enc in ENCODINGS}
    nd = _find_payload(payloads, large_size, "ndarray")
    rtt, echo_rtt, codec = nd["pfnode"]["rtt_p50_us"], nd["echo"]["rtt_p50_us"], nd["pfnode"]["worker_codec_us"]
    floor = echo_rtt + codec
    nd_rtt = {"rtt_p50_us": rtt, "echo_rtt_p50_us": echo_rtt, "worker_codec_us": codec, "floor_us": floor,
              "rest_us": rtt - floor, "ratio": rtt / floor, "frame_bytes": nd["frame_bytes"]}
    front_value = "; ".join(
        f"{enc}: {fmt(g['front']['small_us'])} -> {fmt(g['front']['large_us'])} µs/packet, "
        f"{fmt(g['front']['extra_us_per_mb'])} µs per added MB = {fmt(g['front_extra_vs_echo'], '.1f')}x "
        f"the echo server's" for enc, g in growth.items())
    targets = [
        {"name": f"front's CPU per packet independent of payload size ({small_size} -> {large_size}: "
                 f"its added cost per MB <= 2x the echo server's for the same frames)",
         "value": front_value,
         "met": all(g["front_extra_vs_echo"] is not None and g["front_extra_vs_echo"] <= 2
                    for g in growth.values())},
        {"name": f"{large_size} ndarray round trip bounded by memory bandwidth and base64 (RTT p50 <= 1.5x "
                 f"echo RTT of the same frames + the worker's JSON/base64 work)",
         "value": f"{rtt / 1000:.2f} ms vs {echo_rtt / 1000:.2f} + {codec / 1000:.2f} = {floor / 1000:.2f} ms "
                  f"({nd_rtt['ratio']:.2f}x)",
         "met": nd_rtt["ratio"] <= 1.5},
    ]
    return {"summary": {"growth": growth, "ndarray_large_rtt": nd_rtt}, "targets": targets}


def compare_shm(payloads: list[dict], pipes_variants: list[dict], pipes_runs: list[list[dict]],
                counters: dict[str, dict], large_packets: int) -> dict:
    """The large payload rows with shared memory (the main node's medians, as in the payload
    table) against the pipes-only node's medians, and their ratios shared memory / pipes only;
    with both nodes' shm counters."""
    rows = []
    for i, v in enumerate(pipes_variants):
        shm = _find_payload(payloads, v["size"], v["encoding"])["pfnode"]
        pipes = summarise([rs[i] for rs in pipes_runs])
        ratios = {key: shm[key] / pipes[key] if shm.get(key) is not None and pipes.get(key) else None
                  for key in SHM_COMPARE_KEYS}
        rows.append({"size": v["size"], "encoding": v["encoding"], "window": v["window"],
                     "packets": v["packets"], "rtt_packets": v["rtt_packets"],
                     "shm": {key: shm.get(key) for key in
                             (*SHM_COMPARE_KEYS, "workers_cpu_us_per_packet", "rtt_p99_us", "array_mb_s")},
                     "pipes": pipes, "ratios": ratios})
    shm_keys = ("shm_payloads_in", "shm_payloads_out")
    return {"rows": rows, "pipes_only_args": list(PIPES_ONLY_ARGS),
            "ratio": "shared memory / pipes only (throughput above 1: shm faster; RTT and CPU below 1: shm cheaper)",
            "counters": {"shm_node": {key: counters["picows"].get(key, 0) for key in shm_keys},
                         "pipes_node": {key: counters["pipes"].get(key, 0) for key in shm_keys},
                         "shm_node_large_packets": large_packets}}


def summarise_fairness(runs: list[dict], args: argparse.Namespace, lanes_at_start: dict) -> dict:
    """Per fairness lane: medians over the repeats of client B's round trips alone and under
    client A's flood, the lane's rate during the flood (A's answers + B's), the time one packet
    takes a worker then, and the goal: B waits behind at most one of A's packets per worker plus
    the one whose turn came before B's, not behind A's whole window."""
    out: dict = {"window": args.fair_window, "sleep_ms": args.fair_sleep_ms, "samples": args.fair_samples,
                 "bound": "B's p50 under the flood <= B's p50 alone + (W + 1) / W x one packet's time, where "
                          "one packet's time = W / (A's + B's packets per second during the flood). Taking turns, "
                          "B waits at most for the W packets of A running (one per worker) and one more, whose "
                          "turn came first: W + 1 packets, which the lane runs in (W + 1) / W packet times (the "
                          "worst case; B pauses at random between its packets, so it arrives at random points of "
                          "A's packets and its median wait is below that). A FIFO lane would make B wait behind "
                          "A's whole window: about window / W packet times",
                 "lanes": {}, "goals": []}
    for lane in FAIR_LANES:
        workers = lanes_at_start.get(lane, {}).get("workers") or (1 if lane == "cf" else args.workers)
        alone: dict = {}
        flood: dict = {}
        for key in FAIR_KEYS:
            _stats([r[lane]["alone"][key] for r in runs], key, alone)
            _stats([r[lane]["flood"][key] for r in runs], key, flood)
        b_rates = [r[lane]["flood"]["packets"] / r[lane]["flood"]["elapsed_s"] for r in runs]
        _stats([r[lane]["flood"]["a_throughput"] for r in runs], "a_throughput", flood)
        _stats(b_rates, "b_throughput", flood)
        _stats([r[lane]["flood"]["a_throughput"] + b for r, b in zip(runs, b_rates)], "lane_throughput", flood)
        packet_ms = workers / flood["lane_throughput"] * 1000
        bound_ms = alone["p50_ms"] + (workers + 1) / workers * packet_ms
        fifo_ms = alone["p50_ms"] + args.fair_window / workers * packet_ms
        saturated = sum(1 for r in runs if r[lane]["flood"]["a_saturated"])
        out["lanes"][lane] = {"workers": workers, "alone": alone, "flood": flood, "packet_ms": packet_ms,
                              "bound_ms": bound_ms, "fifo_estimate_ms": fifo_ms, "saturated_runs": saturated,
                              "ratio_flood_over_alone_p50": flood["p50_ms"] / alone["p50_ms"]}
        out["goals"].append(_goal(
            f"fair_{lane}_b_p50_ms", f"{lane}: client B's RTT p50 under client A's flood <= B alone + "
            f"(W+1)/W x one packet's time (W = {workers})", flood["p50_ms"], bound_ms,
            f"{alone['p50_ms']:.2f} + {(workers + 1) / workers:.2f} x {packet_ms:.2f} = {bound_ms:.2f} ms; "
            f"A's window {args.fair_window} would cost ~{fifo_ms:,.0f} ms in FIFO order; lane saturated in "
            f"{saturated} of {len(runs)} runs", unit=" ms", also=saturated == len(runs)))
    return out


def summarise_faults(fault_runs: dict[str, list[dict]], args: argparse.Namespace, checks: dict[str, dict],
                     spawn_skipped: str | None) -> dict:
    """Per fault-recovery node (by worker start), per condition and phase: medians over the
    repeats; the ratios faulty / fault-free; the workers replaced per second under the faults;
    fork / spawn where both ran; and the goals, on the default (fork server) node."""
    crash_pct = f"{100 / args.fault_crash_every:g} %"
    out: dict = {"crash_every": args.fault_crash_every, "crash_share": 1 / args.fault_crash_every,
                 "window": args.fault_window, "seconds": args.fault_seconds, "rtt_seconds": args.fault_rtt_seconds,
                 "spin_us": args.fault_spin_us, "rtt_limit": FAULT_RTT_LIMIT, "spawn_skipped": spawn_skipped,
                 "nodes": {}, "counters": checks, "goals": []}
    for start, runs in fault_runs.items():
        node: dict = {"worker_start": WORKER_STARTS[start]}
        for cond in FAULT_CONDITIONS:
            node[cond] = {phase: summarise([r[cond][phase] for r in runs], FAULT_KEYS) for phase in FAULT_PHASES}
            node[cond]["crashes"] = sum(r[cond][phase]["crashes"] for r in runs for phase in FAULT_PHASES)
            node[cond]["lane_wait_s_max"] = max(r[cond]["lane_wait_s"] for r in runs)
        clean, faulty = node["clean"], node["faulty"]
        node["ratios"] = {"throughput": faulty["loaded"]["throughput"] / clean["loaded"]["throughput"]}
        for phase, prefix in (("loaded", "loaded_"), ("one", "")):
            for q in ("p50", "p99"):
                node["ratios"][f"{prefix}rtt_{q}"] = faulty[phase][f"rtt_{q}_us"] / clean[phase][f"rtt_{q}_us"]
        node["replacements_per_s"] = faulty["loaded"]["crashes_per_s"]
        out["nodes"][start] = node
    fork = out["nodes"]["fork"]
    for phase, key in (("one", "rtt_p50"), ("loaded", "loaded_rtt_p50")):
        clean, faulty = fork["clean"][phase]["rtt_p50_us"], fork["faulty"][phase]["rtt_p50_us"]
        how = "1 in flight" if phase == "one" else f"{args.fault_window} in flight"
        out["goals"].append(_goal(
            f"fault_{key}_ratio", f"healthy packets' RTT p50 ({how}) with {crash_pct} crashing <= "
            f"{FAULT_RTT_LIMIT:g}x fault-free (fork server)", fork["ratios"][key], FAULT_RTT_LIMIT,
            f"{fmt(faulty)} vs {fmt(clean)} µs; {fmt(fork['replacements_per_s'], ',.1f')} workers replaced/s"))
    if "spawn" in out["nodes"]:
        spawn = out["nodes"]["spawn"]
        out["fork_over_spawn"] = {
            "replacements_per_s": fork["replacements_per_s"] / spawn["replacements_per_s"]
            if spawn["replacements_per_s"] else None,
            "faulty_throughput": fork["faulty"]["loaded"]["throughput"] / spawn["faulty"]["loaded"]["throughput"],
            "faulty_loaded_rtt_p50": fork["faulty"]["loaded"]["rtt_p50_us"] / spawn["faulty"]["loaded"]["rtt_p50_us"],
            "faulty_rtt_p50": fork["faulty"]["one"]["rtt_p50_us"] / spawn["faulty"]["one"]["rtt_p50_us"]}
    return out


def summarise_consume(runs: list[dict], args: argparse.Namespace) -> dict:
    """Per way: medians over the repeats; each way's throughput and front CPU over the separate
    packets'."""
    out: dict = {"items": args.consume_items, "chunk": args.consume_chunk, "window": args.window}
    for way in CONSUME_WAYS:
        out[way] = summarise([r[way] for r in runs], CONSUME_KEYS)
    sep = out["separate"]
    out["ratios"] = {way: {"items_per_s": out[way]["items_per_s"] / sep["items_per_s"],
                           "front_cpu": out[way]["front_cpu_us_per_item"] / sep["front_cpu_us_per_item"]
                           if sep["front_cpu_us_per_item"] else None}
                     for way in CONSUME_WAYS if way != "separate"}
    return out


def summarise_client_map(runs: list[dict], raw: dict, args: argparse.Namespace) -> dict:
    """Medians over the repeats, the raw pfnode row's (same node, same window), their ratio
    (the median of each repeat's) and its goal."""
    out: dict = {"items": args.map_items, "window": args.window, **summarise(runs, MAP_KEYS),
                 "raw_throughput": raw.get("throughput"), "raw_client_cpu_us_per_packet": raw.get("client_cpu_us_per_packet"),
                 "bar": runs[-1]["bar"] if runs else None}
    ratio = out.get("vs_raw")
    out["goals"] = [_goal("client_map", "Client.map / raw frames, throughput", ratio, MAP_GOAL,
                          f"{fmt(out.get('throughput'))} items/s against {fmt(out['raw_throughput'])} packets/s",
                          at_least=True)]
    return out


def _goal(key: str, name: str, measured: float | None, limit: float, value: str, unit: str = "x",
          at_least: bool = False, also: bool = True) -> dict:
    """One goal: `measured` (a ratio, unit "x", or a figure in `unit`) against `limit` (at most,
    or `at_least`), and `also` must hold too; `value` says what it was measured from."""
    met = measured is not None and (measured >= limit if at_least else measured <= limit) and also
    return {"key": key, "name": name, "measured": measured, "unit": unit, "limit": limit,
            "at_least": at_least, "value": value, "met": met}


def server_cpu(medians: dict, payload_summary: dict, ed_load: dict, ed_runs: int) -> dict:
    """The serving side's CPU per df:noop packet (front, workers, the same node with PFNODE_PURE=1,
    picows echo, websockets echo), what the compiled hot path saves against the pure node, and the
    hot-path goals measured against it, each met or not."""
    p, pu, pe, we = medians["pfnode"], medians["pfnode_pure"], medians["echo_picows"], medians["echo"]
    rows = {}
    for key, m, cpu_key in (("pfnode_front", p, "front_cpu_us_per_packet"),
                            ("pfnode_workers", p, "workers_cpu_us_per_packet"),
                            ("pure_front", pu, "front_cpu_us_per_packet"),
                            ("pure_workers", pu, "workers_cpu_us_per_packet"),
                            ("echo_picows", pe, "server_cpu_us_per_packet"),
                            ("echo_websockets", we, "server_cpu_us_per_packet")):
        rows[key] = {"us_per_packet" + suffix: m.get(cpu_key + suffix) for suffix in ("", "_min", "_max")}
    front, workers, picows = (rows[k]["us_per_packet"] for k in ("pfnode_front", "pfnode_workers", "echo_picows"))
    compiled_vs_pure = {"front_cpu": _ratio(front, rows["pure_front"]["us_per_packet"]),
                        "workers_cpu": _ratio(workers, rows["pure_workers"]["us_per_packet"]),
                        "throughput": _ratio(p["throughput"], pu["throughput"]),
                        "rtt_p50": _ratio(p["rtt_p50_us"], pu["rtt_p50_us"])}
    flood = ed_load["flood"]
    goals = [
        _goal("front_vs_picows_echo", "front CPU per df:noop <= 2x the picows echo server's",
              front / picows if picows else None, 2.0, f"{fmt(front, '.1f')} vs {fmt(picows, '.1f')} µs"),
        _goal("workers_us_per_noop", "workers CPU per no-op <= 15 µs", workers, 15.0, "all df workers together",
              unit=" µs"),
        _goal("throughput_vs_websockets_echo", "node throughput >= 1.2x the websockets echo server's",
              p["throughput"] / we["throughput"], 1.2,
              f"{fmt(p['throughput'])} vs {fmt(we['throughput'])} packets/s", at_least=True),
        _goal("rtt_p50_vs_websockets_echo", "RTT p50, 1 in flight, <= 2.0x the websockets echo server's",
              p["rtt_p50_us"] / we["rtt_p50_us"], 2.0, f"{fmt(p['rtt_p50_us'])} vs {fmt(we['rtt_p50_us'])} µs"),
    ]
    for enc, g in payload_summary["growth"].items():
        goals.append(_goal(f"front_per_mib_vs_echo_{enc}",
                           f"front CPU per added MiB of {enc} payload <= the websockets echo server's",
                           g["front_extra_vs_echo"], 1.0,
                           f"{fmt(g['front']['extra_us_per_mib'])} vs {fmt(g['echo_server']['extra_us_per_mib'])} "
                           f"µs per MiB"))
    goals.append(_goal("ed_p99_flood_ms", "ed p99 <= 2 ms while a df:noop flood saturates the front",
                       flood["p99_ms"], 2.0,
                       f"idle {ed_load['idle']['p99_ms']:.3f} ms; front busy "
                       f"{fmt(flood.get('front_cpu_share'), '.0%')} of the time; saturated in "
                       f"{ed_load['flood_saturated_runs']} of {ed_runs} runs",
                       unit=" ms", also=ed_load["flood_saturated_runs"] == ed_runs))
    return {"rows": rows, "goals": goals, "ratios": {g["key"]: g["measured"] for g in goals},
            "compiled_vs_pure": compiled_vs_pure}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def design_targets(p: dict, echo: dict, ratios: dict, ed_load: dict, ed_runs: int, payload_targets: list) -> list:
    """DESIGN.md's targets on the 2-core machine, and the payload issue's."""
    loaded, idle = ed_load["loaded"], ed_load["idle"]
    return [
        {"name": "df no-op >= 30 000 packets/s through the node",
         "value": f"{p['throughput']:,.0f} packets/s", "met": p["throughput"] >= 30_000},
        {"name": "RTT p50 <= 1.5x the websockets echo RTT",
         "value": f"{ratios['echo']['rtt_p50']:.2f}x ({p['rtt_p50_us']:,.0f} vs {echo['rtt_p50_us']:,.0f} µs)",
         "met": ratios["echo"]["rtt_p50"] <= 1.5},
        {"name": "ed p99 <= 2 ms while the df lane is saturated",
         "value": f"{loaded['p99_ms']:.3f} ms (idle {idle['p99_ms']:.3f} ms, {ed_load['ratios']['p99']:.2f}x; "
                  f"df lane saturated in {ed_load['df_saturated_runs']} of {ed_runs} runs)",
         "met": loaded["p99_ms"] <= 2.0 and ed_load["df_saturated_runs"] == ed_runs},
        *payload_targets,
    ]


def bench_report(args: argparse.Namespace, machine: dict, plan: Plan, results: Results,
                 node_status: dict[str, dict]) -> dict:
    """bench/run.py's report (see bench/README.md for every key)."""
    medians = {system: summarise(rs) for system, rs in results.runs.items()}
    p = medians["pfnode"]
    ratios = {key: {"throughput": p["throughput"] / base["throughput"],
                    "rtt_p50": p["rtt_p50_us"] / base["rtt_p50_us"],
                    "rtt_p99": p["rtt_p99_us"] / base["rtt_p99_us"]}
              for key, base in (("executor", medians["executor"]), ("echo", medians["echo"]),
                                ("websockets_transport", medians["pfnode_websockets"]),
                                ("echo_picows", medians["echo_picows"]))}
    payloads = summarise_payloads(plan.variants, results.payload_runs)
    payload_checks = check_payloads(payloads)
    counters = {name: status["counters"] for name, status in node_status.items()}
    groups = {group: summarise(rs) for group, rs in results.group_runs.items()}
    for group in GROUPS:
        groups[group]["workers"] = results.lanes_at_start.get(group, {}).get("workers")
        groups[group]["handler"] = f"{group}:noop"
    ed_load = summarise_ed(results.ed_runs, args)
    ed_runs = len(results.ed_runs)
    return {
        "schema": 1,
        "benchmark": "df:noop throughput and RTT (picows and websockets transports, picows and websockets "
                     "echo servers); server CPU per packet; per-lane no-op; ed latency while df is saturated "
                     "and while a df:noop flood saturates the front; payload sizes 100 B to 1 MiB; large "
                     "payloads with worker shared memory vs pipes only; fairness between two clients on one "
                     "lane; fault recovery with crashing packets (fork server vs new interpreters)",
        "machine": machine,
        "config": run_config(args, plan, results, node_status, machine),
        "medians": medians,
        "ratios": ratios,
        "targets": design_targets(p, medians["echo"], ratios, ed_load, ed_runs, payload_checks["targets"]),
        "server_cpu": server_cpu(medians, payload_checks["summary"], ed_load, ed_runs),
        "runs": results.runs,
        "groups": groups,
        "group_runs": results.group_runs,
        "ed_load": ed_load,
        "ed_load_runs": results.ed_runs,
        "payloads": payloads,
        "payload_summary": payload_checks["summary"],
        "payload_shm_vs_pipes": compare_shm(payloads, plan.pipes_variants, results.payload_runs["pfnode_pipes"],
                                            counters, results.large_packets),
        "payload_runs": results.payload_runs,
        "fairness": summarise_fairness(results.fair_runs, args, results.lanes_at_start),
        "fairness_runs": results.fair_runs,
        "fault_recovery": summarise_faults(results.fault_runs, args, results.fault_checks, results.spawn_skipped),
        "fault_recovery_runs": results.fault_runs,
        "consume": summarise_consume(results.consume_runs, args),
        "consume_runs": results.consume_runs,
        "client_map": summarise_client_map(results.map_runs, medians["pfnode"], args),
        "client_map_runs": results.map_runs,
        "node": node_status["picows"],
        "websockets_node": node_status["websockets"],
        "pipes_node": node_status["pipes"],
        "fault_nodes": {start: node_status[name] for start, name in FAULT_NODES.items() if name in node_status},
        "loadavg_at_end": loadavg(),
        "elapsed_s": round(elapsed_s(), 1),
    }


def run_config(args: argparse.Namespace, plan: Plan, results: Results, node_status: dict, machine: dict) -> dict:
    names = ("packets", "rtt_packets", "repeats", "workers", "window", "quick", "group_packets",
             "group_rtt_packets", "ed_seconds", "ed_df_inflight", "ed_df_sleep_ms", "ed_flood_inflight",
             "payload_packets", "payload_rtt_packets", "payload_window", "payload_large_window", "fair_window",
             "fair_sleep_ms", "fair_samples", "fault_seconds", "fault_rtt_seconds", "fault_window",
             "fault_crash_every", "fault_spin_us", "consume_items", "consume_chunk", "map_items")
    config = {name: getattr(args, name) for name in names}
    config.update({"warmup": plan.warmup, "group_warmup": plan.group_warmup,
                   "data_bytes": len(json.dumps(DATA, separators=(",", ":"))),
                   "frame_bytes": results.runs["pfnode"][0].get("frame_bytes"),
                   "node_args": node_status["picows"]["argv"],
                   "websockets_node_args": node_status["websockets"]["argv"],
                   "pipes_node_args": node_status["pipes"]["argv"],
                   "pure_node_args": node_status["pure"]["argv"], "pure_node_env": NODE_ENVS["pure"],
                   "hot_paths": results.hot_paths,
                   "fault_node_args": {start: node_status[name]["argv"] for start, name in FAULT_NODES.items()
                                       if name in node_status},
                   "fault_warmup": plan.fault_warmup,
                   "client_loop": "uvloop" if machine["uvloop"] else "asyncio",
                   "payload_variants": plan.variants})
    return config


def hub_report(args: argparse.Namespace, machine: dict, plan: Plan, runs: dict[str, list[dict]],
               checks: dict, nodes: dict) -> dict:
    """bench/hub.py's report."""
    medians = {system: summarise(rs) for system, rs in runs.items()}
    d = medians["direct"]
    ratios = {system: {"throughput": medians[system]["throughput"] / d["throughput"],
                       "rtt_p50": medians[system]["rtt_p50_us"] / d["rtt_p50_us"],
                       "rtt_p99": medians[system]["rtt_p99_us"] / d["rtt_p99_us"],
                       "server_cpu": medians[system]["server_cpu_us_per_packet"] / d["server_cpu_us_per_packet"],
                       "added_rtt_p50_us": medians[system]["rtt_p50_us"] - d["rtt_p50_us"]}
              for system in ("dialout", "reactor")}
    loop = "uvloop" if machine["uvloop"] else "asyncio"
    return {
        "schema": 1,
        "benchmark": "hub relay cost: df:noop direct vs forwarded by a hub to a dial-out pfnode node "
                     "and to a Python Reactor",
        "machine": machine,
        "config": {"packets": args.packets, "rtt_packets": args.rtt_packets, "repeats": args.repeats,
                   "workers": args.workers, "window": args.window, "warmup": plan.warmup, "quick": args.quick,
                   "uplink_transport": args.uplink_transport,
                   "frame_bytes": runs["direct"][0].get("frame_bytes"), "client_loop": loop, "reactor_loop": loop},
        "systems": dict(HUB_SYSTEMS),
        "medians": medians,
        "ratios_relayed_over_direct": ratios,
        "runs": runs,
        "checks": checks,
        "nodes": nodes,
        "loadavg_at_end": loadavg(),
        "elapsed_s": round(elapsed_s(), 1),
    }


def machine_at_start(detail: str) -> dict:
    """`machine_info()`, after saying on stderr the CPUs, the load average and `detail` (what
    the harness is about to measure)."""
    machine = machine_info()
    load = machine["loadavg_at_start"]
    progress(f"{machine['cpu_count']} CPUs, load average {f'{load[0]:.2f}' if load else '?'}; {detail}")
    return machine


def run_and_report(label: str, parse_args, run, stem: str, printer, argv: list[str] | None = None, *,
                   latest: str | None = None, plotter=None) -> int:
    """A harness's main: parse its arguments, `run` it (every process stopped at the end,
    also on Ctrl-C), save the report (first: a table bug must not lose it; as out/`latest`,
    STEM-latest.json by default), print it, and with `plotter` draw it (latest's .png and the
    run's own), unless --no-plot."""
    from bench.common import set_progress_label
    from bench.processes import run_with_cleanup

    set_progress_label(label)
    args = parse_args(argv)
    result = run_with_cleanup(run, args)
    if isinstance(result, int):
        return result
    latest = latest or f"{stem}-latest.json"
    path = save_report(result, args.out, stem, latest)
    printer(result)
    if plotter is None:
        return 0
    if args.no_plot:
        line = "plot: skipped (--no-plot)"
    else:
        try:
            line = plotter(result, [args.out / latest.replace(".json", ".png"), path.with_suffix(".png")])
        except Exception as exc:  # noqa: BLE001 - the numbers are written; a plot bug must not hide them
            line = f"plot: FAILED ({type(exc).__name__}: {exc}); the results are in {path}"
    print(line)
    progress(line)
    return 0


def save_report(report: dict, out: Path, stem: str, latest: str) -> Path:
    """Write the report as out/STEM-<time>.json and out/LATEST; say where."""
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    path = out / f"{stem}-{stamp}.json"
    path.write_text(text)
    (out / latest).write_text(text)
    progress(f"wrote {path} and {out / latest} ({report['elapsed_s']} s in all)")
    return path


# ============================================================================ tables

def _rule(header: str, indent: str = "") -> None:
    print(indent + header)
    print(indent + "-" * len(header))


def print_load(report: dict) -> None:
    start, end = report["machine"].get("loadavg_at_start"), report.get("loadavg_at_end")
    if start and end:
        print(f"  (1-minute load average {start[0]:.2f} at the start, {end[0]:.2f} at the end: other processes "
              f"on these {report['machine']['cpu_count']} CPUs show up in the tails)")


def print_bench(report: dict) -> None:
    """Every table of bench/run.py's report, then the targets."""
    print_systems(report)
    print_server_cpu(report)
    print_groups(report)
    print_ed_load(report)
    print_payloads(report)
    print_fairness(report)
    print_faults(report)
    print_consume(report)
    print_client_map(report)
    print("targets (DESIGN.md and the payload issue, 2-core machine)")
    for target in report["targets"]:
        print(f"  {_met(target['met'])} {target['name']}: {target['value']}")
    print_load(report)
    print()


def print_systems(report: dict) -> None:
    cfg, med, ratios = report["config"], report["medians"], report["ratios"]
    print()
    print(f"pfnode benchmark: {cfg['packets']:,} packets x {cfg['repeats']} repeats, window {cfg['window']}, "
          f"RTT over {cfg['rtt_packets']:,} round trips 1 in flight; medians "
          f"({report['machine']['cpu_count']} CPUs, Python {report['machine']['python']})")
    _rule(f"{'system':<40} {'packets/s':>10} {'(min-max)':>17} {'RTT p50 µs':>11} "
          f"{'RTT p99 µs':>11} {'client CPU µs/pkt':>18} {'server CPU µs/pkt':>18}")
    for row in SYSTEMS:
        m = med[row.key]
        spread = f"({fmt(m['throughput_min'])}-{fmt(m['throughput_max'])})"
        print(f"{row.label.format(w=cfg['workers']):<40} {fmt(m['throughput']):>10} {spread:>17} "
              f"{fmt(m['rtt_p50_us']):>11} {fmt(m['rtt_p99_us']):>11} "
              f"{fmt(m.get('client_cpu_us_per_packet'), '.1f'):>18} "
              f"{fmt(m.get('server_cpu_us_per_packet'), '.1f'):>18}")
    p = med["pfnode"]
    print(f"  pfnode server CPU split: front {fmt(p.get('front_cpu_us_per_packet'), '.1f')} µs/packet, "
          f"workers {fmt(p.get('workers_cpu_us_per_packet'), '.1f')} µs/packet (all workers together)")
    print()
    print("ratios (pfnode / baseline)         throughput   RTT p50   RTT p99")
    for key, label in (("executor", "pfnode / ProcessPoolExecutor"), ("echo", "pfnode / websockets echo"),
                       ("echo_picows", "pfnode / picows echo"),
                       ("websockets_transport", "picows / websockets transport")):
        r = ratios[key]
        print(f"  {label:<32} {r['throughput']:>10.2f}x {r['rtt_p50']:>8.2f}x {r['rtt_p99']:>8.2f}x")
    w = med["pfnode_websockets"]
    print(f"  (the same node and client on each transport; websockets-transport server CPU split: front "
          f"{fmt(w.get('front_cpu_us_per_packet'), '.1f')} µs/packet, workers "
          f"{fmt(w.get('workers_cpu_us_per_packet'), '.1f')} µs/packet)")
    print()


SERVER_CPU_NAMES = {"pfnode_front": "pfnode front", "pfnode_workers": "pfnode workers (together)",
                    "pure_front": "pfnode front, PFNODE_PURE=1", "pure_workers": "its workers, PFNODE_PURE=1",
                    "echo_picows": "picows echo server (orjson)", "echo_websockets": "websockets echo server"}


def print_server_cpu(report: dict) -> None:
    cpu, cfg = report["server_cpu"], report["config"]
    print(f"server-side CPU per packet: df:noop (echo servers: the same frames), CPU time of each process during "
          f"the throughput phase / {cfg['packets']:,} packets; medians over {cfg['repeats']} repeats")
    _rule(f"{'process':<30} {'µs/packet':>10} {'(min-max)':>15}")
    for key, name in SERVER_CPU_NAMES.items():
        row = cpu["rows"][key]
        spread = f"({fmt(row['us_per_packet_min'], '.1f')}-{fmt(row['us_per_packet_max'], '.1f')})"
        print(f"{name:<30} {fmt(row['us_per_packet'], '.1f'):>10} {spread:>15}")
    hot, vs = cfg.get("hot_paths", {}).get("picows", {}), cpu["compiled_vs_pure"]
    print(f"compiled hot path ({hot.get('mode', '?')}: {hot.get('compiled', '?')} of {hot.get('of', '?')} modules) / "
          f"PFNODE_PURE=1, same run: front CPU {fmt(vs['front_cpu'], '.2f')}x, workers CPU "
          f"{fmt(vs['workers_cpu'], '.2f')}x, throughput {fmt(vs['throughput'], '.2f')}x, RTT p50 "
          f"{fmt(vs['rtt_p50'], '.2f')}x")
    print("hot-path goals (measured side by side in this run)")
    for goal in cpu["goals"]:
        print(f"  {_met(goal['met'])} {goal['name']}: {fmt(goal['measured'], '.2f')}{goal['unit']} "
              f"({goal['value']})")
    print()


def print_groups(report: dict) -> None:
    cfg, groups = report["config"], report["groups"]
    print(f"per-lane no-op through the node: {cfg['group_packets']:,} packets x {cfg['repeats']} repeats, "
          f"window {cfg['window']}, RTT over {cfg['group_rtt_packets']:,} round trips 1 in flight; medians")
    _rule(f"{'lane (handler)':<16} {'workers':<30} {'packets/s':>10} {'(min-max)':>17} {'RTT p50 µs':>11} "
          f"{'RTT p99 µs':>11} {'front CPU µs/pkt':>17} {'lane CPU µs/pkt':>16}")
    for group in GROUPS:
        m = groups[group]
        workers = f"{fmt(m.get('workers'))}, {LANE_NOTES[group]}"
        spread = f"({fmt(m['throughput_min'])}-{fmt(m['throughput_max'])})"
        print(f"{group + ' (' + m['handler'] + ')':<16} {workers:<30} {fmt(m['throughput']):>10} {spread:>17} "
              f"{fmt(m['rtt_p50_us']):>11} {fmt(m['rtt_p99_us']):>11} "
              f"{fmt(m.get('front_cpu_us_per_packet'), '.1f'):>17} {fmt(m.get('lane_cpu_us_per_packet'), '.1f'):>16}")
    print()


def print_ed_load(report: dict) -> None:
    ed = report["ed_load"]
    runs = len(report["ed_load_runs"])
    print(f"ed latency under df load: ed:noop 1 in flight for {ed['seconds_per_phase']:g} s per phase on one "
          f"connection; on another, {ed['df_inflight']} df:sleep_ms {ed['df_sleep_ms']} kept in flight (lane "
          f"saturated) or {ed['flood_inflight']} df:noop (front saturated); {runs} repeats; medians "
          f"(max: worst of all)")
    _rule(f"{'df lane':<38} {'ed packets':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
          f"{'max ms':>8} {'front busy':>10} {'df packets/s':>13}")
    ceiling = ed["df_throughput_ceiling"]
    rows = (("idle", ed["idle"], None),
            (f"saturated ({ed['df_saturated_runs']}/{runs} runs verified)", ed["loaded"], ceiling),
            (f"no-op flood ({ed['flood_saturated_runs']}/{runs} verified)", ed["flood"], None))
    for name, m, limit in rows:
        df = "-"
        if "df_throughput" in m:
            df = f"{m['df_throughput']:,.1f}" + (f" / {limit:g}" if limit else "")
        print(f"{name:<38} {m['packets']:>10,} {m['p50_ms']:>8.3f} {m['p99_ms']:>8.3f} {m['p999_ms']:>9.3f} "
              f"{m['max_ms']:>8.3f} {fmt(m.get('front_cpu_share'), '.0%'):>10} {df:>13}")
    for name, key in (("ratio saturated / idle", "ratios"), ("ratio flood / idle", "flood_ratios")):
        r = ed[key]
        print(f"{name:<38} {'':>10} {r['p50']:>7.2f}x {r['p99']:>7.2f}x {'':>9} {r['max']:>7.2f}x")
    print("  target: ed p99 <= 2 ms while df is saturated" + (
        f"; df packets/s is the lane's rate during the loaded phase / its ceiling ({report['config']['workers']} "
        f"workers x 1000 / {ed['df_sleep_ms']} ms)" if ceiling else "")
        + "; front busy: the front's CPU time / the phase's time")
    print()


def _print_goals(goals: list[dict], spec: str = ".2f") -> None:
    for goal in goals:
        print(f"  {_met(goal['met'])} {goal['name']}: {fmt(goal['measured'], spec)}{goal['unit']} "
              f"(limit {fmt(goal['limit'], spec)}{goal['unit']}; {goal['value']})")


def print_fairness(report: dict) -> None:
    fair, runs = report["fairness"], len(report["fairness_runs"])
    print(f"fairness between clients: client A keeps {fair['window']} <lane>:sleep_ms {fair['sleep_ms']:g} in flight "
          f"on its own connection; client B, on another, sends the same packet 1 at a time ({fair['samples']} round "
          f"trips alone, as many under A's flood); {runs} repeats; medians")
    _rule(f"{'lane':<5} {'workers':>7} | {'B alone p50 ms':>14} {'p99':>7} | {'B flood p50 ms':>14} {'p99':>7} "
          f"{'ratio':>6} | {'A pkt/s':>8} {'lane pkt/s':>10} {'1 packet ms':>11} {'bound ms':>8} {'FIFO ~ms':>8}")
    for lane, m in fair["lanes"].items():
        a, f = m["alone"], m["flood"]
        print(f"{lane:<5} {m['workers']:>7} | {a['p50_ms']:>14.2f} {a['p99_ms']:>7.2f} | {f['p50_ms']:>14.2f} "
              f"{f['p99_ms']:>7.2f} {m['ratio_flood_over_alone_p50']:>5.2f}x | {fmt(f['a_throughput']):>8} "
              f"{fmt(f['lane_throughput']):>10} {m['packet_ms']:>11.2f} {m['bound_ms']:>8.2f} "
              f"{fmt(m['fifo_estimate_ms']):>8}")
    print(f"  bound: {fair['bound']}")
    _print_goals(fair["goals"])
    print()


def print_faults(report: dict) -> None:
    fr = report["fault_recovery"]
    runs = max((len(rs) for rs in report["fault_recovery_runs"].values()), default=0)
    print(f"fault recovery: healthy df:spin_us {fr['spin_us']} packets, fault-free and with every "
          f"{fr['crash_every']}th packet a df:crash (os._exit in its worker: {100 * fr['crash_share']:g} %), "
          f"each crash answered PF502 and each healthy packet its data; {fr['window']} in flight for "
          f"{fr['seconds']:g} s, then 1 in flight for {fr['rtt_seconds']:g} s; a node of their own per worker "
          f"start; {runs} repeats; medians")
    _rule(f"{'workers started by':<22} {'condition':<12} | {'healthy/s':>9} {'RTT p50 µs':>10} {'p99':>8} | "
          f"{'1 in flight p50 µs':>18} {'p99':>7} | {'replaced/s':>10}")
    for start, node in fr["nodes"].items():
        for cond in FAULT_CONDITIONS:
            loaded, one = node[cond]["loaded"], node[cond]["one"]
            print(f"{node['worker_start']:<22} {cond:<12} | {fmt(loaded['throughput']):>9} "
                  f"{fmt(loaded['rtt_p50_us']):>10} {fmt(loaded['rtt_p99_us']):>8} | {fmt(one['rtt_p50_us']):>18} "
                  f"{fmt(one['rtt_p99_us']):>7} | {fmt(loaded['crashes_per_s'], ',.1f'):>10}")
        r = node["ratios"]
        print(f"{'':<22} {'faulty/clean':<12} | {r['throughput']:>8.2f}x {r['loaded_rtt_p50']:>9.2f}x "
              f"{r['loaded_rtt_p99']:>7.2f}x | {r['rtt_p50']:>17.2f}x {r['rtt_p99']:>6.2f}x |")
    if fr.get("fork_over_spawn"):
        fs = fr["fork_over_spawn"]
        print(f"  fork server / new interpreters, with crashes: workers replaced per second "
              f"{fmt(fs['replacements_per_s'], '.2f')}x, healthy packets/s {fs['faulty_throughput']:.2f}x, RTT p50 "
              f"{fs['faulty_loaded_rtt_p50']:.2f}x ({fr['window']} in flight), {fs['faulty_rtt_p50']:.2f}x "
              f"(1 in flight)")
    if fr.get("spawn_skipped"):
        print(f"  no comparison with new interpreters: {fr['spawn_skipped']}")
    print("  replaced/s: workers killed by a crashing packet (and replaced, per the node's counters) per second of "
          "the windowed phase")
    _print_goals(fr["goals"])
    print()


def print_consume(report: dict) -> None:
    c = report["consume"]
    n, chunk = c["items"], c["chunk"]
    names = {way: text.format(n=f"{n:,}", window=c["window"], chunk=chunk, subs=f"{-(-n // chunk):,}")
             for way, text in CONSUME_NAMES.items()}
    print(f"df:consume: {n:,} df:noop runs (data: an int) three ways against the main node, one client, "
          f"{len(report['consume_runs'])} repeats; medians; CPU per item")
    _rule(f"{'way':<52} {'items/s':>9} {'(min-max)':>17} {'vs packets':>10} | {'front µs':>8} {'workers µs':>10}")
    for way in CONSUME_WAYS:
        m = c[way]
        spread = f"({fmt(m['items_per_s_min'])}-{fmt(m['items_per_s_max'])})"
        ratio = f"{c['ratios'][way]['items_per_s']:.2f}x" if way in c["ratios"] else "1"
        print(f"{names[way]:<52} {fmt(m['items_per_s']):>9} {spread:>17} {ratio:>10} | "
              f"{fmt(m['front_cpu_us_per_item'], '.1f'):>8} {fmt(m['workers_cpu_us_per_item'], '.1f'):>10}")
    print()


def print_client_map(report: dict) -> None:
    c = report["client_map"]
    print(f"pfnode.Client.map: {c['items']:,} df:noop items (data: the row's), window {c['window']}, its tqdm bar "
          f"forced on and drawn to a file, against the raw frames of the pfnode row on the same node; "
          f"{len(report['client_map_runs'])} repeats; medians")
    _rule(f"{'client':<44} {'packets/s':>10} {'(min-max)':>17} {'client µs/pkt':>13} {'front µs':>8} {'workers µs':>10}")
    print(f"{'raw frames (the pfnode row above)':<44} {fmt(c['raw_throughput']):>10} {'':>17} "
          f"{fmt(c['raw_client_cpu_us_per_packet'], '.1f'):>13}")
    spread = f"({fmt(c.get('throughput_min'))}-{fmt(c.get('throughput_max'))})"
    print(f"{'Client.map, progress=True':<44} {fmt(c.get('throughput')):>10} {spread:>17} "
          f"{fmt(c.get('client_cpu_us_per_packet'), '.1f'):>13} {fmt(c.get('front_cpu_us_per_packet'), '.1f'):>8} "
          f"{fmt(c.get('workers_cpu_us_per_packet'), '.1f'):>10}")
    print(f"  the bar's last line: {c['bar']}")
    _print_goals(c["goals"])
    print()


def print_payloads(report: dict) -> None:
    cfg, payloads, summary = report["config"], report["payloads"], report["payload_summary"]
    large = sorted({p["size"] for p in payloads if p["nbytes"] >= LARGE_PAYLOAD_BYTES})
    print(f"payload sizes: df:noop returns its data, float64 values as a JSON list or as one $ndarray "
          f"(metadata {{\"ndarray\": true}}); every answer checked equal to what was sent; "
          f"{cfg['repeats']} repeats; medians")
    print(f"  throughput window {cfg['payload_window']}"
          + (f" ({', '.join(large)}: window {cfg['payload_large_window']})" if large else "")
          + "; RTT 1 in flight; echo: the websockets echo server sent the same frames (bytes in, bytes out)")
    _rule(f"{'payload':<8} {'encoding':<8} {'frame B':>10} {'win':>3} {'packets':>7} {'packets/s':>9} "
          f"{'MB/s':>7} {'RTT p50 µs':>10} {'RTT p99 µs':>10} {'front µs/pkt':>12} {'workers µs/pkt':>14} "
          f"{'codec µs':>9} | {'echo pkt/s':>10} {'echo p50 µs':>11} {'echo µs/pkt':>11}")
    for p in payloads:
        m, e = p["pfnode"], p["echo"]
        print(f"{p['size']:<8} {p['encoding']:<8} {p['frame_bytes']:>10,} {p['window']:>3} {p['packets']:>7,} "
              f"{fmt(m['throughput']):>9} {fmt(m['array_mb_s'], ',.1f'):>7} {fmt(m['rtt_p50_us']):>10} "
              f"{fmt(m['rtt_p99_us']):>10} {fmt(m.get('front_cpu_us_per_packet')):>12} "
              f"{fmt(m.get('workers_cpu_us_per_packet')):>14} {fmt(m.get('worker_codec_us')):>9} | "
              f"{fmt(e['throughput']):>10} {fmt(e['rtt_p50_us']):>11} {fmt(e.get('server_cpu_us_per_packet')):>11}")
    print("  MB/s: the float64 array's bytes per second (8 bytes a value), one way; frame B: one submit frame "
          "on the wire; codec µs: the worker's unavoidable work for that data (parse, base64, encode), "
          "timed in the client")
    for enc, g in summary["growth"].items():
        print(f"  {enc:<8} {PAYLOAD_SIZES[0][0]} -> {PAYLOAD_SIZES[-1][0]}: CPU per packet front "
              f"{fmt(g['front']['growth'], ',.0f')}x, workers {fmt(g['workers']['growth'], ',.0f')}x, echo server "
              f"{fmt(g['echo_server']['growth'], ',.0f')}x; per added MB of frame: front "
              f"{fmt(g['front']['extra_us_per_mb'])} µs, workers {fmt(g['workers']['extra_us_per_mb'])} µs, "
              f"echo server {fmt(g['echo_server']['extra_us_per_mb'])} µs")
    nd = summary["ndarray_large_rtt"]
    print(f"  {PAYLOAD_SIZES[-1][0]} ndarray RTT p50 {nd['rtt_p50_us'] / 1000:.2f} ms = echo RTT (same frames) "
          f"{nd['echo_rtt_p50_us'] / 1000:.2f} ms + worker JSON/base64 work {nd['worker_codec_us'] / 1000:.2f} ms "
          f"+ the rest (pipe hop to the worker and back, copies) {nd['rest_us'] / 1000:.2f} ms")
    print_shm_comparison(report)
    print()


def print_shm_comparison(report: dict) -> None:
    cmp = report["payload_shm_vs_pipes"]
    c = cmp["counters"]
    print(f"  shared memory vs pipes only between front and workers: the rows above (shm) against a node with "
          f"`{' '.join(cmp['pipes_only_args'])}` (pipes), same client; ratio = shm / pipes")
    _rule(f"{'payload':<8} {'encoding':<8} | {'packets/s shm':>13} {'pipes':>7} {'ratio':>6} | "
          f"{'RTT p50 µs shm':>14} {'pipes':>7} {'ratio':>6} | {'front µs/pkt shm':>16} {'pipes':>7} {'ratio':>6}",
          indent="  ")
    for r in cmp["rows"]:
        shm, pipes, ratio = r["shm"], r["pipes"], r["ratios"]
        cells = []
        for key, width in (("throughput", 13), ("rtt_p50_us", 14), ("front_cpu_us_per_packet", 16)):
            cells.append(f"{fmt(shm.get(key)):>{width}} {fmt(pipes.get(key)):>7} "
                         f"{fmt(ratio[key], '.2f') + 'x' if ratio[key] is not None else '-':>6}")
        print(f"  {r['size']:<8} {r['encoding']:<8} | " + " | ".join(cells))
    print(f"  /status counters: shm node shm_payloads_in {c['shm_node']['shm_payloads_in']:,}, out "
          f"{c['shm_node']['shm_payloads_out']:,} (of {c['shm_node_large_packets']:,} large packets sent to it); "
          f"pipes-only node in {c['pipes_node']['shm_payloads_in']}, out {c['pipes_node']['shm_payloads_out']}")


def print_hub(report: dict) -> None:
    cfg, med, ratios = report["config"], report["medians"], report["ratios_relayed_over_direct"]
    print()
    print(f"hub relay benchmark: df:noop, {cfg['packets']:,} packets x {cfg['repeats']} repeats, window "
          f"{cfg['window']}, RTT over {cfg['rtt_packets']:,} round trips 1 in flight; medians "
          f"({report['machine']['cpu_count']} CPUs, Python {report['machine']['python']}, "
          f"{cfg['workers']} df workers)")
    _rule(f"{'system':<32} {'packets/s':>10} {'(min-max)':>17} {'RTT p50 µs':>11} {'RTT p99 µs':>11} "
          f"{'hub front µs/pkt':>17} {'runner µs/pkt':>14} {'server µs/pkt':>14} {'client µs/pkt':>14}")
    for system, name in HUB_SYSTEMS.items():
        m = med[system]
        spread = f"({fmt(m['throughput_min'])}-{fmt(m['throughput_max'])})"
        print(f"{name:<32} {fmt(m['throughput']):>10} {spread:>17} {fmt(m['rtt_p50_us']):>11} "
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
        print(f"  {HUB_SYSTEMS[system]:<32} {r['throughput']:>10.2f}x {r['rtt_p50']:>8.2f}x {r['rtt_p99']:>8.2f}x "
              f"{r['server_cpu']:>10.2f}x {round(r['added_rtt_p50_us']):>+11,d} µs")
    print_load(report)
    print()


# ============================================================================ the plot

NO_MATPLOTLIB = ("plot: skipped, matplotlib is not installed (make bench installs it; or "
                 ".venv/bin/pip install -e '.[bench]')")


def _pyplot():
    """matplotlib's pyplot on its file backend, or None without matplotlib (the plot is skipped,
    not the run failed)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def write_plot(report: dict, paths: list[Path]) -> str:
    """Draw the PNG (to every path in `paths`); return a line saying what happened. Without
    matplotlib the plot is skipped, not the run failed."""
    plt = _pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    cfg, med = report["config"], report["medians"]
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    fig.suptitle(f"pfnode benchmark, {report['machine']['cpu_count']} CPUs, {cfg['workers']} workers, "
                 f"{cfg['repeats']} repeats (medians; bars: min-max)  {report['machine']['date']}", fontsize=11)
    systems = ["pfnode", "pfnode_pure", "pfnode_websockets", "executor", "echo", "echo_picows"]
    labels = {row.key: row.plot_label for row in SYSTEMS}
    # The target is named in the title, not beside its line, where a bar's label could meet it.
    target = 30_000
    system_labels = _bars(axes[0][0], [labels[s] for s in systems], [med[s] for s in systems],
                          ["tab:blue", "tab:purple", "tab:cyan", "tab:gray", "tab:orange", "tab:olive"],
                          f"df:noop throughput per system (window {cfg['window']}; dashed: target 30 000/s)",
                          "packets/s", lines=[target])
    axes[0][0].axhline(target, color="tab:red", linestyle="--", linewidth=1)
    groups = report["groups"]
    _bars(axes[0][1], [f"{g}:noop\n{groups[g].get('workers')} worker(s)" for g in GROUPS],
          [groups[g] for g in GROUPS], "tab:green", f"throughput per lane (window {cfg['window']})", "packets/s")
    _payload_cpu(axes[1][0], report["payloads"])
    _payload_rate(axes[1][1], report["payloads"])
    fig.tight_layout()
    _clear_of_lines(fig, [(axes[0][0], ann, [target]) for ann in system_labels])
    for path in paths:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {paths[0]}" + (f" (and {', '.join(str(p) for p in paths[1:])})" if paths[1:] else "")


def _bars(ax, labels, stats, color, title, ylabel, key="throughput", lines=()) -> list:
    """Bars with min-max whiskers and a label above each; the labels, to move clear of the
    reference `lines` once the figure is laid out."""
    values = [s[key] for s in stats]
    low = [s[key] - s.get(key + "_min", s[key]) for s in stats]
    high = [s.get(key + "_max", s[key]) - s[key] for s in stats]
    xs = range(len(labels))
    ax.bar(xs, values, color=color, yerr=[low, high], capsize=4)
    ax.set_xticks(list(xs), labels, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    tops = [v + h for v, h in zip(values, high)]
    annotations = [ax.annotate(f"{v:,.0f}/s\nRTT p50 {st['rtt_p50_us']:,.0f} µs", (x, top), textcoords="offset points",
                               xytext=(0, 4), ha="center", fontsize=8) for x, v, top, st in zip(xs, values, tops, stats)]
    # room for the labels, also for one moved above a reference line just over its bar
    ax.set_ylim(0, max([*tops, *lines]) * 1.25)
    return annotations


def _log_headroom(ax, values: list[float], share: float = 0.7) -> None:
    """On a log axis, put the top so that the largest value sits at `share` of the height: the
    upper part is left to the legend (upper left) and the bars' labels."""
    import math

    low, _ = ax.get_ylim()
    top = max(v for v in values if v)
    ax.set_ylim(low, 10 ** (math.log10(low) + (math.log10(top) - math.log10(low)) / share))


def _payload_cpu(ax, payloads: list[dict]) -> None:
    """CPU per packet of the front, the df workers and the echo server against payload size."""
    sizes = [size for size, _ in PAYLOAD_SIZES]
    xs = [nbytes for _, nbytes in PAYLOAD_SIZES]
    for enc, marker in (("json", "o"), ("ndarray", "s")):
        rows = [_find_payload(payloads, size, enc) for size in sizes]
        style = "-" if enc == "json" else "--"
        for system, key, color, name in (("pfnode", "front_cpu_us_per_packet", "tab:blue", "pfnode front"),
                                         ("pfnode", "workers_cpu_us_per_packet", "tab:purple", "pfnode workers"),
                                         ("echo", "server_cpu_us_per_packet", "tab:orange", "echo server")):
            ax.plot(xs, [r[system].get(key) for r in rows], marker=marker, color=color,
                    label=f"{name}, {enc}", linestyle=style)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"{s}\n({n // 8:,} floats)" for s, n in PAYLOAD_SIZES])
    ax.set_title("CPU µs per packet vs payload size (throughput phase)", fontsize=10)
    ax.set_ylabel("CPU µs/packet")
    ax.grid(alpha=0.3)
    # The lines climb to the right: the legend goes above them, in the top left, with room made for it.
    _log_headroom(ax, [y for line in ax.get_lines() for y in line.get_ydata() if y is not None], 0.72)
    ax.legend(fontsize=8, ncol=2, loc="upper left")


def _payload_rate(ax, payloads: list[dict]) -> None:
    """The payload data rate in MB/s per size, for pfnode and the echo server."""
    sizes = [size for size, _ in PAYLOAD_SIZES]
    width = 0.2
    for k, (enc, system, color, label) in enumerate((
            ("json", "pfnode", "tab:blue", "pfnode, JSON list"), ("ndarray", "pfnode", "tab:cyan", "pfnode, $ndarray"),
            ("json", "echo", "tab:orange", "echo, JSON list frames"),
            ("ndarray", "echo", "navajowhite", "echo, $ndarray frames"))):
        values = [_find_payload(payloads, size, enc)[system]["array_mb_s"] for size in sizes]
        positions = [i + (k - 1.5) * width for i in range(len(sizes))]
        ax.bar(positions, values, width, color=color, label=label)
        for x, v in zip(positions, values):
            ax.annotate(f"{v:,.0f}" if v >= 10 else f"{v:.1f}", (x, v), textcoords="offset points",
                        xytext=(0, 2), ha="center", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(sizes)), [f"{p['size']}\n(window {p['window']})" for p in
                                      (_find_payload(payloads, size, "json") for size in sizes)])
    ax.set_title("payload throughput: float64 data MB/s (one way)", fontsize=10)
    ax.set_ylabel("MB/s")
    ax.grid(axis="y", alpha=0.3)
    _log_headroom(ax, [p.get_height() for p in ax.patches], 0.72)  # the legend above the bars and their labels
    ax.legend(fontsize=8, ncol=2, loc="upper left")


# ============================================================================ the peers plot (bench/peers.py)

PEER_COLORS = {"pfnode": "tab:blue", "executor": "tab:gray", "ray": "tab:purple", "dask": "tab:orange"}


def ratio_text(value: float) -> str:
    """A ratio with three significant digits: 55.5x, 3.15x, 0.0207x."""
    return f"{value:.3g}x"


def write_peers_plot(result: dict, paths: list[Path]) -> str:
    """bench/peers.py's PNG: one panel per row of its table (no-op tasks/s, 5 ms tasks/s, round
    trip p50), a bar per system, its figure and pfnode's ratio over it above each bar, the goal
    and the ideal as dashed lines, the goal's met / NOT MET in the panel's title; a system not
    measured (Ray not installed) gets a note in place of its bar."""
    plt = _pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    cfg, systems = result["config"], result["systems"]
    keys = list(systems)
    fig, axes = plt.subplots(1, 3, figsize=(16, 6))
    load = result["machine"].get("loadavg_at_start")
    fig.suptitle(f"pfnode beside its peers: the same tasks through each system's own Python API, "
                 f"{cfg['workers']} workers each, {result['machine']['cpu_count']} CPUs"
                 + (f", 1-minute load {load[0]:.2f}" if load else "") + f"  {result['machine']['date']}\n"
                 f"above each bar: its figure, and pfnode's over it (throughput above 1x, round trip below 1x: "
                 f"pfnode ahead)", fontsize=11)
    goal = next((g for g in result["goals"] if g["key"] == "reactor_noop_tasks_per_s"), None)
    ideal = cfg["ideal_cpu5_tasks_per_s"]
    panels = (  # key, ratio key, title, y label, log scale, label format, reference lines (y, colour)
        ("noop_tasks_per_s", "noop", "no-op tasks/s", "tasks/s", True, "{:,.0f}/s",
         [(goal["limit"], "tab:green" if goal["met"] else "tab:red")] if goal else []),
        ("cpu5_tasks_per_s", "cpu5", f"{cfg['cpu_task_ms']:g} ms CPU tasks/s (dashed: ideal {ideal:,.0f}/s)",
         "tasks/s", False, "{:,.0f}/s", [(ideal, "black")]),
        ("rtt_p50_us", "rtt_p50", "round trip p50, one at a time (lower is better)", "µs", True, "{:,.0f} µs", []),
    )
    labels: list[tuple] = []  # (axes, annotation, reference lines' y)
    for ax, (key, ratio_key, title, ylabel, log, text, lines) in zip(axes, panels):
        measured = [k for k in keys if systems[k]["measured"]]
        values = {k: systems[k][key] for k in measured}
        ax.bar([keys.index(k) for k in measured], [values[k] for k in measured],
               color=[PEER_COLORS.get(k, "tab:green") for k in measured], width=0.6)
        ax.set_xticks(range(len(keys)), [systems[k].get("plot_label", systems[k]["label"]) for k in keys], fontsize=9)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        for y, color in lines:
            ax.axhline(y, color=color, linestyle="--", linewidth=1)
        color = "black"
        if key == "noop_tasks_per_s" and goal:
            color = "tab:green" if goal["met"] else "tab:red"
            title += (f"\ngoal (issue 21): pfnode ≥ {goal['limit']:,.0f}/s (dashed): "
                      f"{'met' if goal['met'] else 'NOT MET'}, {goal['measured']:,.0f}/s")
        ax.set_title(title, fontsize=10, color=color)
        high = max([*values.values(), *(y for y, _ in lines)])
        if log:
            ax.set_yscale("log")
            ax.set_ylim(min(values.values()) / 3, high * 8)  # room above the tallest bar for its label
        else:
            ax.set_ylim(0, high * 1.3)
        for x, k in enumerate(keys):
            if not systems[k]["measured"]:
                ax.annotate("not installed" if k == "ray" and result.get("ray_missing") else "not measured",
                            (x, 0), xycoords=("data", "axes fraction"), xytext=(0, 8), textcoords="offset points",
                            ha="center", fontsize=8, color="gray", style="italic")
                continue
            note = "" if k == "pfnode" else f"\npfnode {ratio_text(systems[k]['pfnode_over'][ratio_key])}"
            ann = ax.annotate(text.format(values[k]) + note, (x, values[k]), textcoords="offset points",
                              xytext=(0, 3), ha="center", va="bottom", fontsize=8)
            labels.append((ax, ann, [y for y, _ in lines]))
    fig.tight_layout()
    _clear_of_lines(fig, labels)
    for path in paths:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {paths[0]}" + (f" (and {', '.join(str(p) for p in paths[1:])})" if paths[1:] else "")


def _clear_of_lines(fig, labels: list[tuple]) -> None:
    """Move each bar's label that a horizontal reference line crosses to just above that line."""
    renderer = fig.canvas.get_renderer()
    for ax, ann, ys in labels:
        for y in sorted(ys):
            box = ann.get_window_extent(renderer)
            line_px = ax.transData.transform((0, y))[1]
            if box.y0 - 2 <= line_px <= box.y1 + 2:
                dx, dy = ann.xyann
                ann.xyann = (dx, dy + (line_px + 3 - box.y0) * 72 / fig.dpi)
