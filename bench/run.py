#!/usr/bin/env python3
"""pfnode df:noop benchmark, with its baselines measured in the same run, plus per-lane
no-op rows, ed latency while the df lane is saturated, payload sizes, and the two transports.

    .venv/bin/python bench/run.py             # full run (make bench), about 3 minutes on 2 cores
    .venv/bin/python bench/run.py --quick     # smoke run, about 25 s

Four systems, each measured R times (interleaved, the order rotated every repeat) and
reported as medians:

  pfnode    `python -m pfnode serve --workers W --handlers handlers.examples,bench.handlers_bench`
            in its own process; a client in another process sends pre-encoded df:noop submit
            frames over one raw WebSocket (window 256 for throughput, 1 in flight for RTT) and
            checks every result (status success, right packet_id, data echoed).
  executor  concurrent.futures.ProcessPoolExecutor(W) driven in-process, no network:
            at most 256 futures outstanding for throughput, one at a time for RTT.
  echo      a bare websockets echo server (uvloop when importable) in its own process,
            driven by the same client code as pfnode; every echoed frame is checked.
  pfnode_websockets
            a second node, `--transport websockets` (the previous default transport), started
            with the first and measured like it: the picows / websockets ratio.

In the same repeats, against the same node:

  lanes     cf:noop, df:noop, ed:noop, rm:noop (bench/handlers_bench.py): throughput (window
            256) and RTT (1 in flight) of each lane, measured like the pfnode row.
  ed load   one client process, two connections: ed:noop one at a time for S seconds with the
            df lane idle, and for S seconds while the other connection keeps 64 df:sleep_ms 50
            packets in flight (refilled as each one answers), so every df worker is busy and
            the df queue never empties; ed RTT p50/p99/max in both, and their ratio.
  payloads  df:noop with 12, 8 192 and 131 072 float64 values (100 B, 64 KiB, 1 MiB of array),
            each as a JSON list and as an $ndarray object (metadata {"ndarray": true}); every
            answer checked equal to what was sent. Throughput (window 16; 4 for 1 MiB), RTT one
            in flight, and the CPU per packet of the front and of the df workers; the same frames
            through the echo server as the baseline.
  shm vs pipes
            the 64 KiB and 1 MiB payload rows (both encodings) also against a third node started
            with `--worker-shm-bytes 0` (pipes only between front and workers, the previous
            transport; otherwise the main node's arguments): packets/s, RTT p50 and front CPU
            per packet with shared memory vs pipes only. The main node's /healthz must show
            shm_payloads_in/out > 0, the pipes-only node's none.

Prints tables on stdout, progress on stderr, and writes bench/results/bench-<time>.json,
bench/results/latest.json and the plot, bench/results/bench-<time>.png and latest.png
(skipped with a message when matplotlib is missing). Every process it starts is stopped at the
end, also on Ctrl-C. See bench/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVING = re.compile(r"front: serving (ws://\S+)")
WINDOW = 256
# The node loads the spec's examples (df:noop) and the bench-only handlers (cf/ed/rm:noop,
# df:sleep_ms); its workers run with the repository root as cwd, so `bench.handlers_bench` imports.
NODE_HANDLERS = "handlers.examples,bench.handlers_bench"
GROUPS = ("cf", "df", "ed", "rm")
# The df:noop rows: the node on its default transport (picows), the executor, the echo server,
# and a second node on the websockets transport (the previous default).
SYSTEMS = ("pfnode", "executor", "echo", "pfnode_websockets")
# Payload sizes: float64 arrays of this many bytes (12, 8 192 and 131 072 values), each sent as a
# JSON list of floats and as an $ndarray object. The larger ones get fewer packets.
PAYLOAD_SIZES = (("100 B", 96), ("64 KiB", 64 * 1024), ("1 MiB", 1024 * 1024))
PAYLOAD_PACKET_DIVISOR = {"100 B": 1, "64 KiB": 4, "1 MiB": 16}
PAYLOAD_RTT_DIVISOR = {"100 B": 1, "64 KiB": 4, "1 MiB": 16}
LARGE_PAYLOAD_BYTES = 1024 * 1024  # from this size on the throughput window is --payload-large-window
ENCODINGS = ("json", "ndarray")
# The payload rows over the node's shared-memory threshold (32 KiB): measured also against a node
# started with `--worker-shm-bytes 0` (pipes only between front and workers), the baseline of the
# shared-memory rings.
SHM_COMPARE_SIZES = ("64 KiB", "1 MiB")
PIPES_ONLY_ARGS = ("--worker-shm-bytes", "0")

# The packet's data: a small JSON object, about 100 bytes encoded.
DATA = {"sensor": "bench-01", "ts": 1718000000123, "values": [20.5, 21.25, 19.75, 22.0],
        "tags": ["lab", "north"], "ok": True}


class BenchError(Exception):
    """A measurement could not be made or gave a wrong answer: the run fails."""


_T0 = time.monotonic()


def progress(msg: str) -> None:
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: have the kernel send `sig` to this process when its parent dies, so nothing
    this benchmark starts can outlive it even if it is SIGKILLed."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil
    return sorted_values[int(rank) - 1]


# ============================================================================ client side
# Everything below runs in a child process (multiprocessing, spawn), never in the parent.

def _cpu_s(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _submit_frame(seq: int, tag: str, group: str = "df", element: str = "noop", data=DATA) -> bytes:
    import orjson

    return orjson.dumps({"type": "submit", "seq": seq, "payload": {
        "version": "1.0", "id": f"{tag}-{seq}", "group": group, "element": element,
        "data": data, "priority": 5}})


def _submit_frames(first_seq: int, count: int, tag: str, group: str = "df",
                   element: str = "noop") -> tuple[list[bytes], list[str]]:
    frames, ids = [], []
    for seq in range(first_seq, first_seq + count):
        ids.append(f"{tag}-{seq}")
        frames.append(_submit_frame(seq, tag, group, element))
    return frames, ids


def _checker(mode: str, first_seq: int, frames: list[bytes], ids: list[str]):
    """Return check(raw) -> index of the answered frame, or None for a frame to ignore.
    Raises BenchError for anything that is not the right successful answer."""
    import orjson

    n = len(frames)
    if mode == "pfnode":
        def check(raw: bytes) -> int | None:
            obj = orjson.loads(raw)
            mtype = obj.get("type")
            if mtype == "heartbeat":
                return None
            if mtype != "result":
                raise BenchError(f"node sent a {mtype!r} frame, expected a result: {raw[:300]!r}")
            i = obj.get("seq", -1) - first_seq
            if not 0 <= i < n:
                raise BenchError(f"result with unexpected seq {obj.get('seq')}: {raw[:300]!r}")
            p = obj["payload"]
            if p.get("status") != "success":
                raise BenchError(f"packet {ids[i]} did not succeed: {p.get('error')}")
            if p.get("packet_id") != ids[i]:
                raise BenchError(f"seq {first_seq + i} answered with packet_id {p.get('packet_id')!r}, "
                                 f"expected {ids[i]!r}")
            if p.get("data") != DATA:
                raise BenchError(f"packet {ids[i]} returned wrong data: {p.get('data')!r}")
            return i
    else:
        def check(raw: bytes) -> int | None:
            obj = orjson.loads(raw)  # the same parse the pfnode check does
            i = obj.get("seq", -1) - first_seq
            if not 0 <= i < n or raw != frames[i]:
                raise BenchError(f"echo server returned a wrong frame: {raw[:300]!r}")
            return i
    return check


async def _pipelined(ws, frames: list[bytes], check, window: int, timeout_s: float) -> float:
    """Send every frame keeping at most `window` unanswered; return elapsed seconds."""
    import asyncio

    n = len(frames)
    room = asyncio.Semaphore(window)
    seen = bytearray(n)

    async def sender() -> None:
        for frame in frames:
            await room.acquire()
            await ws.send(frame, text=True)

    async def receiver() -> None:
        got = 0
        while got < n:
            i = check(await ws.recv(decode=False))
            if i is None:
                continue
            if seen[i]:
                raise BenchError(f"frame {i} answered twice")
            seen[i] = 1
            got += 1
            room.release()

    start = time.perf_counter()
    tasks = [asyncio.ensure_future(sender()), asyncio.ensure_future(receiver())]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_EXCEPTION)
    elapsed = time.perf_counter() - start
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            raise task.exception()
    if pending:
        raise BenchError(f"only {sum(seen)} of {n} answers within {timeout_s:.0f} s")
    return elapsed


async def _round_trip(ws, frame: bytes, check) -> tuple[int, float]:
    """Send one frame and wait for its answer: (what `check` says it answers, µs)."""
    clock = time.perf_counter_ns
    t0 = clock()
    await ws.send(frame, text=True)
    while True:
        raw = await ws.recv(decode=False)
        t1 = clock()
        answered = check(raw)
        if answered is not None:
            return answered, (t1 - t0) / 1000


async def _one_at_a_time(ws, frames: list[bytes], check) -> list[float]:
    """Send each frame after the previous answer; return round-trip times in µs."""
    rtts = []
    for expected, frame in enumerate(frames):
        i, rtt = await _round_trip(ws, frame, check)
        if i != expected:
            raise BenchError(f"answer for frame {i} while waiting for {expected}")
        rtts.append(rtt)
    return rtts


def ws_client(endpoint: str, mode: str, packets: int, rtt_packets: int, window: int,
              warmup: int, tag: str, cpu_pids: dict[str, list[int]], timeout_s: float,
              group: str = "df", element: str = "noop") -> dict:
    """One client run against pfnode (mode 'pfnode', packets `group:element`) or the echo
    server (mode 'echo'). `cpu_pids` names groups of server processes whose CPU time per
    throughput packet is reported as `<group>_cpu_us_per_packet`."""
    import asyncio

    from websockets.asyncio.client import connect

    seq = 1
    plan = {}
    for phase, count in (("warmup", warmup), ("throughput", packets), ("rtt", rtt_packets)):
        frames, ids = _submit_frames(seq, count, tag, group, element)
        plan[phase] = (frames, _checker(mode, seq, frames, ids))
        seq += count
    frame_bytes = len(plan["throughput"][0][0])

    async def main() -> dict:
        async with connect(endpoint, compression=None, max_size=None, open_timeout=10) as ws:
            await _pipelined(ws, *plan["warmup"], window, timeout_s)
            cpu0 = {group: _cpu_s(pids) for group, pids in cpu_pids.items()}
            client0 = time.process_time()
            elapsed = await _pipelined(ws, *plan["throughput"], window, timeout_s)
            client1 = time.process_time()
            cpu1 = {group: _cpu_s(pids) for group, pids in cpu_pids.items()}
            rtts = sorted(await _one_at_a_time(ws, *plan["rtt"]))
        out = {"throughput": packets / elapsed, "elapsed_s": elapsed,
               "rtt_p50_us": percentile(rtts, 50), "rtt_p99_us": percentile(rtts, 99),
               "rtt_mean_us": statistics.fmean(rtts),
               "client_cpu_us_per_packet": (client1 - client0) / packets * 1e6,
               "frame_bytes": frame_bytes, "packets_answered": warmup + packets + rtt_packets}
        for group in cpu_pids:
            out[f"{group}_cpu_us_per_packet"] = (cpu1[group] - cpu0[group]) / packets * 1e6
        return out

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


# -- payload sizes: df:noop with 100 B, 64 KiB and 1 MiB of float64 data, as a JSON list and as
#    an $ndarray object (docs/PROTOCOL.md, "numpy payloads")

def _payload_values(nbytes: int):
    """nbytes / 8 float64 values, the same ones in every process (seeded by the size)."""
    import numpy as np

    return np.random.default_rng(nbytes).standard_normal(max(1, nbytes // 8))


def _payload_json(values, encoding: str) -> bytes:
    """The packet's `data` as JSON text: a list of floats, or one $ndarray object."""
    import orjson

    if encoding == "json":
        return orjson.dumps(values.tolist())
    from pfnode.ndarray import encode_array

    return orjson.dumps(encode_array(values))


