"""The scheduler's rules, with a fake clock: pfnode/core/scheduler.py.

No asyncio, no processes: events in, decisions out.
"""
from __future__ import annotations

import pytest

from pfnode.core.clock import FakeClock

from pfnode.errors import ErrorCode
from pfnode.core.scheduler import (RESULT_OVERHEAD_BYTES, BLOCKED, DISPATCHED, DONE, FORWARDED, QUEUED, Flight, LaneQueue,
                                   ResultStore, Scheduler, StoredResult)


def entry(pid: str, priority: int = 5, lane: str = "df", deadline: float = 10_000.0,
          deps: tuple[str, ...] = (), scope=None) -> Flight:
    return Flight(None, packet_id=pid, scope=scope, lane=lane, priority=priority, deadline=deadline,
                  dependencies=deps)


def check_counts(s: Scheduler) -> None:
    """The scheduler's counters agree with the states of its in-flight entries."""
    states = [e.state for e in s.inflight.values()]
    assert s.queued == states.count(QUEUED) == sum(len(q) for q in s.lanes.values())
    for name, queue in s.lanes.items():  # each level's count, which pop trusts to skip empty levels
        for priority in range(1, 11):
            assert queue._counts[priority] == sum(1 for e in s.inflight.values() if e.state is QUEUED
                                                  and e.lane == name and e.priority == priority), (name, priority)
    assert s.blocked == states.count(BLOCKED)
    assert s.dispatched == states.count(DISPATCHED)


def drain(s: Scheduler, lane: str, now: float) -> list[str]:
    out = []
    while (e := s.dispatch(lane, now)) is not None:
        out.append(e.id)
        check_counts(s)
    return out


# ---------------------------------------------------------------- ordering

def test_higher_priority_first_fifo_within_priority(clock):
    s = Scheduler(aging_ms=0)
    for pid, prio in [("a5", 5), ("b9", 9), ("c5", 5), ("d1", 1), ("e9", 9), ("f10", 10)]:
        assert s.admit(entry(pid, prio), clock.now) is None
    assert drain(s, "df", clock.now) == ["f10", "b9", "e9", "a5", "c5", "d1"]


def test_lanes_are_separate_queues(clock):
    s = Scheduler(aging_ms=0)
    s.admit(entry("cf1", 1, lane="cf"), clock.now)
    s.admit(entry("df9", 9, lane="df"), clock.now)
    s.admit(entry("ed5", 5, lane="ed"), clock.now)
    assert drain(s, "cf", clock.now) == ["cf1"]
    assert drain(s, "ed", clock.now) == ["ed5"]
    assert drain(s, "df", clock.now) == ["df9"]
    assert s.dispatch("rm", clock.now) is None


def test_unknown_lane_is_a_programming_error(clock):
    with pytest.raises(ValueError):
        Scheduler().admit(entry("x", lane="gpu"), clock.now)


def test_requeue_puts_a_dispatched_packet_back_in_its_place(clock):
    s = Scheduler(aging_ms=0)
    for pid in ("a", "b", "c"):
        s.admit(entry(pid), clock.now)
    first = s.dispatch("df", clock.now)
    second = s.dispatch("df", clock.now)
    assert (first.id, second.id) == ("a", "b")
    s.admit(entry("d"), clock.now)
    s.requeue(second)
    s.requeue(first)
    assert first.state is QUEUED
    assert drain(s, "df", clock.now) == ["a", "b", "c", "d"]


# ---------------------------------------------------------------- aging

def test_aging_raises_a_waiting_packet_one_level_per_interval():
    q = LaneQueue(aging_s=1.0)
    e = entry("low", 3)
    e.arrived = 0.0
    assert q.effective_priority(e, 0.5) == 3
    assert q.effective_priority(e, 2.0) == 5
    assert q.effective_priority(e, 100.0) == 10  # bounded at the top priority


