"""The noisy neighbour's two clients (bench/neighbours.py), each a long-lived child process
(`Processes.start_server`) driven by commands on its pipe, each with connections of its own:

  victim_server     one connection: ("measure", seconds) sends df:noop one at a time for that
                    long (every answer checked) and returns its round trips' p50, p99 and max;
                    ("probe", name) runs one check of what the neighbour's behaviour must not
                    take from it (its own cache entry, node element, dependent packet, lock,
                    barrier and buffer, a new connection)
  neighbour_server  ("start", behaviour, params) starts one of BEHAVIOURS on connections of its
                    own and answers once it loads the node (the cache past its share, the
                    watches admitted, both df workers hung...); ("finish",) stops it, closes
                    its connections and answers what it saw (its packets' outcomes by kind,
                    refusals, rates)

Every answer either client gets is checked: the victim's df:noop must succeed with its data, the
neighbour's packets may be answered only what `ALLOWED` says for their kind (a df:noop with its
data); anything else fails the run.
"""
from __future__ import annotations

import asyncio
import collections
import statistics
import time

from bench.common import DATA, BenchError, percentile, run_loop
from bench.processes import node_health

VICTIM_TIMEOUT_MS = 10_000  # the victim's packets' deadline: a stuck phase costs at most this
LONG_MS = 120_000  # the deadline of what the neighbour holds until it disconnects (watches, blocked...)
# What each kind of the neighbour's packets may be answered ("ok": success); anything else fails
# the run. PF004: over a share or a node-wide bound (the point of the exercise).
ALLOWED = {
    "put": {"ok", "PF004"}, "watch": {"PF004"}, "blocked": {"PF004"}, "barrier": {"PF004"},
    "lock": {"ok", "PF004"}, "alloc": {"ok", "PF004"}, "fence": {"ok", "PF004"}, "noop": {"ok"},
    "hang": {"PF408"}, "crash": {"PF502"}, "segfault": {"PF502"}, "raise": {"PF500"},
    "over_cap": {"PF501", "PF502"},
}
FAULT_CYCLE = ("crash", "segfault", "hang", "raise", "over_cap")  # the fault mix, in turn


def connect(endpoint: str, open_timeout: float = 10):
    from websockets.asyncio.client import connect as ws_connect

    # no client pings (the node sends heartbeats); a short close so a phase ends quickly
    return ws_connect(endpoint, compression=None, max_size=None, open_timeout=open_timeout,
                      ping_interval=None, close_timeout=2)


def submit_frame(seq: int, packet_id: str, group: str, element: str, data, timeout_ms: int | None = None,
                 **fields) -> bytes:
    import orjson

    payload = {"version": "1.0", "id": packet_id, "group": group, "element": element, "data": data,
               "priority": 5, **fields}
    if timeout_ms is not None:
        payload["timeout_ms"] = timeout_ms
    return orjson.dumps({"type": "submit", "seq": seq, "payload": payload})


def answer_of(raw: bytes) -> tuple[int, str, dict] | None:
    """(seq, "ok" or the error code, payload) of a result or error frame; None for a heartbeat."""
    import orjson

    obj = orjson.loads(raw)
    kind = obj.get("type")
    if kind == "heartbeat":
        return None
    payload = obj.get("payload") or {}
    if kind == "result":
        outcome = "ok" if payload.get("status") == "success" else (payload.get("error") or {}).get("code", "?")
        return obj.get("seq"), outcome, payload
    if kind == "error":
        return obj.get("seq"), payload.get("code", "?"), payload
    raise BenchError(f"node sent a {kind!r} frame: {raw[:300]!r}")


async def _status(endpoint: str) -> dict:
    return await asyncio.get_running_loop().run_in_executor(None, node_health, endpoint)


async def _until(what: str, test, timeout_s: float, every_s: float = 0.02) -> float:
    """Wait until `await test()` is true; seconds waited. BenchError after timeout_s."""
    start = time.monotonic()
    while not await test():
        if time.monotonic() - start > timeout_s:
            raise BenchError(f"{what}: not within {timeout_s:.0f} s")
        await asyncio.sleep(every_s)
    return time.monotonic() - start