def _same_payload(got: bytes, encoding: str, values) -> bool:
    """True when `got` (data JSON text) holds exactly `values` in `encoding`: the slow check,
    used only when the bytes differ from what was sent (any faithful re-encoding passes)."""
    import numpy as np
    import orjson

    try:
        obj = orjson.loads(got)
        if encoding == "json":
            return (type(obj) is list and len(obj) == len(values)
                    and all(type(x) is float for x in obj) and np.array_equal(np.array(obj), values))
        from pfnode.ndarray import decode_tree

        array = decode_tree(obj)
        return (isinstance(array, np.ndarray) and array.dtype == values.dtype
                and array.shape == values.shape and np.array_equal(array, values))
    except Exception:  # noqa: BLE001 - anything unreadable is simply not the same
        return False


class _PayloadFrames:
    """Submit frames for seqs first..first+count-1 that all carry `data_json`, built as they are
    sent: hundreds of pre-encoded 2.6 MB frames would not fit in memory. Building one is a single
    copy of the data (b"".join), the same for the node and the echo server."""

    def __init__(self, first_seq: int, count: int, tag: str, data_json: bytes, ndarray: bool) -> None:
        self.first_seq, self.count, self.tag, self.data_json = first_seq, count, tag.encode(), data_json
        self.meta = b',"metadata":{"ndarray":true}' if ndarray else b""

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return (self[i] for i in range(self.count))

    def __getitem__(self, i: int) -> bytes:
        seq = self.first_seq + i
        head = (b'{"type":"submit","seq":%d,"payload":{"version":"1.0","id":"%s-%d","group":"df",'
                b'"element":"noop","priority":5%s,"data":' % (seq, self.tag, seq, self.meta))
        return b"".join((head, self.data_json, b"}}"))


_FRAME_DECODER = None


def _frame_decoder():
    """A msgspec decoder that keeps a frame's payload `data` as raw JSON: every answer is checked
    without the client building 131 072 floats (it still scans them: the JSON must be valid)."""
    global _FRAME_DECODER
    if _FRAME_DECODER is None:
        from typing import Any

        import msgspec

        # defstruct: real types, not annotations (this module has `from __future__ import annotations`)
        payload = msgspec.defstruct("Payload", [("packet_id", Any, None), ("id", Any, None),
                                                ("status", Any, None),
                                                ("data", msgspec.Raw, msgspec.Raw(b"null")),
                                                ("error", Any, None)])
        Frame = msgspec.defstruct("Frame", [("type", Any, None), ("seq", Any, None),
                                            ("payload", payload | None, None)])
        _FRAME_DECODER = msgspec.json.Decoder(Frame)
    return _FRAME_DECODER


def _payload_checker(mode: str, first_seq: int, count: int, tag: str, data_json: bytes,
                     encoding: str, values):
    """check(raw) -> index of the answered frame, None for a heartbeat; BenchError otherwise.
    pfnode: a success result for the right seq and packet id whose data equals what was sent
    (byte for byte, or else decoded and compared value for value). echo: the submit frame
    itself, with the same checks on its id and data."""
    decoder = _frame_decoder()
    expect_type = "result" if mode == "pfnode" else "submit"

    def check(raw: bytes) -> int | None:
        frame = decoder.decode(raw)
        if frame.type == "heartbeat" and mode == "pfnode":
            return None
        if frame.type != expect_type:
            raise BenchError(f"got a {frame.type!r} frame, expected {expect_type}: {raw[:300]!r}")
        seq = frame.seq if type(frame.seq) is int else -1
        i, p = seq - first_seq, frame.payload
        if not 0 <= i < count or p is None:
            raise BenchError(f"answer with unexpected seq {frame.seq}: {raw[:300]!r}")
        packet_id = f"{tag}-{seq}"
        if mode == "pfnode":
            if p.status != "success":
                raise BenchError(f"packet {packet_id} did not succeed: {p.error}")
            if p.packet_id != packet_id:
                raise BenchError(f"seq {seq} answered with packet_id {p.packet_id!r}, expected {packet_id!r}")
        elif p.id != packet_id:
            raise BenchError(f"echo server returned id {p.id!r} for seq {seq}, expected {packet_id!r}")
        got = bytes(p.data)
        if got != data_json and not _same_payload(got, encoding, values):
            raise BenchError(f"packet {packet_id} ({encoding}, {len(data_json):,} bytes of data) came back "
                             f"with different data ({len(got):,} bytes): {got[:120]!r}...")
        return i
    return check


def _worker_codec_us(data_json: bytes, encoding: str, repeats: int = 7) -> float:
    """Median µs of what a worker must do with this payload whatever the node: parse the data
    (and base64-decode its array), then encode the result again. Timed in the client process."""
    import orjson

    if encoding == "ndarray":
        from pfnode.ndarray import decode_tree, encode_tree

        def work() -> bytes:
            return orjson.dumps(encode_tree(decode_tree(orjson.loads(data_json))))
    else:
        def work() -> bytes:
            return orjson.dumps(orjson.loads(data_json))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        work()
        times.append((time.perf_counter_ns() - t0) / 1000)
    return statistics.median(times)


def payload_client(endpoint: str, mode: str, variants: list[dict], tag: str,
                   cpu_pids: dict[str, list[int]], timeout_s: float) -> list[dict]:
    """Each payload variant in turn on one connection, against pfnode (df:noop) or the echo
    server: warm-up, throughput at the variant's window, RTT one at a time. `cpu_pids` as in
    ws_client. Returns one dict per variant, in order."""
    import asyncio

    from websockets.asyncio.client import connect

    async def one(ws, v: dict, first_seq: int, vtag: str) -> tuple[dict, int]:
        values = _payload_values(v["nbytes"])
        data_json = _payload_json(values, v["encoding"])
        plan = {}
        seq = first_seq
        for phase, count in (("warmup", v["warmup"]), ("throughput", v["packets"]), ("rtt", v["rtt_packets"])):
            frames = _PayloadFrames(seq, count, vtag, data_json, v["encoding"] == "ndarray")
            plan[phase] = (frames, _payload_checker(mode, seq, count, vtag, data_json, v["encoding"], values))
            seq += count
        window = v["window"]
        await _pipelined(ws, *plan["warmup"], window, timeout_s)
        cpu0 = {group: _cpu_s(pids) for group, pids in cpu_pids.items()}
        client0 = time.process_time()
        elapsed = await _pipelined(ws, *plan["throughput"], window, timeout_s)
        client1 = time.process_time()
        cpu1 = {group: _cpu_s(pids) for group, pids in cpu_pids.items()}
        rtts = sorted(await _one_at_a_time(ws, *plan["rtt"]))
        packets = v["packets"]
        frame_bytes = len(plan["throughput"][0][0])
        out = {"size": v["size"], "encoding": v["encoding"], "array_bytes": v["nbytes"],
               "data_bytes": len(data_json), "frame_bytes": frame_bytes, "window": window,
               "throughput": packets / elapsed, "elapsed_s": elapsed,
               "array_mb_s": packets * v["nbytes"] / elapsed / 1e6,
               "wire_mb_s": packets * frame_bytes / elapsed / 1e6,
               "rtt_p50_us": percentile(rtts, 50), "rtt_p99_us": percentile(rtts, 99),
               "rtt_mean_us": statistics.fmean(rtts),
               "client_cpu_us_per_packet": (client1 - client0) / packets * 1e6,
               "packets_answered": v["warmup"] + packets + v["rtt_packets"]}
        for group in cpu_pids:
            out[f"{group}_cpu_us_per_packet"] = (cpu1[group] - cpu0[group]) / packets * 1e6
        if mode == "pfnode":
            out["worker_codec_us"] = _worker_codec_us(data_json, v["encoding"])
        return out, seq

    async def main() -> list[dict]:
        results = []
        async with connect(endpoint, compression=None, max_size=None, open_timeout=10) as ws:
            seq = 1
            for n, v in enumerate(variants):
                r, seq = await one(ws, v, seq, f"{tag}v{n}")
                results.append(r)
        return results

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


