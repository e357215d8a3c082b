"""The client side: every function here that does not start with an underscore is run in a
fresh child process (`Processes.call`) and returns a dict of measurements.

  ws_client          pre-encoded submit frames over one raw WebSocket: warm-up, throughput with a
                     window of packets in flight, then RTT one at a time; against a node or an
                     echo server, every answer checked
  payload_client     the same for df:noop with 100 B to 1 MiB of float64 data, as a JSON list and as
                     an $ndarray, frames built as they are sent and answers checked without parsing
                     the data into floats
  ed_load_client     ed:noop one at a time while a filler process of its own, on its own
                     connection, keeps the df lane busy (df:sleep_ms) or floods the front
                     (df:noop)
  fairness_client    client B's sleep_ms packets one at a time, alone and while client A, a
                     filler process on its own connection, keeps a window of the same packets in
                     flight (df, cf)
  fault_client       healthy df:spin_us packets, windowed then one at a time, with and without
                     a df:crash (its worker exits) every Nth packet
  consume_client     n df:noop runs as n packets from the client, as one df:consume packet, and
                     as one df:consume packet with `chunk` items per sub-packet
  client_map_client  pfnode.Client.map over n df:noop items with its progress bar on (to a file)
  executor_client    the stdlib ProcessPoolExecutor, driven in-process

CPU time of the server processes during a throughput phase is read here, from the client, for
the groups of pids the caller names (`cpu_pids`), and reported as `<group>_cpu_us_per_packet`.
"""
from __future__ import annotations

import statistics
import time

from bench.common import DATA, BenchError, percentile, run_loop
from bench.processes import cpu_s, die_with_parent, node_health


def _connect(endpoint: str):
    from websockets.asyncio.client import connect

    return connect(endpoint, compression=None, max_size=None, open_timeout=10)


# ---------------------------------------------------------------------------- frames and checks

def _submit_frame(seq: int, tag: str, group: str = "df", element: str = "noop", data=DATA,
                  timeout_ms: int | None = None) -> bytes:
    import orjson

    payload = {"version": "1.0", "id": f"{tag}-{seq}", "group": group, "element": element, "data": data,
               "priority": 5}
    if timeout_ms is not None:
        payload["timeout_ms"] = timeout_ms
    return orjson.dumps({"type": "submit", "seq": seq, "payload": payload})


def _result_of(raw: bytes) -> tuple[object, dict] | None:
    """(seq, payload) of a `result` frame, None for a heartbeat; BenchError for anything else."""
    import orjson

    obj = orjson.loads(raw)
    mtype = obj.get("type")
    if mtype == "heartbeat":
        return None
    if mtype != "result":
        raise BenchError(f"node sent a {mtype!r} frame, expected a result: {raw[:300]!r}")
    return obj.get("seq"), obj["payload"]


def _result_checker(tag: str, data):
    """check(raw) -> the seq of a successful result for packet `<tag>-<seq>` that returned
    `data`, or None for a heartbeat. Raises BenchError for anything else."""
    def check(raw: bytes) -> int | None:
        result = _result_of(raw)
        if result is None:
            return None
        seq, p = result
        if p.get("status") != "success":
            raise BenchError(f"packet {tag}-{seq} did not succeed: {p.get('error')}")
        if p.get("packet_id") != f"{tag}-{seq}":
            raise BenchError(f"seq {seq} answered with packet_id {p.get('packet_id')!r}, expected {tag}-{seq}")
        if p.get("data") != data:
            raise BenchError(f"packet {tag}-{seq} returned wrong data: {p.get('data')!r}")
        return seq
    return check


def _checker(mode: str, first_seq: int, frames: list[bytes], tag: str):
    """check(raw) -> index of the answered frame, or None for a frame to ignore; BenchError for
    anything that is not the right answer. pfnode: a success result for a seq that was sent,
    with its own packet_id and the data it was given; echo: the frame itself, byte for byte."""
    import orjson

    n = len(frames)
    if mode == "pfnode":
        result = _result_checker(tag, DATA)

        def check(raw: bytes) -> int | None:
            seq = result(raw)
            if seq is None:
                return None
            i = seq - first_seq if type(seq) is int else -1
            if not 0 <= i < n:
                raise BenchError(f"result with unexpected seq {seq}: {raw[:300]!r}")
            return i
    else:
        def check(raw: bytes) -> int | None:
            obj = orjson.loads(raw)  # the same parse the pfnode check does
            i = obj.get("seq", -1) - first_seq
            if not 0 <= i < n or raw != frames[i]:
                raise BenchError(f"echo server returned a wrong frame: {raw[:300]!r}")
            return i
    return check


# ---------------------------------------------------------------------------- the two ways to send

async def _pipelined(ws, frames, check, window: int, timeout_s: float) -> float:
    """Send every frame keeping at most `window` unanswered; return elapsed seconds. Each
    frame must be answered exactly once."""
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


