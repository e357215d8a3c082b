"""The standard elements that hold node state (ed:*, rm:*) or change the node (mc:spawn,
mc:migrate, mc:tune), against real nodes over real sockets: each element's rules, its
bounds, expiry, release when its holder disconnects, and roles with tokens."""
from __future__ import annotations

import asyncio
import os
import time
import urllib.request

from pfnode.client import Reactor
from tests.e2e_util import Raw, new_id, packet, run, wait_until
from tests.test_elements import call, err, ok, step


# ---------------------------------------------------------------------------- the core's mechanisms, pure

def test_the_scheduler_holds_a_packet_for_a_marker_that_no_packet_id_equals(clock):
    from pfnode.elements.hosted.resources import _Hold
    from pfnode.core.scheduler import BLOCKED, QUEUED, Flight, Scheduler

    s = Scheduler(aging_ms=0)
    ended = []
    s.on_retire = ended.append
    marker = _Hold("lock 'db'")
    held = Flight(None, packet_id="p", lane="df", deadline=10.0, dependencies=("lock 'db'",))
    assert s.admit(held, clock.now, marker) is None
    assert held.state is BLOCKED and s.blocked == 1 and held.waiting_on == {"lock 'db'", marker}
    # a packet whose id reads like the marker releases the dependency, not the hold
    other = Flight(None, packet_id="lock 'db'", lane="df", deadline=10.0)
    s.admit(other, clock.now)
    s.complete(other, clock.now, ok=True, data_json=b"1")
    assert held.state is BLOCKED and held.waiting_on == {marker}
    assert s.unhold(held, marker) and held.state is QUEUED and s.blocked == 0
    assert s.dispatch("df", clock.now) is held
    assert ended == []  # only packets with `hold` set are reported
    held.hold = "db"
    s.complete(held, clock.now, ok=True, data_json=b"2")
    assert ended == [held]


def test_the_hub_asks_the_preferred_reactor_first():
    from types import SimpleNamespace

    from pfnode.core.hub import LinkRoutes, rank_targets

    def route(peer, name=None, load=0):
        r = LinkRoutes(SimpleNamespace(peer=peer, closed=False,
                                       identity=SimpleNamespace(name=name) if name else None))
        r.profile.announce(["df:x"])
        r.held = {str(i): None for i in range(load)}
        return r

    a, b, c = route("1.1.1.1:1", load=0), route("2.2.2.2:2", name="gpu", load=5), route("3.3.3.3:3", load=1)
    assert rank_targets([a, b, c], "df:x", None, set()) == [a, c, b]
    assert rank_targets([a, b, c], "df:x", None, set(), prefer="gpu") == [b, a, c]
    assert rank_targets([a, b, c], "df:x", None, set(), prefer="3.3.3.3:3") == [c, a, b]
    assert rank_targets([a, b, c], "df:x", None, {b}, prefer="gpu") == [a, c]  # tried: not again


# ---------------------------------------------------------------------------- against real nodes

def elements(node) -> dict:
    return node.health()["elements"]


def buffer_files(node) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"pfnode-{node.proc.pid}-buf-"))


async def replies(raw: Raw, n: int, timeout_s: float = 20.0) -> dict[int, dict]:
    return {r["seq"]: r["payload"] for r in await raw.recv_n(n, timeout_s)}


# ---------------------------------------------------------------------------- ed

def test_ed_watch_gets_the_next_events_or_what_came_by_its_deadline(node):
    async def go():
        async with Raw(node.endpoint) as watcher, Raw(node.endpoint) as signaller:
            topic = new_id("topic")
            await watcher.submit(1, packet("watch", {"topic": topic, "events": 2}, group="ed", timeout_ms=5000))
            await asyncio.sleep(0.2)
            assert ok(await call(signaller, "ed", "signal", {"topic": topic, "data": {"n": 1}})) == {"delivered": 1}
            assert ok(await call(signaller, "ed", "signal", {"topic": topic, "data": [2]}, seq=2)) == {"delivered": 1}
            assert ok((await watcher.recv())["payload"]) == {"events": [{"n": 1}, [2]], "complete": True}
            # nobody watches any more, and events are not kept
            assert ok(await call(signaller, "ed", "signal", {"topic": topic, "data": 3}, seq=3)) == {"delivered": 0}
            # its deadline first: a success with what came, a little before the deadline (not PF408)
            started = time.monotonic()
            quiet = await call(watcher, "ed", "watch", {"topic": topic}, seq=4, timeout_ms=500)
            took = time.monotonic() - started
            assert ok(quiet) == {"events": [], "complete": False}
            assert 0.35 < took < 0.6, took
            assert err(await call(watcher, "ed", "watch", {"events": 1}, seq=5), "PF002").startswith("topic:")
            assert err(await call(watcher, "ed", "watch", {"topic": "t", "events": 0}, seq=6),
                       "PF002").startswith("events:")
            assert err(await call(watcher, "ed", "signal", {"topic": "t", "data": 1, "x": 2}, seq=7),
                       "PF002").startswith("x:")
    run(go())