def test_no_starvation_under_a_steady_stream_of_high_priority(clock):
    """A priority-1 packet submitted into a steady stream of priority-10 packets is
    dispatched within (10 - 1) aging intervals plus the packets that were ahead of it."""
    s = Scheduler(aging_ms=100)
    s.admit(entry("old-high", 10), clock.now)
    s.admit(entry("low", 1), clock.now)
    dispatched_low_at = None
    for i in range(200):  # every 10 ms: one new priority-10 packet arrives, one is dispatched
        clock.advance(0.010)
        s.admit(entry(f"high-{i}", 10), clock.now)
        got = s.dispatch("df", clock.now)
        if got.id == "low":
            dispatched_low_at = i
            break
    assert dispatched_low_at is not None, "priority-1 packet starved"
    # 9 levels x 100 ms = 900 ms = 90 rounds; it must not take much longer than that
    assert 85 <= dispatched_low_at <= 95


def test_without_aging_the_low_priority_packet_waits(clock):
    s = Scheduler(aging_ms=0)
    s.admit(entry("low", 1), clock.now)
    for i in range(50):
        clock.advance(1.0)
        s.admit(entry(f"high-{i}", 10), clock.now)
        assert s.dispatch("df", clock.now).id != "low"


# ---------------------------------------------------------------- deadlines

def test_tick_returns_expired_packets_in_every_state(clock):
    s = Scheduler()
    s.admit(entry("queued", deadline=clock.now + 1), clock.now)
    s.admit(entry("blocked", deadline=clock.now + 2, deps=("nobody",)), clock.now)
    s.admit(entry("running", deadline=clock.now + 3, lane="cf"), clock.now)
    s.admit(entry("later", deadline=clock.now + 100), clock.now)
    assert s.dispatch("cf", clock.now).id == "running"
    assert s.tick(clock.now + 0.5) == []
    expired = s.tick(clock.advance(3.0))
    assert [(e.id, e.state) for e in expired] == [("queued", QUEUED), ("blocked", BLOCKED),
                                                   ("running", DISPATCHED)]
    assert s.next_alarm() == pytest.approx(clock.now - 3.0 + 100)


def test_answered_packets_leave_no_deadline(clock):
    s = Scheduler()
    e = entry("done", deadline=clock.now + 1)
    s.admit(e, clock.now)
    s.dispatch("df", clock.now)
    s.complete(e, clock.now, ok=True, data_json=b"1")
    assert s.tick(clock.advance(5)) == []
    assert s.next_alarm() is None


def test_deadline_heap_is_compacted_as_packets_complete(clock):
    s = Scheduler()
    for i in range(5000):
        e = entry(f"p{i}", deadline=clock.now + 60)
        s.admit(e, clock.now)
        s.dispatch("df", clock.now)
        s.complete(e, clock.now, ok=True, data_json=b"0")
    assert s.alarm_entries <= 2100  # answered packets do not pile up until their deadline


def test_expired_queued_packet_is_skipped_by_dispatch(clock):
    s = Scheduler()
    late = entry("late", deadline=clock.now + 1)
    s.admit(late, clock.now)
    s.admit(entry("fine", deadline=clock.now + 100), clock.now)
    (expired,) = s.tick(clock.advance(2))
    s.complete(expired, clock.now, ok=False, code="PF408")
    assert drain(s, "df", clock.now) == ["fine"]
    assert s.queued == 0


# ---------------------------------------------------------------- dependencies

def test_dependent_waits_until_its_dependency_succeeds(clock):
    s = Scheduler()
    a = entry("a")
    b = entry("b", deps=("a",))
    s.admit(a, clock.now)
    s.admit(b, clock.now)
    assert b.state is BLOCKED and s.blocked == 1
    assert drain(s, "df", clock.now) == ["a"]
    assert s.complete(a, clock.now, ok=True, data_json=b'"A"') == []
    assert b.state is QUEUED and s.blocked == 0
    assert s.dependency_results(b, clock.now) == {"a": b'"A"'}
    assert drain(s, "df", clock.now) == ["b"]