async def _one_at_a_time(ws, frames, check) -> list[float]:
    """Send each frame after the previous answer; return round-trip times in µs."""
    rtts = []
    for expected, frame in enumerate(frames):
        i, rtt = await _round_trip(ws, frame, check)
        if i != expected:
            raise BenchError(f"answer for frame {i} while waiting for {expected}")
        rtts.append(rtt)
    return rtts


async def _measure(ws, plan: dict, window: int, timeout_s: float, cpu_pids: dict[str, list[int]]) -> dict:
    """Warm-up, throughput (with the CPU time of the client and of each group of `cpu_pids`),
    then RTT one at a time, on one connection. `plan`: phase -> (frames, check)."""
    await _pipelined(ws, *plan["warmup"], window, timeout_s)
    packets = len(plan["throughput"][0])
    cpu0 = {group: cpu_s(pids) for group, pids in cpu_pids.items()}
    client0 = time.process_time()
    elapsed = await _pipelined(ws, *plan["throughput"], window, timeout_s)
    client1 = time.process_time()
    cpu1 = {group: cpu_s(pids) for group, pids in cpu_pids.items()}
    rtts = sorted(await _one_at_a_time(ws, *plan["rtt"]))
    out = {"throughput": packets / elapsed, "elapsed_s": elapsed,
           "rtt_p50_us": percentile(rtts, 50), "rtt_p99_us": percentile(rtts, 99),
           "rtt_mean_us": statistics.fmean(rtts),
           "client_cpu_us_per_packet": (client1 - client0) / packets * 1e6,
           "frame_bytes": len(plan["throughput"][0][0]),
           "packets_answered": sum(len(frames) for frames, _ in plan.values())}
    for group in cpu_pids:
        out[f"{group}_cpu_us_per_packet"] = (cpu1[group] - cpu0[group]) / packets * 1e6
    return out


def _plan(first_seq: int, counts: dict[str, int], make) -> tuple[dict, int]:
    """phase -> make(seq, count) for each phase in `counts`, the seqs numbered on from
    `first_seq`; and the next seq."""
    plan, seq = {}, first_seq
    for phase, count in counts.items():
        plan[phase] = make(seq, count)
        seq += count
    return plan, seq


# ---------------------------------------------------------------------------- ws_client

def ws_client(endpoint: str, mode: str, packets: int, rtt_packets: int, window: int, warmup: int,
              tag: str, cpu_pids: dict[str, list[int]], timeout_s: float, group: str = "df",
              element: str = "noop") -> dict:
    """One client run against pfnode (mode 'pfnode', packets `group:element`) or an echo server
    (mode 'echo'), with pre-encoded frames: warm-up, throughput, RTT."""
    def make(first_seq: int, count: int):
        frames = [_submit_frame(seq, tag, group, element) for seq in range(first_seq, first_seq + count)]
        return frames, _checker(mode, first_seq, frames, tag)

    plan, _ = _plan(1, {"warmup": warmup, "throughput": packets, "rtt": rtt_packets}, make)

    async def main() -> dict:
        async with _connect(endpoint) as ws:
            return await _measure(ws, plan, window, timeout_s, cpu_pids)

    return run_loop(main)


# ---------------------------------------------------------------------------- payloads
# df:noop with 100 B, 64 KiB and 1 MiB of float64 data, as a JSON list and as an $ndarray
# object (docs/PROTOCOL.md, "numpy payloads")

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
        frame = msgspec.defstruct("Frame", [("type", Any, None), ("seq", Any, None),
                                            ("payload", payload | None, None)])
        _FRAME_DECODER = msgspec.json.Decoder(frame)
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


async def _payload_variant(ws, mode: str, v: dict, first_seq: int, tag: str, timeout_s: float,
                           cpu_pids: dict[str, list[int]]) -> tuple[dict, int]:
    """One payload variant on an open connection: its measurements and the next seq."""
    values = _payload_values(v["nbytes"])
    data_json = _payload_json(values, v["encoding"])

    def make(seq: int, count: int):
        frames = _PayloadFrames(seq, count, tag, data_json, v["encoding"] == "ndarray")
        return frames, _payload_checker(mode, seq, count, tag, data_json, v["encoding"], values)

    plan, next_seq = _plan(first_seq, {"warmup": v["warmup"], "throughput": v["packets"],
                                       "rtt": v["rtt_packets"]}, make)
    out = await _measure(ws, plan, v["window"], timeout_s, cpu_pids)
    elapsed, packets = out["elapsed_s"], v["packets"]
    out.update({"size": v["size"], "encoding": v["encoding"], "array_bytes": v["nbytes"],
                "data_bytes": len(data_json), "window": v["window"],
                "array_mb_s": packets * v["nbytes"] / elapsed / 1e6,
                "wire_mb_s": packets * out["frame_bytes"] / elapsed / 1e6})
    if mode == "pfnode":
        out["worker_codec_us"] = _worker_codec_us(data_json, v["encoding"])
    return out, next_seq


