"""The dispatcher's rules (pfnode/core/dispatch.py), pure, on a fake clock: which worker gets
which packet, how much it may hold, and which packet a dead worker is blamed for."""
from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from pfnode.core.dispatch import Dispatcher
from pfnode.core.flight import DISPATCHED, QUEUED, Flight
from pfnode.core.scheduler import Scheduler

WINDOWS = {"cf": 1, "df": 32, "ed": 1, "rm": 1}


def flight(pid: str, key: str = "df:noop", priority: int = 5, lane: str = "df", deadline: float = 1e9) -> Flight:
    return Flight(SimpleNamespace(key=key), packet_id=pid, lane=lane, priority=priority, deadline=deadline)


def setup(workers: int = 2, prefetch_ms: float = 1.0, lane: str = "df"):
    d = Dispatcher(WINDOWS, prefetch_ms=prefetch_ms)
    views = [d.add(slot, lane) for slot in range(workers)]
    return d, Scheduler(aging_ms=0), views


def submit(s: Scheduler, clock, *flights: Flight) -> None:
    for f in flights:
        assert s.admit(f, clock.now) is None


def run_one(d: Dispatcher, s: Scheduler, view, clock, ms: float, ok: bool = True) -> Flight:
    """The worker answers the oldest packet it holds after `ms` of running it."""
    clock.advance(ms / 1000)
    f = d.answered(view, view.held[0].no, ms)
    assert f is not None
    s.complete(f, clock.now, ok=ok, data_json=b"1" if ok else None, code=None if ok else "PF500")
    return f


def learn(d: Dispatcher, key: str, ms: float) -> None:
    d.estimates[key] = ms


# ---------------------------------------------------------------- prefetch by estimated work

def test_a_key_never_run_is_not_prefetched_behind_another(clock):
    d, s, (w,) = setup(workers=1)
    submit(s, clock, flight("a"), flight("b"), flight("c"))
    (batch,) = d.assign(s, clock.now)
    assert batch[0] is w and [f.id for f in batch[1]] == ["a"]  # only the one it runs
    assert d.assign(s, clock.now) == []
    run_one(d, s, w, clock, 0.01)  # now df:noop is known to take 10 µs
    (batch,) = d.assign(s, clock.now)
    assert [f.id for f in batch[1]] == ["b", "c"]  # one write carries both


def test_microsecond_handlers_travel_in_batches_up_to_the_window(clock):
    d, s, (w,) = setup(workers=1)
    learn(d, "df:noop", 0.005)
    submit(s, clock, *(flight(f"p{i}") for i in range(100)))
    (batch,) = d.assign(s, clock.now)
    assert len(batch[1]) == WINDOWS["df"]
    # refilled only once down to half its window: not one packet per answer
    for _ in range(15):
        run_one(d, s, w, clock, 0.005)
        assert d.assign(s, clock.now) == []
    run_one(d, s, w, clock, 0.005)
    (batch,) = d.assign(s, clock.now)
    assert len(w.held) == WINDOWS["df"] and len(batch[1]) == 16
    d.check()


def test_a_slow_handlers_worker_holds_only_the_packet_it_runs(clock):
    d, s, (w,) = setup(workers=1)
    learn(d, "df:slow", 150.0)
    submit(s, clock, *(flight(f"s{i}", "df:slow") for i in range(5)))
    (batch,) = d.assign(s, clock.now)
    assert [f.id for f in batch[1]] == ["s0"] and w.queued_ms == 0
    assert d.assign(s, clock.now) == []


def test_holds_about_prefetch_ms_of_work_beyond_the_running_packet(clock):
    d, s, (w,) = setup(workers=1, prefetch_ms=1.0)
    learn(d, "df:third", 0.3)
    submit(s, clock, *(flight(f"t{i}", "df:third") for i in range(10)))
    d.assign(s, clock.now)
    assert len(w.held) == 4 and w.queued_ms == pytest.approx(0.9)  # 1 running + 3 x 0.3 ms
    run_one(d, s, w, clock, 0.3)
    run_one(d, s, w, clock, 0.3)  # 0.3 ms left queued: under the low-water mark (0.5 ms)
    d.assign(s, clock.now)
    assert len(w.held) == 4


