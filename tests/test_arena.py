"""Shared-memory arenas (pfnode/pool/arena.py), alone and through a real node."""
from __future__ import annotations

import asyncio
import os
import pickle
import subprocess

import pytest

from pfnode.pool.arena import Arena, ShmRef
from pfnode.client import Reactor


@pytest.fixture
def arena():
    producer = Arena.create(1000, "test")
    yield producer
    producer.close(unlink=True)


def test_payloads_round_trip_between_two_mappings(arena):
    consumer = Arena.attach(arena.path)
    try:
        refs = [arena.put(bytes([i]) * (100 + i)) for i in range(5)]
        assert all(isinstance(ref, ShmRef) for ref in refs)
        for i, ref in enumerate(refs):
            assert consumer.take(pickle.loads(pickle.dumps(ref))) == bytes([i]) * (100 + i)
    finally:
        consumer.close()


def test_a_full_arena_refuses_until_the_consumer_frees_space(arena):
    consumer = Arena.attach(arena.path)
    try:
        first = arena.put(b"a" * 600)
        assert arena.put(b"b" * 600) is None  # would overwrite what is not consumed yet
        assert arena.put(b"") is None  # nothing to place: the pipe carries it
        assert arena.put(b"c" * 1001) is None  # larger than the arena
        assert consumer.take(first) == b"a" * 600
        second = arena.put(b"b" * 600)  # does not fit before the end: placed at the start
        assert second is not None and second.offset == 0
        assert consumer.take(second) == b"b" * 600
    finally:
        consumer.close()


def test_records_never_wrap_and_space_cycles_many_times(arena):
    consumer = Arena.attach(arena.path)
    try:
        for i in range(200):
            payload = os.urandom(37 + (i * 13) % 300)
            ref = arena.put(payload)
            assert ref is not None and ref.offset + ref.length <= arena.capacity
            assert consumer.take(ref) == payload
    finally:
        consumer.close()


def test_unlink_removes_the_file():
    a = Arena.create(64, "gone")
    assert os.path.exists(a.path)
    a.close(unlink=True)
    assert not os.path.exists(a.path)


@pytest.mark.parametrize("shm_bytes", ["8388608", "0"])
def test_large_payloads_round_trip_through_a_node_with_and_without_shared_memory(fresh_node, shm_bytes):
    node = fresh_node("--worker-shm-bytes", shm_bytes, handlers="pfnode.handlers.examples", workers=1)
    big = [i * 0.5 for i in range(100_000)]  # ~0.9 MB of JSON, over the 32 KiB threshold
    text = "x" * 3_000_000  # 3 MB: does not fit an 8 MiB ring twice, so some go by pipe

    async def go():
        async with Reactor(node.endpoint) as r:
            results = await asyncio.gather(*(r.submit("df", "noop", big) for _ in range(6)),
                                           *(r.submit("df", "noop", text) for _ in range(4)))
            small = await r.submit("df", "transform", "after")
            return results, small

    results, small = asyncio.run(go())
    assert [res.ok for res in results] == [True] * 10, [res.error for res in results]
    assert all(res.data == big for res in results[:6]) and all(res.data == text for res in results[6:])
    assert small.data == "AFTER"
    counters = node.health()["counters"]
    if shm_bytes == "0":
        assert "shm_payloads_in" not in counters and "shm_payloads_out" not in counters
    else:  # the big list goes both ways through shared memory; a 3 MB text at least once
        assert counters["shm_payloads_in"] >= 6 and counters["shm_payloads_out"] >= 6
    node.stop()
    leftovers = [name for name in os.listdir("/dev/shm") if name.startswith(f"pfnode-{node.proc.pid}-")]
    assert leftovers == []


def test_a_pool_without_room_for_arenas_falls_back_to_pipes(monkeypatch):
    from pfnode.pool import supervisor

    from tests.inproc import RecordingLink, started_node

    def no_room(size, tag):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(supervisor.Arena, "create", staticmethod(no_room))
    big = "z" * 200_000

    async def go():
        async with started_node() as node:
            link = RecordingLink(node)
            node.on_open(link)
            link.submit(1, {"id": "big", "group": "df", "element": "noop", "data": big})
            return await link.reply(1), dict(node.pool.counters)

    reply, counters = asyncio.run(go())
    assert reply["payload"]["status"] == "success" and reply["payload"]["data"] == big, reply
    assert "shm_payloads_in" not in counters and "shm_payloads_out" not in counters


def test_remove_orphans_takes_the_segments_of_dead_pids_only(tmp_path):
    from pfnode.pool.arena import remove_orphans

    proc = subprocess.Popen(["sleep", "0"])  # a process that is gone once waited for
    proc.wait()
    names = [f"pfnode-{proc.pid}-1-in-ab", f"pfnode-{os.getpid()}-1-in-cd", "other-file", "pfnode-x-y"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert remove_orphans(str(tmp_path)) == [f"pfnode-{proc.pid}-1-in-ab"]
    assert sorted(os.listdir(tmp_path)) == sorted(names[1:])