# -- ed latency while the df lane is saturated

def _result_checker(tag: str, data):
    """Return check(raw) -> the seq of a successful result for packet `<tag>-<seq>` that
    returned `data`, or None for a heartbeat. Raises BenchError for anything else."""
    import orjson

    def check(raw: bytes) -> int | None:
        obj = orjson.loads(raw)
        mtype = obj.get("type")
        if mtype == "heartbeat":
            return None
        if mtype != "result":
            raise BenchError(f"node sent a {mtype!r} frame, expected a result: {raw[:300]!r}")
        seq, p = obj.get("seq"), obj["payload"]
        if p.get("status") != "success":
            raise BenchError(f"packet {tag}-{seq} did not succeed: {p.get('error')}")
        if p.get("packet_id") != f"{tag}-{seq}":
            raise BenchError(f"seq {seq} answered with packet_id {p.get('packet_id')!r}, expected {tag}-{seq}")
        if p.get("data") != data:
            raise BenchError(f"packet {tag}-{seq} returned wrong data: {p.get('data')!r}")
        return seq
    return check


async def _ed_for(ws, seconds: float, tag: str, first_seq: int) -> tuple[list[float], int]:
    """Send ed:noop packets one at a time (each after the previous answer) for `seconds`;
    return (sorted round-trip times in µs, the next seq)."""
    check = _result_checker(tag, DATA)
    rtts = []
    clock = time.perf_counter_ns
    seq = first_seq
    end = clock() + int(seconds * 1e9)
    while clock() < end:
        got, rtt = await _round_trip(ws, _submit_frame(seq, tag, "ed", "noop"), check)
        if got != seq:
            raise BenchError(f"answer for ed seq {got} while waiting for {seq}")
        rtts.append(rtt)
        seq += 1
    if not rtts:
        raise BenchError("no ed round trip completed")
    rtts.sort()
    return rtts, seq


class _DfFiller:
    """Keeps `inflight` df:sleep_ms packets unanswered on one connection, sending a new one as
    each answer arrives, until `refill` is cleared; then waits for the rest. Every answer is
    checked (success, its own packet_id, the data it was given, answered once)."""

    def __init__(self, ws, inflight: int, sleep_ms: int, tag: str) -> None:
        self.ws, self.inflight, self.sleep_ms, self.tag = ws, inflight, sleep_ms, tag
        self.check = _result_checker(tag, sleep_ms)
        self.next_seq = 1
        self.outstanding: set[int] = set()
        self.answered = 0
        self.refill = True

    async def _send_one(self) -> None:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        self.outstanding.add(seq)
        await self.ws.send(_submit_frame(seq, self.tag, "df", "sleep_ms", self.sleep_ms), text=True)

    async def run(self) -> None:
        for _ in range(self.inflight):
            await self._send_one()
        while self.outstanding:
            seq = self.check(await self.ws.recv(decode=False))
            if seq is None:
                continue
            if seq not in self.outstanding:
                raise BenchError(f"df:sleep_ms seq {seq} answered twice, or never sent")
            self.outstanding.remove(seq)
            self.answered += 1
            if self.refill:
                await self._send_one()


def _lane_state(health: dict, lane: str) -> dict | None:
    state = health.get("lanes", {}).get(lane)
    if not isinstance(state, dict):
        return None
    return {key: state.get(key) for key in ("workers", "busy", "running", "queued")}


def _saturated(state: dict | None) -> bool | None:
    """Every worker of the lane holds a packet and more wait in its queue; None: unknown."""
    if state is None or None in (state["workers"], state["busy"], state["queued"]):
        return None
    return state["workers"] > 0 and state["busy"] == state["workers"] and state["queued"] > 0


def _latency_stats(rtts: list[float], seconds: float) -> dict:
    return {"packets": len(rtts), "elapsed_s": seconds,
            "p50_ms": percentile(rtts, 50) / 1000, "p99_ms": percentile(rtts, 99) / 1000,
            "p999_ms": percentile(rtts, 99.9) / 1000, "max_ms": rtts[-1] / 1000,
            "mean_ms": statistics.fmean(rtts) / 1000}


def ed_load_client(endpoint: str, seconds: float, df_inflight: int, sleep_ms: int,
                   idle_first: bool, tag: str, timeout_s: float) -> dict:
    """ed:noop RTT, one at a time on one connection, for `seconds` with the df lane idle and
    for `seconds` while a second connection keeps `df_inflight` df:sleep_ms packets in flight."""
    import asyncio

    from websockets.asyncio.client import connect

    async def health_df() -> dict | None:
        health = await asyncio.get_running_loop().run_in_executor(None, _node_health, endpoint)
        return _lane_state(health, "df")

    async def main() -> dict:
        out: dict = {"idle_first": idle_first}
        async with connect(endpoint, compression=None, max_size=None, open_timeout=10) as ed_ws, \
                connect(endpoint, compression=None, max_size=None, open_timeout=10) as df_ws:
            ed_tag = f"{tag}ed"
            _, seq = await _ed_for(ed_ws, min(0.5, seconds / 4), ed_tag, 1)  # warm-up, not counted
            answered = seq - 1
            for phase in (("idle", "loaded") if idle_first else ("loaded", "idle")):
                if phase == "idle":
                    before = await health_df()
                    if before is not None and (before["running"] or before["queued"]):
                        raise BenchError(f"df lane not idle before the idle phase: {before}")
                    start = time.perf_counter()
                    rtts, next_seq = await _ed_for(ed_ws, seconds, ed_tag, seq)
                    out["idle"] = _latency_stats(rtts, time.perf_counter() - start)
                    answered, seq = answered + next_seq - seq, next_seq
                    continue
                filler = _DfFiller(df_ws, df_inflight, sleep_ms, f"{tag}df")
                task = asyncio.ensure_future(filler.run())
                try:
                    # Wait until every df worker holds packets and more are queued.
                    deadline = time.monotonic() + 10 + df_inflight * sleep_ms / 1000
                    while True:
                        await asyncio.sleep(0.05)
                        if task.done():
                            task.result()
                            raise BenchError("the df filler stopped early")
                        at_start = await health_df()
                        if _saturated(at_start) is not False:
                            break
                        if time.monotonic() > deadline:
                            raise BenchError(f"the df lane did not saturate: {at_start}")
                    answered0, start = filler.answered, time.perf_counter()
                    rtts, next_seq = await _ed_for(ed_ws, seconds, ed_tag, seq)
                    elapsed = time.perf_counter() - start
                    df_answered = filler.answered - answered0
                    if task.done():
                        task.result()
                        raise BenchError("the df filler stopped early")
                    at_end = await health_df()
                    filler.refill = False
                    try:
                        await asyncio.wait_for(asyncio.shield(task), timeout_s)
                    except TimeoutError:
                        raise BenchError(f"{len(filler.outstanding)} df:sleep_ms packets still unanswered "
                                         f"{timeout_s:.0f} s after the loaded phase") from None
                finally:
                    task.cancel()
                loaded = _latency_stats(rtts, elapsed)
                loaded.update({"df_packets": df_answered, "df_throughput": df_answered / elapsed,
                               "df_lane_at_start": at_start, "df_lane_at_end": at_end,
                               "df_saturated": _saturated(at_start) and _saturated(at_end)})
                out["loaded"] = loaded
                answered, seq = answered + next_seq - seq, next_seq
                answered += filler.answered
        out["packets_answered"] = answered
        return out

    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def _noop(data):
    return data