def test_a_later_higher_priority_packet_waits_behind_at_most_the_prefetch(clock):
    """The issue's measurement: the df lane busy with 150 ms packets; six priority-1 packets
    just before six priority-10 ones; every priority-10 one must start first."""
    d, s, workers = setup(workers=2)
    learn(d, "df:slow", 150.0)
    submit(s, clock, flight("busy-0", "df:slow"), flight("busy-1", "df:slow"))
    d.assign(s, clock.now)
    submit(s, clock, *(flight(f"low-{i}", "df:slow", priority=1) for i in range(6)))
    d.assign(s, clock.now)
    submit(s, clock, *(flight(f"high-{i}", "df:slow", priority=10) for i in range(6)))
    started = []
    while len(started) < 12:
        for batch in d.assign(s, clock.now):
            started += [f.id for f in batch[1]]
        for w in workers:
            if w.held:
                run_one(d, s, w, clock, 150.0)
    order = [pid for pid in started if not pid.startswith("busy")]
    assert order[:6] == [f"high-{i}" for i in range(6)], order


# ---------------------------------------------------------------- placement

def test_packets_fan_out_to_idle_workers_first_then_to_the_least_loaded(clock):
    d, s, (a, b, c) = setup(workers=3)
    learn(d, "df:noop", 0.1)
    submit(s, clock, *(flight(f"p{i}") for i in range(3)))
    batches = d.assign(s, clock.now)
    assert sorted(len(fl) for _, fl in batches) == [1, 1, 1]  # one each, not three on one
    submit(s, clock, *(flight(f"q{i}") for i in range(4)))
    d.assign(s, clock.now)
    assert sorted(len(w.held) for w in (a, b, c)) == [2, 2, 3]


def test_lanes_do_not_lend_workers(clock):
    d = Dispatcher(WINDOWS)
    cf, df = d.add(0, "cf"), d.add(1, "df")
    s = Scheduler()
    submit(s, clock, flight("c1", "cf:x", lane="cf"), flight("c2", "cf:x", lane="cf"))
    (batch,) = d.assign(s, clock.now)
    assert batch[0] is cf and [f.id for f in batch[1]] == ["c1"] and not df.held
    assert s.depth("cf") == 1  # the second waits for the cf worker: one at a time


def test_a_worker_that_takes_no_work_gets_none(clock):
    d, s, (a, b) = setup(workers=2)
    a.ready = False
    submit(s, clock, flight("x"))
    (batch,) = d.assign(s, clock.now)
    assert batch[0] is b


# ---------------------------------------------------------------- answers and deaths

def test_answers_must_come_in_order(clock):
    d, s, (w,) = setup(workers=1)
    learn(d, "df:noop", 0.01)
    submit(s, clock, flight("a"), flight("b"))
    d.assign(s, clock.now)
    second = w.held[1]
    assert d.answered(w, second.no, 0.01) is None  # out of order: a protocol error
    assert d.answered(w, w.held[0].no, 0.01).id == "a"


def test_a_dead_worker_is_blamed_for_its_oldest_packet_only(clock):
    d, s, (w,) = setup(workers=1)
    learn(d, "df:noop", 0.01)
    submit(s, clock, flight("a"), flight("b"), flight("c"))
    d.assign(s, clock.now)
    running, never_started = d.died(w)
    assert running.id == "a" and [f.id for f in never_started] == ["b", "c"]
    assert all(f.worker is None for f in (running, *never_started)) and 0 not in d.workers
    for f in never_started:
        s.requeue(f)
    assert [f.state for f in never_started] == [QUEUED, QUEUED]


def test_a_worker_that_said_it_retires_is_blamed_for_nothing(clock):
    d, s, (w,) = setup(workers=1)
    learn(d, "df:noop", 0.01)
    submit(s, clock, flight("a"), flight("b"))
    d.assign(s, clock.now)
    d.answered(w, w.held[0].no, 0.01)
    w.retired = True
    running, never_started = d.died(w)
    assert running is None and [f.id for f in never_started] == ["b"]


def test_retire_picks_the_least_busy_and_they_take_no_more(clock):
    d, s, (a, b, c) = setup(workers=3)
    learn(d, "df:noop", 0.01)
    submit(s, clock, *(flight(f"p{i}") for i in range(2)))
    d.assign(s, clock.now)
    busy = {f.worker for f in s.inflight.values()}
    (chosen,) = d.retire("df", 1)
    assert chosen not in busy and chosen.retiring and not chosen.ready
    assert len(d.members("df")) == 2


