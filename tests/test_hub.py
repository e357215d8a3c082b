"""Hub routing (pfnode/core/hub.py): a packet with no local handler runs on a connected reactor.

The e2e tests here use real nodes over real sockets. Reactors are mostly `Raw` peers
that answer the node's submit frames by hand (full control of seq, timing, PF001
answers and disconnects); `pfnode.client.Reactor` shows the capabilities extension
end to end. Most tests share one node of this module (`hub`); each starts by waiting
until the previous test's links are gone, since every connected link is a candidate
reactor. The pure ranking rules are unit-tested with fake links at the end.
"""
from __future__ import annotations

import asyncio
import dataclasses
import random
import time

import orjson
import pytest
from websockets.exceptions import ConnectionClosed

from pfnode.client import Reactor
from pfnode.core.hub import LinkRoutes, ReactorProfile, rank_targets
from tests.conftest import TEST_TOKENS, start_node
from tests.e2e_util import Raw, frame, new_id, packet, run

pytestmark = pytest.mark.timeout(60)

K = "hub_job"  # no node in this module has a handler for df:hub_job (nor the others used here)
# Every peer here presents this token of the module's nodes, whose roles (submit, reactor) are a
# spec reactor's: it submits, and it may be sent packets to run. The role rules themselves are
# tested in tests/test_auth.py.
T = TEST_TOKENS["reactor"]
KEY = f"df:{K}"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A node of this module's own (1 df worker, the test handlers, default reroute grace)."""
    running = start_node(tmp_path_factory.mktemp("hub"), workers=1, tokens=True)
    yield running
    running.stop()


# ---------------------------------------------------------------------------- helpers

def job(data=None, *, element: str = K, **extra) -> dict:
    """A packet for an element no node here runs."""
    return packet(element, data, **extra)


def peer_of(raw: Raw) -> str:
    """How the node names this peer (its address as the node sees it)."""
    host, port = raw.ws.local_address[:2]
    return f"{host}:{port}"


def reactor_peer(reactor: Reactor) -> str:
    host, port = reactor._ws.local_address[:2]
    return f"{host}:{port}"


def result_frame(pid: str, seq: int = 0, *, status: str = "success", data=None, code: str = "PF500",
                 message: str = "", duration_ms: float = 1.0) -> str:
    """A reactor's answer (seq 0 as the spec reactors send it, unless told)."""
    payload: dict = {"packet_id": pid, "status": status}
    if status == "success":
        payload["data"] = data
    else:
        payload["error"] = {"code": code, "message": message}
    payload["duration_ms"] = duration_ms
    return frame("result", seq, payload)


def refusal(pid: str, seq: int = 0) -> str:
    """The spec's "I have no handler for it" answer."""
    return result_frame(pid, seq, status="error", code="PF001", message="No handler")


async def announce(raw: Raw, capabilities, seq: int = 900_001) -> dict:
    """Send a heartbeat with a `capabilities` value; return the node's heartbeat answer
    (the node handles a link's frames in order, so once it is back the list is in force)."""
    await raw.send(frame("heartbeat", seq, {"timestamp": int(time.time() * 1000),
                                            "capabilities": capabilities}))
    return await heartbeat_reply(raw, seq)


async def heartbeat_reply(raw: Raw, seq: int, timeout_s: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        msg = await raw.recv(max(0.01, deadline - time.monotonic()), heartbeats=True)
        if msg["type"] != "heartbeat":
            raise AssertionError(f"expected the heartbeat answer to seq {seq}, got {msg}")
        if msg["seq"] == seq:
            return msg
        raw.node_heartbeats.append(msg)  # one of the node's own, on its own count


async def offered(raw: Raw, pkt: dict | None = None, timeout_s: float = 5.0) -> dict:
    """The next frame must be a submit from the node (for `pkt`, when given)."""
    msg = await raw.recv(timeout_s)
    assert msg["type"] == "submit", msg
    assert type(msg["seq"]) is int and msg["seq"] >= 1, msg
    if pkt is not None:
        assert msg["payload"]["id"] == pkt["id"], msg
    return msg


async def reply_to(raw: Raw, seq: int, timeout_s: float = 5.0) -> dict:
    """The next frame must be the result for our submit `seq`; return its payload."""
    msg = await raw.recv(timeout_s)
    assert msg["type"] == "result" and msg["seq"] == seq, msg
    return msg["payload"]


async def silence(raw: Raw, within_s: float = 0.3) -> None:
    """Nothing (but the node's own heartbeats) arrives within `within_s`."""
    try:
        msg = await raw.recv(within_s)
    except asyncio.TimeoutError:
        return
    raise AssertionError(f"expected no frame, got {msg}")


async def first_offered(raws: list[Raw], pkt: dict, timeout_s: float = 5.0) -> tuple[Raw, dict]:
    """Which of `raws` the node offers `pkt` to first (when their order is not defined)."""
    tasks = {asyncio.ensure_future(r.recv(timeout_s)): r for r in raws}
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    assert len(done) == 1, [t.result() for t in done]
    task = done.pop()
    msg = task.result()
    assert msg["type"] == "submit" and msg["seq"] >= 1 and msg["payload"]["id"] == pkt["id"], msg
    return tasks[task], msg


async def links_settle(node, count: int, timeout_s: float = 5.0) -> None:
    """Wait until the node has exactly `count` links (earlier tests' links are gone)."""
    deadline = time.monotonic() + timeout_s
    while True:
        connections = (await asyncio.to_thread(node.health))["connections"]
        if connections == count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"node has {connections} links, expected {count}")
        await asyncio.sleep(0.02)


def error_of(payload: dict, code: str) -> str:
    """Check an error result (code, no data) and return its message."""
    assert payload["status"] == "error", payload
    assert payload["error"]["code"] == code, payload
    assert "data" not in payload, payload
    return payload["error"]["message"]


# ---------------------------------------------------------------------------- forwarding and relaying

