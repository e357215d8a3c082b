"""A fair share for every client (issue 19): no node-wide bound one client can fill, no
per-operation cost that grows with a table, memory counted as it is really held."""
from __future__ import annotations

import asyncio
import collections
import gc
import itertools

import orjson
import psutil
import pytest

from pfnode.core.clock import FakeClock
from pfnode.core.scheduler import Flight, Scheduler
from pfnode.core.shares import Shares
from pfnode.elements.base import ElementFailed
from pfnode.elements.hosted import resources
from pfnode.elements.hosted.collective import Barriers
from pfnode.elements.hosted.events import Events
from pfnode.elements.hosted.resources import Buffers, Cache, Locks
from pfnode.errors import ErrorCode
from tests.inproc import RecordingLink, started_node


# ---------------------------------------------------------------- the rule
def test_a_lone_owner_may_use_all_but_the_reserve_and_a_newcomer_always_has_room():
    shares = Shares(100, "things")
    for _ in range(90):
        assert shares.refusal("a") is None
        shares.add("a")
    assert "your share is 90" in shares.refusal("a")  # the tenth is kept for newcomers
    assert shares.refusal("b") is None  # a newcomer gets in: the reserve is its
    shares.add("b")
    assert "your share is 45" in shares.refusal("a")
    assert "kept for clients holding none" in shares.refusal("b")  # the rest of the reserve: for newcomers
    assert shares.refusal("c") is None  # however many came before, a newcomer finds room
    for _ in range(50):  # as a's things end, it may not take more until it is within its share
        shares.remove("a")
        if shares.of("a") > 45:
            assert "your share is 45" in shares.refusal("a")
    assert shares.refusal("a") is None and shares.refusal("b") is None  # room again below the reserve
    for owner in ("a",) * 40 + ("b",):
        shares.remove(owner)
    assert shares.total == 0 and len(shares) == 0 and shares.refusal("a") is None


def test_the_node_wide_bound_stays_as_the_last_line():
    shares = Shares(10, "things")
    for owner in "abcdefghij":
        shares.add(owner)
    assert shares.refusal("k").startswith("node overloaded")


# ---------------------------------------------------------------- 1. rm:cache: O(1), whatever the table holds
class CountingDict(collections.OrderedDict):
    """An OrderedDict that counts the items its iterators hand out."""

    steps = 0

    def __iter__(self):
        for key in super().__iter__():
            CountingDict.steps += 1
            yield key


def test_cache_puts_past_an_owners_share_look_at_a_few_entries_not_the_table():
    cache = Cache(FakeClock(), 1 << 30)
    cache.entries = CountingDict()
    ids = itertools.count()
    for owner in ("a", "b", "c", "d"):
        for _ in range(2000):
            cache.put((owner, "key", f"k{next(ids)}"), b"1", 600_000)
    CountingDict.steps = 0
    for _ in range(2000):  # every owner is past its share now: each put evicts
        cache.put(("a", "key", f"k{next(ids)}"), b"1", 600_000)
    assert CountingDict.steps <= 2 * 2000, CountingDict.steps  # at most an entry or two a put


def test_cache_bytes_bound_the_memory_really_held(monkeypatch):
    """100 000 entries made from orjson's output: what the cache counts is what the process
    holds for them (values copied to their exact size, keys and records counted)."""
    monkeypatch.setattr(resources, "MAX_CACHE_ENTRIES", 100_000)
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    cache = Cache(FakeClock(), 256 << 20)
    for i in range(100_000):
        cache.put(("alice", "key", f"k{i}"), orjson.dumps({"v": i, "pad": "x" * 20}), 600_000)
    gc.collect()
    grown = process.memory_info().rss - before
    assert len(cache.entries) == 100_000
    assert grown <= 1.5 * cache.bytes, (grown, cache.bytes)  # orjson's buffers kept: 8.6x