def payload_client(endpoint: str, mode: str, variants: list[dict], tag: str,
                   cpu_pids: dict[str, list[int]], timeout_s: float) -> list[dict]:
    """Each payload variant in turn on one connection, against pfnode (df:noop) or the echo
    server: warm-up, throughput at the variant's window, RTT one at a time. Returns one dict
    per variant, in order."""
    async def main() -> list[dict]:
        results, seq = [], 1
        async with _connect(endpoint) as ws:
            for n, v in enumerate(variants):
                r, seq = await _payload_variant(ws, mode, v, seq, f"{tag}v{n}", timeout_s, cpu_pids)
                results.append(r)
        return results

    return run_loop(main)


# ---------------------------------------------------------------------------- one client under another's load
# The ed latency (ed:noop while the df lane is kept busy or flooded) and the fairness between
# clients (client B's packets while client A floods the same lane) share these pieces: round
# trips one at a time, a filler that keeps packets in flight on another connection, and the
# node's view of a lane.

async def _one_by_one(ws, group: str, element: str, data, tag: str, first_seq: int, *,
                      seconds: float | None = None, count: int | None = None,
                      pause_s: float = 0.0) -> tuple[list[float], int]:
    """Send group:element packets carrying `data` one at a time (each after the previous
    answer, and after a random pause of 0 to `pause_s`, seeded), for `seconds` or `count`
    packets; return (sorted round-trip times in µs, the next seq)."""
    import asyncio
    import random

    check = _result_checker(tag, data)
    pauses = random.Random(first_seq)
    rtts = []
    clock = time.perf_counter_ns
    seq = first_seq
    end = clock() + int(seconds * 1e9) if seconds is not None else None
    while clock() < end if end is not None else len(rtts) < count:
        if pause_s:
            await asyncio.sleep(pauses.uniform(0, pause_s))
        got, rtt = await _round_trip(ws, _submit_frame(seq, tag, group, element, data), check)
        if got != seq:
            raise BenchError(f"answer for {group}:{element} seq {got} while waiting for {seq}")
        rtts.append(rtt)
        seq += 1
    if not rtts:
        raise BenchError(f"no {group}:{element} round trip completed")
    rtts.sort()
    return rtts, seq


class _Filler:
    """Keeps `inflight` group:`element` packets (data `data`) unanswered on one connection,
    sending a new one as each answer arrives, until `refill` is cleared; then waits for the
    rest. Every answer is checked (success, its own packet_id, the data it was given, answered
    once)."""

    def __init__(self, ws, inflight: int, group: str, element: str, data, tag: str) -> None:
        self.ws, self.inflight, self.group, self.element, self.data = ws, inflight, group, element, data
        self.tag = tag
        self.check = _result_checker(tag, data)
        self.next_seq = 1
        self.outstanding: set[int] = set()
        self.answered = 0
        self.refill = True

    async def _send_one(self) -> None:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        self.outstanding.add(seq)
        await self.ws.send(_submit_frame(seq, self.tag, self.group, self.element, self.data), text=True)

    async def run(self) -> None:
        for _ in range(self.inflight):
            await self._send_one()
        while self.outstanding:
            seq = self.check(await self.ws.recv(decode=False))
            if seq is None:
                continue
            if seq not in self.outstanding:
                raise BenchError(f"{self.group}:{self.element} seq {seq} answered twice, or never sent")
            self.outstanding.remove(seq)
            self.answered += 1
            if self.refill:
                await self._send_one()


def _lane_state(health: dict, lane: str) -> dict | None:
    state = health.get("lanes", {}).get(lane)
    if not isinstance(state, dict):
        return None
    return {key: state.get(key) for key in ("workers", "busy", "running", "queued")}


async def _lane_now(endpoint: str, lane: str) -> dict | None:
    """The lane's state in the node's /status (read off the event loop's thread)."""
    import asyncio

    health = await asyncio.get_running_loop().run_in_executor(None, node_health, endpoint)
    return _lane_state(health, lane)


async def _lane_idle(endpoint: str, lane: str, what: str) -> None:
    state = await _lane_now(endpoint, lane)
    if state is not None and (state["running"] or state["queued"]):
        raise BenchError(f"{lane} lane not idle before {what}: {state}")


def _saturated(state: dict | None, what: str = "lane") -> bool | None:
    """lane: every worker of the lane holds a packet and more wait in its queue. front: packets
    wait in the lane's queue (the front holds a backlog; its workers may be faster than it and
    empty now and then). backlog: at least as many packets wait as the lane has workers, so each
    worker takes the next at once when it frees (for short packets, where a reading of `busy`
    often catches a worker between two). None: unknown."""
    if state is None or None in (state["workers"], state["busy"], state["queued"]):
        return None
    if what == "front":
        return state["queued"] > 0
    if what == "backlog":
        return state["queued"] >= state["workers"] > 0
    return state["workers"] > 0 and state["busy"] == state["workers"] and state["queued"] > 0