def executor_client(workers: int, packets: int, rtt_packets: int, window: int, warmup: int,
                    timeout_s: float) -> dict:
    """Baseline A: ProcessPoolExecutor(workers) driven directly, no network."""
    import threading
    from concurrent.futures import ProcessPoolExecutor

    import psutil

    # The initializer only makes the workers die with this process if it is killed.
    with ProcessPoolExecutor(workers, initializer=die_with_parent) as ex:
        # Warm up: every worker started and busy at least once.
        for result in ex.map(_noop, [DATA] * max(warmup, 4 * workers)):
            if result != DATA:
                raise BenchError(f"executor returned wrong data: {result!r}")
        worker_pids = [p.pid for p in psutil.Process().children()]

        room = threading.BoundedSemaphore(window)
        lock = threading.Lock()
        finished = threading.Event()
        state = {"done": 0, "errors": []}

        def on_done(fut) -> None:
            try:
                if fut.result() != DATA:
                    raise BenchError(f"executor returned wrong data: {fut.result()!r}")
            except BaseException as exc:  # noqa: BLE001 - reported below
                with lock:
                    state["errors"].append(repr(exc))
            with lock:
                state["done"] += 1
                if state["done"] == packets:
                    finished.set()
            room.release()

        cpu_workers0, cpu_client0 = _cpu_s(worker_pids), time.process_time()
        start = time.perf_counter()
        for _ in range(packets):
            room.acquire()
            ex.submit(_noop, DATA).add_done_callback(on_done)
        if not finished.wait(timeout_s):
            raise BenchError(f"executor: only {state['done']} of {packets} tasks within {timeout_s:.0f} s")
        elapsed = time.perf_counter() - start
        cpu_workers1, cpu_client1 = _cpu_s(worker_pids), time.process_time()
        if state["errors"]:
            raise BenchError(f"executor: {len(state['errors'])} tasks failed, e.g. {state['errors'][0]}")

        rtts = []
        clock = time.perf_counter_ns
        for _ in range(rtt_packets):
            t0 = clock()
            result = ex.submit(_noop, DATA).result(timeout_s)
            rtts.append((clock() - t0) / 1000)
            if result != DATA:
                raise BenchError(f"executor returned wrong data: {result!r}")
        rtts.sort()
    return {"throughput": packets / elapsed, "elapsed_s": elapsed,
            "rtt_p50_us": percentile(rtts, 50), "rtt_p99_us": percentile(rtts, 99),
            "rtt_mean_us": statistics.fmean(rtts),
            "client_cpu_us_per_packet": (cpu_client1 - cpu_client0) / packets * 1e6,
            "workers_cpu_us_per_packet": (cpu_workers1 - cpu_workers0) / packets * 1e6}


def echo_server(conn) -> None:
    """Baseline B: a bare websockets echo server. Sends its port on `conn`, runs until killed."""
    import asyncio

    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    async def echo(ws) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:  # a client that failed and dropped the link
            pass

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, compression=None, max_queue=64, max_size=None) as server:
            conn.send(("ok", server.sockets[0].getsockname()[1]))
            conn.close()
            await asyncio.Future()

    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def _child_entry(conn, func_name: str, kwargs: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    die_with_parent()
    try:
        if func_name == "echo_server":
            echo_server(conn)
            return
        result = globals()[func_name](**kwargs)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        detail = str(exc) if isinstance(exc, BenchError) else traceback.format_exc()
        try:
            conn.send(("error", detail))
        except OSError:
            pass
        return
    try:
        conn.send(("ok", result))
    except OSError:  # the parent stopped waiting (Ctrl-C): nothing to report to
        pass


# ============================================================================ parent side

class NodeProcess:
    """One `pfnode serve` started by the benchmark."""

    def __init__(self, name: str, argv: list[str], popen: subprocess.Popen, log_path: Path) -> None:
        self.name, self.argv, self.popen, self.log_path = name, argv, popen, log_path
        self.pids: list[int] = []  # the front first, then its workers
        self.endpoint = ""
        self.returncode: int | None = None

    @property
    def front_pid(self) -> int:
        return self.pids[0]

    @property
    def worker_pids(self) -> list[int]:
        return self.pids[1:]

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_text(self, tail: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])