def test_dependency_already_completed_runs_at_once(clock):
    s = Scheduler()
    a = entry("a")
    s.admit(a, clock.now)
    s.dispatch("df", clock.now)
    s.complete(a, clock.now, ok=True, data_json=b"1")
    b = entry("b", deps=("a",))
    assert s.admit(b, clock.now) is None
    assert b.state is QUEUED


def test_unknown_dependency_waits_for_its_arrival(clock):
    s = Scheduler()
    b = entry("b", deps=("a",))
    s.admit(b, clock.now)
    assert b.state is BLOCKED
    a = entry("a")
    s.admit(a, clock.now)
    s.dispatch("df", clock.now)
    s.complete(a, clock.now, ok=True, data_json=b"1")
    assert b.state is QUEUED


def test_a_forwarded_packet_serves_dependencies_like_one_from_here(clock):
    """A packet the hub routed to a reactor is in the same table (FORWARDED, no lane); its
    result serves the packets that depend on it, and its failure fails them."""
    s = Scheduler()
    remote = entry("remote", lane=None)
    assert s.admit_forwarded(remote, clock.now) is None
    assert remote.state is FORWARDED and s.forwarded == 1 and s.queued == 0
    b = entry("b", deps=("remote",))
    s.admit(b, clock.now)
    assert b.state is BLOCKED
    assert s.complete(remote, clock.now, ok=True, data_json=b'"R"') == []
    assert b.state is QUEUED and s.dependency_results(b, clock.now) == {"remote": b'"R"'}
    check_counts(s)
    gone = entry("gone", lane=None)
    s.admit_forwarded(gone, clock.now)
    assert s.admit_forwarded(entry("gone", lane=None), clock.now).code is ErrorCode.DUPLICATE_ID
    c, d = entry("c", deps=("gone",)), entry("d", deps=("c",))
    s.admit(c, clock.now)
    s.admit(d, clock.now)
    failures = s.complete(gone, clock.now, ok=False, code="PF504")
    assert [(f.flight.id, f.code) for f in failures] == [("c", ErrorCode.DEPENDENCY_FAILED),
                                                          ("d", ErrorCode.DEPENDENCY_FAILED)]
    assert "PF504" in failures[0].message
    assert c.state is DONE and d.state is DONE
    refusal = s.admit(entry("e", deps=("gone",)), clock.now)
    assert refusal.code is ErrorCode.DEPENDENCY_FAILED
    check_counts(s)


def test_ids_and_dependencies_are_scoped_to_their_submitter(clock):
    s = Scheduler()
    mine, theirs = entry("x", scope="alice"), entry("x", scope="bob")
    assert s.admit(mine, clock.now) is None and s.admit(theirs, clock.now) is None  # no PF409
    waiting = entry("y", deps=("x",), scope="bob")
    s.admit(waiting, clock.now)
    s.dispatch("df", clock.now)
    s.complete(mine, clock.now, ok=True, data_json=b'"alice"')
    assert waiting.state is BLOCKED  # alice's x is not bob's x
    s.dispatch("df", clock.now)
    s.complete(theirs, clock.now, ok=True, data_json=b'"bob"')
    assert waiting.state is QUEUED and s.dependency_results(waiting, clock.now) == {"x": b'"bob"'}


def test_alarms_before_the_deadline_come_back_once_then_fall_back_to_it(clock):
    s = Scheduler()
    f = entry("f", deadline=clock.now + 10)
    s.admit(f, clock.now)
    s.set_alarm(f, clock.now + 1)
    s.set_alarm(f, clock.now + 2)  # moved: the first alarm is stale
    assert s.next_alarm() == pytest.approx(clock.now + 2)
    assert s.tick(clock.advance(1.5)) == []
    assert s.tick(clock.advance(1.0)) == [f]
    assert f.alarm == f.deadline and s.next_alarm() == pytest.approx(f.deadline)
    assert s.tick(clock.advance(1.0)) == []
    s.set_alarm(f, clock.now + 100)  # never later than the deadline
    assert f.alarm == f.deadline
    assert s.tick(clock.advance(10)) == [f] and f.alarm is None
    # an early alarm and the deadline passing in one tick: returned once
    g = entry("g", deadline=clock.now + 5)
    s.admit(g, clock.now)
    s.set_alarm(g, clock.now + 1)
    assert s.tick(clock.advance(6)) == [g]