def _latency_stats(rtts: list[float], seconds: float) -> dict:
    return {"packets": len(rtts), "elapsed_s": seconds,
            "p50_ms": percentile(rtts, 50) / 1000, "p99_ms": percentile(rtts, 99) / 1000,
            "p999_ms": percentile(rtts, 99.9) / 1000, "max_ms": rtts[-1] / 1000,
            "mean_ms": statistics.fmean(rtts) / 1000}


async def _until_saturated(endpoint: str, filler, phase: dict) -> dict | None:
    """Wait until the phase's lane is saturated as the phase means it; that lane state."""
    import asyncio

    deadline = time.monotonic() + phase["saturate_s"]
    while True:
        await asyncio.sleep(0.05)
        filler.check()
        state = await _lane_now(endpoint, phase["lane"])
        if _saturated(state, phase["saturates"]) is not False:
            return state
        if time.monotonic() > deadline:
            raise BenchError(f"the {phase['lane']} lane did not saturate: {state}")


def _filler_main(conn, endpoint: str, inflight: int, group: str, element: str, data, tag: str) -> None:
    """A filler in a process of its own (`_FillerProcess`): keeps the packets in flight until
    told "stop", answers "count" with how many were answered so far, and sends its total
    (or the error that stopped it) at the end."""
    die_with_parent()

    async def main() -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        async with _connect(endpoint) as ws:
            filler = _Filler(ws, inflight, group, element, data, tag)
            task = asyncio.ensure_future(filler.run())

            def command() -> None:
                what = conn.recv()
                if what == "count":
                    conn.send(("count", filler.answered))
                else:
                    filler.refill = False
            loop.add_reader(conn.fileno(), command)
            try:
                await task
            finally:
                loop.remove_reader(conn.fileno())
            conn.send(("done", filler.answered))

    try:
        run_loop(main)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the run
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _FillerProcess:
    """A `_Filler` in a child process: the client measuring latency then shares no event
    loop with the flood it measures under (in one process, the client's own handling of
    the flood's answers would be counted as the node's latency)."""

    def __init__(self, endpoint: str, inflight: int, group: str, element: str, data, tag: str) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_filler_main, args=(child, endpoint, inflight, group, element, data, tag),
                                daemon=True)
        self.proc.start()
        child.close()
        self.inflight, self.group, self.element = inflight, group, element
        self.result: tuple | None = None

    def check(self) -> None:
        if self.result is None and self.conn.poll():
            try:
                self.result = self.conn.recv()
            except EOFError:
                self.result = ("exited", self.proc.exitcode)
        if self.result is not None:
            raise BenchError(f"the filler stopped early: {self.result}")
        if not self.proc.is_alive():
            raise BenchError(f"the filler process exited with {self.proc.exitcode}")

    async def answered(self) -> int:
        import asyncio

        self.check()
        self.conn.send("count")
        loop = asyncio.get_running_loop()
        kind, count = await loop.run_in_executor(None, self.conn.recv)
        if kind != "count":
            self.result = (kind, count)
            raise BenchError(f"the filler stopped early: {self.result}")
        return count

    async def stop(self, timeout_s: float, what: str) -> int:
        """Stop refilling; wait for the rest to be answered (checked); the answers in all."""
        import asyncio

        self.conn.send("stop")
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(None, self.conn.poll, timeout_s)
        if not ready:
            raise BenchError(f"{self.group}:{self.element} packets still unanswered {timeout_s:.0f} s after {what}")
        kind, value = self.conn.recv()
        if kind != "done":
            raise BenchError(f"the filler failed: {value}")
        return value

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


async def _under_load(endpoint: str, phase: dict, tag: str, timeout_s: float, measure,
                      prefix: str) -> tuple[dict, int]:
    """`await measure()` (a dict with "elapsed_s") while a filler process keeps phase["inflight"]
    packets phase["group"]:phase["element"] (data phase["data"]) in flight, from the moment
    phase["lane"] is saturated as phase["saturates"] says; the filler drained and checked at
    the end. Returns measure's dict with, under `prefix`: the filler's packets answered during
    the measurement and their rate (`packets`, `throughput`), the lane's state at its start and
    end (`lane_at_start`, `lane_at_end`) and whether it was saturated both times
    (`saturated`); and the filler's answers in all."""
    filler = _FillerProcess(endpoint, phase["inflight"], phase["group"], phase["element"], phase["data"], tag)
    try:
        at_start = await _until_saturated(endpoint, filler, phase)
        answered0 = await filler.answered()
        stats = await measure()
        answered = await filler.answered() - answered0
        at_end = await _lane_now(endpoint, phase["lane"])
        total = await filler.stop(timeout_s, f"the {phase['name']} phase")
    finally:
        filler.close()
    stats.update({f"{prefix}packets": answered, f"{prefix}throughput": answered / stats["elapsed_s"],
                  f"{prefix}lane_at_start": at_start, f"{prefix}lane_at_end": at_end,
                  f"{prefix}saturated": (_saturated(at_start, phase["saturates"])
                                         and _saturated(at_end, phase["saturates"]))})
    return stats, total