def test_a_newcomer_to_a_full_cache_has_room_and_a_lone_owner_may_fill_it():
    cache = Cache(FakeClock(), 100_000)
    for i in range(400):
        cache.put(("heavy", "key", f"k{i}"), b"x" * 100, 600_000)
    heavy = cache.owner_bytes["heavy"]
    assert heavy > 90_000  # alone, it fills the cache
    cache.put(("new", "key", "k"), b"y" * 100, 600_000)
    assert cache.get(("new", "key", "k")) is not None and cache.bytes <= 100_000


# ---------------------------------------------------------------- 4. the other bounds have a per-owner share
def test_blocked_packets_are_shared_between_tenants():
    clock = FakeClock()
    s = Scheduler(max_blocked=20, max_blocked_per_client=1000)
    for i in range(18):  # a's dependencies never come
        assert s.admit(Flight(packet=None, packet_id=f"a{i}", scope="a", dependencies=("never",)), clock()) is None
    refused = s.admit(Flight(packet=None, packet_id="a18", scope="a", dependencies=("never",)), clock())
    assert refused.code is ErrorCode.OVERLOADED and "your share is 18" in refused.message
    assert s.admit(Flight(packet=None, packet_id="b0", scope="b", dependencies=("later",)), clock()) is None


def test_lock_names_barriers_watchers_and_buffers_have_a_share_per_owner(monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "MAX_LOCKS", 10)

    async def go():
        clock = FakeClock()
        locks = Locks(clock, type("Control", (), {"call_at": lambda *a: None, "unhold": None, "pump": None})())
        for i in range(9):
            await locks.acquire(f"l{i}", "a", 60.0, 0)
        with pytest.raises(ElementFailed, match="your share is 9"):
            await locks.acquire("l9", "a", 60.0, 0)
        await locks.acquire("mine", "b", 60.0, 0)

        barriers = Barriers()
        barriers.shares = Shares(10, "open barriers")
        waits = [asyncio.ensure_future(barriers.arrive(f"b{i}", 2, i, 5.0, "a")) for i in range(9)]
        await asyncio.sleep(0)
        with pytest.raises(ElementFailed, match="your share is 9"):
            await barriers.arrive("b9", 2, 9, 5.0, "a")
        other = asyncio.ensure_future(barriers.arrive("x", 2, 0, 5.0, "b"))
        await asyncio.sleep(0)
        assert "x" in barriers.open
        for task in (*waits, other):
            task.cancel()

        events = Events(clock)
        events.watch_shares = Shares(10, "watchers")
        watches = [asyncio.ensure_future(events.watch("t", 1, 5.0, "a")) for _ in range(9)]
        await asyncio.sleep(0)
        with pytest.raises(ElementFailed, match="watchers: you hold 9"):
            await events.watch("t", 1, 5.0, "a")
        theirs = asyncio.ensure_future(events.watch("t", 1, 5.0, "b"))
        await asyncio.sleep(0)
        assert events.watch_count == 10
        for task in (*watches, theirs):
            task.cancel()

        made = []
        files = type("Files", (), {"create_file": lambda n, b: made.append(n) or str(tmp_path / n),
                                   "remove_file": lambda p: None, "write_table": lambda p, t: None})
        buffers = Buffers(clock, 1000, str(tmp_path / "table"), files)
        buffers.alloc("big", [900], "|u1", 1, "a", 60_000)
        with pytest.raises(ElementFailed, match="your share is 900 bytes"):
            buffers.alloc("more", [1], "|u1", 1, "a", 60_000)
        buffers.alloc("theirs", [50], "|u1", 1, "b", 60_000)
    asyncio.run(go())


# ---------------------------------------------------------------- 3. node elements: one client cannot hold them all
def test_one_clients_long_running_node_elements_leave_room_for_everyone_else(monkeypatch):
    import pfnode.node.node as node_module

    monkeypatch.setattr(node_module, "MAX_HOSTED", 20)

    async def go():
        async with started_node(shutdown_grace_ms=100) as node:
            a, b = RecordingLink(node, "a"), RecordingLink(node, "b")
            node.on_open(a)
            node.on_open(b)
            for seq in range(1, 26):
                a.submit(seq, {"id": f"w{seq}", "group": "ed", "element": "watch", "data": {"topic": "t"},
                               "timeout_ms": 30_000})
            refused = [(await a.reply(seq, 2.0))["payload"]["error"]["code"] for seq in range(19, 26)]
            assert refused == ["PF004"] * 7, refused  # its share (18 of 20) runs, the rest is refused at once
            b.submit(1, {"id": "s", "group": "ed", "element": "signal", "data": {"topic": "u", "data": 1}})
            answer = (await b.reply(1, 2.0))["payload"]
            assert answer["status"] == "success", answer  # not queued behind a's watches
    asyncio.run(go())