# ---------------------------------------------------------------- the invariants, randomly

def answer_a_busy_worker(d: Dispatcher, rng: random.Random, clock, keys: dict[str, float]):
    """A random busy worker answers the oldest packet it holds after about its key's run time
    (`keys`: ms; 1 ms for others): (that packet, what the dispatcher says was answered), or None
    when no worker holds any. (tests/native_trace.py runs the same step.)"""
    busy = [v for v in d.workers.values() if v.held]
    if not busy:
        return None
    view = rng.choice(busy)
    f = view.held[0]
    ms = keys.get(f.packet.key, 1.0) * rng.uniform(0.5, 1.5)
    clock.advance(ms / 1000)
    return f, d.answered(view, f.no, ms)


def test_random_event_sequences_keep_every_invariant():
    """3 000 random events (submits of fast, slow and new keys at random priorities,
    assignments, in-order answers, crashes, retirements, new workers): every packet held by
    a worker is DISPATCHED to it; no worker holds more than its window, nor (beyond the
    packet it runs) more than the prefetch of estimated work; every packet ends exactly
    once; a dead worker's blame falls on the packet it ran first."""
    from pfnode.core.clock import FakeClock

    rng = random.Random(11)
    clock = FakeClock()
    d = Dispatcher(WINDOWS, prefetch_ms=1.0)
    s = Scheduler(aging_ms=20, max_queued=400)
    keys = {"df:noop": 0.004, "df:small": 0.2, "df:slow": 40.0}
    slots = iter(range(10_000))
    for _ in range(3):
        d.add(next(slots), "df")
    ended: dict[str, int] = {}
    submitted = 0

    def end(f: Flight, ok: bool) -> None:
        ended[f.id] = ended.get(f.id, 0) + 1
        s.complete(f, clock.now, ok=ok, data_json=b"1" if ok else None, code=None if ok else "PF502")

    for step in range(3000):
        op = rng.random()
        if op < 0.35:
            key = rng.choice([*keys, f"df:new{step % 7}"])
            f = flight(f"p{step}", key, priority=rng.randint(1, 10))
            if s.admit(f, clock.now) is None:
                submitted += 1
        elif op < 0.6:
            for view, batch in d.assign(s, clock.now):
                assert all(f.state is DISPATCHED and f.worker is view for f in batch)
                assert len(view.held) <= WINDOWS["df"]
                if len(view.held) > 1:
                    assert view.queued_ms <= d.prefetch_ms + 1e-9, view
        elif op < 0.85:
            answer = answer_a_busy_worker(d, rng, clock, keys)
            if answer is not None:
                f, got = answer
                assert got is f
                if rng.random() < 0.1:
                    s.forget(f)  # skipped: its submitter left
                    ended[f.id] = ended.get(f.id, 0) + 1
                else:
                    end(f, ok=rng.random() < 0.9)
        elif op < 0.9 and d.workers:
            view = rng.choice(list(d.workers.values()))
            oldest = view.held[0] if view.held else None
            running, never_started = d.died(view)
            assert running is oldest
            if running is not None:
                end(running, ok=False)
            for f in never_started:
                assert f.state is DISPATCHED
                s.requeue(f)
            d.add(next(slots), "df")  # the supervisor replaces it
        elif op < 0.93 and len(d.members("df")) > 1:
            for view in d.retire("df", 1):
                for f in list(view.held):
                    assert d.answered(view, f.no, 0.01) is f
                    end(f, ok=True)
                d.died(view)
            d.add(next(slots), "df")
        else:
            clock.advance(rng.uniform(0, 0.01))
        d.check()
        held = [f for f in d.held()]
        assert len(held) == s.dispatched == len({id(f) for f in held})
    # drain: everything still queued or held ends exactly once
    for _ in range(10_000):
        for view, batch in d.assign(s, clock.now):
            pass
        busy = [v for v in d.workers.values() if v.held]
        if not busy and not s.queued:
            break
        for view in busy:
            f = view.held[0]
            assert d.answered(view, f.no, 0.01) is f
            end(f, ok=True)
    assert not s.inflight and all(n == 1 for n in ended.values()), {k: n for k, n in ended.items() if n != 1}
    assert len(ended) == submitted