# ---------------------------------------------------------------------------- ed latency under load

class _EdRun:
    """ed_load_client's state: the ed connection, the next ed seq, what was answered."""

    def __init__(self, endpoint: str, ed_ws, seconds: float, tag: str, timeout_s: float,
                 front_pids: list[int]) -> None:
        self.endpoint, self.ed_ws, self.seconds, self.tag = endpoint, ed_ws, seconds, tag
        self.timeout_s, self.front_pids = timeout_s, front_pids
        self.seq, self.answered = 1, 0

    async def ed_round_trips(self, seconds: float) -> dict:
        """ed:noop one at a time for `seconds`: latency stats, with the front's CPU share."""
        start, front0 = time.perf_counter(), cpu_s(self.front_pids)
        rtts, next_seq = await _one_by_one(self.ed_ws, "ed", "noop", DATA, f"{self.tag}ed", self.seq,
                                           seconds=seconds)
        elapsed = time.perf_counter() - start
        self.answered, self.seq = self.answered + next_seq - self.seq, next_seq
        stats = _latency_stats(rtts, elapsed)
        stats["front_cpu_share"] = (cpu_s(self.front_pids) - front0) / elapsed
        return stats

    async def idle(self, phase: dict) -> dict:
        await _lane_idle(self.endpoint, "df", "the idle phase")
        return await self.ed_round_trips(self.seconds)

    async def loaded(self, phase: dict) -> dict:
        """ed round trips while the df lane is kept busy (df_* keys: the df filler's)."""
        phase = {"group": "df", "lane": "df", **phase}
        stats, answered = await _under_load(self.endpoint, phase, f"{self.tag}{phase['name']}",
                                            self.timeout_s, lambda: self.ed_round_trips(self.seconds), "df_")
        self.answered += answered
        return stats


def ed_load_client(endpoint: str, seconds: float, phases: list[dict], tag: str, timeout_s: float,
                   front_pids: list[int]) -> dict:
    """ed:noop RTT, one at a time on one connection, for `seconds` in each phase, in order:
    {"name": "idle"} with the df lane empty, or {"name": ..., "element", "data", "inflight",
    "saturates", "saturate_s"} while a second connection keeps `inflight` df:element packets in
    flight; measured once the df lane is saturated (`_saturated(state, saturates)`), which must
    still hold at the end for the run to count as saturated."""
    async def main() -> dict:
        order = [phase["name"] for phase in phases]
        out: dict = {"order": order}
        if "idle" in order and "loaded" in order:
            out["idle_first"] = order.index("idle") < order.index("loaded")
        async with _connect(endpoint) as ed_ws:  # the df load: a filler process of its own
            run = _EdRun(endpoint, ed_ws, seconds, tag, timeout_s, front_pids)
            await run.ed_round_trips(min(0.5, seconds / 4))  # warm-up, not counted
            for phase in phases:
                measure = run.idle if phase["name"] == "idle" else run.loaded
                out[phase["name"]] = await measure(phase)
        out["packets_answered"] = run.answered
        return out

    return run_loop(main)


# ---------------------------------------------------------------------------- fairness between clients

async def _fair_lane(endpoint: str, b_ws, spec: dict, tag: str, timeout_s: float,
                     alone_first: bool) -> tuple[dict, int]:
    """One lane of fairness_client: B alone and B under A's flood, in the order asked."""
    group, lane, sleep_ms = spec["group"], spec["lane"], spec["sleep_ms"]
    b_tag, answered, seq = f"{tag}{lane}b", 0, 1

    async def b_round_trips() -> dict:
        nonlocal seq, answered
        start = time.perf_counter()
        rtts, next_seq = await _one_by_one(b_ws, group, "sleep_ms", sleep_ms, b_tag, seq, count=spec["samples"],
                                           pause_s=spec["pause_s"])
        answered, seq = answered + next_seq - seq, next_seq
        return _latency_stats(rtts, time.perf_counter() - start)

    _, seq = await _one_by_one(b_ws, group, "sleep_ms", sleep_ms, b_tag, seq, count=spec["warmup"])
    answered += seq - 1
    out: dict = {}
    for phase in (("alone", "flood") if alone_first else ("flood", "alone")):
        if phase == "alone":
            await _lane_idle(endpoint, lane, f"client B's {lane} round trips alone")
            out["alone"] = await b_round_trips()
        else:
            flood = {"name": "flood", "group": group, "lane": lane, "element": "sleep_ms", "data": sleep_ms,
                     "inflight": spec["window"], "saturates": "backlog", "saturate_s": spec["saturate_s"]}
            out["flood"], a_answered = await _under_load(endpoint, flood, f"{tag}{lane}a", timeout_s,
                                                         b_round_trips, "a_")
            answered += a_answered
    return out, answered