def test_packet_is_forwarded_with_time_left_and_the_result_relayed_as_sent(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r:
            hb = await announce(s, [])  # the submitter runs nothing
            assert hb["payload"]["node"]["status"] == "ready"
            await announce(r, [KEY])
            pkt = job({"n": 1}, priority=8, timeout_ms=4000, metadata={"trace": "t-1"})
            await s.submit(31, pkt)
            sub = await offered(r, pkt)
            p = sub["payload"]
            assert (p["version"], p["group"], p["element"]) == ("1.0", "df", K)
            assert p["data"] == {"n": 1} and p["priority"] == 8 and p["metadata"] == {"trace": "t-1"}
            assert 3000 < p["timeout_ms"] <= 4000  # the time it has left
            # a spec reactor's answer: seq 0, matched by packet id
            await r.send(result_frame(pkt["id"], 0, data={"n": 2}, duration_ms=12.5))
            assert await reply_to(s, 31) == {"packet_id": pkt["id"], "status": "success",
                                             "data": {"n": 2}, "duration_ms": 12.5}

            # no timeout given: the node's default (30 s) is what it has left
            pkt2 = job("two")
            await s.submit(32, pkt2)
            sub2 = await offered(r, pkt2)
            assert sub2["seq"] != sub["seq"]
            assert 29_000 < sub2["payload"]["timeout_ms"] <= 30_000
            # an error result with an arbitrary seq is relayed as the reactor sent it
            await r.send(result_frame(pkt2["id"], 777_777, status="error", code="PF500",
                                      message="kaboom", duration_ms=7.25))
            assert await reply_to(s, 32) == {"packet_id": pkt2["id"], "status": "error",
                                             "error": {"code": "PF500", "message": "kaboom"},
                                             "duration_ms": 7.25}

            # an Elixir-style answer: keys sorted, "type" last
            pkt3 = job("three", timeout_ms=4000)
            await s.submit(33, pkt3)
            await offered(r, pkt3)
            await r.send(orjson.dumps({"payload": {"data": [3, {"z": None}], "duration_ms": 2,
                                                   "packet_id": pkt3["id"], "status": "success"},
                                       "seq": 0, "type": "result"}))
            assert await reply_to(s, 33) == {"packet_id": pkt3["id"], "status": "success",
                                             "data": [3, {"z": None}], "duration_ms": 2}
            await silence(s)
            await silence(r)
    run(go(), 20)


def test_the_submitters_own_link_may_run_its_packet(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s:  # alone, and it never said what it runs
            pkt = job("me", timeout_ms=5000)
            await s.submit(5, pkt)
            sub = await offered(s, pkt)
            assert sub["payload"]["data"] == "me"
            await s.send(result_frame(pkt["id"], 0, data="ran on myself"))
            reply = await reply_to(s, 5)
            assert reply["packet_id"] == pkt["id"]
            assert (reply["status"], reply["data"]) == ("success", "ran on myself")
    run(go(), 20)


def test_without_tokens_a_peer_that_never_announced_nor_answered_runs_another_peers_packet(node):
    """The spec's reactors never say what they run. On a node without tokens (the session's
    node), one that has answered nothing yet is asked for a key no link is known to run, before
    the submitter's own link; it runs the packet and the answer goes to the submitter."""
    async def go():
        await links_settle(node, 0)
        async with Raw(node.endpoint) as s, Raw(node.endpoint) as r:
            await links_settle(node, 2)
            pkt = job("yours", timeout_ms=5000)
            await s.submit(5, pkt)
            sub = await offered(r, pkt)  # the other peer first, the submitter's own link last
            assert sub["payload"]["data"] == "yours"
            await r.send(result_frame(pkt["id"], 0, data="ran by the other peer"))
            reply = await reply_to(s, 5)
            assert (reply["packet_id"], reply["status"], reply["data"]) == (pkt["id"], "success",
                                                                            "ran by the other peer")
            # known to run it now: asked first again; the submitter is not asked
            pkt = job("again", timeout_ms=5000)
            await s.submit(6, pkt)
            await offered(r, pkt)
            await r.send(result_frame(pkt["id"], 0, data="again"))
            assert (await reply_to(s, 6))["data"] == "again"
    run(go(), 20)


def test_a_reactor_running_its_own_packets_is_not_stopped_by_its_in_flight_limit(fresh_node):
    """The in-flight limit pauses reading a peer; a peer whose packets the hub sends back to
    it answers them on that same link, so those do not count (else: stuck until PF504)."""
    node = fresh_node("--workers", "1", "--max-inflight-per-connection", "4", handlers="tests.handlers_testing", tokens=True)

    async def go():
        async with Reactor(node.endpoint, token=T) as reactor:
            reactor.register("df", K, lambda data: data * 2)
            await reactor.announce_capabilities()
            results = await asyncio.gather(*(reactor.submit("df", K, i, timeout_ms=8000) for i in range(40)))
            assert [r.data for r in results] == [2 * i for i in range(40)], [r.error for r in results if not r.ok]
            # the limit still holds for packets that run elsewhere: the node's own handlers
            local = await asyncio.gather(*(reactor.submit("df", "pid", None) for _ in range(20)))
            assert all(r.ok for r in local)
    run(go(), 30)
    assert node.health()["hub"]["relayed"] == 40


def test_builtins_and_local_handlers_are_never_forwarded(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, TEST_TOKENS["admin"]) as s, Raw(hub.endpoint, T) as r:  # both would be asked
            status_pkt = packet("status", None, group="mc")
            await s.submit(1, status_pkt)
            reply = await reply_to(s, 1)
            assert reply["packet_id"] == status_pkt["id"] and reply["status"] == "success", reply
            assert "recommended" in reply["data"]
            local = packet("transform", "abc")
            await s.submit(2, local)
            reply = await reply_to(s, 2)
            assert (reply["packet_id"], reply["data"]) == (local["id"], "ABC")
            await silence(r)
            await silence(s)
    run(go(), 20)


def test_a_result_from_a_link_not_holding_the_packet_is_ignored(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r, Raw(hub.endpoint, T) as other:
            await announce(s, [])
            await announce(r, [KEY])
            await announce(other, [])
            pkt = job("real?", timeout_ms=5000)
            await s.submit(1, pkt)
            sub = await offered(r, pkt)
            await other.send(result_frame(pkt["id"], 0, data="forged"))
            await other.send(result_frame(new_id("never-sent"), 0, data="stray"))
            await silence(s)
            await r.send(result_frame(pkt["id"], sub["seq"], data="real"))
            reply = await reply_to(s, 1)
            assert reply["data"] == "real", reply
            # the stray results cost the other link nothing
            await silence(other)
            await other.roundtrip()
    run(go(), 20)


def test_large_payload_metadata_priority_and_dependencies_pass_through_untouched(hub):
    blob = "x" * 200_000 + "é€😀\n\"\\"
    nested = {"rows": [{"i": i, "s": str(i), "f": i / 7} for i in range(300)], "deep": {}}
    level = nested["deep"]
    for i in range(40):
        level["d"] = {"i": i}
        level = level["d"]
    # number spellings and spacing that a re-encoding would change
    data_text = ('{"n":  1.50, "e": [1E2, 0.1000, -0], "blob": ' + orjson.dumps(blob).decode()
                 + ', "nested": ' + orjson.dumps(nested).decode() + '}')
    pid = new_id("big")
    submit_text = ('{"type":"submit","seq":9,"payload":{"version":"1.0","id":"' + pid + '","group":"df",'
                   '"element":"' + K + '","data":' + data_text + ',"priority":9,"timeout_ms":20000,'
                   '"dependencies":["dep-a","dep-b"],"metadata":{"trace":"t","n":[1,2],"deep":{"x":null}}}}')

    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r:
            await announce(s, [])
            await announce(r, [KEY])
            await s.send(submit_text)
            while True:  # read the raw text of the offered frame
                text = await asyncio.wait_for(r.ws.recv(), 10)
                if orjson.loads(text)["type"] != "heartbeat":
                    break
            assert data_text in text  # byte for byte: the data was not re-encoded
            sub = orjson.loads(text)
            assert sub["type"] == "submit" and sub["seq"] >= 1
            p = sub["payload"]
            assert p["id"] == pid and (p["group"], p["element"], p["version"]) == ("df", K, "1.0")
            assert p["data"] == orjson.loads(data_text)
            assert p["data"]["blob"] == blob
            assert p["priority"] == 9
            assert p["dependencies"] == ["dep-a", "dep-b"]
            assert p["metadata"] == {"trace": "t", "n": [1, 2], "deep": {"x": None}}
            assert 19_000 < p["timeout_ms"] <= 20_000
            # and a large result comes back whole, its data as the reactor wrote it
            await r.send('{"type":"result","seq":0,"payload":{"packet_id":"' + pid + '","status":"success",'
                         '"data":' + data_text + ',"duration_ms":3}}')
            while True:
                text = await asyncio.wait_for(s.ws.recv(), 10)
                if orjson.loads(text)["type"] != "heartbeat":
                    break
            assert data_text in text  # byte for byte: not re-encoded on the way back either
            reply = orjson.loads(text)
            assert reply["type"] == "result" and reply["seq"] == 9
            assert reply["payload"]["packet_id"] == pid and reply["payload"]["status"] == "success"
            assert reply["payload"]["data"] == orjson.loads(data_text)
            assert reply["payload"]["duration_ms"] == 3
    run(go(), 20)


# ---------------------------------------------------------------------------- choosing reactors

def test_pf001_sends_it_to_the_next_link_which_is_then_known_to_run_it(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r1, Raw(hub.endpoint, T) as r2:
            await announce(s, [])
            pkt = job("a", timeout_ms=5000)
            await s.submit(1, pkt)
            refuser, first = await first_offered([r1, r2], pkt)  # both unknown: either first
            runner = r2 if refuser is r1 else r1
            await refuser.send(refusal(pkt["id"]))
            second = await offered(runner, pkt)
            assert second["payload"]["data"] == "a"
            await runner.send(result_frame(pkt["id"], second["seq"], data="A"))
            reply = await reply_to(s, 1)
            assert (reply["packet_id"], reply["status"], reply["data"]) == (pkt["id"], "success", "A")
            await silence(refuser)

            # the same key: straight to the link that ran it; the refuser is not asked
            pkt2 = job("b", timeout_ms=5000)
            await s.submit(2, pkt2)
            sub = await offered(runner, pkt2)
            await runner.send(result_frame(pkt2["id"], sub["seq"], data="B"))
            assert (await reply_to(s, 2))["data"] == "B"
            await silence(refuser, 0.2)

            # a PF001 counts for its key only: for another key the refuser is asked again
            other = job("c", element="hub_other", timeout_ms=5000)
            await s.submit(3, other)
            got, sub = await first_offered([r1, r2], other)
            if got is runner:  # it does not run this one: the refuser must be asked next
                await runner.send(refusal(other["id"], sub["seq"]))
                sub = await offered(refuser, other)
            await refuser.send(result_frame(other["id"], 0, data="C"))
            assert (await reply_to(s, 3))["data"] == "C"
    run(go(), 20)


@pytest.mark.parametrize("busy", ["PF004", "PF503"])
def test_a_busy_or_stopping_reactor_passes_the_packet_on_and_alone_its_code_is_relayed(hub, busy):
    """PF004 (overloaded) and PF503 (shutting down) say the packet did not run there: the next
    reactor is asked; when none is left, the submitter gets that code, to retry later."""
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r1, Raw(hub.endpoint, T) as r2:
            await announce(s, [])
            await announce(r1, [KEY])
            await announce(r2, [KEY])
            pkt = job("a", timeout_ms=5000)
            await s.submit(1, pkt)
            busy_one, sub = await first_offered([r1, r2], pkt)
            other = r2 if busy_one is r1 else r1
            await busy_one.send(result_frame(pkt["id"], sub["seq"], status="error", code=busy, message="busy"))
            sub = await offered(other, pkt)
            await other.send(result_frame(pkt["id"], sub["seq"], data="ran"))
            assert (await reply_to(s, 1))["data"] == "ran"
            # both busy: the submitter learns the reactor's code, and who said it
            pkt = job("b", timeout_ms=5000)
            await s.submit(2, pkt)
            first, sub = await first_offered([r1, r2], pkt)
            await first.send(result_frame(pkt["id"], 0, status="error", code=busy, message="busy"))
            second = r2 if first is r1 else r1
            await offered(second, pkt)
            await second.send(result_frame(pkt["id"], 0, status="error", code=busy, message="busy"))
            reply = await reply_to(s, 2)
            message = error_of(reply, busy)
            assert peer_of(r1) in message and peer_of(r2) in message, message
            # still known to run it: the next packet goes to them again
            pkt = job("c", timeout_ms=5000)
            await s.submit(3, pkt)
            who, sub = await first_offered([r1, r2], pkt)
            await who.send(result_frame(pkt["id"], 0, data="c"))
            assert (await reply_to(s, 3))["data"] == "c"
    run(go(), 20)


def test_all_refuse_gives_pf001_naming_everyone_asked_with_the_submitter_last(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r:  # neither says what it runs
            pkt = job("x", timeout_ms=5000)
            await s.submit(31, pkt)
            sub = await offered(r, pkt)  # the other link first, the submitter's own last
            await r.send(refusal(pkt["id"], sub["seq"]))
            mine = await offered(s, pkt)
            await s.send(refusal(pkt["id"], 0))
            msg = error_of(await reply_to(s, 31), "PF001")
            assert KEY in msg and "asked: " in msg, msg
            asked = msg.split("asked: ", 1)[1]
            assert asked.index(peer_of(r)) < asked.index(peer_of(s)), msg
            assert asked.count("has no handler") == 2, msg
            assert mine["payload"]["id"] == pkt["id"]

            # both remembered: the next one is answered at once, nobody asked
            pkt2 = job("y", timeout_ms=5000)
            await s.submit(32, pkt2)
            reply = await reply_to(s, 32)
            assert reply["packet_id"] == pkt2["id"]
            assert "asked" not in error_of(reply, "PF001")
            await silence(r)
    run(go(), 20)


def test_an_error_frame_answering_our_submit_sends_it_to_the_next_link_then_pf003(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r1:
            await announce(s, [])
            await announce(r1, [KEY])  # announced: asked before any unknown link
            async with Raw(hub.endpoint, T) as r2:
                pkt = job(1, timeout_ms=5000)
                await s.submit(1, pkt)
                sub = await offered(r1, pkt)
                await r1.send(frame("error", sub["seq"], {"code": "PF400", "message": "not today"}))
                sub2 = await offered(r2, pkt)
                await r2.send(result_frame(pkt["id"], sub2["seq"], data="via r2"))
                reply = await reply_to(s, 1)
                assert (reply["packet_id"], reply["data"]) == (pkt["id"], "via r2")
            await links_settle(hub, 2)
            pkt = job(2, timeout_ms=5000)
            await s.submit(2, pkt)
            sub = await offered(r1, pkt)
            await r1.send(frame("error", sub["seq"], {"code": "PF400", "message": "not today"}))
            msg = error_of(await reply_to(s, 2), "PF003")
            assert KEY in msg and "asked: " in msg, msg
            assert peer_of(r1) in msg and "PF400 not today" in msg, msg
    run(go(), 20)


def test_known_reactors_share_the_load_least_loaded_first(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r1, Raw(hub.endpoint, T) as r2:
            await announce(s, [])
            await announce(r1, [KEY])
            await announce(r2, [KEY])
            for round_ in range(2):
                pkts = [job(f"{round_}-{i}", timeout_ms=5000) for i in range(2)]
                for i, pkt in enumerate(pkts):
                    await s.submit(10 * round_ + i + 1, pkt)
                got1, got2 = await offered(r1), await offered(r2)
                assert {got1["payload"]["id"], got2["payload"]["id"]} == {p["id"] for p in pkts}
                await silence(r1, 0.1)
                await silence(r2, 0.1)
                await r1.send(result_frame(got1["payload"]["id"], 0, data="r1"))
                await r2.send(result_frame(got2["payload"]["id"], 0, data="r2"))
                replies = {r["seq"]: r["payload"] for r in await s.recv_n(2)}
                by_id = {p["packet_id"]: p["data"] for p in replies.values()}
                assert sorted(replies) == [10 * round_ + 1, 10 * round_ + 2]
                assert by_id == {got1["payload"]["id"]: "r1", got2["payload"]["id"]: "r2"}
    run(go(), 20)


# ---------------------------------------------------------------------------- the capabilities extension

def test_announced_capabilities_are_authoritative_and_replace_each_other(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r:
            await announce(s, [])
            hb = await announce(r, ["df:hub_other"], seq=55)
            assert hb["type"] == "heartbeat" and hb["seq"] == 55
            assert hb["payload"]["node"]["status"] == "ready"
            # r said it does not run df:hub_job: not asked, PF001 at once
            pkt = job(timeout_ms=5000)
            started = time.monotonic()
            await s.submit(1, pkt)
            reply = await reply_to(s, 1)
            assert time.monotonic() - started < 1.0
            assert reply["packet_id"] == pkt["id"]
            assert "asked" not in error_of(reply, "PF001")
            await silence(r)
            # what it announced it is asked for
            other = job(timeout_ms=5000, element="hub_other")
            await s.submit(2, other)
            sub = await offered(r, other)
            await r.send(result_frame(other["id"], sub["seq"], data="ok"))
            assert (await reply_to(s, 2))["data"] == "ok"
            # a new list replaces the old, even over what it was seen to run
            await announce(r, [KEY], seq=56)
            other2 = job(timeout_ms=5000, element="hub_other")
            await s.submit(3, other2)
            error_of(await reply_to(s, 3), "PF001")
            await silence(r, 0.1)
            pkt2 = job(timeout_ms=5000)
            await s.submit(4, pkt2)
            sub = await offered(r, pkt2)
            await r.send(result_frame(pkt2["id"], sub["seq"], data="now"))
            assert (await reply_to(s, 4))["data"] == "now"
            # an empty list: it runs nothing
            await announce(r, [], seq=57)
            pkt3 = job(timeout_ms=5000)
            await s.submit(5, pkt3)
            error_of(await reply_to(s, 5), "PF001")
            await silence(r, 0.1)

        # an announcement also overrides a PF001 learnt earlier
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r:
            await announce(s, [])
            pkt = job(timeout_ms=5000, element="hub_third")
            await s.submit(1, pkt)
            sub = await offered(r, pkt)
            await r.send(refusal(pkt["id"], sub["seq"]))
            error_of(await reply_to(s, 1), "PF001")
            await announce(r, ["df:hub_third"])
            pkt = job(timeout_ms=5000, element="hub_third")
            await s.submit(2, pkt)
            sub = await offered(r, pkt)
            await r.send(result_frame(pkt["id"], sub["seq"], data=3))
            assert (await reply_to(s, 2))["data"] == 3
    run(go(), 20)


def test_malformed_capabilities_are_ignored_and_the_heartbeat_still_answered(hub):
    malformed = ["df:hub_job", ["df:hub_job", 1], {"df:hub_job": True}, [None], 42]

    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r:
            await announce(s, [])
            for i, caps in enumerate(malformed):
                hb = await announce(r, caps, seq=70 + i)  # answered, seq for seq
                assert hb["payload"]["node"]["status"] == "ready"
            # still not known either way: asked
            pkt = job(timeout_ms=5000)
            await s.submit(1, pkt)
            sub = await offered(r, pkt)
            await r.send(result_frame(pkt["id"], sub["seq"], data="asked"))
            assert (await reply_to(s, 1))["data"] == "asked"
            # a valid list, then a malformed one: the valid one stays in force
            await announce(r, ["df:hub_other"], seq=80)
            await announce(r, ["df:hub_job", 5], seq=81)
            pkt = job(timeout_ms=5000)
            await s.submit(2, pkt)
            error_of(await reply_to(s, 2), "PF001")
            await silence(r, 0.1)
            other = job(timeout_ms=5000, element="hub_other")
            await s.submit(3, other)
            sub = await offered(r, other)
            await r.send(result_frame(other["id"], 0, data="other"))
            assert (await reply_to(s, 3))["data"] == "other"
            return peer_of(r)
    peer = run(go(), 20)
    warnings = [line for line in hub.log().splitlines()
                if peer in line and "capabilities that are not a list of strings" in line]
    assert len(warnings) == len(malformed) + 1, warnings


def test_python_reactor_announces_at_start_and_on_register(hub):
    async def go():
        await links_settle(hub, 0)
        async with Reactor(hub.endpoint, token=T) as s:  # registers nothing: announces []
            ra = Reactor(hub.endpoint, token=T)
            ra.register("df", "hub_a", lambda data: {"a": data})
            async with ra:
                await ra.heartbeat()  # its announcement, sent at start, has arrived
                # it said it runs df:hub_a only: not asked for df:hub_b
                result = await s.submit("df", "hub_b", 1, timeout_ms=5000)
                assert result.error_code == "PF001", result
                assert "asked" not in result.error["message"], result

                async def hub_b(data, ctx):
                    return {"b": data, "id": ctx.packet_id}
                ra.register("df", "hub_b", hub_b)  # announces the new list by itself
                await asyncio.sleep(0.1)
                await ra.heartbeat()
                pid = new_id("b")
                result = await s.submit("df", "hub_b", 2, timeout_ms=5000, packet_id=pid)
                assert result.ok and result.data == {"b": 2, "id": pid}, result
                assert result.packet_id == pid

                # an unknown peer is not asked while a known reactor runs the key
                async with Raw(hub.endpoint, T) as p:
                    result = await s.submit("df", "hub_a", 3, timeout_ms=5000)
                    assert result.ok and result.data == {"a": 3}, result
                    await silence(p)
                    # explicit announcement after registering
                    ra.register("df", "hub_c", lambda data: f"c{data}")
                    await ra.announce_capabilities()
                    await ra.heartbeat()
                    result = await s.submit("df", "hub_c", 4, timeout_ms=5000)
                    assert result.ok and result.data == "c4", result
                    await silence(p, 0.1)
                    # a handler that raises: its PF500 comes back through the hub
                    ra.register("df", "hub_raise", lambda data: 1 / 0)
                    await ra.announce_capabilities()
                    await ra.heartbeat()
                    result = await s.submit("df", "hub_raise", None, timeout_ms=5000)
                    assert result.error_code == "PF500", result
                    assert "ZeroDivisionError" in result.error["message"]
    run(go(), 20)


def test_a_spec_pure_reactor_is_learnt_by_probing(hub):
    async def go():
        await links_settle(hub, 0)
        # frequent heartbeats: none of them may say what it runs
        async with Reactor(hub.endpoint, token=T) as s, \
                Reactor(hub.endpoint, token=T, announce=False, heartbeat_interval_ms=50) as rn:
            rn.register("df", "hub_pure", lambda data: data[::-1])
            await links_settle(hub, 2)
            await asyncio.sleep(0.2)
            result = await s.submit("df", "hub_pure", "abc", timeout_ms=5000)
            assert result.ok and result.data == "cba", result
            async with Raw(hub.endpoint, T) as p:
                await links_settle(hub, 3)
                # known now: asked first, the unknown peer not at all
                result = await s.submit("df", "hub_pure", "xyz", timeout_ms=5000)
                assert result.ok and result.data == "zyx", result
                await silence(p)
                # a key neither runs: both asked (in either order), then PF001 naming both
                pid = new_id("none")
                task = asyncio.ensure_future(s.submit("df", "hub_nobody", 0, timeout_ms=5000, packet_id=pid))
                sub = await offered(p)
                assert sub["payload"]["id"] == pid
                await p.send(refusal(pid))
                result = await task
                assert result.error_code == "PF001", result
                msg = result.error["message"]
                assert peer_of(p) in msg and reactor_peer(rn) in msg, msg
    run(go(), 20)


# ---------------------------------------------------------------------------- deadlines

def test_pf504_at_the_deadline_the_silent_link_skipped_until_its_late_answer(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r:
            await announce(s, [])
            await announce(r, [KEY, "df:hub_other"])  # announced: no probe window, its deadline
            pkt = job("slow", timeout_ms=1000)
            started = time.monotonic()
            await s.submit(41, pkt)
            sub = await offered(r, pkt)
            reply = await reply_to(s, 41, 5)
            elapsed = time.monotonic() - started
            assert 0.9 <= elapsed < 2.5, elapsed
            assert reply["packet_id"] == pkt["id"]
            msg = error_of(reply, "PF504")
            assert peer_of(r) in msg and KEY in msg and "1000 ms" in msg, msg
            # r never answered anything: not asked again, for this key or another
            for seq, element in ((42, K), (43, "hub_other")):
                later = job(timeout_ms=3000, element=element)
                started = time.monotonic()
                await s.submit(seq, later)
                reply = await reply_to(s, seq)
                assert time.monotonic() - started < 1.0
                assert reply["packet_id"] == later["id"]
                msg = error_of(reply, "PF003")  # a reactor runs it, but it does not answer
                assert "asked" not in msg and peer_of(r) in msg and "did not answer" in msg, msg
            await silence(r, 0.1)
            # its late answer goes to nobody, but shows r is a (slow) reactor that runs KEY
            await r.send(result_frame(pkt["id"], sub["seq"], data="late"))
            await silence(s)
            again = job(timeout_ms=3000)
            await s.submit(44, again)
            sub = await offered(r, again)
            await r.send(result_frame(again["id"], 0, data="on time"))
            assert (await reply_to(s, 44))["data"] == "on time"
            await s.roundtrip()
    run(go(), 20)


def test_a_timeout_does_not_silence_a_link_that_has_answered_before(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r:
            await announce(s, [])
            pkt = job(1, timeout_ms=5000)
            await s.submit(1, pkt)
            sub = await offered(r, pkt)
            await r.send(result_frame(pkt["id"], sub["seq"], data="one"))
            assert (await reply_to(s, 1))["data"] == "one"
            pkt = job(2, timeout_ms=800)
            await s.submit(2, pkt)
            await offered(r, pkt)
            error_of(await reply_to(s, 2, 5), "PF504")
            for seq, element in ((3, K), (4, "hub_other")):  # still asked: known, and unknown
                pkt = job(seq, timeout_ms=5000, element=element)
                await s.submit(seq, pkt)
                sub = await offered(r, pkt)
                await r.send(result_frame(pkt["id"], 0, data=seq))
                assert (await reply_to(s, seq))["data"] == seq
    run(go(), 20)


# ---------------------------------------------------------------------------- reactors going away

def test_a_reactor_disconnecting_hands_the_packet_to_the_next_one(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as r1, Raw(hub.endpoint, T) as r2:
            await announce(s, [])
            await announce(r1, [KEY])  # announced: first; r2 unknown: next
            pkt = job({"v": 1}, timeout_ms=5000)
            await s.submit(51, pkt)
            first = await offered(r1, pkt)
            await asyncio.sleep(0.3)
            await r1.ws.close()
            second = await offered(r2, pkt)
            assert second["payload"]["data"] == {"v": 1}
            assert second["payload"]["timeout_ms"] <= first["payload"]["timeout_ms"] - 250, (first, second)
            await r2.send(result_frame(pkt["id"], second["seq"], data="rerouted"))
            reply = await reply_to(s, 51)
            assert (reply["packet_id"], reply["status"], reply["data"]) == (pkt["id"], "success", "rerouted")
            await silence(s)
    run(go(), 20)


def test_with_no_other_reactor_the_packet_waits_for_a_new_link_or_announcement(fresh_node):
    n = fresh_node("--reroute-grace-ms", "3000", workers=1, tokens=True)

    async def go():
        async with Raw(n.endpoint, T) as s:
            await announce(s, [])
            # a new link connecting takes it
            async with Raw(n.endpoint, T) as r1:
                await announce(r1, [KEY])
                pkt = job("parked", timeout_ms=8000)
                await s.submit(61, pkt)
                await offered(r1, pkt)
            await silence(s, 0.4)  # parked, not failed
            async with Raw(n.endpoint, T) as r3:
                sub = await offered(r3, pkt)
                assert sub["payload"]["data"] == "parked"
                assert sub["payload"]["timeout_ms"] <= 7600
                await r3.send(result_frame(pkt["id"], sub["seq"], data="picked up"))
                reply = await reply_to(s, 61)
                assert (reply["packet_id"], reply["data"]) == (pkt["id"], "picked up")
            await links_settle(n, 1)

            # a connected link announcing that it runs it takes it
            async with Raw(n.endpoint, T) as r4, Raw(n.endpoint, T) as r5:
                await announce(r4, [])
                await announce(r5, [KEY])
                pkt = job("parked again", timeout_ms=8000)
                await s.submit(62, pkt)
                await offered(r5, pkt)
                await r5.ws.close()
                await silence(s, 0.4)
                await silence(r4, 0.1)
                await announce(r4, [KEY])
                sub = await offered(r4, pkt)
                await r4.send(result_frame(pkt["id"], 0, data="announced"))
                reply = await reply_to(s, 62)
                assert (reply["packet_id"], reply["data"]) == (pkt["id"], "announced")
        await links_settle(n, 0)

        # a parked packet whose submitter leaves is dropped: a new link is not offered it
        async with Raw(n.endpoint, T) as r6:
            await announce(r6, [KEY])
            async with Raw(n.endpoint, T) as s2:
                await announce(s2, [])
                pkt = job("orphan", timeout_ms=8000)
                await s2.submit(63, pkt)
                await offered(r6, pkt)
                await r6.ws.close()
                await silence(s2, 0.2)  # parked
        await links_settle(n, 0)
        async with Raw(n.endpoint, T) as r7:
            await silence(r7, 0.4)
            await r7.roundtrip()
    run(go(), 20)


def test_a_parked_packet_fails_pf003_when_the_grace_ends(fresh_node):
    n = fresh_node("--reroute-grace-ms", "500", workers=1, tokens=True)

    async def go():
        async with Raw(n.endpoint, T) as s:
            await announce(s, [])
            async with Raw(n.endpoint, T) as r1:
                await announce(r1, [KEY])
                pkt = job(timeout_ms=10_000)
                await s.submit(71, pkt)
                await offered(r1, pkt)
                gone = peer_of(r1)
            left_at = time.monotonic()
            reply = await reply_to(s, 71, 5)
            elapsed = time.monotonic() - left_at
            assert 0.4 <= elapsed < 2.0, elapsed
            assert reply["packet_id"] == pkt["id"]
            msg = error_of(reply, "PF003")
            assert "disconnected" in msg and gone in msg and KEY in msg, msg
            await s.roundtrip()
    run(go(), 20)


def test_parking_ends_at_the_packets_deadline_when_that_comes_first(hub):
    async def go():  # the module's node has the default grace of 10 s
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s:
            await announce(s, [])
            started = time.monotonic()
            async with Raw(hub.endpoint, T) as r1:
                await announce(r1, [KEY])
                pkt = job(timeout_ms=1200)
                await s.submit(81, pkt)
                await offered(r1, pkt)
                gone = peer_of(r1)
            reply = await reply_to(s, 81, 5)
            elapsed = time.monotonic() - started
            assert 1.0 <= elapsed < 2.5, elapsed
            msg = error_of(reply, "PF003")
            assert "disconnected" in msg and gone in msg, msg
    run(go(), 20)


# ---------------------------------------------------------------------------- ids, submitters, shutdown

def test_a_duplicate_id_while_forwarded_is_pf409_and_the_first_is_unaffected(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as s, Raw(hub.endpoint, T) as s2, Raw(hub.endpoint, T) as r:
            await announce(s, [])
            await announce(s2, [])
            await announce(r, [KEY])
            dup = new_id("dup")
            await s.submit(1, job("first", id=dup, timeout_ms=5000))
            sub = await offered(r)
            assert (sub["payload"]["id"], sub["payload"]["data"]) == (dup, "first")
            await s.submit(2, job("second", id=dup, timeout_ms=5000))
            reply = await reply_to(s, 2)
            assert reply["packet_id"] == dup
            error_of(reply, "PF409")
            await s2.submit(7, job("third", id=dup, timeout_ms=5000))  # from another link too
            reply = await reply_to(s2, 7)
            assert reply["packet_id"] == dup
            error_of(reply, "PF409")
            await silence(r, 0.2)
            await r.send(result_frame(dup, sub["seq"], data="first done"))
            reply = await reply_to(s, 1)
            assert (reply["packet_id"], reply["data"]) == (dup, "first done")
            # once answered, the id may be used again
            await s.submit(3, job("again", id=dup, timeout_ms=5000))
            sub = await offered(r)
            assert (sub["payload"]["id"], sub["payload"]["data"]) == (dup, "again")
            await r.send(result_frame(dup, 0, data="again done"))
            assert (await reply_to(s, 3))["data"] == "again done"
    run(go(), 20)


def test_the_submitter_leaving_drops_the_late_answer_and_the_node_stays_healthy(hub):
    async def go():
        await links_settle(hub, 0)
        async with Raw(hub.endpoint, T) as r:
            await announce(r, [KEY])
            a, b = new_id("orphan-a"), new_id("orphan-b")
            async with Raw(hub.endpoint, T) as s:
                await announce(s, [])
                await s.submit(1, job("a", id=a, timeout_ms=5000))
                await s.submit(2, job("b", id=b, timeout_ms=5000))
                subs = {m["payload"]["id"]: m for m in (await offered(r), await offered(r))}
                assert set(subs) == {a, b}
            await links_settle(hub, 1)
            # the late answer goes nowhere, and costs the reactor nothing
            await r.send(result_frame(b, subs[b]["seq"], data="nobody listens"))
            await silence(r)
            health = await asyncio.to_thread(hub.health)
            assert health["status"] == "ready" and health["connections"] == 1, health
            async with Raw(hub.endpoint, T) as s2:
                await announce(s2, [])
                await s2.roundtrip("transform", "still fine")
                # the packet still unanswered was dropped too: its id is free again
                await s2.submit(3, job("anew", id=a, timeout_ms=5000))
                sub = await offered(r)
                assert (sub["payload"]["id"], sub["payload"]["data"]) == (a, "anew")
                assert sub["seq"] not in (subs[a]["seq"], subs[b]["seq"])
                await r.send(result_frame(a, sub["seq"], data="anew done"))
                reply = await reply_to(s2, 3)
                assert (reply["packet_id"], reply["data"]) == (a, "anew done")
                await silence(s2, 0.1)
    run(go(), 20)


def test_sigterm_while_forwarded_answers_pf503_after_the_grace(fresh_node):
    n = fresh_node("--shutdown-grace-ms", "600", workers=1, tokens=True)

    async def go():
        async with Raw(n.endpoint, T) as s, Raw(n.endpoint, T) as r:
            await announce(s, [])
            await announce(r, [KEY])
            answered, hung = job("answered", timeout_ms=20_000), job("hung", timeout_ms=20_000)
            await s.submit(1, answered)
            await s.submit(2, hung)
            subs = {m["payload"]["id"]: m for m in (await offered(r), await offered(r))}
            assert set(subs) == {answered["id"], hung["id"]}
            n.proc.terminate()
            sent_at = time.monotonic()
            await asyncio.sleep(0.15)
            # within the grace an answer still gets through
            await r.send(result_frame(answered["id"], subs[answered["id"]]["seq"], data="in time"))
            frames, arrived = [], {}
            try:
                while True:
                    frames.append(await s.recv(10))
                    arrived[frames[-1]["seq"]] = time.monotonic() - sent_at
            except ConnectionClosed:
                pass
            by_seq = {f["seq"]: f["payload"] for f in frames}
            assert sorted(by_seq) == [1, 2] and len(frames) == 2, frames
            assert by_seq[1]["data"] == "in time"
            assert by_seq[2]["packet_id"] == hung["id"]
            assert "shutting down" in error_of(by_seq[2], "PF503")
            assert arrived[1] < 0.5, arrived
            assert 0.5 <= arrived[2] < 3.0, arrived
            assert s.close_code == 1001
        assert await asyncio.to_thread(n.proc.wait, 10) == 0
    run(go(), 25)


# ---------------------------------------------------------------------------- rank_targets and ReactorProfile

@dataclasses.dataclass(eq=False)
class FakeLink:
    name: str
    closed: bool = False

    @property
    def peer(self) -> str:
        return self.name


_joined = iter(range(1, 1_000_000))


def routes(name: str, load: int = 0, closed: bool = False, profile: ReactorProfile | None = None) -> LinkRoutes:
    r = LinkRoutes(FakeLink(name, closed), next(_joined))  # connected in the order made
    r.held = {f"p{i}": None for i in range(load)}
    if profile is not None:
        r.profile = profile
    return r


def test_reactor_profile_verdicts():
    p = ReactorProfile()
    assert p.verdict("df:a") is None and p.answered == 0 and not p.silent
    p.learn("df:a", True)
    assert p.verdict("df:a") is True and p.verdict("df:b") is None and p.answered == 1
    p.learn("df:b", False)
    assert p.verdict("df:b") is False and p.answered == 2
    p.learn("df:b", True)  # a later answer wins
    assert p.verdict("df:b") is True and "df:b" not in p.cannot
    p.learn("df:a", False)
    assert p.verdict("df:a") is False and "df:a" not in p.can and p.answered == 4

    silent = ReactorProfile(silent=True)  # let a packet time out, never answered anything
    assert silent.verdict("df:a") is False and silent.verdict("df:b") is False
    silent.learn("df:c", False)  # any answer ends the silence
    assert not silent.silent and silent.verdict("df:b") is None

    announced = ReactorProfile(can={"df:a"}, cannot={"df:b"})
    announced.announce(["df:b"])
    assert announced.verdict("df:b") is True  # a later announcement outweighs a PF001
    assert announced.verdict("df:a") is False  # announced: the whole truth
    assert announced.verdict("df:c") is False
    announced.learn("df:b", False)
    assert announced.verdict("df:b") is False  # a later PF001 outweighs the announcement
    announced.announce([])
    assert [announced.verdict(k) for k in ("df:a", "df:b", "df:c")] == [False, False, False]

    hung = ReactorProfile()
    hung.announce(["df:a"])
    hung.timed_out_here("p1", "df:a")
    assert hung.silent and hung.verdict("df:a") is False  # announced, but never answers
    assert hung.late_answer("p1", None) and hung.verdict("df:a") is True  # slow, not dead
    assert not hung.late_answer("p1", None)  # each timed-out packet counts once
    slow = ReactorProfile()
    slow.learn("df:a", True)
    slow.timed_out_here("p2", "df:a")
    assert not slow.silent and slow.verdict("df:a") is True  # one timeout does not silence it


def test_rank_targets_known_then_answered_before_least_loaded_then_unproven_oldest_first_origin_last():
    key = "df:k"

    def can(r):
        r.profile.learn(key, True)
        return r

    origin = routes("origin")
    k1, k2 = can(routes("k1", load=3)), can(routes("k2", load=1))
    ann = routes("ann", load=2)
    ann.profile.announced = frozenset({key})
    u1, u2 = routes("u1", load=2), routes("u2")  # unproven: u1 connected first, busier
    skipped = []
    no = routes("refused")
    no.profile.learn(key, False)
    silent = routes("silent", profile=ReactorProfile(silent=True))
    ann_no = routes("ann_no")
    ann_no.profile.announced = frozenset({"df:other"})
    ann_no.profile.learn(key, True)  # the announcement wins over what was learnt
    closed = can(routes("closed", closed=True))
    skipped += [no, silent, ann_no, closed]
    tried = can(routes("tried"))
    table = [origin, k1, k2, ann, u1, u2, tried, *skipped]
    rng = random.Random(7)
    for _ in range(20):  # whatever order the node's table yields them in
        rng.shuffle(table)
        assert rank_targets(table, key, origin.link, {tried}) == [k2, ann, k1, u1, u2, origin]

    # the origin known to run it ranks by load with the other known links
    can(origin)
    assert rank_targets(table, key, origin.link, {tried}) == [origin, k2, ann, k1, u1, u2]
    # another key: only the unknown count (the silent and announcing links are out); those that
    # answered before by load (k1 3, no 0, k2 1, tried 0: in their connection order when equal),
    # then the unproven by age, the origin (which answered before, now) last
    ranked = rank_targets(sorted(table, key=lambda r: r.joined), "df:z", origin.link, set())
    assert ranked == [no, tried, k2, k1, u1, u2, origin]
    assert rank_targets([], key, origin.link, set()) == []
    assert rank_targets(table, key, origin.link, set(table)) == []