# ---------------------------------------------------------------- 5. a neighbour's hung handlers
def test_a_neighbours_hung_handlers_do_not_hold_every_worker_from_another_client(monkeypatch):
    """A's packets hang on both df workers until their (long) deadline; B's no-op gets a
    worker of its own (a burst worker) and is answered long before that deadline; with no
    packet after it, the burst worker retires once idle for BURST_IDLE_S."""
    from pfnode.pool import burst

    async def go():
        async with started_node(workers=2, shutdown_grace_ms=100,
                                handler_modules=("pfnode.handlers.examples", "tests.handlers_testing")) as node:
            a, b = RecordingLink(node, "a"), RecordingLink(node, "b")
            node.on_open(a)
            node.on_open(b)
            b.submit(9, {"id": "warm", "group": "df", "element": "noop", "data": 0})
            await b.reply(9)  # df:noop's run time is known now: cheap enough to queue behind anything
            for seq in range(1, 5):
                a.submit(seq, {"id": f"h{seq}", "group": "df", "element": "hang", "data": None,
                               "timeout_ms": 60_000})
            for _ in range(300):  # both workers hold one of a's hangs
                if all(view.held for view in node.pool.dispatcher.workers.values() if view.lane == "df"):
                    break
                await asyncio.sleep(0.01)
            b.submit(1, {"id": "n", "group": "df", "element": "noop", "data": 7})
            answer = (await b.reply(1, 10.0))["payload"]  # a guard: the hangs' deadline is 60 s
            assert answer["status"] == "success" and answer["data"] == 7, answer
            assert node.pool.counters["burst_workers"] >= 1
            # no packet comes by any more: the burst worker retires all the same, once idle
            supervisor = node.pool.supervisor
            assert supervisor.lane_size("df") > supervisor.targets["df"]
            for _ in range(300):
                if supervisor.lane_size("df") == supervisor.targets["df"]:
                    break
                await asyncio.sleep(0.01)
            assert supervisor.lane_size("df") == supervisor.targets["df"], supervisor.lane_size("df")
    monkeypatch.setattr(burst, "BURST_IDLE_S", 0.3)
    asyncio.run(go())


# ---------------------------------------------------------------- 4. connections: per principal, idle ones, the fd limit
def test_idle_links_are_closed_when_the_node_is_near_its_connection_bound():
    async def go():
        async with started_node(max_connections=10, idle_link_ms=5000, shutdown_grace_ms=100) as node:
            links = [RecordingLink(node, f"l{i}") for i in range(9)]
            for link in links:
                node.on_open(link)
            links[0].submit(1, {"id": "x", "group": "df", "element": "noop", "data": 1})
            await links[0].reply(1)
            node.loops.housekeeping_tick(node.clock() + 1.0)  # not idle for long yet
            assert len(node.links) == 9
            node.loops.housekeeping_tick(node.clock() + 6.0)
            assert set(node.links) == {links[0]}  # the one that submitted stays
            assert all(link.closed for link in links[1:])
    asyncio.run(go())


def test_a_principal_has_its_share_of_the_connections(tmp_path):
    from pfnode.node.auth import token_entry

    tokens = {"alice": "pft_" + "a" * 40, "bob": "pft_" + "b" * 40}
    path = tmp_path / "tokens.toml"
    path.write_text("\n".join(token_entry(n, ["submit"], t) for n, t in tokens.items()))

    async def go():
        async with started_node(max_connections=10, token_file=str(path), shutdown_grace_ms=100) as node:
            def connect(name):
                link = RecordingLink(node, name)
                link.request_headers = {"Authorization": f"Bearer {tokens[name]}"}
                node.on_open(link)
                return link
            alices = [connect("alice") for _ in range(10)]
            assert [link.closed for link in alices] == [False] * 9 + [True]  # alone: all but the reserve
            assert alices[9].frames[0]["payload"]["code"] == "PF004"
            assert not connect("bob").closed  # a newcomer gets in
    asyncio.run(go())


