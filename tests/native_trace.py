"""What the compiled modules (pfnode/native.py) decide, as text, for one seed: run here under
the compiled build and in a PFNODE_PURE=1 process, the two traces must be the same.

    python -m tests.native_trace SEED    # prints {section: [line, ...]} as JSON

Sections: `decode` (protocol.decode of mutated and hostile frames, on both of its paths and with
limits), `encode` (the answer frames), `scheduler` and `dispatch` (random event sequences on a
fake clock, each decision written down), `pipe` (every pipe message packed and read back).
"""
from __future__ import annotations

import dataclasses
import json
import random
import sys
from types import SimpleNamespace

import msgspec
import orjson

from pfnode.core import protocol
from pfnode.core.clock import FakeClock
from pfnode.core.dispatch import Dispatcher
from pfnode.core.flight import Flight
from pfnode.core.scheduler import Scheduler
from pfnode.pool import pipe
from tests.test_dispatch import answer_a_busy_worker

ODD_VALUES = [None, True, 0, -1, 2**63, 2**64, 1.5, float("1e308"), "", "x" * 300, "\u00e9\ud800", [], {},
              [1, [2, [3]]], {"a": {"b": None}}, "df", "noop", 1e400]
PLAIN_VALUES = [None, True, 0, -1, 1.5, "", "x" * 300, "\u00e9", [], {}, [1, [2, [3]]], {"a": {"b": None}}]