def _serve_commands(conn, handle) -> None:
    """The loop of a command-driven client: answer ("ok", None) once `handle` is ready, then
    each command with ("ok", await handle(command)) until "stop"."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with handle as h:
            conn.send(("ok", None))
            while True:
                command = await loop.run_in_executor(None, conn.recv)
                if command == "stop":
                    conn.send(("ok", await h.stop()))
                    return
                conn.send(("ok", await h.command(*command)))

    run_loop(main)


# ============================================================================ the victim

class Victim:
    def __init__(self, endpoint: str, tag: str) -> None:
        self.endpoint, self.tag = endpoint, tag
        self.seq = 0
        self.answered = 0
        self.lock_token: str | None = None

    async def __aenter__(self) -> "Victim":
        self._cm = connect(self.endpoint)
        self.ws = await self._cm.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        await self._cm.__aexit__(*exc)

    async def stop(self) -> dict:
        return {"packets_answered": self.answered}

    async def command(self, name: str, arg):
        if name == "measure":
            return await self.measure(arg)
        if name == "probe":
            return await PROBES[arg](self)
        raise BenchError(f"victim: unknown command {name!r}")

    async def _ask(self, group: str, element: str, data, ws=None, **fields) -> tuple[str, dict, float]:
        """One packet, answered before the next: (outcome, payload, ms)."""
        ws = ws or self.ws
        self.seq += 1
        seq, packet_id = self.seq, f"{self.tag}-{self.seq}"
        frame = submit_frame(seq, packet_id, group, element, data, fields.pop("timeout_ms", VICTIM_TIMEOUT_MS),
                             **fields)
        t0 = time.perf_counter_ns()
        await ws.send(frame, text=True)
        while True:
            raw = await asyncio.wait_for(ws.recv(decode=False), VICTIM_TIMEOUT_MS / 1000 + 5)
            ms = (time.perf_counter_ns() - t0) / 1e6
            answer = answer_of(raw)
            if answer is None:
                continue
            got, outcome, payload = answer
            if got != seq or (outcome == "ok" and payload.get("packet_id") != packet_id):
                raise BenchError(f"victim: answer for seq {got} ({payload}) while waiting for {seq}")
            self.answered += 1
            return outcome, payload, ms

    async def _ask_together(self, packets: list[tuple]) -> list[tuple[str, dict, float]]:
        """Several packets (group, element, data, fields) sent one after the other without
        waiting, then every answer: [(outcome, payload, ms from its send)], in send order."""
        sent: dict[int, tuple[int, str]] = {}
        for group, element, data, fields in packets:
            self.seq += 1
            packet_id = f"{self.tag}-{self.seq}"
            sent[self.seq] = (time.perf_counter_ns(), packet_id)
            await self.ws.send(submit_frame(self.seq, packet_id, group, element, data, VICTIM_TIMEOUT_MS, **fields),
                               text=True)
        answers: dict[int, tuple[str, dict, float]] = {}
        while len(answers) < len(sent):
            raw = await asyncio.wait_for(self.ws.recv(decode=False), VICTIM_TIMEOUT_MS / 1000 + 5)
            answer = answer_of(raw)
            if answer is None:
                continue
            seq, outcome, payload = answer
            if seq not in sent or seq in answers:
                raise BenchError(f"victim: unexpected answer for seq {seq}: {payload}")
            answers[seq] = (outcome, payload, (time.perf_counter_ns() - sent[seq][0]) / 1e6)
            self.answered += 1
        return [answers[seq] for seq in sorted(answers)]

    async def measure(self, seconds: float) -> dict:
        """df:noop one at a time for `seconds`: each must succeed with its data (a PF408 at the
        victim's deadline counts as a failure, and its round trip as its wait)."""
        rtts: list[float] = []
        failed: collections.Counter[str] = collections.Counter()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or not rtts:
            outcome, payload, ms = await self._ask("df", "noop", DATA)
            rtts.append(ms)
            if outcome != "ok":
                failed[outcome] += 1
            elif payload.get("data") != DATA:
                raise BenchError(f"victim: df:noop returned {payload.get('data')!r}")
        rtts.sort()
        return {"count": len(rtts), "p50_ms": percentile(rtts, 50), "p99_ms": percentile(rtts, 99),
                "max_ms": rtts[-1], "mean_ms": statistics.fmean(rtts), "failed": dict(failed)}

    # -- probes: what the neighbour must leave the victim; each step's outcome and time
    async def _steps(self, steps) -> dict:
        out, total, ok = [], 0.0, True
        for name, group, element, data, fields, want in steps:
            outcome, payload, ms = await self._ask(group, element, data, **fields)
            if element == "lock" and outcome == "ok":
                self.lock_token = payload["data"].get("token")
            good = outcome == "ok" and (want is None or want(payload.get("data")))
            ok &= good
            total += ms
            out.append({"step": name, "outcome": outcome, "ms": round(ms, 2),
                        **({} if good else {"answer": str(payload.get("error") or payload.get("data"))[:200]})})
        return {"ok": ok, "ms": total, "steps": out}

    async def probe_cache(self) -> dict:
        key = f"{self.tag}-own-{self.seq}"
        return await self._steps([
            ("rm:cache put", "rm", "cache", {"op": "put", "key": key, "value": 1}, {}, None),
            ("rm:cache get", "rm", "cache", {"op": "get", "key": key}, {}, lambda d: d.get("hit") is True)])

    async def probe_element(self) -> dict:
        return await self._steps([
            ("ed:signal", "ed", "signal", {"topic": f"{self.tag}-topic", "data": 1}, {}, None),
            ("rm:cache get", "rm", "cache", {"op": "get", "key": "nothing"}, {}, None)])

    async def probe_held(self) -> dict:
        """A packet that must wait for its dependency (sent right before it: it is admitted
        blocked, within the victim's share of the blocked packets), then a lock, a barrier and a
        buffer of its own."""
        dependency = f"{self.tag}-{self.seq + 2}"
        t0 = time.perf_counter()
        (out1, pay1, _), (out2, pay2, _) = await self._ask_together([
            ("df", "noop", 1, {"dependencies": [dependency]}), ("df", "noop", 2, {})])
        pair_ok = out1 == "ok" and out2 == "ok"
        blocked = {"ok": pair_ok, "ms": (time.perf_counter() - t0) * 1000, "steps": [
            {"step": "blocked df:noop + its dependency", "outcome": "ok" if pair_ok else f"{out1}, {out2}",
             "ms": round((time.perf_counter() - t0) * 1000, 2),
             **({} if pair_ok else {"answer": str(pay1.get("error") or pay2.get("error"))[:200]})}]}
        name = f"{self.tag}-{self.seq}"
        out = await self._steps([
            ("rm:lock", "rm", "lock", {"name": name, "lease_ms": 5000, "wait_ms": 0}, {}, None),
            ("co:sync (1 party)", "co", "sync", {"barrier": name, "parties": 1, "data": 1}, {}, None),
            ("rm:alloc", "rm", "alloc", {"name": name, "shape": [8], "dtype": "|u1", "ttl_ms": 5000}, {}, None),
            ("rm:free", "rm", "free", {"name": name}, {}, None)])
        if self.lock_token is not None:  # let go of the lock: nothing of the victim's stays held
            await self._steps([("rm:lock release", "rm", "lock", {"name": name, "token": self.lock_token,
                                                                 "release": True}, {}, None)])
            self.lock_token = None
        return {"ok": blocked["ok"] and out["ok"], "ms": blocked["ms"] + out["ms"],
                "steps": blocked["steps"] + out["steps"]}

    async def probe_connect(self) -> dict:
        """A new connection (retried while the node answers 503, for up to 5 s) and its
        df:noop: the time from the first try to the answer."""
        from websockets.exceptions import InvalidStatus

        t0, tries = time.perf_counter(), 0
        while True:
            tries += 1
            try:
                async with connect(self.endpoint, open_timeout=5) as ws:
                    outcome, _, _ = await self._ask("df", "noop", DATA, ws=ws)
                    ms = (time.perf_counter() - t0) * 1000
                    return {"ok": outcome == "ok", "ms": ms, "steps": [
                        {"step": "new connection + df:noop", "outcome": outcome, "ms": round(ms, 2), "tries": tries}]}
            except InvalidStatus as exc:
                if time.perf_counter() - t0 > 5:
                    ms = (time.perf_counter() - t0) * 1000
                    return {"ok": False, "ms": ms, "steps": [
                        {"step": "new connection", "outcome": f"HTTP {exc.response.status_code}", "ms": round(ms, 2),
                         "tries": tries}]}
                await asyncio.sleep(0.02)


PROBES = {"cache": Victim.probe_cache, "element": Victim.probe_element, "held": Victim.probe_held,
          "connect": Victim.probe_connect}


def victim_server(conn, endpoint: str, tag: str) -> None:
    _serve_commands(conn, Victim(endpoint, tag))


# ============================================================================ the neighbour

class Flow:
    """One connection of the neighbour that keeps up to `window` packets in flight, a new one
    sent as each is answered (while `refill`, and until `total` were sent): make(i) gives the
    i-th as (kind, group, element, data, timeout_ms, extra payload fields). With `fence`, once
    the `total` are sent, a df:noop follows: its answer says every earlier packet was admitted
    or refused. Answers are counted by kind and outcome; round trips kept by kind."""

    def __init__(self, endpoint: str, tag: str, make, window: int, total: int | None = None,
                 fence: bool = False) -> None:
        self.endpoint, self.tag, self.make, self.window, self.total = endpoint, tag, make, window, total
        self.fence = fence
        self.fenced = asyncio.Event()
        self.refill = True
        self.sent = 0
        self.outstanding: dict[int, tuple[str, int]] = {}  # seq -> (kind, send time ns)
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.rtts: dict[str, list[float]] = collections.defaultdict(list)
        self.unexpected: list[str] = []
        self.samples: dict[str, str] = {}  # outcome -> a message, for the report
        self.task: asyncio.Task | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def _send(self, ws) -> None:
        kind, group, element, data, timeout_ms, fields = self.make(self.sent)
        self.sent += 1
        seq = self.sent
        self.outstanding[seq] = (kind, time.perf_counter_ns())
        await ws.send(submit_frame(seq, f"{self.tag}-{seq}", group, element, data, timeout_ms, **fields), text=True)

    async def _send_fence(self, ws) -> None:
        seq = 0  # the fence's own seq
        self.outstanding[seq] = ("fence", time.perf_counter_ns())
        await ws.send(submit_frame(seq, f"{self.tag}-fence", "df", "noop", 0), text=True)

    def _more(self) -> bool:
        return self.refill and (self.total is None or self.sent < self.total)

    async def _run(self) -> None:
        try:
            async with connect(self.endpoint) as ws:
                self.ws = ws
                while self._more() and len(self.outstanding) < self.window:
                    await self._send(ws)
                if self.fence and not self._more():
                    await self._send_fence(ws)
                while True:  # until cancelled (finish): the connection stays open
                    answer = answer_of(await ws.recv(decode=False))
                    if answer is None:
                        continue
                    self._record(*answer)
                    while self._more() and len(self.outstanding) < self.window:
                        await self._send(ws)
                    if self.fence and not self._more() and not self.fenced.is_set() and 0 not in self.outstanding:
                        await self._send_fence(ws)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported by finish
            self.error = exc

    def _record(self, seq, outcome: str, payload: dict) -> None:
        entry = self.outstanding.pop(seq, None)
        if entry is None:
            self.unexpected.append(f"seq {seq} answered twice or never sent: {outcome} {payload}"[:300])
            return
        kind, t0 = entry
        if kind == "fence":
            self.fenced.set()
        self.outcomes[f"{kind} {outcome}"] += 1
        if outcome == "ok" and (payload.get("packet_id") != (f"{self.tag}-{seq}" if seq else f"{self.tag}-fence")
                                or (kind == "noop" and payload.get("data") != DATA)):
            self.unexpected.append(f"{kind} packet {self.tag}-{seq} answered {payload}"[:300])
        if outcome == "ok":
            self.rtts[kind].append((time.perf_counter_ns() - t0) / 1000)
        else:
            self.samples.setdefault(outcome, str((payload.get("error") or payload).get("message", ""))[:160])
        if outcome not in ALLOWED[kind]:
            self.unexpected.append(f"{kind} packet {self.tag}-{seq} answered {outcome}: {payload}"[:300])

    def check(self) -> None:
        if self.error is not None:
            raise BenchError(f"neighbour connection {self.tag} failed: {type(self.error).__name__}: {self.error}")
        if self.unexpected:
            raise BenchError(f"neighbour connection {self.tag}: {len(self.unexpected)} unexpected answers, e.g. "
                             f"{self.unexpected[0]}")

    async def drain(self, timeout_s: float) -> None:
        """Stop refilling and wait until every packet sent was answered."""
        self.refill = False
        start = time.monotonic()
        while self.outstanding and self.error is None:
            if time.monotonic() - start > timeout_s:
                raise BenchError(f"neighbour connection {self.tag}: {len(self.outstanding)} packets unanswered "
                                 f"{timeout_s:.0f} s after it stopped sending")
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        self.refill = False
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass


def _merge(flows: list[Flow]) -> dict:
    outcomes: collections.Counter[str] = collections.Counter()
    samples: dict[str, str] = {}
    for flow in flows:
        flow.check()
        outcomes.update(flow.outcomes)
        for code, message in flow.samples.items():
            samples.setdefault(code, message)
    return {"outcomes": dict(sorted(outcomes.items())), "refusal_samples": samples,
            "sent": sum(flow.sent for flow in flows)}


class Behaviour:
    """One of the neighbour's behaviours: `start` returns once it loads the node; `finish`
    stops it (drained or disconnected) and returns its stats."""

    def __init__(self, endpoint: str, tag: str, params: dict) -> None:
        self.endpoint, self.tag, self.params = endpoint, tag, params
        self.flows: list[Flow] = []
        self.t_loaded = 0.0

    def flow(self, *args, **kwargs) -> Flow:
        flow = Flow(self.endpoint, f"{self.tag}c{len(self.flows)}", *args, **kwargs)
        self.flows.append(flow)
        flow.start()
        return flow

    def ok_count(self, kind: str) -> int:
        return sum(flow.outcomes[f"{kind} ok"] for flow in self.flows)

    async def loaded(self) -> dict:
        raise NotImplementedError

    async def start(self) -> dict:
        t0 = time.monotonic()
        info = await self.loaded()
        for flow in self.flows:
            flow.check()
        self.t_loaded = time.monotonic()
        self.marks = {kind: self.ok_count(kind) for kind in ("put", "noop")}
        return {"load_s": round(self.t_loaded - t0, 3), **info}

    async def finish(self) -> dict:
        during = time.monotonic() - self.t_loaded
        rates = {f"{kind}_per_s": (self.ok_count(kind) - n) / during for kind, n in self.marks.items()
                 if self.ok_count(kind) > n}
        if self.params.get("drain_s"):
            for flow in self.flows:
                await flow.drain(self.params["drain_s"])
        for flow in self.flows:
            await flow.close()
        return {**_merge(self.flows), **rates, **self.extra()}

    def extra(self) -> dict:
        return {}


class CachePuts(Behaviour):
    """`connections` connections (each an owner of its own) put rm:cache entries with
    `key_bytes`-character keys as fast as the node takes them (`window` in flight each), every
    key new: past each one's share of the cache, each put evicts its owner's oldest entry.
    Loaded once /status counts evictions (or, for `fill`, once that many puts succeeded)."""

    async def loaded(self) -> dict:
        p = self.params
        self.evicted0 = await self._evicted()
        for c in range(p["connections"]):
            def make(i, c=c):
                key = f"{self.tag}-{c}-{i}-"
                key += "k" * (p["key_bytes"] - len(key))
                return "put", "rm", "cache", {"op": "put", "key": key, "value": p["value"]}, None, {}
            self.flow(make, p["window"])
        if p.get("fill"):
            await _until("the neighbour's cache puts", self._filled, p["load_timeout_s"])
        else:
            await _until("the neighbour past its share of the cache (evictions)", self._evicting, p["load_timeout_s"],
                         every_s=0.05)
        return {"puts_when_loaded": self.ok_count("put")}

    async def _filled(self) -> bool:
        self._raise_failed()
        return self.ok_count("put") >= self.params["fill"]

    async def _evicted(self) -> int:
        return (await _status(self.endpoint))["elements"]["cache"]["counters"].get("evicted", 0)

    async def _evicting(self) -> bool:
        self._raise_failed()
        return await self._evicted() > self.evicted0

    def _raise_failed(self) -> None:
        for flow in self.flows:
            flow.check()


class Batch(Behaviour):
    """Packets that stay in the node while their connections are open, sent all at once and
    fenced: `watches` (ed:watch on a topic nobody signals, `watch_connections` x `watches`),
    `blocked` (df:noop depending on ids that never come, `blocked_connections` x `blocked`),
    `barriers` (co:sync for 2 parties, one arriving), `locks` (rm:lock leases) and `buffers`
    (rm:alloc). The blocked packets' connections send one after the other, each once the
    previous one's packets are all admitted or refused, as a client opening connections in turn
    would (so the outcome does not depend on how the node interleaves them); the rest at once.
    Loaded once every fence is answered (every packet admitted or refused)."""

    async def loaded(self) -> dict:
        p = self.params
        spec = {  # kind -> (connections, per connection, make)
            "watch": (p.get("watch_connections", 1), p.get("watches", 0),
                      lambda c, i: ("ed", "watch", {"topic": f"{self.tag}-quiet-{c}"}, {})),
            "blocked": (p.get("blocked_connections", 1), p.get("blocked", 0),
                        lambda c, i: ("df", "noop", i, {"dependencies": [f"{self.tag}-never-{c}-{i}"]})),
            "barrier": (1, p.get("barriers", 0),
                        lambda c, i: ("co", "sync", {"barrier": f"{self.tag}-b{i}", "parties": 2, "data": i}, {})),
            "lock": (1, p.get("locks", 0),
                     lambda c, i: ("rm", "lock", {"name": f"{self.tag}-l{i}", "lease_ms": LONG_MS, "wait_ms": 0}, {})),
            "alloc": (1, p.get("buffers", 0),
                      lambda c, i: ("rm", "alloc", {"name": f"{self.tag}-a{i}", "shape": [64], "dtype": "|u1",
                                                    "ttl_ms": LONG_MS}, {})),
        }
        timeout_s = self.params["load_timeout_s"]
        for kind, (connections, count, build) in spec.items():
            for c in range(connections if count else 0):
                def make(i, kind=kind, c=c, build=build):
                    group, element, data, fields = build(c, i)
                    return kind, group, element, data, LONG_MS, fields
                flow = self.flow(make, window=count, total=count, fence=True)
                if kind == "blocked":  # in turn
                    await asyncio.wait_for(flow.fenced.wait(), timeout_s)
        for flow in self.flows:
            await asyncio.wait_for(flow.fenced.wait(), timeout_s)
            flow.check()
        status = await _status(self.endpoint)
        elements = status["elements"]
        return {"node_held": {"blocked": status["blocked"], "watchers": elements["events"]["watchers"],
                              "barriers": elements["barriers"], "locks": elements["locks"]["count"],
                              "buffers": elements["buffers"]["count"]}}


class Stream(Behaviour):
    """df:noop packets, `window` in flight on one connection, and with `fault_every` every
    so many a faulty one (FAULT_CYCLE in turn: df:crash, df:segfault, df:hang with a deadline
    of `hang_ms`, df:raise, rm:over_cap); or, with `hangs`, only that many df:hang packets
    whose deadline is `hang_ms` (they hang until it). Loaded once `window` answers came (for
    hangs: once every df worker runs one of them, by /status)."""

    async def loaded(self) -> dict:
        p = self.params
        if p.get("hangs"):
            self.flow(lambda i: ("hang", "df", "hang", None, p["hang_ms"], {}), p["hangs"], total=p["hangs"])
            await _until("the neighbour's hangs on every df worker", self._hung, p["load_timeout_s"])
            return {}
        every = p.get("fault_every", 0)

        def make(i):
            if every and i % every == every - 1:
                kind = FAULT_CYCLE[(i // every) % len(FAULT_CYCLE)]
                return {"crash": ("crash", "df", "crash", None, None, {}),
                        "segfault": ("segfault", "df", "segfault", None, None, {}),
                        "hang": ("hang", "df", "hang", None, p["hang_ms"], {}),
                        "raise": ("raise", "df", "raise", i, None, {}),
                        "over_cap": ("over_cap", "rm", "over_cap", p["over_cap_mib"], None, {})}[kind]
            return "noop", "df", "noop", DATA, None, {}
        self.flow(make, p["window"])
        await _until("the neighbour's stream", self._answered, p["load_timeout_s"])
        self.rtts_from = {kind: len(rtts) for kind, rtts in self.flows[0].rtts.items()}
        return {}

    async def _hung(self) -> bool:
        self.flows[0].check()
        df = (await _status(self.endpoint))["lanes"]["df"]
        return df["busy"] >= df["target"] and df["workers"] >= df["target"]

    async def _answered(self) -> bool:
        self.flows[0].check()
        return sum(self.flows[0].outcomes.values()) >= self.params["window"]

    def extra(self) -> dict:
        if self.params.get("hangs"):
            return {}
        rtts = sorted(self.flows[0].rtts["noop"][self.rtts_from.get("noop", 0):])
        faults = sum(n for key, n in self.flows[0].outcomes.items() if not key.startswith(("noop", "fence")))
        return {"own_noop_p50_ms": percentile(rtts, 50) / 1000 if rtts else None, "faults": faults}


class IdleLinks(Behaviour):
    """Connections that never send anything, kept open up to `target` at once: a new one tried
    every `gap_ms` while fewer are open (refused ones, HTTP 503, and ones the node closes, 1013
    when idle near its bound, are counted and replaced). Loaded once the node has closed or
    refused one (it is at or near its connection bound)."""

    async def loaded(self) -> dict:
        self.open = 0
        self.most = 0
        self.opened = 0
        self.refused: collections.Counter[str] = collections.Counter()
        self.closed: collections.Counter[str] = collections.Counter()
        self.links: set = set()
        self.tasks: set[asyncio.Task] = set()
        self.running = True
        self.opener = asyncio.ensure_future(self._open_links())
        await _until("the neighbour's idle connections at the node's bound", self._at_bound,
                     self.params["load_timeout_s"])
        return {"opened_when_loaded": self.opened, "open_when_loaded": self.open}

    async def _at_bound(self) -> bool:
        if self.opener.done():
            self.opener.result()
        return bool(self.refused or self.closed)

    async def _open_links(self) -> None:
        from websockets.exceptions import InvalidStatus

        p = self.params
        while self.running:
            if self.open >= p["target"]:
                await asyncio.sleep(p["gap_ms"] / 1000)
                continue
            try:
                cm = connect(self.endpoint, open_timeout=5)
                ws = await cm.__aenter__()
            except InvalidStatus as exc:
                self.refused[f"HTTP {exc.response.status_code}"] += 1
                await asyncio.sleep(p["gap_ms"] / 1000)
                continue
            except OSError as exc:
                self.refused[type(exc).__name__] += 1
                await asyncio.sleep(p["gap_ms"] / 1000)
                continue
            self.opened += 1
            self.open += 1
            self.most = max(self.most, self.open)
            self.links.add(ws)
            task = asyncio.ensure_future(self._hold(ws))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            await asyncio.sleep(p["gap_ms"] / 1000)

    async def _hold(self, ws) -> None:
        try:
            await ws.wait_closed()
            if self.running:
                self.closed[str(ws.close_code)] += 1
        finally:
            self.open -= 1
            self.links.discard(ws)

    async def finish(self) -> dict:
        self.running = False
        self.opener.cancel()
        await asyncio.gather(self.opener, return_exceptions=True)
        for ws in list(self.links):  # hang up at once (TCP reset), no closing handshake to wait for
            ws.transport.abort()
        await asyncio.wait_for(asyncio.gather(*self.tasks, return_exceptions=True), 10)
        return {"opened": self.opened, "most_open": self.most, "refused": dict(self.refused),
                "closed_by_node": dict(self.closed)}


BEHAVIOURS = {"cache_puts": CachePuts, "batch": Batch, "stream": Stream, "idle": IdleLinks}


class Neighbour:
    def __init__(self, endpoint: str, tag: str) -> None:
        self.endpoint, self.tag = endpoint, tag
        self.current: Behaviour | None = None
        self.n = 0

    async def __aenter__(self) -> "Neighbour":
        return self

    async def __aexit__(self, *exc) -> None:
        if self.current is not None:
            await self.current.finish()

    async def stop(self) -> dict:
        return {"behaviours": self.n}

    async def command(self, name: str, *args):
        if name == "start":
            kind, params = args
            self.n += 1
            self.current = BEHAVIOURS[kind](self.endpoint, f"{self.tag}{self.n}", params)
            return await self.current.start()
        if name == "finish":
            current, self.current = self.current, None
            return await current.finish()
        raise BenchError(f"neighbour: unknown command {name!r}")


def neighbour_server(conn, endpoint: str, tag: str) -> None:
    _serve_commands(conn, Neighbour(endpoint, tag))