def fairness_client(endpoint: str, lanes: list[dict], tag: str, timeout_s: float, alone_first: bool) -> dict:
    """Fairness between two clients on their own connections, for each lane in `lanes`
    ({"lane", "group", "sleep_ms", "window", "samples", "warmup", "saturate_s", "pause_s"}): client B
    sends group:sleep_ms one at a time, each after a random pause of 0 to pause_s (so that B does
    not arrive in step with the packets A runs: right after B's answer its worker starts one of
    A's), `samples` round trips with the lane idle ("alone") and as many
    while client A keeps `window` of the same packets in flight ("flood", measured once A's
    packets wait in the lane, at least one per worker, which must still hold at the end), in the
    order `alone_first` says. Every
    answer of both clients is checked. Returns {lane: {"alone": stats, "flood": stats with A's
    a_throughput, a_saturated, ...}, "packets_answered": n}."""
    async def main() -> dict:
        out: dict = {"alone_first": alone_first, "packets_answered": 0}
        async with _connect(endpoint) as b_ws:  # client A: a filler process of its own
            for spec in lanes:
                out[spec["lane"]], answered = await _fair_lane(endpoint, b_ws, spec, tag, timeout_s, alone_first)
                out["packets_answered"] += answered
        return out

    return run_loop(main)


# ---------------------------------------------------------------------------- fault recovery

def _fault_checker(tag: str, data, crash_every: int):
    """check(raw) -> (seq, healthy) for the answer to packet `<tag>-<seq>`, None for a heartbeat:
    a crashing packet (every crash_every-th seq) must be answered PF502, any other with success
    and the data it was given. BenchError for anything else."""
    def check(raw: bytes) -> tuple[int, bool] | None:
        result = _result_of(raw)
        if result is None:
            return None
        seq, p = result
        if type(seq) is not int or p.get("packet_id") != f"{tag}-{seq}":
            raise BenchError(f"seq {seq} answered with packet_id {p.get('packet_id')!r}, expected {tag}-{seq}")
        if crash_every and seq % crash_every == 0:
            error = p.get("error") or {}
            if p.get("status") != "error" or error.get("code") != "PF502":
                raise BenchError(f"packet {tag}-{seq} (df:crash) answered {p.get('status')} {error}, expected PF502")
            return seq, False
        if p.get("status") != "success" or p.get("data") != data:
            raise BenchError(f"packet {tag}-{seq} (df:spin_us) answered {p.get('status')} "
                             f"{p.get('error') or p.get('data')!r}, expected its data {data!r}")
        return seq, True
    return check


async def _mixed_stream(ws, window: int, crash_every: int, spin_us: int, tag: str, timeout_s: float, *,
                        seconds: float = float("inf"), count: int | None = None) -> dict:
    """Keep `window` packets in flight for `seconds` or until `count` are sent, then wait for
    the rest: df:spin_us, except every crash_every-th (0: none) a df:crash. Every answer checked,
    each seq answered once. Healthy packets' round trips (send to answer) in µs, their rate, the
    crashes and theirs."""
    import asyncio

    check = _fault_checker(tag, spin_us, crash_every)
    sent_at: dict[int, int] = {}
    rtts: list[float] = []
    clock = time.perf_counter_ns
    seq, crashes = 0, 0
    start = clock()
    end = start + seconds * 1e9
    count = count or -1

    async def send() -> None:
        nonlocal seq
        seq += 1
        crash = crash_every and seq % crash_every == 0
        sent_at[seq] = clock()
        await ws.send(_submit_frame(seq, tag, "df", "crash" if crash else "spin_us", spin_us), text=True)

    async def run() -> None:
        nonlocal crashes
        for _ in range(window if count < 0 else min(window, count)):
            await send()
        while sent_at:
            raw = await ws.recv(decode=False)
            now = clock()
            answer = check(raw)
            if answer is None:
                continue
            got, healthy = answer
            t0 = sent_at.pop(got, None)
            if t0 is None:
                raise BenchError(f"packet {tag}-{got} answered twice, or never sent")
            if healthy:
                rtts.append((now - t0) / 1000)
            else:
                crashes += 1
            if now < end and seq != count:
                await send()

    try:
        await asyncio.wait_for(run(), timeout_s + (seconds if count < 0 else 0))
    except TimeoutError:
        raise BenchError(f"{len(sent_at)} of {seq} packets ({tag}) unanswered {timeout_s:.0f} s after the "
                         f"phase") from None
    elapsed = (clock() - start) / 1e9
    if not rtts:
        raise BenchError(f"no healthy packet answered ({tag})")
    rtts.sort()
    return {"window": window, "elapsed_s": elapsed, "healthy": len(rtts), "crashes": crashes,
            "throughput": len(rtts) / elapsed, "crashes_per_s": crashes / elapsed,
            "rtt_p50_us": percentile(rtts, 50), "rtt_p99_us": percentile(rtts, 99),
            "rtt_mean_us": statistics.fmean(rtts), "rtt_max_us": rtts[-1]}