def canon(value) -> str:
    """repr, but of what a value holds: a dataclass's fields, the bytes of a msgspec.Raw (whose
    repr is its address)."""
    if isinstance(value, msgspec.Raw):
        return f"Raw({bytes(value)!r})"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        inner = ", ".join(f"{f.name}={canon(getattr(value, f.name))}" for f in dataclasses.fields(value))
        return f"{type(value).__name__}({inner})"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__}[{', '.join(map(canon, value))}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{canon(k)}: {canon(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _valid_submit(rng: random.Random, seq: int) -> dict:
    packet = {"version": "1.0", "id": f"p{rng.randrange(50)}", "group": rng.choice(["df", "cf", "ed", "rm", "zz"]),
              "element": rng.choice(["noop", "noop", "transform", "x" * 70, "bad name"]), "data": rng.choice(PLAIN_VALUES),
              "priority": rng.choice([1, 5, 5, 5, 10, 0, 11, "5"])}
    if rng.random() < 0.3:
        packet["timeout_ms"] = rng.choice([1, 1000, 86_400_001, -5, 0.5])
    if rng.random() < 0.3:
        packet["dependencies"] = rng.choice([[], ["p1"], ["p1", "p1"], "p1", [1]])
    if rng.random() < 0.2:
        packet["metadata"] = rng.choice([{"ndarray": True}, [], {"k": 1}])
    return {"type": "submit", "seq": seq, "payload": packet}


def _frame(rng: random.Random, seq: int) -> bytes | str:
    kind = rng.random()
    if kind < 0.1:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    if kind < 0.2:
        return rng.choice(['{"type":"heartbeat","seq":1,"payload":{}}', '{"seq":1}', "[]", "{", "null",
                           '{"type":"result","seq":3,"payload":{"packet_id":"a","status":"success","data":1,'
                           '"duration_ms":2}}', '{"type":"error","seq":2,"payload":{"code":"PF400","message":"m"}}'])
    obj = _valid_submit(rng, seq)
    for _ in range(rng.choice([0, 0, 1, 2])):
        target = obj if rng.random() < 0.4 or not isinstance(obj.get("payload"), dict) else obj["payload"]
        key = rng.choice(list(target) + ["extra"])
        if rng.random() < 0.2:
            target.pop(key, None)
        else:
            target[key] = rng.choice(ODD_VALUES)
    try:
        text = orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        text = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if rng.random() < 0.1:
        cut = rng.randrange(len(text))
        text = text[:cut]
    return text.decode("utf-8", "surrogatepass") if rng.random() < 0.2 else text


def decode_trace(seed: int, count: int = 1500) -> list[str]:
    rng = random.Random(seed)
    out = []
    for seq in range(count):
        frame = _frame(rng, seq)
        limits = dict(max_frame_bytes=rng.choice([None, None, 64, 4096]), max_timeout_ms=rng.choice([None, 1000]))
        for raw_data in (False, True):
            out.append(canon(protocol.decode(frame, raw_data=raw_data, **limits)))
    return out


def encode_trace(seed: int, count: int = 300) -> list[str]:
    rng = random.Random(seed)
    out = []
    for seq in range(count):
        pid = f"p{rng.randrange(1000)}"
        out.append(protocol.encode_success_raw(seq, pid, orjson.dumps(rng.choice(PLAIN_VALUES)),
                                               rng.uniform(0, 100)).decode())
        out.append(protocol.encode_failure(seq, pid, rng.choice(["PF500", "PF408"]), "m\u00e9").decode())
        out.append(protocol.encode_error(seq, "PF400", "bad", pid if rng.random() < 0.5 else None).decode())
    return out


def _flight(rng: random.Random, step: int, now: float) -> Flight:
    deps = tuple(f"p{rng.randrange(max(1, step))}" for _ in range(rng.randrange(3)))
    f = Flight(SimpleNamespace(key=rng.choice(["df:noop", "df:slow", "cf:noop"])), packet_id=f"p{step}",
               scope=rng.choice(["a", "b", None]), lane=rng.choice(["cf", "df"]), priority=rng.randint(1, 10),
               deadline=now + rng.uniform(0.05, 2.0), dependencies=deps)
    f.timeout_ms = rng.choice((0, 100, 2000))
    return f


def _show(flights) -> str:
    return ",".join(f"{f.id}:{f.state}" for f in flights)


def scheduler_trace(seed: int, steps: int = 2500) -> list[str]:
    rng = random.Random(seed)
    clock = FakeClock()
    s = Scheduler(aging_ms=50, max_queued=60, max_blocked=40, max_blocked_per_client=25)
    dispatched: list[Flight] = []
    out = []
    for step in range(steps):
        op = rng.random()
        if op < 0.35:
            refused = s.admit(_flight(rng, step, clock.now), clock.now)
            out.append(f"admit p{step} {refused.code if refused else 'ok'}")
        elif op < 0.6:
            got = s.dispatch(rng.choice(["cf", "df"]), clock.now)
            if got is not None:
                dispatched.append(got)
            out.append(f"dispatch {got.id if got else None}")
        elif op < 0.8 and dispatched:
            done = dispatched.pop(rng.randrange(len(dispatched)))
            ok = rng.random() < 0.8
            failures = s.complete(done, clock.now, ok=ok, data_json=b"1" if ok else None,
                                  code=None if ok else "PF500")
            out.append(f"complete {done.id} {ok} -> {_show(f.flight for f in failures)}")
        elif op < 0.85 and dispatched:
            back = dispatched.pop(rng.randrange(len(dispatched)))
            if back.state == "dispatched":
                s.requeue(back)
            out.append(f"requeue {back.id} {back.state}")
        else:
            now = clock.advance(rng.uniform(0.0, 0.2))
            due = s.tick(now)
            out.append(f"tick {now:.6f} {_show(due)} next {s.next_alarm()}")
            for late in due:
                if late.deadline <= now:
                    s.complete(late, now, ok=False, code="PF408")
        out.append(f"  queued {s.queued} blocked {s.blocked} inflight {len(s.inflight)}")
    return out


def dispatch_trace(seed: int, steps: int = 2500) -> list[str]:
    rng = random.Random(seed)
    clock = FakeClock()
    d = Dispatcher({"cf": 1, "df": 32, "ed": 1, "rm": 1}, prefetch_ms=1.0)
    s = Scheduler(aging_ms=20, max_queued=400)
    slots = iter(range(10_000))
    for _ in range(3):
        d.add(next(slots), "df")
    keys = {"df:noop": 0.004, "df:small": 0.2, "df:slow": 40.0}
    out = []
    for step in range(steps):
        op = rng.random()
        if op < 0.4:
            key = rng.choice([*keys, f"df:new{step % 7}"])
            f = Flight(SimpleNamespace(key=key), packet_id=f"p{step}", lane="df", priority=rng.randint(1, 10),
                       deadline=1e9)
            out.append(f"admit {f.id} {s.admit(f, clock.now)}")
        elif op < 0.65:
            out.append("assign " + ";".join(f"{view.slot}<-{_show(batch)}" for view, batch in d.assign(s, clock.now)))
        elif op < 0.9:
            answer = answer_a_busy_worker(d, rng, clock, keys)
            if answer is not None:
                got = answer[1]
                s.complete(got, clock.now, ok=True, data_json=b"1")
                out.append(f"answered {got.id}")
        elif d.workers:
            view = rng.choice(list(d.workers.values()))
            running, never_started = d.died(view)
            if running is not None:
                s.complete(running, clock.now, ok=False, code="PF502")
            for f in never_started:
                s.requeue(f)
            d.add(next(slots), "df")
            out.append(f"died {view.slot} {running.id if running else None} {_show(never_started)}")
    out.append(repr(sorted((k, round(v, 9)) for k, v in d.estimates.items())))
    return out


def pipe_trace(seed: int, count: int = 300) -> list[str]:
    rng = random.Random(seed)
    out = []
    for no in range(count):
        data = orjson.dumps(rng.choice(PLAIN_VALUES))
        task = pipe.Task(no, "df:noop", data, f"p{no}", rng.randint(1, 10), rng.choice([None, {"k": 1}]),
                         rng.uniform(0, 1e6), rng.choice([None, {"a": b"1"}]), rng.choice([None, 64]),
                         rng.choice([None, ("alice", ("team",))]))
        messages = [(pipe.Tasks([task]), pipe.ToWorker), (pipe.Cancel([no, no + 1]), pipe.ToWorker),
                    (pipe.Done(no, data, rng.uniform(0, 5)), pipe.FromWorker),
                    (pipe.Failed(no, "PF500", "boom", 1.0, "trace"), pipe.FromWorker),
                    (pipe.Skipped(no), pipe.FromWorker), (pipe.Retire("idle", no), pipe.FromWorker)]
        for message, kind in messages:
            packed = pipe.pack(message)
            out.append(packed.hex())
            reader = pipe.FrameReader(kind)
            cut = rng.randrange(len(packed))
            out.append(repr(reader.feed(packed[:cut]) + reader.feed(packed[cut:])))
    return out


SECTIONS = {"decode": decode_trace, "encode": encode_trace, "scheduler": scheduler_trace,
            "dispatch": dispatch_trace, "pipe": pipe_trace}


def trace(seed: int) -> dict[str, list[str]]:
    return {name: run(seed) for name, run in SECTIONS.items()}


if __name__ == "__main__":
    from pfnode import native

    print(json.dumps({"mode": native.report()["mode"], "trace": trace(int(sys.argv[1]))}))