def test_max_connections_is_fitted_to_the_open_files_limit(monkeypatch):
    import resource

    from pfnode.app import front
    from pfnode.settings import Settings

    monkeypatch.setattr(resource, "getrlimit", lambda which: (512, 512))
    fitted, warning = front.fit_open_files(Settings(max_connections=1000))
    assert fitted.max_connections == 512 - front.FDS_BESIDE_CONNECTIONS and "only 512 open files" in warning
    assert front.fit_open_files(Settings(max_connections=100)) == (Settings(max_connections=100), None)


def test_a_tenant_running_its_share_of_a_lanes_workers_waits_while_another_tenant_waits():
    from pfnode.core.dispatch import Dispatcher, starved

    clock = FakeClock()
    s = Scheduler(lanes=("df",))
    d = Dispatcher({"df": 1})
    views = [d.add(slot, "df") for slot in (1, 2, 3, 4)]
    ids = itertools.count()

    def queue(tenant, n):
        from pfnode.core.protocol import Packet, RawJSON

        for _ in range(n):
            packet = Packet(id=f"{tenant}{next(ids)}", group="df", element="noop", data=RawJSON(b"1"))
            assert s.admit(Flight(packet, scope=tenant, deadline=clock() + 60), clock()) is None

    queue("a", 3)
    assign = lambda: [(v.slot, f.tenant) for v, fs in d.assign(s, clock()) for f in fs]  # noqa: E731
    assert [t for _, t in assign()] == ["a", "a", "a"]  # alone, a may use every worker
    assert not starved(views, s.lanes["df"].waiting)
    queue("a", 3)
    queue("b", 2)
    # a runs 3 of 4 workers, over its share of 2 while b waits: the free worker goes to b
    assert [t for _, t in assign()] == ["b"]
    assert starved(views, s.lanes["df"].waiting)  # b runs 1, below its share of 2: a burst would start
    finished = views[0].held.popleft()  # one of a's ends: its worker goes to b, not to a
    views[0].work_ms = 0.0
    assert finished.tenant == "a" and [t for _, t in assign()] == ["b"]


# ---------------------------------------------------------------- 6. out of file descriptors
def test_a_node_out_of_file_descriptors_keeps_answering_and_says_so_once(tmp_path):
    """Under a low open files limit, connections that hold every descriptor do not end the
    node's accepting for good (picows' server library stopped it at the first EMFILE) nor
    make it spin or log a traceback per try: it pauses, logs one line, and /healthz answers."""
    import shutil
    import socket
    import sys
    import time
    import urllib.request

    from tests.conftest import start_node

    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    node = start_node(tmp_path, workers=1,
                      command=["prlimit", "--nofile=300", sys.executable, "-m", "pfnode", "serve", "--port", "0"])
    held = []
    try:
        host, port = node.http.removeprefix("http://").split("/")[0].split(":")
        failures = 0
        for _ in range(400):  # more than the process may open
            try:
                held.append(socket.create_connection((host, int(port)), timeout=0.5))
            except OSError:
                failures += 1
                if failures > 5:
                    break
        process = psutil.Process(node.proc.pid)
        before = process.cpu_times()
        time.sleep(2)
        after = process.cpu_times()
        assert (after.user + after.system) - (before.user + before.system) < 1.0  # not spinning
        answered = None
        for _ in range(20):  # the idle ones are dropped by the handshake timeout; accepting resumes
            try:
                answered = urllib.request.urlopen(f"{node.http}/healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        assert answered == b'{"status":"ready"}\n'
    finally:
        for sock in held:
            sock.close()
        node.stop()
    log = node.log()
    assert "Traceback" not in log and log.count("out_of_files") <= 4, log[-2000:]