async def _lane_full(endpoint: str, lane: str, workers: int, timeout_s: float) -> float:
    """Wait until the lane has its `workers` again (after crashes); seconds waited."""
    import asyncio

    start = time.perf_counter()
    while True:
        state = await _lane_now(endpoint, lane)
        if state is not None and state["workers"] == workers and not state["running"]:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout_s:
            raise BenchError(f"the {lane} lane did not get back to {workers} workers within {timeout_s:.0f} s: "
                             f"{state}")
        await asyncio.sleep(0.01)


def fault_client(endpoint: str, conditions: list[dict], workers: int, seconds: float, rtt_seconds: float,
                 window: int, spin_us: int, warmup: int, tag: str, timeout_s: float) -> dict:
    """Healthy df:spin_us packets with and without crashing ones mixed in, on one connection.
    Warm-up (`warmup` healthy packets, window `window`), then for each condition
    ({"name", "crash_every"}, in order), once the df lane has its `workers` again: `window`
    packets in flight for `seconds` ("loaded"), then one in flight for `rtt_seconds` ("one");
    every crash_every-th packet a df:crash (0: none). Each crash must be answered PF502, each
    healthy packet with its data. Returns {name: {"loaded": ..., "one": ..., "lane_wait_s"},
    "packets_answered": healthy answers in all, "crashes": crashes in all}."""
    async def main() -> dict:
        out: dict = {"order": [c["name"] for c in conditions]}
        async with _connect(endpoint) as ws:
            warm = await _mixed_stream(ws, window, 0, spin_us, f"{tag}w", timeout_s, count=warmup)
            answered, crashes = warm["healthy"], 0
            for c in conditions:
                r: dict = {"crash_every": c["crash_every"]}
                r["lane_wait_s"] = await _lane_full(endpoint, "df", workers, timeout_s)
                for phase, n, s in (("loaded", window, seconds), ("one", 1, rtt_seconds)):
                    r[phase] = await _mixed_stream(ws, n, c["crash_every"], spin_us,
                                                   f"{tag}{c['name'][0]}{phase[0]}", timeout_s, seconds=s)
                    answered += r[phase]["healthy"]
                    crashes += r[phase]["crashes"]
                out[c["name"]] = r
        out["packets_answered"], out["crashes"] = answered, crashes
        return out

    return run_loop(main)


# ---------------------------------------------------------------------------- df:consume
# One df:consume packet mapping df:noop over n items (the node runs n sub-packets on the df
# lane), with and without `chunk`, against the same n items sent by the client as n df:noop
# packets with a window in flight.

def _consume_frame(seq: int, tag: str, items: list, chunk: int | None, timeout_ms: int) -> bytes:
    data: dict = {"items": items, "step": {"group": "df", "element": "noop"}}
    if chunk:
        data["chunk"] = chunk
    return _submit_frame(seq, tag, "df", "consume", data, timeout_ms)


async def _consume_once(ws, seq: int, tag: str, items: list, chunk: int | None, timeout_s: float) -> float:
    """One df:consume packet over `items`; its answer must be the items, in order. Seconds."""
    import asyncio

    check = _result_checker(tag, items)
    frame = _consume_frame(seq, tag, items, chunk, int(timeout_s * 1000))
    t0 = time.perf_counter()
    got, _ = await asyncio.wait_for(_round_trip(ws, frame, check), timeout_s + 5)
    if got != seq:
        raise BenchError(f"df:consume answered seq {got}, expected {seq}")
    return time.perf_counter() - t0