def test_failed_dependency_fails_dependents_transitively(clock):
    s = Scheduler()
    a, b, c = entry("a"), entry("b", deps=("a",)), entry("c", deps=("b",))
    unrelated = entry("u", deps=("x",))
    for e in (a, b, c, unrelated):
        s.admit(e, clock.now)
    s.dispatch("df", clock.now)
    failures = s.complete(a, clock.now, ok=False, code="PF500")
    assert sorted(f.flight.id for f in failures) == ["b", "c"]
    assert all(f.code is ErrorCode.DEPENDENCY_FAILED for f in failures)
    assert "'a'" in next(f.message for f in failures if f.flight.id == "b")
    assert b.state is DONE and c.state is DONE
    assert unrelated.state is BLOCKED
    assert s.blocked == 1


def test_dependency_that_already_failed_refuses_at_submit(clock):
    s = Scheduler()
    a = entry("a")
    s.admit(a, clock.now)
    s.complete(a, clock.now, ok=False, code="PF408")
    refusal = s.admit(entry("b", deps=("a",)), clock.now)
    assert refusal.code is ErrorCode.DEPENDENCY_FAILED and "PF408" in refusal.message


def test_self_dependency_is_refused(clock):
    refusal = Scheduler().admit(entry("a", deps=("a",)), clock.now)
    assert refusal.code is ErrorCode.DEPENDENCY_FAILED and "itself" in refusal.message


def test_cycle_is_refused(clock):
    s = Scheduler()
    assert s.admit(entry("a", deps=("c",)), clock.now) is None
    assert s.admit(entry("b", deps=("a",)), clock.now) is None
    refusal = s.admit(entry("c", deps=("b",)), clock.now)  # c -> b -> a -> c
    assert refusal is not None and "cycle" in refusal.message
    assert "c" not in s.inflight


def test_diamond_is_not_a_cycle(clock):
    s = Scheduler()
    for e in (entry("a"), entry("b", deps=("a",)), entry("c", deps=("a",)), entry("d", deps=("b", "c"))):
        assert s.admit(e, clock.now) is None


def test_expired_blocked_packet_fails_its_own_dependents(clock):
    s = Scheduler()
    b = entry("b", deps=("never",), deadline=clock.now + 1)
    c = entry("c", deps=("b",), deadline=clock.now + 50)
    s.admit(b, clock.now)
    s.admit(c, clock.now)
    (expired,) = s.tick(clock.advance(2))
    failures = s.complete(expired, clock.now, ok=False, code="PF408")
    assert [f.flight.id for f in failures] == ["c"]


def settle_failures(s: Scheduler, failures, now: float) -> list[str]:
    """Answer packets `refuse` returned as the node does (its one answer path: `complete`),
    and the dependents that fail with them in turn; every id that failed, in order."""
    failed = []
    for failure in failures:
        assert failure.code is ErrorCode.DEPENDENCY_FAILED
        if failure.flight.state is DONE:
            continue  # failed already, as a dependent of an earlier one
        failed.append(failure.flight.id)
        more = s.complete(failure.flight, now, ok=False, code=failure.code.value)
        failed += [f.flight.id for f in more]
    return failed