def test_ed_react_runs_its_step_on_every_event_and_publishes_the_output(node):
    async def go():
        async with Raw(node.endpoint) as owner, Raw(node.endpoint) as other:
            topic, out = new_id("in"), new_id("out")
            sub = ok(await call(owner, "ed", "react", {"topic": topic, "step": step("double"), "emit": out}))
            assert sub["topic"] == topic and sub["expires_in_ms"] == 3_600_000
            await other.submit(1, packet("watch", {"topic": out, "events": 2}, group="ed", timeout_ms=5000))
            await asyncio.sleep(0.2)
            for seq, value in ((2, 3), (3, 5)):
                assert ok(await call(owner, "ed", "signal", {"topic": topic, "data": value}, seq=seq)) == \
                    {"delivered": 1}
            watched = ok((await other.recv())["payload"])  # reactions run at once: in the order they end
            assert sorted(watched["events"]) == [6, 10] and watched["complete"] is True
            shown = elements(node)["events"]["subscribed"][sub["subscription"]]
            assert shown["runs"] == 2 and shown["step"] == "df:double" and shown["emit"] == out
            # a step that fails is counted, not answered to anyone
            ok(await call(owner, "ed", "signal", {"topic": topic, "data": None}, seq=4))
            wait_until(lambda: elements(node)["events"]["subscribed"][sub["subscription"]]["failed"] == 1)
            assert "PF500" in elements(node)["events"]["subscribed"][sub["subscription"]]["last_error"]
            # only its submitter may cancel it
            message = err(await call(other, "ed", "react", {"cancel": sub["subscription"]}, seq=5), "PF002")
            assert message.startswith("cancel:")
            cancelled = ok(await call(owner, "ed", "react", {"cancel": sub["subscription"]}, seq=6))
            assert cancelled["cancelled"] == sub["subscription"] and cancelled["runs"] == 2
            assert ok(await call(owner, "ed", "signal", {"topic": topic, "data": 1}, seq=7)) == {"delivered": 0}
            assert err(await call(owner, "ed", "react", {"topic": topic, "step": {"group": "zz"}}, seq=8),
                       "PF002").startswith("step.group:")
    run(go())