class Processes:
    """Every process this benchmark starts, so that all of them can be stopped."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.children: set = set()
        self.nodes: dict[str, NodeProcess] = {}  # by name: "picows" (the main node), "websockets", "pipes"

    # -- multiprocessing children
    def call(self, label: str, func_name: str, limit_s: float, **kwargs) -> dict:
        """Run func_name(**kwargs) in a fresh process; return its result or raise BenchError."""
        recv_conn, send_conn = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child_entry, args=(send_conn, func_name, kwargs),
                                name=f"bench-{label}")
        proc.start()
        send_conn.close()
        self.children.add(proc)
        answered = False
        try:
            if not recv_conn.poll(limit_s):
                raise BenchError(f"{label}: no answer within {limit_s:.0f} s")
            try:
                status, payload = recv_conn.recv()
            except EOFError:
                proc.join(5)
                raise BenchError(f"{label}: client process died (exit code {proc.exitcode})") from None
            answered = True
        finally:
            recv_conn.close()
            # An answered child exits by itself; any other (timeout, Ctrl-C) is stopped now.
            self.stop_child(proc, wait_s=5.0 if answered else 0.0)
        if status != "ok":
            raise BenchError(f"{label} failed: {payload}")
        return payload

    def start_echo(self, timeout_s: float = 30.0) -> tuple[str, object]:
        recv_conn, send_conn = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child_entry, args=(send_conn, "echo_server", {}),
                                name="bench-echo-server")
        proc.start()
        send_conn.close()
        self.children.add(proc)
        try:
            if not recv_conn.poll(timeout_s):
                raise BenchError(f"echo server did not start within {timeout_s:.0f} s")
            status, payload = recv_conn.recv()
        except EOFError:
            raise BenchError(f"echo server died at start (exit code {proc.exitcode})") from None
        finally:
            recv_conn.close()
        if status != "ok":
            raise BenchError(f"echo server failed: {payload}")
        return f"ws://127.0.0.1:{payload}/", proc

    def stop_child(self, proc, wait_s: float = 5.0) -> None:
        """Let a child finish for wait_s, then SIGTERM it, then SIGKILL it."""
        proc.join(wait_s)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        self.children.discard(proc)

    # -- the nodes
    def start_node(self, workers: int, log_dir: Path, transport: str = "picows",
                   timeout_s: float = 60.0, name: str | None = None,
                   extra_args: tuple[str, ...] = ()) -> NodeProcess:
        """Start `pfnode serve` on `transport` (plus `extra_args`) and wait until it serves. Its
        name here is `name`, by default the transport's."""
        name = name or transport
        argv = ["serve", "--port", "0", "--transport", transport, "--workers", str(workers),
                "--handlers", NODE_HANDLERS, *extra_args]
        return self.launch_node(name, argv, log_dir, timeout_s)

    def launch_node(self, name: str, argv: list[str], log_dir: Path, timeout_s: float = 60.0,
                    ready: re.Pattern = SERVING) -> NodeProcess:
        """Run `python -m pfnode ARGV` (cwd: the repository root, output to log_dir/node-NAME.log)
        and wait until its log matches `ready`; the match's first group, if it has one, is the
        node's endpoint. The front's pid and its children's (the workers) are noted then."""
        log_path = log_dir / f"node-{name}.log"
        with open(log_path, "wb") as log_file:
            popen = subprocess.Popen(
                [sys.executable, "-m", "pfnode", *argv],
                cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        node = self.nodes[name] = NodeProcess(name, argv, popen, log_path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = ready.search(log_path.read_text(errors="replace"))
            if match:
                import psutil

                node.pids = [popen.pid] + [p.pid for p in psutil.Process(popen.pid).children(recursive=True)]
                node.endpoint = match.group(1) if ready.groups else ""
                return node
            if popen.poll() is not None:
                raise BenchError(f"{name} node exited with {popen.returncode}:\n{node.log_text()}")
            time.sleep(0.05)
        raise BenchError(f"{name} node did not start within {timeout_s:.0f} s:\n{node.log_text()}")

    def node_log_text(self, tail: int = 40) -> str:
        """The tail of every running or stopped node's log, each under its name."""
        parts = []
        for node in self.nodes.values():
            text = node.log_text(tail)
            if text:
                parts.append(f"--- {node.name} node log\n{text}")
        return "\n".join(parts)

    def stop_node(self, name: str) -> int | None:
        node = self.nodes.get(name)
        if node is None or node.popen is None:
            return None
        popen, node.popen = node.popen, None
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(20)
            except subprocess.TimeoutExpired:
                progress(f"{name} node did not stop within 20 s of SIGTERM; killing it")
                popen.kill()
                popen.wait()
        # Its workers should have gone with it; make sure.
        import psutil

        for pid in node.pids[1:]:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    progress(f"{name} node worker pid {pid} outlived the node; killing it")
                    proc.kill()
            except psutil.Error:
                pass
        node.returncode = popen.returncode
        return popen.returncode

    def stop_all(self) -> None:
        for proc in list(self.children):
            self.stop_child(proc, wait_s=0)
        for name in list(self.nodes):
            self.stop_node(name)


def _node_health(endpoint: str) -> dict:
    import urllib.request

    import orjson

    url = endpoint.split("/packetflow")[0].replace("ws://", "http://", 1) + "/healthz"
    with urllib.request.urlopen(url, timeout=5) as response:
        return orjson.loads(response.read())


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
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
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


def summarise(runs: list[dict]) -> dict:
    keys = ("throughput", "rtt_p50_us", "rtt_p99_us", "rtt_mean_us", "client_cpu_us_per_packet",
            "server_cpu_us_per_packet", "front_cpu_us_per_packet", "workers_cpu_us_per_packet",
            "lane_cpu_us_per_packet", "array_mb_s", "wire_mb_s", "worker_codec_us")
    out = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
            out[key + "_min"] = min(values)
            out[key + "_max"] = max(values)
    return out


def summarise_ed(runs: list[dict], args: argparse.Namespace) -> dict:
    """Medians over the repeats of each phase's p50/p99/mean and the df throughput; the
    worst max over all of them."""
    out: dict = {"df_inflight": args.ed_df_inflight, "df_sleep_ms": args.ed_df_sleep_ms,
                 "seconds_per_phase": args.ed_seconds,
                 # Each df worker sleeps sleep_ms per packet, so the lane can do no more than this.
                 "df_throughput_ceiling": args.workers * 1000 / args.ed_df_sleep_ms if args.ed_df_sleep_ms else None,
                 "df_saturated_runs": sum(1 for r in runs if r["loaded"]["df_saturated"])}
    for phase in ("idle", "loaded"):
        phase_out = {}
        for key in ("p50_ms", "p99_ms", "p999_ms", "mean_ms", "df_throughput"):
            values = [r[phase][key] for r in runs if key in r[phase]]
            if values:
                phase_out[key] = statistics.median(values)
                phase_out[key + "_min"] = min(values)
                phase_out[key + "_max"] = max(values)
        phase_out["max_ms"] = max(r[phase]["max_ms"] for r in runs)
        phase_out["packets"] = sum(r[phase]["packets"] for r in runs)
        out[phase] = phase_out
    out["ratios"] = {key: out["loaded"][f"{key}_ms"] / out["idle"][f"{key}_ms"] for key in ("p50", "p99", "max")}
    return out


def common_parser(doc: str, repeats: int, workers_help: str) -> argparse.ArgumentParser:
    """The options every harness here has (see `common_defaults`)."""
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short smoke run (3000 packets, 300 RTT samples, 1 repeat unless given)")
    parser.add_argument("--packets", type=int, default=None,
                        help="packets per throughput measurement (default 20000; --quick 3000)")
    parser.add_argument("--rtt-packets", type=int, default=None,
                        help="one-at-a-time round trips per RTT measurement (default 2000; --quick 300)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"measurements of each system; medians are reported (default {repeats}; --quick 1)")
    parser.add_argument("--workers", type=int, default=cores, help=f"{workers_help} (default: cores, {cores})")
    parser.add_argument("--window", type=int, default=WINDOW,
                        help=f"packets in flight for throughput (default {WINDOW})")
    parser.set_defaults(default_repeats=repeats)
    return parser


def common_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill in what --quick decides, and refuse counts under 1."""
    args.packets = args.packets or (3000 if args.quick else 20000)
    args.rtt_packets = args.rtt_packets or (300 if args.quick else 2000)
    args.repeats = args.repeats or (1 if args.quick else args.default_repeats)
    for name in ("packets", "rtt_packets", "repeats", "workers", "window"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = common_parser(__doc__, 3, "worker processes for pfnode and the executor")
    parser.add_argument("--group-packets", type=int, default=None,
                        help="packets per throughput measurement of each lane's no-op (default 5000; --quick 1000)")
    parser.add_argument("--group-rtt-packets", type=int, default=None,
                        help="round trips per RTT measurement of each lane's no-op (default 1000; --quick 200)")
    parser.add_argument("--ed-seconds", type=float, default=None,
                        help="seconds of ed:noop round trips per phase, df idle and df saturated "
                             "(default 5; --quick 1)")
    parser.add_argument("--ed-df-inflight", type=int, default=64,
                        help="df:sleep_ms packets kept in flight to saturate the df lane (default 64)")
    parser.add_argument("--ed-df-sleep-ms", type=int, default=50,
                        help="milliseconds each of those df packets sleeps (default 50)")
    parser.add_argument("--payload-packets", type=int, default=None,
                        help="packets per throughput measurement of the 100 B payloads; 64 KiB gets a "
                             "quarter, 1 MiB a 16th, at least 10 (default 4000; --quick 1000)")
    parser.add_argument("--payload-rtt-packets", type=int, default=None,
                        help="round trips per RTT measurement of the 100 B payloads; 64 KiB gets a "
                             "quarter, 1 MiB a 16th, at least 5 (default 500; --quick 200)")
    parser.add_argument("--payload-window", type=int, default=16,
                        help="packets in flight for the payload throughput (default 16)")
    parser.add_argument("--payload-large-window", type=int, default=4,
                        help="packets in flight for the 1 MiB payload throughput (default 4)")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the PNG")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help="where to write the JSON results and the PNG (default bench/results)")
    args = parser.parse_args(argv)
    common_defaults(parser, args)
    args.group_packets = args.group_packets or (1000 if args.quick else 5000)
    args.group_rtt_packets = args.group_rtt_packets or (200 if args.quick else 1000)
    args.ed_seconds = args.ed_seconds or (1.0 if args.quick else 5.0)
    args.payload_packets = args.payload_packets or (1000 if args.quick else 4000)
    args.payload_rtt_packets = args.payload_rtt_packets or (200 if args.quick else 500)
    for name in ("group_packets", "group_rtt_packets", "ed_df_inflight", "payload_packets", "payload_rtt_packets",
                 "payload_window", "payload_large_window"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.ed_seconds <= 0:
        parser.error("--ed-seconds must be positive")
    if args.ed_df_sleep_ms < 0:
        parser.error("--ed-df-sleep-ms must be at least 0")
    return args


def fmt(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(report: dict) -> None:
    cfg, med, ratios = report["config"], report["medians"], report["ratios"]
    names = {"pfnode": f"pfnode df:noop, {cfg['workers']} workers",
             "executor": f"ProcessPoolExecutor({cfg['workers']}), no network",
             "echo": "websockets echo server, no workers",
             "pfnode_websockets": "pfnode df:noop, websockets transport"}
    print()
    print(f"pfnode benchmark: {cfg['packets']:,} packets x {cfg['repeats']} repeats, window {cfg['window']}, "
          f"RTT over {cfg['rtt_packets']:,} round trips 1 in flight; medians "
          f"({report['machine']['cpu_count']} CPUs, Python {report['machine']['python']})")
    header = (f"{'system':<40} {'packets/s':>10} {'(min-max)':>17} {'RTT p50 µs':>11} "
              f"{'RTT p99 µs':>11} {'client CPU µs/pkt':>18} {'server CPU µs/pkt':>18}")
    print(header)
    print("-" * len(header))
    for key in SYSTEMS:
        m = med[key]
        spread = f"({fmt(m['throughput_min'])}-{fmt(m['throughput_max'])})"
        print(f"{names[key]:<40} {fmt(m['throughput']):>10} {spread:>17} {fmt(m['rtt_p50_us']):>11} "
              f"{fmt(m['rtt_p99_us']):>11} {fmt(m.get('client_cpu_us_per_packet'), '.1f'):>18} "
              f"{fmt(m.get('server_cpu_us_per_packet'), '.1f'):>18}")
    p = med["pfnode"]
    print(f"  pfnode server CPU split: front {fmt(p.get('front_cpu_us_per_packet'), '.1f')} µs/packet, "
          f"workers {fmt(p.get('workers_cpu_us_per_packet'), '.1f')} µs/packet (all workers together)")
    print()
    print("ratios (pfnode / baseline)         throughput   RTT p50   RTT p99")
    for key, label in (("executor", "pfnode / ProcessPoolExecutor"), ("echo", "pfnode / websockets echo"),
                       ("websockets_transport", "picows / websockets transport")):
        r = ratios[key]
        print(f"  {label:<32} {r['throughput']:>10.2f}x {r['rtt_p50']:>8.2f}x {r['rtt_p99']:>8.2f}x")
    w = med["pfnode_websockets"]
    print(f"  (the same node and client on each transport; websockets-transport server CPU split: front "
          f"{fmt(w.get('front_cpu_us_per_packet'), '.1f')} µs/packet, workers "
          f"{fmt(w.get('workers_cpu_us_per_packet'), '.1f')} µs/packet)")
    print()
    print_groups(report)
    print_ed_load(report)
    print_payloads(report)
    print("targets (DESIGN.md and the payload issue, 2-core machine)")
    for target in report["targets"]:
        print(f"  [{'met' if target['met'] else 'NOT MET':>7}] {target['name']}: {target['value']}")
    start, end = report["machine"].get("loadavg_at_start"), report.get("loadavg_at_end")
    if start and end:
        print(f"  (1-minute load average {start[0]:.2f} at the start, {end[0]:.2f} at the end: other processes "
              f"on these {report['machine']['cpu_count']} CPUs show up in the tails)")
    print()


LANE_NOTES = {"cf": "pinned, 1 at a time", "df": "window 4-32", "ed": "reserved, 1 at a time",
              "rm": "memory-capped, 1 at a time"}


def print_groups(report: dict) -> None:
    cfg, groups = report["config"], report["groups"]
    print(f"per-lane no-op through the node: {cfg['group_packets']:,} packets x {cfg['repeats']} repeats, "
          f"window {cfg['window']}, RTT over {cfg['group_rtt_packets']:,} round trips 1 in flight; medians")
    header = (f"{'lane (handler)':<16} {'workers':<30} {'packets/s':>10} {'(min-max)':>17} {'RTT p50 µs':>11} "
              f"{'RTT p99 µs':>11} {'front CPU µs/pkt':>17} {'lane CPU µs/pkt':>16}")
    print(header)
    print("-" * len(header))
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
    idle, loaded, ratios = ed["idle"], ed["loaded"], ed["ratios"]
    runs = len(report["ed_load_runs"])
    print(f"ed latency while the df lane is saturated: ed:noop 1 in flight for {ed['seconds_per_phase']:g} s "
          f"per phase on one connection; {ed['df_inflight']} df:sleep_ms {ed['df_sleep_ms']} kept in flight on "
          f"another; {runs} repeats; medians (max: worst of all)")
    header = (f"{'df lane':<34} {'ed packets':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
              f"{'max ms':>8} {'df packets/s':>13}")
    print(header)
    print("-" * len(header))
    ceiling = ed["df_throughput_ceiling"]
    for name, m in (("idle", idle), (f"saturated ({ed['df_saturated_runs']}/{runs} runs verified)", loaded)):
        df = "-"
        if "df_throughput" in m:
            df = f"{m['df_throughput']:,.1f}" + (f" / {ceiling:g}" if ceiling else "")
        print(f"{name:<34} {m['packets']:>10,} {m['p50_ms']:>8.3f} {m['p99_ms']:>8.3f} {m['p999_ms']:>9.3f} "
              f"{m['max_ms']:>8.3f} {df:>13}")
    print(f"{'ratio saturated / idle':<34} {'':>10} {ratios['p50']:>7.2f}x {ratios['p99']:>7.2f}x {'':>9} "
          f"{ratios['max']:>7.2f}x")
    print(f"  target: ed p99 <= 2 ms while df is saturated; df packets/s is the lane's rate during the "
          f"loaded phase / its ceiling ({report['config']['workers']} workers x 1000 / {ed['df_sleep_ms']} ms)"
          if ceiling else "  target: ed p99 <= 2 ms while df is saturated")
    print()


# -- payload sizes

def payload_variants(args: argparse.Namespace) -> list[dict]:
    """The payload measurements, in the order a client runs them: each size as a JSON list and
    as an $ndarray. Larger payloads get fewer packets (and the largest a smaller window)."""
    variants = []
    for size, nbytes in PAYLOAD_SIZES:
        large = nbytes >= LARGE_PAYLOAD_BYTES
        packets = max(10, args.payload_packets // PAYLOAD_PACKET_DIVISOR[size])
        rtt_packets = max(5, args.payload_rtt_packets // PAYLOAD_RTT_DIVISOR[size])
        window = args.payload_large_window if large else args.payload_window
        for encoding in ENCODINGS:
            variants.append({"size": size, "nbytes": nbytes, "encoding": encoding, "packets": packets,
                             "rtt_packets": rtt_packets, "window": window,
                             "warmup": max(2 * window, packets // 10)})
    return variants


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


def _find_payload(payloads: list[dict], size: str, encoding: str) -> dict:
    return next(p for p in payloads if p["size"] == size and p["encoding"] == encoding)


def check_payloads(payloads: list[dict]) -> dict:
    """How the front's, the workers' and the echo server's CPU per packet grow from the
    smallest to the largest payload, the 1 MiB ndarray RTT against its floor, and the two
    payload targets."""
    small_size, large_size = PAYLOAD_SIZES[0][0], PAYLOAD_SIZES[-1][0]
    growth = {}
    for encoding in ENCODINGS:
        small, large = _find_payload(payloads, small_size, encoding), _find_payload(payloads, large_size, encoding)
        added_mb = (large["frame_bytes"] - small["frame_bytes"]) / 1e6
        g = {"added_frame_mb": added_mb}
        for name, system, key in (("front", "pfnode", "front_cpu_us_per_packet"),
                                  ("workers", "pfnode", "workers_cpu_us_per_packet"),
                                  ("echo_server", "echo", "server_cpu_us_per_packet")):
            lo, hi = small[system].get(key), large[system].get(key)
            g[name] = {"small_us": lo, "large_us": hi,
                       "growth": hi / lo if lo else None,
                       "extra_us_per_mb": (hi - lo) / added_mb if None not in (lo, hi) else None}
        f_extra = g["front"]["extra_us_per_mb"]
        e_extra = g["echo_server"]["extra_us_per_mb"]
        g["front_extra_vs_echo"] = f_extra / e_extra if f_extra is not None and e_extra else None
        w_extra = g["workers"]["extra_us_per_mb"]
        g["front_extra_vs_workers"] = f_extra / w_extra if f_extra is not None and w_extra else None
        growth[encoding] = g
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


SHM_COMPARE_KEYS = ("throughput", "rtt_p50_us", "front_cpu_us_per_packet")


def compare_shm(payloads: list[dict], pipes_variants: list[dict], pipes_runs: list[list[dict]],
                counters: dict, pipes_counters: dict, large_packets: int) -> dict:
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
    return {"rows": rows, "pipes_only_args": list(PIPES_ONLY_ARGS),
            "ratio": "shared memory / pipes only (throughput above 1: shm faster; RTT and CPU below 1: shm cheaper)",
            "counters": {"shm_node": {key: counters.get(key, 0) for key in ("shm_payloads_in", "shm_payloads_out")},
                         "pipes_node": {key: pipes_counters.get(key, 0)
                                        for key in ("shm_payloads_in", "shm_payloads_out")},
                         "shm_node_large_packets": large_packets}}


def print_shm_comparison(report: dict) -> None:
    cmp = report["payload_shm_vs_pipes"]
    c = cmp["counters"]
    print(f"  shared memory vs pipes only between front and workers: the rows above (shm) against a node with "
          f"`{' '.join(cmp['pipes_only_args'])}` (pipes), same client; ratio = shm / pipes")
    header = (f"  {'payload':<8} {'encoding':<8} | {'packets/s shm':>13} {'pipes':>7} {'ratio':>6} | "
              f"{'RTT p50 µs shm':>14} {'pipes':>7} {'ratio':>6} | {'front µs/pkt shm':>16} {'pipes':>7} {'ratio':>6}")
    print(header)
    print("  " + "-" * (len(header) - 2))
    for r in cmp["rows"]:
        shm, pipes, ratio = r["shm"], r["pipes"], r["ratios"]
        cells = []
        for key, width in (("throughput", 13), ("rtt_p50_us", 14), ("front_cpu_us_per_packet", 16)):
            cells.append(f"{fmt(shm.get(key)):>{width}} {fmt(pipes.get(key)):>7} "
                         f"{fmt(ratio[key], '.2f') + 'x' if ratio[key] is not None else '-':>6}")
        print(f"  {r['size']:<8} {r['encoding']:<8} | " + " | ".join(cells))
    print(f"  /healthz counters: shm node shm_payloads_in {c['shm_node']['shm_payloads_in']:,}, out "
          f"{c['shm_node']['shm_payloads_out']:,} (of {c['shm_node_large_packets']:,} large packets sent to it); "
          f"pipes-only node in {c['pipes_node']['shm_payloads_in']}, out {c['pipes_node']['shm_payloads_out']}")


def print_payloads(report: dict) -> None:
    cfg, payloads = report["config"], report["payloads"]
    summary = report["payload_summary"]
    large = [p for p in payloads if p["nbytes"] >= LARGE_PAYLOAD_BYTES]
    print(f"payload sizes: df:noop returns its data, float64 values as a JSON list or as one $ndarray "
          f"(metadata {{\"ndarray\": true}}); every answer checked equal to what was sent; "
          f"{cfg['repeats']} repeats; medians")
    print(f"  throughput window {cfg['payload_window']}"
          + (f" ({', '.join(sorted({p['size'] for p in large}))}: window {cfg['payload_large_window']})"
             if large else "")
          + "; RTT 1 in flight; echo: the websockets echo server sent the same frames (bytes in, bytes out)")
    header = (f"{'payload':<8} {'encoding':<8} {'frame B':>10} {'win':>3} {'packets':>7} {'packets/s':>9} "
              f"{'MB/s':>7} {'RTT p50 µs':>10} {'RTT p99 µs':>10} {'front µs/pkt':>12} {'workers µs/pkt':>14} "
              f"{'codec µs':>9} | {'echo pkt/s':>10} {'echo p50 µs':>11} {'echo µs/pkt':>11}")
    print(header)
    print("-" * len(header))
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


# -- the plot

def write_plot(report: dict, paths: list[Path]) -> str:
    """Draw the PNG (to every path in `paths`); return a line saying what happened. Without
    matplotlib the plot is skipped, not the run failed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ("plot: skipped, matplotlib is not installed (make bench installs it; or "
                ".venv/bin/pip install -e '.[bench]')")
    cfg, med = report["config"], report["medians"]
    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    fig.suptitle(f"pfnode benchmark, {report['machine']['cpu_count']} CPUs, {cfg['workers']} workers, "
                 f"{cfg['repeats']} repeats (medians; bars: min-max)  {report['machine']['date']}", fontsize=11)

    def bars(ax, labels, stats, color, title, ylabel, key="throughput"):
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
        for x, v, top, st in zip(xs, values, tops, stats):
            ax.annotate(f"{v:,.0f}/s\nRTT p50 {st['rtt_p50_us']:,.0f} µs", (x, top), textcoords="offset points",
                        xytext=(0, 4), ha="center", fontsize=8)
        ax.set_ylim(0, max(tops) * 1.2)

    names = {"pfnode": "pfnode\n(picows)", "pfnode_websockets": "pfnode\n(websockets\ntransport)",
             "executor": "ProcessPool\nExecutor", "echo": "websockets\necho server"}
    systems = ["pfnode", "pfnode_websockets", "executor", "echo"]
    bars(axes[0][0], [names[s] for s in systems], [med[s] for s in systems],
         ["tab:blue", "tab:cyan", "tab:gray", "tab:orange"],
         f"df:noop throughput per system (window {cfg['window']})", "packets/s")
    axes[0][0].axhline(30_000, color="tab:red", linestyle="--", linewidth=1)
    axes[0][0].annotate("target 30 000/s", (-0.45, 30_000), xytext=(0, 3), textcoords="offset points",
                        ha="left", fontsize=8, color="tab:red")
    groups = report["groups"]
    bars(axes[0][1], [f"{g}:noop\n{groups[g].get('workers')} worker(s)" for g in GROUPS],
         [groups[g] for g in GROUPS], "tab:green", f"throughput per lane (window {cfg['window']})", "packets/s")

    payloads = report["payloads"]
    sizes = [size for size, _ in PAYLOAD_SIZES]
    xs = [nbytes for _, nbytes in PAYLOAD_SIZES]
    ax = axes[1][0]
    for enc, marker in (("json", "o"), ("ndarray", "s")):
        rows = [_find_payload(payloads, size, enc) for size in sizes]
        ax.plot(xs, [r["pfnode"].get("front_cpu_us_per_packet") for r in rows], marker=marker, color="tab:blue",
                label=f"pfnode front, {enc}", linestyle="-" if enc == "json" else "--")
        ax.plot(xs, [r["pfnode"].get("workers_cpu_us_per_packet") for r in rows], marker=marker,
                color="tab:purple", label=f"pfnode workers, {enc}", linestyle="-" if enc == "json" else "--")
        ax.plot(xs, [r["echo"].get("server_cpu_us_per_packet") for r in rows], marker=marker,
                color="tab:orange", label=f"echo server, {enc}", linestyle="-" if enc == "json" else "--")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, [f"{s}\n({n // 8:,} floats)" for s, n in PAYLOAD_SIZES])
    ax.set_title("CPU µs per packet vs payload size (throughput phase)", fontsize=10)
    ax.set_ylabel("CPU µs/packet")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[1][1]
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
    ax.legend(fontsize=8)

    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {paths[0]}" + (f" (and {', '.join(str(p) for p in paths[1:])})" if paths[1:] else "")


def run(args: argparse.Namespace, procs: Processes) -> dict:
    machine = machine_info()
    load = machine["loadavg_at_start"]
    progress(f"{machine['cpu_count']} CPUs, Python {machine['python']}, load average "
             f"{f'{load[0]:.2f}' if load else '?'}; "
             f"{args.packets} packets x {args.repeats} repeats, {args.rtt_packets} RTT samples, "
             f"{args.workers} workers; lanes {args.group_packets} packets, {args.group_rtt_packets} RTT "
             f"samples; ed load {args.ed_seconds:g} s per phase; payloads {args.payload_packets} packets "
             f"(100 B; fewer for larger), window {args.payload_window} ({args.payload_large_window} for 1 MiB)")
    warmup = min(1000, max(200, args.packets // 10))
    # Generous: a run fails only if a system manages under 200 packets/s or hangs.
    timeout_s = 30 + (warmup + args.packets) / 200 + args.rtt_packets / 100
    group_warmup = min(1000, max(200, args.group_packets // 10))
    group_timeout_s = 30 + (group_warmup + args.group_packets) / 200 + args.group_rtt_packets / 100
    # The drain after the loaded phase: every df:sleep_ms in flight run on one worker, and then some.
    ed_timeout_s = 30 + args.ed_df_inflight * args.ed_df_sleep_ms / 1000

    variants = payload_variants(args)
    pipes_variants = [v for v in variants if v["size"] in SHM_COMPARE_SIZES]
    # A 1 MiB JSON list goes at about 30 packets/s on 2 cores: allow 1 packet/s and then some.
    payload_timeout_s = 30 + max((v["warmup"] + v["packets"] + v["rtt_packets"]) for v in variants)
    payload_limit_s = 60 + 2 * len(variants) * payload_timeout_s

    log_dir = Path(tempfile.mkdtemp(prefix="pfnode-bench-"))
    progress("starting the nodes (picows, the default transport; websockets; picows with pipes only) ...")
    node = procs.start_node(args.workers, log_dir, "picows")
    node_ep, front_pid, worker_pids = node.endpoint, node.front_pid, node.worker_pids
    progress(f"node at {node_ep} (front pid {front_pid}, workers {worker_pids})")
    ws_node = procs.start_node(args.workers, log_dir, "websockets")
    progress(f"websockets-transport node at {ws_node.endpoint} (front pid {ws_node.front_pid}, "
             f"workers {ws_node.worker_pids})")
    # The shared-memory baseline: the main node's command with pipes only between front and workers.
    pipes_node = procs.start_node(args.workers, log_dir, "picows", name="pipes", extra_args=PIPES_ONLY_ARGS)
    pipes_df_pids = (_node_health(pipes_node.endpoint).get("lanes", {}).get("df", {}).get("pids")
                     or pipes_node.worker_pids)
    progress(f"pipes-only node ({' '.join(PIPES_ONLY_ARGS)}) at {pipes_node.endpoint} (front pid "
             f"{pipes_node.front_pid}, df workers {pipes_df_pids})")
    echo_ep, echo_proc = procs.start_echo()
    progress(f"echo server at {echo_ep} (pid {echo_proc.pid})")
    lanes_at_start = _node_health(node_ep).get("lanes", {})
    lane_pids = {lane: lanes_at_start.get(lane, {}).get("pids") or worker_pids for lane in GROUPS}
    progress("lane workers: " + ", ".join(f"{lane} {lane_pids[lane]}" for lane in GROUPS))

    runs: dict[str, list[dict]] = {system: [] for system in SYSTEMS}
    group_runs: dict[str, list[dict]] = {group: [] for group in GROUPS}
    ed_runs: list[dict] = []
    payload_runs: dict[str, list[list[dict]]] = {"pfnode": [], "echo": [], "pfnode_pipes": []}
    order = list(SYSTEMS)
    common = dict(packets=args.packets, rtt_packets=args.rtt_packets, window=args.window,
                  warmup=warmup, timeout_s=timeout_s)
    child_timeout = 2 * timeout_s + 30
    for rep in range(args.repeats):
        for system in order[rep % 4:] + order[:rep % 4]:  # rotate so no system always goes first
            label = f"repeat {rep + 1}/{args.repeats} {system}"
            if system == "pfnode":
                r = procs.call(label, "ws_client", child_timeout, endpoint=node_ep, mode="pfnode",
                               tag=f"r{rep}", cpu_pids={"front": [front_pid], "workers": worker_pids},
                               **common)
                r["server_cpu_us_per_packet"] = r["front_cpu_us_per_packet"] + r["workers_cpu_us_per_packet"]
            elif system == "pfnode_websockets":
                r = procs.call(label, "ws_client", child_timeout, endpoint=ws_node.endpoint, mode="pfnode",
                               tag=f"w{rep}", cpu_pids={"front": [ws_node.front_pid],
                                                        "workers": ws_node.worker_pids}, **common)
                r["server_cpu_us_per_packet"] = r["front_cpu_us_per_packet"] + r["workers_cpu_us_per_packet"]
            elif system == "echo":
                r = procs.call(label, "ws_client", child_timeout, endpoint=echo_ep, mode="echo",
                               tag=f"r{rep}", cpu_pids={"server": [echo_proc.pid]}, **common)
                r["server_cpu_us_per_packet"] = r.pop("server_cpu_us_per_packet")
            else:
                r = procs.call(label, "executor_client", child_timeout, workers=args.workers, **common)
                r["server_cpu_us_per_packet"] = r["workers_cpu_us_per_packet"]
            runs[system].append(r)
            progress(f"{label}: {r['throughput']:,.0f} packets/s, RTT p50 {r['rtt_p50_us']:,.0f} µs, "
                     f"p99 {r['rtt_p99_us']:,.0f} µs")
        # Each lane's no-op, against the same node; the order rotates too.
        for group in GROUPS[rep % 4:] + GROUPS[:rep % 4]:
            label = f"repeat {rep + 1}/{args.repeats} lane {group}:noop"
            r = procs.call(label, "ws_client", 2 * group_timeout_s + 30, endpoint=node_ep, mode="pfnode",
                           tag=f"g{rep}{group}", group=group, element="noop",
                           cpu_pids={"front": [front_pid], "lane": lane_pids[group]},
                           packets=args.group_packets, rtt_packets=args.group_rtt_packets,
                           window=args.window, warmup=group_warmup, timeout_s=group_timeout_s)
            group_runs[group].append(r)
            progress(f"{label}: {r['throughput']:,.0f} packets/s, RTT p50 {r['rtt_p50_us']:,.0f} µs, "
                     f"p99 {r['rtt_p99_us']:,.0f} µs")
        # ed latency with the df lane idle and saturated (the phase order alternates).
        label = f"repeat {rep + 1}/{args.repeats} ed load"
        r = procs.call(label, "ed_load_client", 2 * (ed_timeout_s + 2 * args.ed_seconds) + 30,
                       endpoint=node_ep, seconds=args.ed_seconds, df_inflight=args.ed_df_inflight,
                       sleep_ms=args.ed_df_sleep_ms, idle_first=rep % 2 == 0, tag=f"e{rep}",
                       timeout_s=ed_timeout_s)
        ed_runs.append(r)
        idle, loaded = r["idle"], r["loaded"]
        progress(f"{label}: ed RTT idle p50 {idle['p50_ms']:.3f} / p99 {idle['p99_ms']:.3f} ms, "
                 f"df saturated p50 {loaded['p50_ms']:.3f} / p99 {loaded['p99_ms']:.3f} / max "
                 f"{loaded['max_ms']:.3f} ms, df {loaded['df_throughput']:,.1f} packets/s "
                 f"(saturated: {loaded['df_saturated']})")
        # Payload sizes: df:noop against the (picows) node and the same frames through the echo
        # server; which goes first alternates. The large rows also against the pipes-only node,
        # between the two: right after the main node one repeat, right before it the next.
        for system in (("pfnode", "pfnode_pipes", "echo") if rep % 2 == 0 else ("echo", "pfnode_pipes", "pfnode")):
            label = f"repeat {rep + 1}/{args.repeats} payloads {system}"
            if system == "pfnode":
                rs = procs.call(label, "payload_client", payload_limit_s, endpoint=node_ep, mode="pfnode",
                                variants=variants, tag=f"p{rep}", timeout_s=payload_timeout_s,
                                cpu_pids={"front": [front_pid], "workers": lane_pids["df"]})
            elif system == "pfnode_pipes":
                rs = procs.call(label, "payload_client", payload_limit_s, endpoint=pipes_node.endpoint,
                                mode="pfnode", variants=pipes_variants, tag=f"q{rep}", timeout_s=payload_timeout_s,
                                cpu_pids={"front": [pipes_node.front_pid], "workers": pipes_df_pids})
            else:
                rs = procs.call(label, "payload_client", payload_limit_s, endpoint=echo_ep, mode="echo",
                                variants=variants, tag=f"p{rep}", timeout_s=payload_timeout_s,
                                cpu_pids={"server": [echo_proc.pid]})
            payload_runs[system].append(rs)
            progress(f"{label}: " + "; ".join(
                f"{r['size']} {r['encoding']} {r['throughput']:,.0f}/s"
                + (f" front {r['front_cpu_us_per_packet']:,.0f} µs/pkt" if system != "echo" else "")
                for r in rs))
        if echo_proc.exitcode is not None:
            raise BenchError(f"echo server exited with {echo_proc.exitcode}")
        for n in (node, ws_node, pipes_node):
            if not n.alive():
                raise BenchError(f"the {n.name} node exited during the run:\n{n.log_text()}")

    counters = _node_health(node_ep).get("counters", {})
    expected = args.repeats * (warmup + args.packets + args.rtt_packets)
    expected += sum(r["packets_answered"] for rs in group_runs.values() for r in rs)
    expected += sum(r["packets_answered"] for r in ed_runs)
    expected += sum(r["packets_answered"] for rs in payload_runs["pfnode"] for r in rs)
    ws_counters = _node_health(ws_node.endpoint).get("counters", {})
    ws_expected = args.repeats * (warmup + args.packets + args.rtt_packets)
    pipes_counters = _node_health(pipes_node.endpoint).get("counters", {})
    pipes_expected = sum(r["packets_answered"] for rs in payload_runs["pfnode_pipes"] for r in rs)
    progress(f"node counters: {counters}")
    progress(f"websockets-transport node counters: {ws_counters}")
    progress(f"pipes-only node counters: {pipes_counters}")
    for name, got, want in (("node", counters, expected), ("websockets-transport node", ws_counters, ws_expected),
                            ("pipes-only node", pipes_counters, pipes_expected)):
        if got.get("failed", 0) or got.get("completed", 0) != want:
            raise BenchError(f"{name} counters disagree with the client: completed {got.get('completed')}, "
                             f"expected {want}, failed {got.get('failed', 0)}")
    # The large rows must have used the rings on the main node (its other packets are all far under
    # the 32 KiB threshold, so every shm payload is theirs; a full ring sends one through the pipe,
    # hence at most, not exactly, one each way per packet), and never on the pipes-only node.
    large_packets = sum(r["packets_answered"] for rs in payload_runs["pfnode"] for r in rs
                        if r["size"] in SHM_COMPARE_SIZES)
    for key in ("shm_payloads_in", "shm_payloads_out"):
        if not 0 < counters.get(key, 0) <= large_packets:
            raise BenchError(f"node counters: {key} {counters.get(key, 0)}, expected 1 to {large_packets} "
                             f"(the {' and '.join(SHM_COMPARE_SIZES)} payload packets sent to it)")
        if pipes_counters.get(key, 0):
            raise BenchError(f"pipes-only node ({' '.join(PIPES_ONLY_ARGS)}) counters: {key} "
                             f"{pipes_counters[key]}, expected none")
    progress("stopping the nodes and the echo server ...")
    procs.stop_child(echo_proc, wait_s=0)
    node_status = {}
    for n in (node, ws_node, pipes_node):
        rc = procs.stop_node(n.name)
        problems = [line for line in n.log_path.read_text(errors="replace").splitlines()
                    if " WARNING " in line or " ERROR " in line]
        if rc != 0:
            progress(f"{n.name} node exited with status {rc}")
        if problems:
            progress(f"{n.name} node logged {len(problems)} warnings/errors, e.g.: {problems[0]}")
        node_status[n.name] = {"exit_status": rc, "log_warnings": problems[:20], "argv": n.argv}
    node_status["picows"]["counters"] = counters
    node_status["websockets"]["counters"] = ws_counters
    node_status["pipes"]["counters"] = pipes_counters
    for child in log_dir.iterdir():
        child.unlink()
    log_dir.rmdir()

    medians = {system: summarise(rs) for system, rs in runs.items()}
    p, ex, echo = medians["pfnode"], medians["executor"], medians["echo"]
    ratios = {key: {"throughput": p["throughput"] / base["throughput"],
                    "rtt_p50": p["rtt_p50_us"] / base["rtt_p50_us"],
                    "rtt_p99": p["rtt_p99_us"] / base["rtt_p99_us"]}
              for key, base in (("executor", ex), ("echo", echo),
                                ("websockets_transport", medians["pfnode_websockets"]))}
    payloads = summarise_payloads(variants, payload_runs)
    payload_checks = check_payloads(payloads)
    shm_comparison = compare_shm(payloads, pipes_variants, payload_runs["pfnode_pipes"], counters,
                                 pipes_counters, large_packets)
    groups = {group: summarise(rs) for group, rs in group_runs.items()}
    for group in GROUPS:
        groups[group]["workers"] = lanes_at_start.get(group, {}).get("workers")
        groups[group]["handler"] = f"{group}:noop"
    ed_load = summarise_ed(ed_runs, args)
    loaded, idle = ed_load["loaded"], ed_load["idle"]
    targets = [
        {"name": "df no-op >= 30 000 packets/s through the node",
         "value": f"{p['throughput']:,.0f} packets/s", "met": p["throughput"] >= 30_000},
        {"name": "RTT p50 <= 1.5x the websockets echo RTT",
         "value": f"{ratios['echo']['rtt_p50']:.2f}x ({p['rtt_p50_us']:,.0f} vs {echo['rtt_p50_us']:,.0f} µs)",
         "met": ratios["echo"]["rtt_p50"] <= 1.5},
        {"name": "ed p99 <= 2 ms while the df lane is saturated",
         "value": f"{loaded['p99_ms']:.3f} ms (idle {idle['p99_ms']:.3f} ms, "
                  f"{ed_load['ratios']['p99']:.2f}x; df lane saturated in "
                  f"{ed_load['df_saturated_runs']} of {len(ed_runs)} runs)",
         "met": loaded["p99_ms"] <= 2.0 and ed_load["df_saturated_runs"] == len(ed_runs)},
        *payload_checks["targets"],
    ]
    return {
        "schema": 1,
        "benchmark": "df:noop throughput and RTT (picows and websockets transports); per-lane no-op; "
                     "ed latency while df is saturated; payload sizes 100 B to 1 MiB; large payloads "
                     "with worker shared memory vs pipes only",
        "machine": machine,
        "config": {"packets": args.packets, "rtt_packets": args.rtt_packets, "repeats": args.repeats,
                   "workers": args.workers, "window": args.window, "warmup": warmup,
                   "quick": args.quick, "data_bytes": len(json.dumps(DATA, separators=(",", ":"))),
                   "frame_bytes": runs["pfnode"][0].get("frame_bytes"),
                   "node_args": node.argv, "websockets_node_args": ws_node.argv,
                   "pipes_node_args": pipes_node.argv,
                   "group_packets": args.group_packets, "group_rtt_packets": args.group_rtt_packets,
                   "group_warmup": group_warmup, "ed_seconds": args.ed_seconds,
                   "ed_df_inflight": args.ed_df_inflight, "ed_df_sleep_ms": args.ed_df_sleep_ms,
                   "client_loop": "uvloop" if machine["uvloop"] else "asyncio",
                   "payload_packets": args.payload_packets, "payload_rtt_packets": args.payload_rtt_packets,
                   "payload_window": args.payload_window, "payload_large_window": args.payload_large_window,
                   "payload_variants": variants},
        "medians": medians,
        "ratios": ratios,
        "targets": targets,
        "runs": runs,
        "groups": groups,
        "group_runs": group_runs,
        "ed_load": ed_load,
        "ed_load_runs": ed_runs,
        "payloads": payloads,
        "payload_summary": payload_checks["summary"],
        "payload_shm_vs_pipes": shm_comparison,
        "payload_runs": payload_runs,
        "node": node_status["picows"],
        "websockets_node": node_status["websockets"],
        "pipes_node": node_status["pipes"],
        "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "elapsed_s": round(time.monotonic() - _T0, 1),
    }


def run_with_cleanup(run_fn, args: argparse.Namespace) -> dict | int:
    """`run_fn(args, procs)`, with every child process stopped however it ends (done, Ctrl-C,
    SIGTERM, a failure). Returns the report, or the exit status when it did not complete."""
    procs = Processes()

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return run_fn(args, procs)
    except KeyboardInterrupt:
        progress("interrupted; stopping every process ...")
        return 130
    except BenchError as exc:
        progress(f"FAILED: {exc}")
        tail = procs.node_log_text()
        if tail:
            progress(f"node logs (tail):\n{tail}")
        return 1
    finally:
        # Ctrl-C during cleanup must not leave anything behind either.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run_with_cleanup(run, args)
    if isinstance(report, int):
        return report
    print_table(report)
    path = save_report(report, args.out, "bench", "latest.json")
    if args.no_plot:
        line = "plot: skipped (--no-plot)"
    else:
        try:
            line = write_plot(report, [args.out / "latest.png", path.with_suffix(".png")])
        except Exception as exc:  # noqa: BLE001 - the numbers are written; a plot bug must not hide them
            line = f"plot: FAILED ({type(exc).__name__}: {exc}); the results are in {path}"
    print(line)
    progress(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