def test_a_cycle_closing_fails_every_packet_of_it_and_their_dependents_at_once(clock):
    """a waits for b (unknown); c for a; b arrives waiting for a: b is refused (PF006, the
    cycle), and its refusal fails a, which fails c, long before their deadlines."""
    s = Scheduler()
    a, c = entry("a", deps=("b",)), entry("c", deps=("a",))
    unrelated = entry("u", deps=("x",))
    for e in (a, c, unrelated):
        assert s.admit(e, clock.now) is None
    refusal = s.admit(entry("b", deps=("a",)), clock.now)
    assert refusal.code is ErrorCode.DEPENDENCY_FAILED and "cycle" in refusal.message
    failures = s.refuse(None, "b", refusal.code.value, clock.now, refusal.message)
    assert [f.flight.id for f in failures] == ["a"] and a.state is BLOCKED  # the caller answers it
    assert "'b' was refused (PF006: dependency cycle" in failures[0].message
    assert settle_failures(s, failures, clock.now) == ["a", "c"]
    assert a.state is DONE and c.state is DONE and unrelated.state is BLOCKED
    check_counts(s)
    assert s.blocked == 1
    # a longer cycle: x -> y -> z, then z -> x
    s.admit(entry("x", deps=("y",)), clock.now)
    s.admit(entry("y", deps=("z",)), clock.now)
    refusal = s.admit(entry("z", deps=("x",)), clock.now)
    assert "cycle" in refusal.message
    failed = settle_failures(s, s.refuse(None, "z", "PF006", clock.now, refusal.message), clock.now)
    assert failed == ["y", "x", "u"]  # u waited for x
    assert s.blocked == 0 and not s.inflight
    check_counts(s)


def test_a_dependency_on_a_refused_id_is_refused_at_admission_for_a_bounded_time(clock):
    s = Scheduler(result_store_age_ms=60_000)
    assert s.refuse("alice", "bad", "PF002", clock.now) == []  # nothing waited for it
    refusal = s.admit(entry("d", deps=("ok", "bad"), scope="alice"), clock.now)
    assert refusal.code is ErrorCode.DEPENDENCY_FAILED and "'bad' was refused (PF002)" in refusal.message
    assert "d" not in {k[1] for k in s.inflight}
    other = entry("d", deps=("bad",), scope="bob")  # bob's "bad" is another packet
    assert s.admit(other, clock.now) is None and other.state is BLOCKED
    # an id admitted after its refusal is not refused any more
    s.refuse("alice", "again", "PF004", clock.now)
    fixed = entry("again", scope="alice")
    assert s.admit(fixed, clock.now) is None
    s.dispatch("df", clock.now)
    s.complete(fixed, clock.now, ok=True, data_json=b"1")
    s.results._results.clear()  # its result forgotten: the id is unknown again, not refused
    waits = entry("w", deps=("again",), scope="alice")
    assert s.admit(waits, clock.now) is None and waits.state is BLOCKED
    # remembered as long as results are, then unknown again: waited for
    clock.advance(61)
    later = entry("later", deps=("bad",), scope="alice")
    assert s.admit(later, clock.now) is None and later.state is BLOCKED
    check_counts(s)


def test_an_id_refused_while_packets_wait_for_it_fails_them_at_once_but_not_a_duplicate(clock):
    s = Scheduler()
    d = entry("d", deps=("x",))
    e = entry("e", deps=("d",))
    s.admit(d, clock.now)
    s.admit(e, clock.now)
    failures = s.refuse(None, "x", "PF004", clock.now, "node overloaded")
    assert [(f.flight.id, f.code) for f in failures] == [("d", ErrorCode.DEPENDENCY_FAILED)]
    assert "'x' was refused (PF004: node overloaded)" in failures[0].message
    assert settle_failures(s, failures, clock.now) == ["d", "e"]
    assert s.refuse(None, "x", "PF004", clock.now) == []  # nobody waits any more
    # a duplicate of a packet in flight (PF409) does not fail what waits for the first one
    first = entry("dup")
    waiter = entry("waiter", deps=("dup",))
    s.admit(first, clock.now)
    s.admit(waiter, clock.now)
    assert s.admit(entry("dup"), clock.now).code is ErrorCode.DUPLICATE_ID
    assert s.refuse(None, "dup", "PF409", clock.now) == []
    assert waiter.state is BLOCKED
    s.dispatch("df", clock.now)
    s.complete(first, clock.now, ok=True, data_json=b"1")
    assert waiter.state is QUEUED
    check_counts(s)