def test_ed_react_ends_with_its_ttl_and_with_its_submitters_connection(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            brief = ok(await call(raw, "ed", "react", {"topic": new_id("t"), "step": step("inc"), "ttl_ms": 200}))
            kept = ok(await call(raw, "ed", "react", {"topic": new_id("t"), "step": step("inc")}, seq=2))
            subscribed = elements(node)["events"]["subscribed"]
            assert brief["subscription"] in subscribed and kept["subscription"] in subscribed
            wait_until(lambda: brief["subscription"] not in elements(node)["events"]["subscribed"], 5,
                       what="the ttl's expiry")
            assert kept["subscription"] in elements(node)["events"]["subscribed"]
        return kept["subscription"]
    kept = run(go())
    wait_until(lambda: kept not in elements(node)["events"]["subscribed"], 5, what="release on disconnect")


def test_ed_react_chains_stop_eight_deep(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            topic = new_id("loop")
            sub = ok(await call(raw, "ed", "react", {"topic": topic, "step": step("inc"), "emit": topic}))
            await raw.submit(2, packet("watch", {"topic": topic, "events": 20}, group="ed", timeout_ms=1500))
            await asyncio.sleep(0.2)
            await raw.submit(3, packet("signal", {"topic": topic, "data": 0}, group="ed"))
            got = await replies(raw, 2)
            assert ok(got[3]) == {"delivered": 2}
            # the signal (depth 0) and 8 emitted events; the reaction to the 8th does not run
            assert ok(got[2]) == {"events": list(range(9)), "complete": False}
            shown = elements(node)["events"]["subscribed"][sub["subscription"]]
            assert shown["runs"] == 8 and shown["dropped"] == 1
    run(go())


def test_ed_timer_runs_on_schedule_within_the_deadline(node):
    async def go():
        async with Raw(node.endpoint) as raw, Raw(node.endpoint) as other:
            started = time.monotonic()
            assert ok(await call(raw, "ed", "timer", {"after_ms": 200, "step": step("inc", 41)})) == 42
            assert time.monotonic() - started >= 0.2
            # count: a list; the input is the run's number unless the step has data
            started = time.monotonic()
            assert ok(await call(raw, "ed", "timer", {"after_ms": 0, "every_ms": 150, "count": 3,
                                                      "step": step("inc")}, seq=2)) == [1, 2, 3]
            assert time.monotonic() - started >= 0.3
            stamps = ok(await call(raw, "ed", "timer", {"after_ms": 0, "every_ms": 100, "count": 3,
                                                        "step": step("stamp", "x")}, seq=3))
            gaps = [(b["ns"] - a["ns"]) / 1e6 for a, b in zip(stamps, stamps[1:])]
            assert all(g >= 90 for g in gaps), gaps
            # emit: published as they come
            topic = new_id("ticks")
            await other.submit(1, packet("watch", {"topic": topic, "events": 2}, group="ed", timeout_ms=5000))
            await asyncio.sleep(0.2)
            assert ok(await call(raw, "ed", "timer", {"after_ms": 0, "every_ms": 50, "count": 2, "emit": topic,
                                                      "step": step("double")}, seq=4)) == [0, 2]
            assert ok((await other.recv())["payload"]) == {"events": [0, 2], "complete": True}
            # every_ms without count: until a little before the deadline, a success
            started = time.monotonic()
            runs = ok(await call(raw, "ed", "timer", {"after_ms": 0, "every_ms": 100, "step": step("inc")},
                                 seq=5, timeout_ms=700))
            assert time.monotonic() - started < 0.7 and 5 <= len(runs) <= 7 and runs[:3] == [1, 2, 3], runs
            # the schedule must fit the deadline
            message = err(await call(raw, "ed", "timer", {"after_ms": 0, "every_ms": 400, "count": 3,
                                                          "step": step("inc")}, seq=6, timeout_ms=500), "PF002")
            assert message.startswith("count:") and "deadline" in message
            assert err(await call(raw, "ed", "timer", {"after_ms": 0, "count": 2, "step": step("inc")}, seq=7),
                       "PF002").startswith("every_ms:")
            assert "runs[0]: PF500" in err(await call(raw, "ed", "timer", {"after_ms": 0, "step": step("boom")},
                                                      seq=8), "PF500")
    run(go())


# ---------------------------------------------------------------------------- rm:alloc, rm:free

def test_rm_alloc_gives_workers_one_shared_array_by_name(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            name = new_id("buf")[:40]
            made = ok(await call(raw, "rm", "alloc", {"name": name, "shape": [2, 3], "dtype": "<f8"}))
            assert made == {"name": name, "shape": [2, 3], "dtype": "<f8", "bytes": 48, "expires_in_ms": 3_600_000}
            assert len(buffer_files(node)) == 1 and name in buffer_files(node)[0]
            assert ok(await call(raw, "df", "buf_sum", name, seq=2))["sum"] == 0.0  # zero-filled
            filled = ok(await call(raw, "df", "buf_fill", {"name": name, "value": 1.5}, seq=3))
            assert filled["shape"] == [2, 3] and filled["dtype"] == "<f8"
            # every worker of the lane sees what one wrote
            seen = ok(await call(raw, "co", "broadcast", {"step": step("buf_sum", name), "targets": "workers"},
                                 seq=4))
            assert len({e["value"]["pid"] for e in seen}) == 2 and {e["value"]["sum"] for e in seen} == {9.0}
            assert err(await call(raw, "rm", "alloc", {"name": name, "shape": [1], "dtype": "<f8"}, seq=5),
                       "PF002").startswith("name:")
            for seq, (bad, field) in enumerate(((dict(dtype="float64"), "dtype"), (dict(dtype="|f8"), "dtype"),
                                                (dict(shape=[0]), "shape"), (dict(shape=[2, -1]), "shape[1]"),
                                                (dict(name="a b"), "name"), (dict(ttl_ms=0), "ttl_ms")), start=6):
                data = {"name": new_id("b")[:30], "shape": [4], "dtype": "<i4", **bad}
                assert err(await call(raw, "rm", "alloc", data, seq=seq), "PF002").startswith(f"{field}:"), bad
            assert ok(await call(raw, "rm", "free", {"name": name}, seq=20)) == {"name": name, "bytes": 48}
            assert buffer_files(node) == []
            assert "KeyError" in err(await call(raw, "df", "buf_sum", name, seq=21), "PF500")
            assert err(await call(raw, "rm", "free", {"name": name}, seq=22), "PF002").startswith("name:")
    run(go())


def test_rm_alloc_buffers_expire_and_go_with_their_owners_connection(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            ok(await call(raw, "rm", "alloc", {"name": new_id("brief")[:40], "shape": [8], "dtype": "|u1",
                                               "ttl_ms": 200}))
            ok(await call(raw, "rm", "alloc", {"name": new_id("kept")[:40], "shape": [8], "dtype": "|u1"}, seq=2))
            assert len(buffer_files(node)) == 2
            wait_until(lambda: len(buffer_files(node)) == 1, 5, what="the ttl's expiry")
            assert elements(node)["buffers"]["count"] == 1
    run(go())
    wait_until(lambda: buffer_files(node) == [], 5, what="release on disconnect")
    assert elements(node)["buffers"] == {"count": 0, "bytes": 0, "max_bytes": 256 << 20, "held": {}}


# ---------------------------------------------------------------------------- rm:lock

def test_rm_lock_leases_waits_in_turn_renews_and_releases(node):
    async def go():
        async with Raw(node.endpoint) as a, Raw(node.endpoint) as b:
            name = new_id("lock")
            held = ok(await call(a, "rm", "lock", {"name": name, "lease_ms": 5000}))
            assert held["name"] == name and len(held["token"]) == 32 and 4900 <= held["expires_in_ms"] <= 5000
            started = time.monotonic()
            message = err(await call(b, "rm", "lock", {"name": name, "lease_ms": 100, "wait_ms": 200}), "PF009")
            assert "is held" in message and 0.2 <= time.monotonic() - started < 1
            assert err(await call(b, "rm", "lock", {"name": name, "lease_ms": 100, "wait_ms": 0}, seq=2), "PF009")
            assert err(await call(b, "rm", "lock", {"name": name, "token": "x" * 32, "release": True}, seq=3),
                       "PF002").startswith("token:")
            renewed = ok(await call(a, "rm", "lock", {"name": name, "token": held["token"], "lease_ms": 300}, seq=2))
            assert renewed["token"] == held["token"] and renewed["expires_in_ms"] == 300
            # b waits its turn; the lease passing hands the lock on
            started = time.monotonic()
            taken = ok(await call(b, "rm", "lock", {"name": name, "lease_ms": 5000}, seq=4))
            assert 0.15 < time.monotonic() - started < 1.5 and taken["token"] != held["token"]
            assert err(await call(a, "rm", "lock", {"name": name, "token": held["token"], "release": True},
                                  seq=3), "PF002").startswith("token:")
            assert ok(await call(b, "rm", "lock", {"name": name, "token": taken["token"], "release": True},
                                 seq=5)) == {"name": name, "released": True}
            assert name not in elements(node)["locks"]["locks"]
            # its deadline first: PF009 a little before it, not PF408
            ok(await call(a, "rm", "lock", {"name": name, "lease_ms": 5000}, seq=4))
            assert err(await call(b, "rm", "lock", {"name": name, "lease_ms": 100}, seq=6, timeout_ms=300), "PF009")
            assert err(await call(b, "rm", "lock", {"lease_ms": 100}, seq=7), "PF002").startswith("name:")
            assert err(await call(b, "rm", "lock", {"name": "n", "lease_ms": 0}, seq=8),
                       "PF002").startswith("lease_ms:")
            # a waiter gets it as soon as the holder's connection goes, long before its lease ends
            async with Raw(node.endpoint) as c:
                ok(await call(c, "rm", "lock", {"name": name + "2", "lease_ms": 60_000}))
                await b.submit(9, packet("lock", {"name": name + "2", "lease_ms": 1000}, group="rm"))
                await asyncio.sleep(0.3)
            started = time.monotonic()
            assert ok((await b.recv())["payload"])["name"] == name + "2"
            assert time.monotonic() - started < 1
        return name
    name = run(go())
    wait_until(lambda: name not in elements(node)["locks"]["locks"], 5, what="release on disconnect")


def test_packets_under_a_lock_run_one_at_a_time(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            async def spans(metadata):
                for seq in range(1, 4):
                    await raw.submit(seq, packet("span", 0.2, metadata=metadata))
                return sorted((ok(p)["start"], ok(p)["end"]) for p in (await replies(raw, 3)).values())

            def overlaps(intervals):
                return any(b[0] < a[1] for a, b in zip(intervals, intervals[1:]))

            assert overlaps(await spans(None))  # two df workers: without the lock they overlap
            name = new_id("lock")
            assert not overlaps(await spans({"lock": name}))
            assert name not in elements(node)["locks"]["locks"]  # each let go when answered
            # under an rm:lock: its token runs at once; without it, the packet waits its turn
            held = ok(await call(raw, "rm", "lock", {"name": name, "lease_ms": 10_000}, seq=10))
            await raw.submit(11, packet("inc", 1, metadata={"lock": name}))
            under = {"lock": name, "lock_token": held["token"]}
            assert ok(await call(raw, "df", "inc", 2, seq=12, metadata=under)) == 3
            assert elements(node)["locks"]["locks"][name]["waiting"] == 1
            ok(await call(raw, "rm", "lock", {"name": name, "token": held["token"], "release": True}, seq=13))
            assert ok((await raw.recv())["payload"]) == 2
            message = err(await call(raw, "df", "inc", 1, seq=14, metadata={"lock": name, "lock_token": "nope"}),
                          "PF002")
            assert message.startswith("metadata.lock_token:")
            # waiting past its deadline: PF408, saying for what
            ok(await call(raw, "rm", "lock", {"name": name, "lease_ms": 10_000}, seq=15))
            message = err(await call(raw, "df", "inc", 1, seq=16, timeout_ms=300, metadata={"lock": name}), "PF408")
            assert f"lock {name!r}" in message
            assert err(await call(raw, "df", "no_such_key", 1, seq=17, metadata={"lock": name}),
                       "PF002").startswith("metadata.lock:")
            assert err(await call(raw, "df", "inc", 1, seq=18, metadata={"lock": 7}),
                       "PF002").startswith("metadata.lock:")
    run(go())


# ---------------------------------------------------------------------------- rm:cache

def test_rm_cache_is_the_submitters_own_and_expires(node):
    async def go():
        async with Raw(node.endpoint) as raw, Raw(node.endpoint) as other:
            key = new_id("k")
            assert ok(await call(raw, "rm", "cache", {"op": "put", "key": key, "value": {"v": [1, 2]}})) == \
                {"key": key, "stored": True, "bytes": 11, "expires_in_ms": 600_000}
            got = ok(await call(raw, "rm", "cache", {"op": "get", "key": key}, seq=2))
            assert got["hit"] and got["value"] == {"v": [1, 2]}
            assert ok(await call(other, "rm", "cache", {"op": "get", "key": key})) == {"key": key, "hit": False}
            assert ok(await call(raw, "rm", "cache", {"op": "delete", "key": key}, seq=3)) == \
                {"key": key, "deleted": True}
            assert ok(await call(raw, "rm", "cache", {"op": "get", "key": key}, seq=4))["hit"] is False
            ok(await call(raw, "rm", "cache", {"op": "put", "key": key, "value": 1, "ttl_ms": 200}, seq=5))
            await asyncio.sleep(0.3)
            assert ok(await call(raw, "rm", "cache", {"op": "get", "key": key}, seq=6))["hit"] is False
            assert err(await call(raw, "rm", "cache", {"op": "peek", "key": key}, seq=7), "PF002").startswith("op:")
            assert err(await call(raw, "rm", "cache", {"op": "put", "key": key}, seq=8), "PF002").startswith("value:")
            assert err(await call(raw, "rm", "cache", {"op": "get", "key": key, "value": 1}, seq=9),
                       "PF002").startswith("value:")
            ok(await call(raw, "rm", "cache", {"op": "put", "key": key, "value": 2}, seq=10))
            return elements(node)["cache"]["count"]
    held = run(go())
    wait_until(lambda: elements(node)["cache"]["count"] < held, 5, what="release on disconnect")


def test_metadata_cache_answers_the_same_packet_from_the_cache_without_running(node):
    async def go():
        async with Raw(node.endpoint) as raw, Raw(node.endpoint) as other:
            memo = {"cache": True}
            first = await call(raw, "df", "stamp", "x", metadata=memo)
            second = await call(raw, "df", "stamp", "x", seq=2, metadata=memo)
            assert ok(second) == ok(first) and second["duration_ms"] == 0 and first["duration_ms"] > 0
            assert ok(await call(raw, "df", "stamp", "y", seq=3, metadata=memo)) != ok(first)  # other data
            assert ok(await call(raw, "df", "stamp", "x", seq=4)) != ok(first)  # no opt-in: it runs
            assert ok(await call(other, "df", "stamp", "x", metadata=memo)) != ok(first)  # another submitter's
            brief = {"cache": True, "cache_ttl_ms": 200}
            one = ok(await call(raw, "df", "stamp", "z", seq=5, metadata=brief))
            await asyncio.sleep(0.3)
            assert ok(await call(raw, "df", "stamp", "z", seq=6, metadata=brief)) != one
            # failures are not memoised
            assert err(await call(raw, "df", "boom", 1, seq=7, metadata=memo), "PF500")
            assert (await call(raw, "df", "boom", 1, seq=8, metadata=memo))["duration_ms"] > 0
            assert err(await call(raw, "df", "stamp", "x", seq=9, metadata={"cache": True, "cache_ttl_ms": -1}),
                       "PF002").startswith("metadata.cache_ttl_ms:")
            counters = elements(node)["cache"]["counters"]
            assert counters["memo_hits"] >= 1 and counters["memo_misses"] >= 4
    run(go())


# ---------------------------------------------------------------------------- bounds, mc, status

def test_bounds_and_the_mc_elements_on_a_small_node(fresh_node):
    n = fresh_node("--workers", "1", "--max-buffer-bytes", "1024", "--cache-bytes", "4096")

    async def go():
        async with Raw(n.endpoint) as raw:
            # a lone client may hold all but the tenth kept for newcomers: 1024 - 102 bytes
            message = err(await call(raw, "rm", "alloc", {"name": "big", "shape": [116], "dtype": "<f8"}), "PF004")
            assert "max_buffer_bytes" in message and "your share is 922 bytes" in message
            ok(await call(raw, "rm", "alloc", {"name": "fits", "shape": [115], "dtype": "<f8"}, seq=2))
            # one cache entry may hold 1/16 of the cache; a lone owner may fill it (each entry
            # counted with its key and records, ~450 bytes here), then its oldest go
            assert err(await call(raw, "rm", "cache", {"op": "put", "key": "k", "value": "x" * 300}, seq=3),
                       "PF002").startswith("value:")
            for i in range(10):
                ok(await call(raw, "rm", "cache", {"op": "put", "key": f"k{i}", "value": "x" * 200}, seq=10 + i))
            cache = elements(n)["cache"]
            assert cache["bytes"] <= 4096 and cache["counters"]["evicted"] >= 1 and cache["count"] < 10
            assert ok(await call(raw, "rm", "cache", {"op": "get", "key": "k0"}, seq=30))["hit"] is False
            assert ok(await call(raw, "rm", "cache", {"op": "get", "key": "k9"}, seq=31))["hit"] is True
            # mc:spawn adds to the lane; cf is fixed
            spawned = ok(await call(raw, "mc", "spawn", {"lane": "df", "workers": 1}, seq=40))
            assert spawned["added"] == 1 and spawned["before"]["df"] == 1 and spawned["after"]["df"] == 2
            assert err(await call(raw, "mc", "spawn", {"lane": "cf", "workers": 1}, seq=41),
                       "PF002").startswith("workers:")
            assert err(await call(raw, "mc", "spawn", {"lane": "xx", "workers": 1}, seq=42),
                       "PF002").startswith("lane:")
            assert err(await call(raw, "mc", "spawn", {"lane": "df", "workers": 10_000}, seq=43),
                       "PF002").startswith("workers:")
            # mc:migrate: df:pid to the ed lane and back
            ed_pids = n.health()["lanes"]["ed"]["pids"]
            moved = ok(await call(raw, "mc", "migrate", {"key": "df:pid", "lane": "ed"}, seq=50))
            assert moved == {"key": "df:pid", "before": {"lane": "df"}, "after": {"lane": "ed"}}
            assert ok(await call(raw, "df", "pid", None, seq=51)) in ed_pids
            assert ok(await call(raw, "mc", "migrate", {"key": "df:pid", "reset": True}, seq=52))["after"] == \
                {"lane": "df"}
            assert ok(await call(raw, "df", "pid", None, seq=53)) not in ed_pids
            assert err(await call(raw, "mc", "migrate", {"key": "df:nope", "lane": "ed"}, seq=54),
                       "PF002").startswith("key:")
            assert err(await call(raw, "mc", "migrate", {"key": "pid", "lane": "ed"}, seq=55),
                       "PF002").startswith("key:")
            assert err(await call(raw, "mc", "migrate", {"key": "df:pid"}, seq=56), "PF002").startswith("lane:")
            assert err(await call(raw, "mc", "migrate", {"key": "cf:seq", "reactor": "r"}, seq=57),
                       "PF002").startswith("key:")
            # mc:tune: before -> after, checked
            tuned = ok(await call(raw, "mc", "tune", {"lane": "df", "window_ms": 0.5, "prefetch": 4,
                                                      "aging_ms": 0}, seq=60))
            assert tuned == {"lane": "df", "before": {"window_ms": 1.0, "prefetch": 32, "aging_ms": 1000},
                             "after": {"window_ms": 0.5, "prefetch": 4, "aging_ms": 0}}
            assert elements(n)["tuned"] == {"df": tuned["after"]}
            assert ok(await call(raw, "df", "inc", 1, seq=61)) == 2
            for seq, (bad, field) in enumerate(((dict(prefetch=0), "prefetch"), (dict(window_ms=-1), "window_ms"),
                                                (dict(aging_ms=True), "aging_ms"), ({}, "window_ms"),
                                                (dict(lane="cf", prefetch=2), "prefetch")), start=62):
                data = {"lane": "df", **bad}
                assert err(await call(raw, "mc", "tune", data, seq=seq), "PF002").startswith(f"{field}:"), bad
    run(go(), timeout_s=60)
    log = n.log()  # each admin action is logged with who asked, before and after
    assert 'mc:spawn by local: {"cf":1,"df":1,"ed":1,"rm":1} -> {"cf":1,"df":2,"ed":1,"rm":1}' in log
    assert 'mc:migrate by local: {"df:pid":{"lane":"df"}} -> {"df:pid":{"lane":"ed"}}' in log
    assert 'mc:tune by local: {"df":{"aging_ms":1000,"prefetch":32,"window_ms":1.0}}' in log


def test_status_and_metrics_show_the_elements_resources(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            name = new_id("m")[:40]
            ok(await call(raw, "rm", "alloc", {"name": name, "shape": [16], "dtype": "<f4"}))
            ok(await call(raw, "rm", "lock", {"name": name, "lease_ms": 5000}, seq=2))
            shown = elements(node)
            assert shown["buffers"]["held"][name]["bytes"] == 64 and shown["locks"]["locks"][name]["waiting"] == 0
            with urllib.request.urlopen(node.http + "/metrics", timeout=5) as response:
                text = response.read().decode()
            assert 'pfnode_element_resources{kind="buffers"} 1.0' in text
            assert 'pfnode_element_resource_bytes{kind="buffers"} 64.0' in text
            assert 'pfnode_element_resources{kind="locks"} 1.0' in text
    run(go())


# ---------------------------------------------------------------------------- roles, tokens, reactors

def test_roles_and_scopes_with_tokens_and_a_key_migrated_to_a_reactor(fresh_node):
    n = fresh_node(tokens=True)
    tokens = n.tokens

    async def go():
        async with Raw(n.endpoint, tokens["client"]) as client, Raw(n.endpoint, tokens["admin"]) as admin:
            for seq, (group, element, data) in enumerate((
                    ("mc", "spawn", {"lane": "df", "workers": 1}), ("mc", "tune", {"lane": "df", "prefetch": 2}),
                    ("mc", "migrate", {"key": "df:inc", "lane": "ed"}),
                    ("rm", "alloc", {"name": "b", "shape": [1], "dtype": "<f8"})), start=1):
                assert "admin role" in err(await call(client, group, element, data, seq=seq), "PF403")
            ok(await call(admin, "rm", "alloc", {"name": "b", "shape": [1], "dtype": "<f8"}))
            assert err(await call(client, "rm", "free", {"name": "b"}, seq=10), "PF002").startswith("name:")
            assert ok(await call(client, "ed", "signal", {"topic": "t", "data": 1}, seq=11)) == {"delivered": 0}
            # the cache is the token's: its connections share it, other tokens do not see it
            ok(await call(client, "rm", "cache", {"op": "put", "key": "k", "value": "mine"}, seq=12))
            async with Raw(n.endpoint, tokens["client"]) as same, Raw(n.endpoint, tokens["reactor"]) as stranger:
                assert ok(await call(same, "rm", "cache", {"op": "get", "key": "k"}))["value"] == "mine"
                assert ok(await call(stranger, "rm", "cache", {"op": "get", "key": "k"}))["hit"] is False
            # one of the token's connections left; the other still holds the entry
            assert ok(await call(client, "rm", "cache", {"op": "get", "key": "k"}, seq=13))["hit"] is True
            # mc:migrate to a reactor by its token's name: forwarded while it is connected
            async with Reactor(n.endpoint, token=tokens["reactor"]) as reactor:
                reactor.register("df", "inc", lambda data: "ran on the reactor")
                await asyncio.sleep(0.3)
                moved = ok(await call(admin, "mc", "migrate", {"key": "df:inc", "reactor": "reactor"}, seq=2))
                assert moved["after"] == {"lane": "df", "reactor": "reactor", "connected": True}
                assert ok(await call(client, "df", "inc", 1, seq=14)) == "ran on the reactor"
            await asyncio.sleep(0.3)
            assert ok(await call(client, "df", "inc", 1, seq=15)) == 2  # gone: it runs here again
            shown = ok(await call(admin, "mc", "migrate", {"key": "df:inc", "reset": True}, seq=3))
            assert shown["before"] == {"lane": "df", "reactor": "reactor", "connected": False}
            return elements(n)

    shown = run(go(), timeout_s=60)
    assert shown["buffers"]["count"] == 1  # the admin's connection had not closed yet
    wait_until(lambda: elements(n)["buffers"]["count"] == 0 and elements(n)["cache"]["count"] == 0, 5,
               what="the tokens' last connections' release")


def test_a_killed_nodes_buffers_are_removed_by_the_next_start(fresh_node):
    first = fresh_node("--workers", "1")

    async def go():
        async with Raw(first.endpoint) as raw:
            ok(await call(raw, "rm", "alloc", {"name": "left", "shape": [1024], "dtype": "<f8"}))
            first.proc.kill()  # no shutdown: nothing of its own is cleaned up
            first.proc.wait()
    run(go())
    left = [n for n in os.listdir("/dev/shm") if n.startswith(f"pfnode-{first.proc.pid}-")]
    assert any(n.startswith(f"pfnode-{first.proc.pid}-buffers-") for n in left)
    assert any(n.startswith(f"pfnode-{first.proc.pid}-buf-left-") for n in left)
    assert all(os.path.exists(f"/dev/shm/{n}") for n in left)
    fresh_node("--workers", "1")
    assert not any(os.path.exists(f"/dev/shm/{n}") for n in left)