def consume_client(endpoint: str, items: int, chunk: int, window: int, tag: str, timeout_s: float,
                   cpu_pids: dict[str, list[int]], order: list[str]) -> dict:
    """The same `items` df:noop runs three ways, in `order`: "separate" (the client sends one
    packet per item, `window` in flight), "consume" (one df:consume packet), "chunked" (one
    df:consume packet with `chunk` items per sub-packet). Each after a warm-up of a tenth of
    the items. Returns {way: {"items_per_s", "elapsed_s", "<group>_cpu_us_per_item"}} and
    "packets_answered" (client packets) and "subpackets" (the node's df:noop sub-packets)."""
    values = list(range(items))
    warm = max(1, items // 10)

    async def separate(ws, first_seq: int, n: int) -> float:
        frames = [_submit_frame(seq, tag, "df", "noop") for seq in range(first_seq, first_seq + n)]
        return await _pipelined(ws, frames, _checker("pfnode", first_seq, frames, tag), window, timeout_s)

    async def main() -> dict:
        out: dict = {"order": order, "items": items, "chunk": chunk}
        seq, answered, subpackets = 1, 0, 0
        async with _connect(endpoint) as ws:
            for way in order:
                for phase in ("warmup", "measure"):
                    n = warm if phase == "warmup" else items
                    if phase == "measure":
                        cpu0 = {group: cpu_s(pids) for group, pids in cpu_pids.items()}
                    if way == "separate":
                        elapsed = await separate(ws, seq, n)
                        seq, answered = seq + n, answered + n
                    else:
                        part = chunk if way == "chunked" else None
                        elapsed = await _consume_once(ws, seq, tag, values[:n], part, timeout_s)
                        seq, answered = seq + 1, answered + 1
                        subpackets += -(-n // part) if part else n
                cpu = {group: (cpu_s(pids) - cpu0[group]) / items * 1e6 for group, pids in cpu_pids.items()}
                out[way] = {"items_per_s": items / elapsed, "elapsed_s": elapsed,
                            **{f"{group}_cpu_us_per_item": us for group, us in cpu.items()}}
        out["packets_answered"], out["subpackets"] = answered, subpackets
        return out

    return run_loop(main)


# ---------------------------------------------------------------------------- pfnode.Client.map
# The synchronous client a script or a notebook uses, with its progress bar, against the raw
# frames of ws_client: what the convenience costs.

def client_map_client(endpoint: str, items: int, warmup: int, window: int, cpu_pids: dict[str, list[int]]) -> dict:
    """pfnode.Client.map of df:noop over `items` items (each the row's DATA), `window` packets in
    flight, with its tqdm bar forced on (progress=True) and drawn to a file, as it is when stderr
    is not a terminal: a warm-up map of `warmup` items, then the measured one. Every result is
    checked (DATA, in its place) and the bar must have drawn every item."""
    import contextlib
    import tempfile

    from pfnode import Client

    def checked(results: list, n: int) -> None:
        wrong = sum(1 for r in results if r != DATA)
        if len(results) != n or wrong:
            raise BenchError(f"Client.map returned {len(results)} results for {n} items, {wrong} wrong")

    with tempfile.TemporaryFile("w+") as bar, Client(endpoint) as client:
        with contextlib.redirect_stderr(bar):
            checked(client.map("df", "noop", [DATA] * warmup, window=window, progress=True), warmup)
        bar.seek(0)
        bar.truncate()
        cpu0 = {group: cpu_s(pids) for group, pids in cpu_pids.items()}
        client0 = time.process_time()  # every thread's: the caller's and the client's loop
        start = time.perf_counter()
        with contextlib.redirect_stderr(bar):
            results = client.map("df", "noop", [DATA] * items, window=window, progress=True)
        elapsed = time.perf_counter() - start
        client1 = time.process_time()
        cpu1 = {group: cpu_s(pids) for group, pids in cpu_pids.items()}
        checked(results, items)
        bar.seek(0)
        drawn = bar.read().replace("\r", "\n").strip().splitlines()
    if not drawn or f"{items}/{items}" not in drawn[-1]:
        raise BenchError(f"the progress bar did not draw the {items} items: {drawn[-1:]!r}")
    out = {"throughput": items / elapsed, "elapsed_s": elapsed, "items": items, "window": window,
           "client_cpu_us_per_packet": (client1 - client0) / items * 1e6, "bar": drawn[-1].strip(),
           "bar_lines": len(drawn), "packets_answered": warmup + items}
    for group in cpu_pids:
        out[f"{group}_cpu_us_per_packet"] = (cpu1[group] - cpu0[group]) / items * 1e6
    return out


# ---------------------------------------------------------------------------- the executor

def _noop(data):
    return data


def executor_client(workers: int, packets: int, rtt_packets: int, window: int, warmup: int,
                    timeout_s: float) -> dict:
    """Baseline A: ProcessPoolExecutor(workers) driven directly, no network: at most `window`
    futures outstanding for throughput, one at a time for RTT; every result checked."""
    from concurrent.futures import ProcessPoolExecutor

    import psutil

    # The initializer only makes the workers die with this process if it is killed.
    with ProcessPoolExecutor(workers, initializer=die_with_parent) as ex:
        # Warm up: every worker started and busy at least once.
        for result in ex.map(_noop, [DATA] * max(warmup, 4 * workers)):
            if result != DATA:
                raise BenchError(f"executor returned wrong data: {result!r}")
        worker_pids = [p.pid for p in psutil.Process().children()]
        cpu_workers0, cpu_client0 = cpu_s(worker_pids), time.process_time()
        elapsed = _executor_throughput(ex, packets, window, timeout_s)
        cpu_workers1, cpu_client1 = cpu_s(worker_pids), time.process_time()
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


def _executor_throughput(ex, packets: int, window: int, timeout_s: float) -> float:
    """Submit `packets` no-ops keeping at most `window` unfinished; elapsed seconds."""
    import threading

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

    start = time.perf_counter()
    for _ in range(packets):
        room.acquire()
        ex.submit(_noop, DATA).add_done_callback(on_done)
    if not finished.wait(timeout_s):
        raise BenchError(f"executor: only {state['done']} of {packets} tasks within {timeout_s:.0f} s")
    elapsed = time.perf_counter() - start
    if state["errors"]:
        raise BenchError(f"executor: {len(state['errors'])} tasks failed, e.g. {state['errors'][0]}")
    return elapsed