def test_refused_ids_are_bounded_in_count_node_wide_per_scope_and_in_age():
    from pfnode.core.dependencies import RefusedIds

    refused = RefusedIds(max_entries=4, max_per_scope=2, max_age_s=10.0)
    for i, pid in enumerate(("a1", "a2", "a3")):
        refused.add("A", pid, "PF002", float(i))
    assert refused.get("A", "a1", 3.0) is None  # A's own oldest went, at A's bound
    assert [refused.get("A", p, 3.0) for p in ("a2", "a3")] == ["PF002", "PF002"]
    for pid in ("b1", "c1", "d1"):
        refused.add(pid[0].upper(), pid, "PF004", 3.0)
    assert len(refused) == 4 and refused.get("A", "a2", 3.0) is None  # the oldest node-wide went
    assert refused.get("A", "a1" * 200, 3.0) is None
    refused.add("A", "x" * 257, "PF002", 3.0)  # no dependency can name it: not kept
    assert refused.get("A", "x" * 257, 3.0) is None and len(refused) == 4
    assert refused.get("A", "a3", 12.5) is None and refused.get("B", "b1", 12.5) == "PF004"  # a3: over 10 s old
    refused.forget("B")
    assert refused.get("B", "b1", 12.0) is None and len(refused) == 2
    refused.discard("C", "c1")
    assert refused.get("C", "c1", 12.0) is None
    assert refused.get("D", "d1", 13.01) is None and len(refused) == 0


def test_cancel_does_not_record_a_result(clock):
    s = Scheduler()
    a = entry("a")
    b = entry("b", deps=("a",))
    s.admit(a, clock.now)
    s.admit(b, clock.now)
    s.forget(a)
    assert s.results.get((None, "a"), clock.now) is None
    assert b.state is BLOCKED  # waits for a new "a" or its deadline


# ---------------------------------------------------------------- admission and ids

def test_duplicate_inflight_id_is_refused_and_reusable_after(clock):
    s = Scheduler()
    a = entry("a")
    assert s.admit(a, clock.now) is None
    refusal = s.admit(entry("a"), clock.now)
    assert refusal.code is ErrorCode.DUPLICATE_ID
    s.dispatch("df", clock.now)
    s.complete(a, clock.now, ok=True, data_json=b"1")
    assert s.admit(entry("a"), clock.now) is None


def test_admission_bound_refuses_new_packets_and_keeps_queued_ones(clock):
    s = Scheduler(max_queued=3)
    for pid in ("a", "b", "c"):
        assert s.admit(entry(pid), clock.now) is None
    refusal = s.admit(entry("d"), clock.now)
    assert refusal.code is ErrorCode.OVERLOADED
    assert s.admit(entry("e", deps=("a",)), clock.now).code is ErrorCode.OVERLOADED
    assert drain(s, "df", clock.now) == ["a", "b", "c"]
    assert s.admit(entry("d"), clock.now) is None  # room again once they left the queue


# ---------------------------------------------------------------- result store

def test_result_store_bounds_entries_age_and_bytes():
    store = ResultStore(max_entries=3, max_age_s=10, max_bytes=1000)
    for i in range(5):
        store.put(f"p{i}", StoredResult(True, b"1", None, float(i)))
    assert len(store) == 3 and store.get("p0", 4.0) is None and store.get("p4", 4.0) is not None
    assert store.get("p2", 12.5) is None  # older than 10 s
    assert store.get("p4", 12.5) is not None
    store.put("big", StoredResult(True, b"x" * 400, None, 13.0))
    store.put("big2", StoredResult(True, b"y" * 400, None, 13.0))
    assert store.get("big", 13.0) is None and store.bytes <= 1000
    store.put("huge", StoredResult(True, b"z" * 2000, None, 13.0))
    kept = store.get("huge", 13.0)
    assert kept.ok and kept.data_json is None  # the outcome is kept, the oversized data is not


