"""End to end: a real node (front + worker processes) over real sockets.

Most tests share the session `node` (2 workers, test handlers) and leave it healthy;
tests that need special flags start nodes of their own.
"""
from __future__ import annotations

import asyncio
import random
import time

import orjson
import psutil
import pytest
from websockets.exceptions import ConnectionClosed

from pfnode.client import Reactor
from pfnode.errors import RemoteError
from tests.conftest import start_node
from tests.e2e_util import SPEC_ID, Raw, frame, http_get, new_id, packet, run, submit_frame

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------- spec examples

def test_spec_usage_example_through_the_python_reactor(node):
    async def go():
        async with Reactor(node.endpoint) as reactor:
            pid = new_id("spec")
            result = await reactor.submit("df", "transform", "hello world", priority=5, packet_id=pid)
            assert result.ok, result
            assert result.status == "success"
            assert result.data == "HELLO WORLD"
            assert result.packet_id == pid
            assert result.error is None
            assert isinstance(result.duration_ms, (int, float)) and result.duration_ms >= 0
            # the reactor's generated ids work as well
            auto = await reactor.submit("df", "transform", "hello world")
            assert auto.ok and auto.data == "HELLO WORLD" and len(auto.packet_id) == 36
    run(go())


def test_spec_example_over_a_raw_websocket_echoes_seq_and_packet_id(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            # the spec's minimal packet, with its example id and seq
            await raw.submit(12345, packet("transform", "hello world", id=SPEC_ID))
            reply = await raw.recv()
            assert reply["type"] == "result"
            assert reply["seq"] == 12345
            payload = reply["payload"]
            assert payload["packet_id"] == SPEC_ID
            assert payload["status"] == "success"
            assert payload["data"] == "HELLO WORLD"
            assert "error" not in payload
            assert isinstance(payload["duration_ms"], (int, float))

            # the spec's extended packet; then the Elixir reactor's shape (absent fields as null)
            await raw.submit(12346, packet("transform", "extended", timeout_ms=30000,
                                           metadata={"custom": "fields"}))
            await raw.submit(12347, packet("transform", "elixir", timeout_ms=None,
                                           dependencies=None, metadata=None))
            replies = {r["seq"]: r["payload"] for r in await raw.recv_n(2)}
            assert replies[12346]["data"] == "EXTENDED"
            assert replies[12347]["data"] == "ELIXIR"

            # the interop and quick-start examples
            await raw.submit(7, packet("process_data", {"items": [1, 2, 3, 4, 5]}, priority=7))
            await raw.submit(8, packet("validate", {"x": 1}, group="cf"))
            await raw.submit(9, packet("validate", None, group="cf"))
            replies = {r["seq"]: r["payload"] for r in await raw.recv_n(3)}
            assert replies[7]["data"] == 30
            assert replies[8]["data"] == {"valid": True}
            assert replies[9]["data"] == {"valid": False}
    run(go())


# ---------------------------------------------------------------------------- concurrency

@pytest.mark.timeout(90)
def test_1000_concurrent_submits_on_one_connection_each_get_their_own_result(node):
    inputs = [f"item {i} {random.random()}" for i in range(1000)]
    ids = [new_id(str(i)) for i in range(1000)]

    async def go():
        async with Reactor(node.endpoint) as reactor:
            return await asyncio.gather(*(reactor.submit("df", "transform", text, packet_id=pid)
                                          for text, pid in zip(inputs, ids)))
    results = run(go(), timeout_s=60)
    assert len(results) == 1000
    for text, pid, result in zip(inputs, ids, results):
        assert result.ok, result
        assert result.packet_id == pid
        assert result.data == text.upper()


def test_pipelined_raw_submits_are_answered_with_their_own_seq(node):
    # Without the reactor's bookkeeping: the seq of every result must be the seq of the
    # submit whose data it carries. Seqs are deliberately not 1..n and not in order.
    seqs = random.sample(range(1, 2**40), 300)

    async def go():
        async with Raw(node.endpoint) as raw:
            sent = {}
            for seq in seqs:
                pkt = packet("transform", f"data for {seq}")
                sent[seq] = pkt["id"]
                await raw.submit(seq, pkt)
            replies = await raw.recv_n(len(seqs), timeout_s=40)
            return sent, replies
    sent, replies = run(go(), timeout_s=60)
    assert sorted(r["seq"] for r in replies) == sorted(seqs)  # exactly one reply per submit
    for reply in replies:
        assert reply["type"] == "result"
        assert reply["payload"]["packet_id"] == sent[reply["seq"]]
        assert reply["payload"]["data"] == f"DATA FOR {reply['seq']}"


def test_several_connections_at_once_only_see_their_own_results(node):
    # Every connection uses the same seqs 1..40: a result delivered to the wrong
    # connection (or a seq mixed up across connections) would show as a wrong data value.
    n_conn, per_conn = 6, 40

    async def one(conn: int):
        async with Raw(node.endpoint) as raw:
            for seq in range(1, per_conn + 1):
                await raw.submit(seq, packet("transform", f"conn {conn} seq {seq}"))
            replies = await raw.recv_n(per_conn, timeout_s=30)
            # and nothing more arrives for this connection
            with pytest.raises(asyncio.TimeoutError):
                await raw.recv(timeout_s=0.3)
            return replies

    async def go():
        return await asyncio.gather(*(one(c) for c in range(n_conn)))
    all_replies = run(go(), timeout_s=60)
    for conn, replies in enumerate(all_replies):
        assert sorted(r["seq"] for r in replies) == list(range(1, per_conn + 1))
        for reply in replies:
            assert reply["payload"]["data"] == f"CONN {conn} SEQ {reply['seq']}"

    # the reactor client too: several reactors in parallel, interleaved
    async def reactors():
        async with Reactor(node.endpoint) as a, Reactor(node.endpoint) as b, Reactor(node.endpoint) as c:
            jobs = [(r, f"{name}-{i}") for i in range(50) for name, r in (("a", a), ("b", b), ("c", c))]
            results = await asyncio.gather(*(r.submit("df", "transform", text) for r, text in jobs))
            return jobs, results
    jobs, results = run(reactors())
    assert [res.data for res in results] == [text.upper() for _, text in jobs]


# ---------------------------------------------------------------------------- handlers

def test_ctx_handler_sees_packet_id_metadata_and_priority(node):
    async def go():
        async with Reactor(node.endpoint) as reactor:
            pid = new_id("ctx")
            meta = {"custom": "fields", "nested": {"n": [1, 2, 3]}}
            result = await reactor.submit("df", "ctx", None, priority=9, metadata=meta, packet_id=pid,
                                          timeout_ms=20_000)
            assert result.ok, result
            assert result.data["packet_id"] == pid
            assert result.data["key"] == "df:ctx"
            assert result.data["priority"] == 9
            assert result.data["metadata"] == meta
            assert result.data["remaining_ms_positive"] is True
            assert result.data["pid"] in node.health()["worker_pids"]
            # without metadata/priority: defaults as the node fills them in
            bare = await reactor.submit("df", "ctx", None)
            assert bare.data["metadata"] is None and bare.data["priority"] == 5
    run(go())


def test_handler_output_on_stdout_does_not_corrupt_results(node):
    tricky = {"text": "line1\nline2 \x00 \u00e9\u4e2d", "nums": list(range(50)), "nested": {"a": None}}

    async def go():
        async with Reactor(node.endpoint) as reactor:
            jobs = []
            for i in range(20):
                jobs.append(reactor.submit("df", "chatty", {**tricky, "i": i}))
                jobs.append(reactor.submit("df", "chatty_fd", {"fd": i}))
                jobs.append(reactor.submit("df", "transform", f"after {i}"))
            return await asyncio.gather(*jobs)
    results = run(go())
    for i in range(20):
        chatty, chatty_fd, plain = results[3 * i:3 * i + 3]
        assert chatty.ok and chatty.data == {**tricky, "i": i}, chatty
        assert chatty_fd.ok and chatty_fd.data == {"fd": i}, chatty_fd
        assert plain.ok and plain.data == f"AFTER {i}"
    # the output went to the node's log (stderr), not into the result channel
    assert "chatty handler says hello" in node.log()


def test_non_serialisable_return_gives_PF500(node):
    async def go():
        async with Reactor(node.endpoint) as reactor:
            bad = await reactor.submit("df", "unserialisable", 1)
            good = await reactor.submit("df", "transform", "still fine")
            return bad, good
    bad, good = run(go())
    assert not bad.ok and bad.status == "error"
    assert bad.error_code == "PF500"
    assert "serialis" in bad.error["message"]
    assert good.ok and good.data == "STILL FINE"


def test_raising_handler_gives_PF500_with_the_exception_text_and_the_node_keeps_serving(node):
    pids_before = node.health()["worker_pids"]

    async def go():
        async with Reactor(node.endpoint) as reactor:
            results = await asyncio.gather(*(reactor.submit("df", "boom", f"kaboom-{i}") for i in range(10)),
                                           reactor.submit("df", "uppercase", 42))
            after = await asyncio.gather(*(reactor.submit("df", "transform", f"x{i}") for i in range(10)))
            return results, after
    results, after = run(go())
    for i, result in enumerate(results[:10]):
        assert result.error_code == "PF500", result
        assert result.error["message"] == f"ValueError: boom: kaboom-{i}"
    assert results[10].error_code == "PF500"
    assert "TypeError" in results[10].error["message"]
    assert "expects a string" in results[10].error["message"]
    assert [r.data for r in after] == [f"X{i}" for i in range(10)]
    # a raising handler does not cost a worker
    assert node.health()["worker_pids"] == pids_before


def test_unknown_element_is_offered_to_the_connected_peer_then_answered_PF001(node):
    """Hub routing: with no local handler, the node asks the connected peers (here only the
    submitter's own link) to run it; a PF001 answer means "cannot", and when nobody can run
    the key the submitter gets PF001, the spec's code for "no handler"."""
    async def go():
        async with Raw(node.endpoint) as raw:
            pkt = packet("no_such_element", "x", timeout_ms=5000)
            await raw.submit(31, pkt)
            offered = await raw.recv()
            assert offered["type"] == "submit" and offered["seq"] >= 1, offered
            assert offered["payload"]["id"] == pkt["id"]
            assert offered["payload"]["data"] == "x"
            assert 0 < offered["payload"]["timeout_ms"] <= 5000  # the time it has left
            # as the spec's reactors answer: a result with seq 0, status error, PF001
            await raw.send(frame("result", 0, {"packet_id": pkt["id"], "status": "error",
                                                "error": {"code": "PF001", "message": "no"},
                                                "duration_ms": 0}))
            reply = await raw.recv()
            assert reply["type"] == "result" and reply["seq"] == 31, reply
            assert reply["payload"]["packet_id"] == pkt["id"]
            assert reply["payload"]["status"] == "error"
            assert reply["payload"]["error"]["code"] == "PF001"
            message = reply["payload"]["error"]["message"]
            assert "df:no_such_element" in message and "has no handler" in message, message
            assert "data" not in reply["payload"]
            # the node remembers that this peer cannot: the next one is answered at once
            pkt2 = packet("no_such_element", "y")
            await raw.submit(32, pkt2)
            reply = await raw.recv()
            assert (reply["type"], reply["seq"], reply["payload"]["error"]["code"]) == ("result", 32, "PF001")
            await raw.roundtrip()
        # our own reactor announces what it runs (nothing), so it is not asked
        async with Reactor(node.endpoint) as reactor:
            result = await reactor.submit("ed", "notify_users", {"message": "hi"})
            assert result.error_code == "PF001", result
    run(go())


def test_a_plain_client_that_never_answers_gets_PF001_within_the_probe_window(node):
    """A raw client that is no reactor receives its own packet once (the spec's usage
    example needs that), ignores it, and gets PF001 after the probe window (500 ms by
    default), not after the packet's whole deadline (30 s)."""
    async def go():
        async with Raw(node.endpoint) as raw:
            pkt = packet("nope", 1)  # no timeout_ms: the default deadline is 30 s
            started = time.monotonic()
            await raw.submit(7, pkt)
            offered = await raw.recv()
            assert offered["type"] == "submit" and offered["payload"]["id"] == pkt["id"], offered
            reply = await raw.recv(5)
            elapsed = time.monotonic() - started
            assert reply["type"] == "result" and reply["seq"] == 7, reply
            assert reply["payload"]["error"]["code"] == "PF001", reply
            assert "did not answer within 500 ms" in reply["payload"]["error"]["message"], reply
            assert 0.4 <= elapsed < 2.0, elapsed
            # not asked again: it never answered anything, so the next one is PF001 at once
            started = time.monotonic()
            await raw.submit(8, packet("nope", 2))
            reply = await raw.recv(5)
            assert reply["payload"]["error"]["code"] == "PF001" and time.monotonic() - started < 0.4, reply
            # a late answer to the first one goes nowhere, and the link keeps working
            await raw.send(frame("result", 0, {"packet_id": pkt["id"], "status": "success",
                                                "data": "late", "duration_ms": 0}))
            await raw.roundtrip()
    run(go())


def test_without_hub_routing_an_unknown_element_gives_PF001_at_once(fresh_node):
    hub_off = fresh_node("--no-hub-routing", "--workers", "1")

    async def go():
        async with Raw(hub_off.endpoint) as raw:
            pkt = packet("no_such_element", "x")
            await raw.submit(31, pkt)
            reply = await raw.recv()
            assert reply["type"] == "result" and reply["seq"] == 31
            assert reply["payload"]["error"]["code"] == "PF001"
            assert "df:no_such_element" in reply["payload"]["error"]["message"]
    run(go())


def test_duplicate_in_flight_id_gives_PF409_and_the_first_packet_is_unaffected(node):
    async def go():
        dup = new_id("dup")
        async with Raw(node.endpoint) as raw, Raw(node.endpoint) as other:
            started = time.monotonic()
            await raw.submit(1, packet("sleep", 0.5, id=dup))
            await raw.submit(2, packet("transform", "second", id=dup))
            first_reply = await raw.recv()
            # the duplicate is answered at once, long before the sleeping packet ends
            assert time.monotonic() - started < 0.45
            assert first_reply["seq"] == 2
            assert first_reply["payload"]["packet_id"] == dup
            assert first_reply["payload"]["error"]["code"] == "PF409"
            # ids belong to their submitter (here: its connection): another may use the same
            await other.submit(1, packet("transform", "third", id=dup))
            other_reply = await other.recv()
            assert other_reply["seq"] == 1 and other_reply["payload"]["data"] == "THIRD", other_reply

            sleeper = await raw.recv()
            assert sleeper["seq"] == 1
            assert sleeper["payload"]["status"] == "success" and sleeper["payload"]["data"] == 0.5
            # once answered, the id may be used again
            await raw.submit(3, packet("transform", "again", id=dup))
            again = await raw.recv()
            assert again["seq"] == 3 and again["payload"]["data"] == "AGAIN"
    run(go())


def test_packet_field_rules_from_the_protocol_page(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            absent_data = packet("validate", group="cf")
            del absent_data["data"]
            await raw.submit(1, absent_data)  # absent data is null
            await raw.submit(2, packet("transform", "x", timeout_ms=1500.0))  # integral float
            await raw.submit(3, packet("transform", "y", future_field={"v": 2}))  # ignored
            await raw.submit(4, packet("transform", "z", dependencies=[]))  # same as none
            await raw.submit(5, packet("ctx", None, priority=None))  # null priority is 5
            replies = {r["seq"]: r["payload"] for r in await raw.recv_n(5)}
            assert replies[1]["data"] == {"valid": False}
            assert replies[2]["data"] == "X"
            assert replies[3]["data"] == "Y"
            assert replies[4]["data"] == "Z"
            assert replies[5]["data"]["priority"] == 5

            # an unknown dependency is waited for until the packet's own deadline
            await raw.submit(6, packet("transform", "w", dependencies=["some-other-packet"], timeout_ms=300))
            reply = await raw.recv()
            assert reply["type"] == "result" and reply["seq"] == 6
            assert reply["payload"]["error"]["code"] == "PF408"
            assert "some-other-packet" in reply["payload"]["error"]["message"]

            # more than a day is refused
            await raw.submit(7, packet("transform", "v", timeout_ms=24 * 3600 * 1000 + 1))
            reply = await raw.recv()
            assert reply["type"] == "error" and reply["payload"]["code"] == "PF002"
            assert "timeout_ms" in reply["payload"]["message"]
    run(go())


def test_a_cycle_and_a_refused_dependency_fail_PF006_at_once_not_at_the_deadline(node):
    """Every packet of a dependency cycle fails PF006 as the cycle closes, and a packet that
    depends on an id whose submit was refused fails PF006, whether it came before the
    refusal or after. The deadlines are 60 s: each answer must come without waiting for them
    (the 10 s receive limit only guards against a hang)."""
    async def go():
        async with Raw(node.endpoint) as raw:
            a, b = new_id("a"), new_id("b")
            await raw.submit(1, packet("transform", "a", id=a, dependencies=[b], timeout_ms=60_000))
            await raw.submit(2, packet("transform", "b", id=b, dependencies=[a], timeout_ms=60_000))
            replies = {r["seq"]: r for r in await raw.recv_n(2, timeout_s=10)}
            assert replies[2]["payload"]["error"]["code"] == "PF006", replies  # b closed the cycle
            assert "cycle" in replies[2]["payload"]["error"]["message"], replies
            assert replies[1]["payload"]["packet_id"] == a, replies
            assert replies[1]["payload"]["error"]["code"] == "PF006", replies  # a fails with it
            assert f"{b!r} was refused (PF006" in replies[1]["payload"]["error"]["message"], replies

            # after a refused submit (PF002: priority 11), a packet depending on its id
            bad = new_id("bad")
            await raw.submit(3, packet("transform", "x", id=bad, priority=11))
            refused = await raw.recv(10)
            assert refused["type"] == "error" and refused["payload"]["code"] == "PF002", refused
            await raw.submit(4, packet("transform", "y", dependencies=[bad], timeout_ms=60_000))
            reply = await raw.recv(10)
            assert reply["seq"] == 4 and reply["payload"]["error"]["code"] == "PF006", reply
            assert f"{bad!r} was refused (PF002)" in reply["payload"]["error"]["message"], reply

            # a packet already waiting for an id when that id's submit is refused
            later = new_id("later")
            await raw.submit(5, packet("transform", "z", dependencies=[later], timeout_ms=60_000))
            await raw.submit(6, packet("transform", "w", id=later, priority=0))
            replies = {r["seq"]: r for r in await raw.recv_n(2, timeout_s=10)}
            assert replies[6]["type"] == "error" and replies[6]["payload"]["code"] == "PF002", replies
            assert replies[5]["payload"]["error"]["code"] == "PF006", replies
            assert f"{later!r} was refused (PF002" in replies[5]["payload"]["error"]["message"], replies
            # the link and the ids are fine afterwards: the refused id may be submitted again
            await raw.submit(7, packet("transform", "ok", id=later))
            assert (await raw.recv(10))["payload"]["data"] == "OK"
    run(go())


def test_result_frames_sent_to_the_node_are_ignored_without_a_reply(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            # the spec's reactors send results with seq 0; this node sent them no packet
            await raw.send(frame("result", 0, {"packet_id": "nobody", "status": "success",
                                               "data": 1, "duration_ms": 1}))
            await raw.send(frame("error", 3, {"code": "PF500", "message": "whatever"}))
            ok = await raw.roundtrip("transform", "next")  # the first frame back answers this
            assert ok["payload"]["data"] == "NEXT"
    run(go())


# ---------------------------------------------------------------------------- bad frames

VALID_SUBMIT_SEQ = 4242


@pytest.mark.parametrize("text, expected_seq", [
    pytest.param("{this is not json", 0, id="malformed-json"),
    pytest.param("", 0, id="empty-frame"),
    pytest.param('[{"type": "submit", "seq": 3}]', 0, id="json-array"),
    pytest.param('"just a string"', 0, id="json-string"),
    pytest.param('{"type": "bogus", "seq": 41, "payload": {}}', 41, id="unknown-type"),
    pytest.param('{"seq": 43, "payload": {}}', 43, id="missing-type"),
    pytest.param('{"type": ["submit"], "seq": 47, "payload": {}}', 47, id="type-array"),
    pytest.param('{"type": {"submit": 1}, "seq": 48, "payload": {}}', 48, id="type-object"),
    pytest.param('{"type": 1, "seq": 49, "payload": {}}', 49, id="type-number"),
    pytest.param(frame("submit", "7", packet()), 0, id="seq-string"),
    pytest.param(frame("submit", -1, packet()), 0, id="seq-negative"),
    pytest.param(frame("submit", 1.5, packet()), 0, id="seq-float"),
    pytest.param(frame("submit", True, packet()), 0, id="seq-bool"),
    pytest.param(frame("submit", 2**53, packet()), 0, id="seq-too-big"),
    pytest.param('{"type": "submit", "payload": {}}', 0, id="seq-missing"),
    pytest.param(frame("heartbeat", 44, [1, 2]), 44, id="heartbeat-payload-array"),
    pytest.param(frame("result", 45, {"packet_id": "x", "status": "maybe"}), 45, id="result-bad-status"),
])
def test_malformed_frame_gets_a_PF400_error_frame_and_the_connection_keeps_working(node, text, expected_seq):
    async def go():
        async with Raw(node.endpoint) as raw:
            await raw.send(text)
            reply = await raw.recv()
            assert reply["type"] == "error", reply
            assert reply["seq"] == expected_seq
            assert reply["payload"]["code"] == "PF400"
            assert reply["payload"]["message"]
            # the same connection still works, for packets and heartbeats alike
            ok = await raw.roundtrip("transform", "after", seq=VALID_SUBMIT_SEQ)
            assert ok["payload"]["data"] == "AFTER"
            await raw.send(frame("heartbeat", 46, {"timestamp": 1}))
            beat = await raw.recv(heartbeats=True)
            assert beat["type"] == "heartbeat" and beat["seq"] == 46
            assert raw.close_code is None
    run(go())


@pytest.mark.parametrize("change, needle", [
    pytest.param({"priority": 0}, "priority", id="priority-0"),
    pytest.param({"priority": 11}, "priority", id="priority-11"),
    pytest.param({"priority": "5"}, "priority", id="priority-string"),
    pytest.param({"priority": 5.5}, "priority", id="priority-float"),
    pytest.param({"priority": True}, "priority", id="priority-bool"),
    pytest.param({"group": "xx"}, "group", id="bad-group"),
    pytest.param({"group": "DF"}, "group", id="group-upper-case"),
    pytest.param({"group": ["df"]}, "group", id="group-array"),
    pytest.param({"group": {"df": 1}}, "group", id="group-object"),
    pytest.param({"element": ["transform"]}, "element", id="element-array"),
    pytest.param({"id": ["x"]}, "id", id="id-array"),
    pytest.param({"id": ""}, "id", id="id-empty"),
    pytest.param({"id": "x" * 257}, "id", id="id-too-long"),
    pytest.param({"version": "2.0"}, "version", id="version-2.0"),
    pytest.param({"version": 1.0}, "version", id="version-number"),
    pytest.param({"version": None}, "version", id="version-missing"),
    pytest.param({"element": ""}, "element", id="element-empty"),
    pytest.param({"element": "bad element!"}, "element", id="element-chars"),
    pytest.param({"timeout_ms": -5}, "timeout_ms", id="timeout-negative"),
    pytest.param({"timeout_ms": "soon"}, "timeout_ms", id="timeout-string"),
    pytest.param({"dependencies": "p1"}, "dependencies", id="dependencies-string"),
    pytest.param({"metadata": [1, 2]}, "metadata", id="metadata-array"),
])
def test_invalid_packet_gets_a_PF002_error_frame_with_its_seq_and_id(node, change, needle):
    async def go():
        async with Raw(node.endpoint) as raw:
            pkt = {**packet("transform", "x"), **change}
            await raw.submit(77, pkt)
            reply = await raw.recv()
            assert reply["type"] == "error", reply
            assert reply["seq"] == 77
            assert reply["payload"]["code"] == "PF002"
            assert needle in reply["payload"]["message"]
            if isinstance(pkt["id"], str):  # echoed when readable, to correlate by id
                assert reply["payload"]["packet_id"] == pkt["id"]
            else:
                assert "packet_id" not in reply["payload"]
            ok = await raw.roundtrip("transform", "still open")
            assert ok["payload"]["data"] == "STILL OPEN"
    run(go())


def test_invalid_packet_without_a_readable_id_and_through_the_reactor(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            await raw.submit(5, {k: v for k, v in packet().items() if k != "id"})
            await raw.send(frame("submit", 6, "not a packet"))
            replies = await raw.recv_n(2)
            assert [(r["type"], r["seq"], r["payload"]["code"]) for r in replies] == [
                ("error", 5, "PF002"), ("error", 6, "PF002")]
            assert "packet_id" not in replies[0]["payload"]
        async with Reactor(node.endpoint) as reactor:
            with pytest.raises(RemoteError) as info:
                await reactor.submit("df", "transform", "x", priority=11)
            assert info.value.code == "PF002"
            assert (await reactor.submit("df", "transform", "x")).data == "X"
    run(go())


# ---------------------------------------------------------------------------- frame limits

@pytest.fixture(scope="module")
def small_frame_node(tmp_path_factory):
    running = start_node(tmp_path_factory.mktemp("small-frames"), "--max-frame-bytes", "4096", workers=1)
    yield running
    running.stop()


def test_oversized_frame_gets_PF413_with_its_seq_and_the_connection_stays_open(small_frame_node):
    async def go():
        async with Raw(small_frame_node.endpoint) as raw:
            big = submit_frame(901, packet("noop", "x" * 10_000))
            assert len(big) > 10_000
            await raw.send(big)
            reply = await raw.recv()
            assert reply["type"] == "error" and reply["seq"] == 901
            assert reply["payload"]["code"] == "PF413"
            assert "4096" in reply["payload"]["message"]

            # seq written after the payload (the Elixir reactor sorts keys): still recovered
            elixir_order = ('{"payload":' + orjson.dumps(packet("noop", "y" * 10_000)).decode()
                            + ',"seq":902,"type":"submit"}')
            await raw.send(elixir_order)
            reply = await raw.recv()
            assert reply["seq"] == 902 and reply["payload"]["code"] == "PF413"

            # a frame just under the limit is fine, on the same connection
            ok = await raw.roundtrip("noop", "z" * 3000)
            assert ok["payload"]["data"] == "z" * 3000
    run(go())


def test_frame_beyond_the_hard_limit_closes_with_1009(small_frame_node):
    async def go():
        async with Raw(small_frame_node.endpoint) as raw:
            try:
                await raw.send(submit_frame(903, packet("noop", "x" * (1 << 20) + "x" * 10_000)))
            except ConnectionClosed:
                pass  # the node may close before the whole frame is written
            with pytest.raises(ConnectionClosed):
                await raw.recv(timeout_s=10)
            assert raw.ws.close_code == 1009
        async with Raw(small_frame_node.endpoint) as again:  # the node itself is fine
            await again.roundtrip()
    run(go())


def test_frame_limit_counts_utf8_bytes_not_characters(small_frame_node):
    async def go():
        async with Raw(small_frame_node.endpoint) as raw:
            text = submit_frame(904, packet("noop", "\U0001F600" * 2500))
            assert len(text) < 4096 < len(text.encode())  # 2.6 k characters, 10 KB on the wire
            await raw.send(text)
            reply = await raw.recv()
            assert reply["type"] == "error" and reply["payload"]["code"] == "PF413", reply
            assert reply["seq"] == 904
            # 1 000 such characters (about 4 KB minus the envelope) still fit
            small = submit_frame(905, packet("noop", "\U0001F600" * 900))
            assert len(small.encode()) < 4096
            await raw.send(small)
            reply = await raw.recv()
            assert reply["seq"] == 905 and reply["payload"]["data"] == "\U0001F600" * 900
    run(go())


# ---------------------------------------------------------------------------- heartbeats

def test_heartbeat_is_answered_with_the_same_seq_and_the_node_status(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            now_ms = int(time.time() * 1000)
            await raw.send(frame("heartbeat", 5555, {"timestamp": now_ms}))
            beat = await raw.recv(heartbeats=True)
            assert beat["type"] == "heartbeat" and beat["seq"] == 5555
            payload = beat["payload"]
            assert isinstance(payload["timestamp"], int)
            assert abs(payload["timestamp"] - now_ms) < 5_000
            assert payload["node"]["status"] == "ready"
            assert payload["node"]["workers"] == node.health()["workers"] == 5  # df 2, cf, ed, rm
            assert payload["node"]["queued"] >= 0 and payload["node"]["inflight"] >= 0
            # a null payload (Elixir) is a heartbeat too
            await raw.send('{"type":"heartbeat","seq":5556,"payload":null}')
            beat = await raw.recv(heartbeats=True)
            assert beat["seq"] == 5556 and beat["payload"]["node"]["status"] == "ready"
        async with Reactor(node.endpoint) as reactor:
            status = await reactor.heartbeat()
            assert status["node"]["status"] == "ready" and status["node"]["workers"] == 5
    run(go())


@pytest.fixture(scope="module")
def fast_heartbeat_node(tmp_path_factory):
    running = start_node(tmp_path_factory.mktemp("fast-heartbeat"), "--heartbeat-interval-ms", "300",
                         workers=1)
    yield running
    running.stop()


def test_node_sends_heartbeats_and_drops_a_silent_peer_but_not_a_talking_one(fast_heartbeat_node):
    async def silent():
        async with Raw(fast_heartbeat_node.endpoint) as raw:
            started = time.monotonic()
            frames = await raw.recv_until_closed(timeout_s=5)
            return time.monotonic() - started, raw.close_code, frames + raw.node_heartbeats

    async def talking():
        async with Raw(fast_heartbeat_node.endpoint) as raw:
            for i in range(10):  # 2 s: well past 3 intervals of 0.3 s
                await raw.send(frame("heartbeat", 100 + i, {"timestamp": 0}))
                await asyncio.sleep(0.2)
            assert raw.close_code is None
            await raw.roundtrip()

    async def go():
        return await asyncio.gather(silent(), talking())
    (elapsed, code, frames), _ = run(go())
    assert code == 4408
    assert 0.8 <= elapsed < 3.0
    beats = [f for f in frames if f["type"] == "heartbeat"]
    assert beats and all(b["payload"]["node"]["status"] == "ready" for b in beats)
    assert [b["seq"] for b in beats] == sorted(b["seq"] for b in beats)  # the node counts up


def test_reactor_submit_is_not_answered_by_an_unsolicited_node_heartbeat(fast_heartbeat_node):
    async def go():
        async with Reactor(fast_heartbeat_node.endpoint) as reactor:
            # the reactor's first request has seq 1; the node's first heartbeat (at 0.3 s) too
            return await reactor.submit("df", "sleep", 0.8)
    result = run(go())
    assert getattr(result, "data", result) == 0.8, result


# ---------------------------------------------------------------------------- HTTP

def test_healthz_says_ready_and_nothing_more_and_status_has_the_detail(node):
    status, headers, body = http_get(node.http, "/healthz")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert orjson.loads(body) == {"status": "ready"}  # no pids, no counters: readiness only
    status, headers, body = http_get(node.http, "/status")  # no tokens here: loopback only
    assert status == 200 and headers["content-type"] == "application/json"
    health = orjson.loads(body)
    assert health["status"] == "ready"
    assert health["workers"] == 5 and health["lanes"]["df"]["workers"] == 2  # and cf, ed, rm
    assert len(health["worker_pids"]) == 5
    descendants = {p.pid for p in psutil.Process(node.proc.pid).children(recursive=True)}
    for pid in health["worker_pids"]:  # real, live processes of the node (forked by its fork server)
        proc = psutil.Process(pid)
        assert pid in descendants
        assert psutil.Process(proc.ppid()).ppid() == node.proc.pid  # the fork server is the node's child
        assert proc.status() != psutil.STATUS_ZOMBIE
    assert "df:transform" in health["handlers"] and "df:hang" in health["handlers"]
    assert health["endpoint"] == "/packetflow/v1"
    assert isinstance(health["counters"], dict)
    # the query string is ignored
    assert http_get(node.http, "/healthz?verbose=1")[0] == 200


def test_unknown_http_path_is_404_and_a_plain_get_on_the_endpoint_is_426(node):
    status, _, body = http_get(node.http, "/nope")
    assert status == 404
    assert b"/packetflow/v1" in body
    assert http_get(node.http, "/")[0] == 404
    assert http_get(node.http, "/packetflow/v2")[0] == 404
    assert http_get(node.http, "/packetflow/v1")[0] == 426


def test_priority_orders_queued_packets_behind_a_busy_worker(fresh_node):
    # One worker, default prefetch: while it is busy, queued packets of a key never run
    # before are not prefetched to it, so they run highest priority first, FIFO within one.
    n = fresh_node(workers=1)
    order = [(1, "low-a"), (5, "mid-a"), (10, "high-a"), (1, "low-b"), (10, "high-b"), (5, "mid-b")]

    async def go():
        async with Raw(n.endpoint) as raw:
            await raw.submit(1, packet("sleep", 0.4))
            await asyncio.sleep(0.1)
            for seq, (prio, name) in enumerate(order, start=2):
                await raw.submit(seq, packet("stamp", name, priority=prio))
            return await raw.recv_n(len(order) + 1)
    replies = run(go())
    stamps = sorted((r["payload"]["data"]["ns"], r["payload"]["data"]["data"])
                    for r in replies if r["seq"] != 1)
    assert [name for _, name in stamps] == ["high-a", "high-b", "mid-a", "mid-b", "low-a", "low-b"]


def test_a_fragmented_message_is_reassembled_and_answered(node):
    """RFC 6455 lets a peer split one message into continuation frames; a transport that
    sees frames, not messages (picows), must put them back together."""
    frame = submit_frame(77, packet("transform", "in three pieces"))
    text = frame.decode() if isinstance(frame, bytes) else frame
    pieces = [text[:20], text[20:45], text[45:]]

    async def go():
        async with Raw(node.endpoint) as raw:
            await raw.ws.send(pieces)  # an iterable: one message, three frames
            reply = await raw.recv()
            ok = await raw.roundtrip("transform", "and whole")  # the link still works
            return reply, ok
    reply, ok = run(go())
    assert reply["type"] == "result" and reply["seq"] == 77
    assert reply["payload"]["data"] == "IN THREE PIECES"
    assert ok["payload"]["data"] == "AND WHOLE"


def test_prefetch_does_not_defeat_priority_for_slow_handlers(fresh_node):
    """The df lane busy with 150 ms packets; six priority-1 packets submitted just before six
    priority-10 ones: a worker holds only the packet it runs (its estimated work is far over
    the 1 ms prefetch), so every priority-10 packet finishes before any priority-1 one."""
    n = fresh_node(workers=2)

    async def go():
        async with Raw(n.endpoint) as raw:
            await raw.roundtrip("sleep", 0.15)  # the node learns how long df:sleep takes
            for seq in (1, 2):  # both workers busy
                await raw.submit(seq, packet("sleep", 0.15))
            await asyncio.sleep(0.05)
            for seq in range(10, 16):
                await raw.submit(seq, packet("sleep", 0.15, priority=1))
            for seq in range(20, 26):
                await raw.submit(seq, packet("sleep", 0.15, priority=10))
            return await raw.recv_n(14, 10)
    replies = run(go())
    assert all(r["payload"]["status"] == "success" for r in replies), replies
    order = [r["seq"] for r in replies if r["seq"] >= 10]
    assert max(order.index(seq) for seq in range(20, 26)) < min(order.index(seq) for seq in range(10, 16)), order