def test_the_result_store_counts_what_it_really_holds():
    """Not only the results' JSON: their ids and the records around them (an empty result
    still costs the node memory)."""
    store = ResultStore(max_entries=100, max_age_s=10, max_bytes=10_000)
    store.put(("alice", "x" * 500), StoredResult(True, b"1", None, 0.0))
    assert store.bytes == 1 + 500 + RESULT_OVERHEAD_BYTES
    for i in range(100):
        store.put(("alice", f"empty-{i}"), StoredResult(True, b"", None, 0.0))
    assert store.bytes <= 10_000 and len(store) < 100  # empty results are not free


def test_random_event_sequences_keep_the_counters_and_states_consistent():
    """2 000 random events (submits with dependencies, dispatches, completions, cancels,
    requeues, deadline ticks): the counters always match the entries' states, every
    dispatched packet was ready, and every dependent ran only after its dependencies."""
    import random

    rng = random.Random(7)
    clock = FakeClock()
    s = Scheduler(aging_ms=50, max_queued=60)
    dispatched: list[Flight] = []
    succeeded: set[str] = set()
    for step in range(2000):
        op = rng.random()
        if op < 0.35:
            deps = tuple(f"p{rng.randrange(max(1, step))}" for _ in range(rng.randrange(3)))
            e = entry(f"p{step}", rng.randint(1, 10), lane=rng.choice(["cf", "df"]),
                      deadline=clock.now + rng.uniform(0.05, 2.0), deps=deps)
            e.timeout_ms = rng.choice((0, 100, 2000))  # the time table's queues, and its heap for the rest
            s.admit(e, clock.now)
        elif op < 0.6:
            got = s.dispatch(rng.choice(["cf", "df"]), clock.now)
            if got is not None:
                assert got.state is DISPATCHED
                assert all(dep in succeeded for dep in got.dependencies), "ran before its dependencies"
                dispatched.append(got)
        elif op < 0.8 and dispatched:
            done = dispatched.pop(rng.randrange(len(dispatched)))
            if done.state is DISPATCHED:
                ok = rng.random() < 0.8
                s.complete(done, clock.now, ok=ok, data_json=b"1" if ok else None,
                           code=None if ok else "PF500")
                if ok:
                    succeeded.add(done.id)
        elif op < 0.85 and dispatched:
            back = dispatched.pop(rng.randrange(len(dispatched)))
            s.requeue(back)
        elif op < 0.88 and s.inflight:
            s.forget(rng.choice(list(s.inflight.values())))
        elif op < 0.92 and s.inflight:  # an earlier alarm (the hub's probe window)
            s.set_alarm(rng.choice(list(s.inflight.values())), clock.now + rng.uniform(0.0, 0.5))
        else:
            now = clock.advance(rng.uniform(0.0, 0.2))
            next_alarm = s.next_alarm()
            due = s.tick(now)
            assert len(set(map(id, due))) == len(due), "a packet came back twice in one tick"
            assert all(f.state is not DONE for f in due)
            if due:
                assert next_alarm is not None and next_alarm <= now
            for late in due:
                if late.deadline <= now:
                    s.complete(late, clock.now, ok=False, code="PF408")
            # every deadline that has passed came back: nothing in flight is past it
            assert not [f for f in s.inflight.values() if f.deadline <= now], "a passed deadline was missed"
        check_counts(s)
        assert s.queued + s.blocked <= 60


def test_within_a_priority_submitters_take_turns(clock):
    s = Scheduler(aging_ms=0)
    for i in range(100):
        s.admit(entry(f"a{i}", scope="flooder"), clock.now)
    for i in range(3):
        s.admit(entry(f"b{i}", scope="other"), clock.now)
    s.admit(entry("c0", 9, scope="third"), clock.now)  # a higher priority still goes first
    first = drain(s, "df", clock.now)[:8]
    assert first == ["c0", "a0", "b0", "a1", "b1", "a2", "b2", "a3"], first


def test_a_requeued_packet_goes_back_first_in_its_submitters_line_and_turn(clock):
    s = Scheduler(aging_ms=0)
    for pid, who in (("a0", "A"), ("b0", "B"), ("a1", "A"), ("b1", "B")):
        s.admit(entry(pid, scope=who), clock.now)
    got = s.dispatch("df", clock.now)
    assert got.id == "a0"
    s.requeue(got)  # its worker died before starting it
    assert drain(s, "df", clock.now) == ["a0", "b0", "a1", "b1"]
    s.admit(entry("a2", scope="A"), clock.now)
    s.admit(entry("b2", scope="B"), clock.now)
    got = s.dispatch("df", clock.now)
    s.undispatch(got)  # no worker had room: still first
    assert s.dispatch("df", clock.now) is got


def test_a_busy_node_refuses_the_tenant_over_its_fair_share_and_admits_a_newcomer(clock):
    s = Scheduler(max_queued=100)
    for i in range(60):  # alone, a tenant may fill the node up to the bound
        assert s.admit(entry(f"g{i}", scope="greedy"), clock.now) is None
    assert s.admit(entry("n0", scope="newcomer"), clock.now) is None
    refusal = s.admit(entry("g60", scope="greedy"), clock.now)  # 60 >= 100 // 2 tenants
    assert refusal.code is ErrorCode.OVERLOADED and "fair share of 50" in refusal.message
    for i in range(1, 40):
        assert s.admit(entry(f"n{i}", scope="newcomer"), clock.now) is None, i
    assert s.admit(entry("late", scope="third"), clock.now).code is ErrorCode.OVERLOADED  # 100 queued: full


def test_packets_waiting_on_dependencies_have_their_own_bounds(clock):
    s = Scheduler(max_queued=1000, max_blocked=5, max_blocked_per_client=3)
    for i in range(3):
        assert s.admit(entry(f"w{i}", deps=("never",), scope="waiter"), clock.now) is None
    refusal = s.admit(entry("w3", deps=("never",), scope="waiter"), clock.now)
    assert refusal.code is ErrorCode.OVERLOADED and "3 of your packets" in refusal.message
    assert s.admit(entry("ready", scope="waiter"), clock.now) is None  # its ready packets still go
    assert s.admit(entry("x0", deps=("never",), scope="other"), clock.now) is None
    kept = s.admit(entry("x1", deps=("never",), scope="other"), clock.now)  # the last one is a newcomer's
    assert kept.code is ErrorCode.OVERLOADED and "kept for clients holding none" in kept.message
    assert s.admit(entry("x2", deps=("never",), scope="third"), clock.now) is None  # the newcomer gets it
    assert s.admit(entry("x3", deps=("never",), scope="fourth"), clock.now).code is ErrorCode.OVERLOADED
    assert s.admit(entry("fine", scope="fourth"), clock.now) is None
    assert s.load_of("waiter") == (4, 3, 0)


def test_the_data_held_for_packets_in_flight_is_bounded_per_tenant_and_node(clock):
    s = Scheduler(max_queued_bytes=1000, max_queued_bytes_per_client=600)

    def big(pid, size, who):
        f = entry(pid, scope=who)
        f.size = size
        return f

    assert s.admit(big("a", 500, "A"), clock.now) is None
    assert "your packets" in s.admit(big("b", 200, "A"), clock.now).message
    assert s.admit(big("c", 400, "B"), clock.now) is None
    assert "node overloaded" in s.admit(big("d", 200, "C"), clock.now).message
    s.dispatch("df", clock.now)
    s.complete(s.inflight[("A", "a")], clock.now, ok=True, data_json=b"1")
    assert s.bytes == 400 and s.admit(big("d", 200, "C"), clock.now) is None
