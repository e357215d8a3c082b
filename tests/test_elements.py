"""The standard elements the node runs itself (pfnode/elements): composites whose steps
are real packets through the node, against a real node over a real socket."""
from __future__ import annotations

import asyncio
import time

from tests.e2e_util import Raw, new_id, packet, run


def step(element: str, data=None, group: str = "df", **extra) -> dict:
    out = {"group": group, "element": element, **extra}
    if data is not None:
        out["data"] = data
    return out


async def call(raw: Raw, group: str, element: str, data, seq: int = 1, **extra) -> dict:
    await raw.submit(seq, packet(element, data, group=group, **extra))
    reply = await raw.recv(20)
    assert reply["seq"] == seq, reply
    return reply["payload"]


def ok(payload: dict):
    assert payload["status"] == "success", payload
    return payload["data"]


def err(payload: dict, code: str) -> str:
    assert payload["status"] == "error" and payload["error"]["code"] == code, payload
    return payload["error"]["message"]


def test_cf_seq_chains_steps_and_collects(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            steps = [step("inc"), step("double"), step("inc")]
            assert ok(await call(raw, "cf", "seq", {"input": 3, "steps": steps})) == 9
            assert ok(await call(raw, "cf", "seq", {"input": 3, "steps": steps, "collect": True})) == [4, 8, 9]
            # a step with its own data ignores the value flowing in
            assert ok(await call(raw, "cf", "seq", {"input": 3, "steps": [step("inc", 10), step("double")]})) == 22
            message = err(await call(raw, "cf", "seq", {"input": 1, "steps": [step("inc"), step("boom")]}), "PF500")
            assert message.startswith("steps[1]: PF500 ValueError: boom"), message
            message = err(await call(raw, "cf", "seq", {"input": 1, "steps": [step("inc"), {"group": "zz"}]}), "PF002")
            assert message.startswith("steps[1].group:"), message
            assert "steps" in err(await call(raw, "cf", "seq", {"input": 1}), "PF002")
    run(go())


def test_cf_branch_on_a_predicate_or_a_step(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            test = {"path": "/n", "op": "gt", "value": 5}
            base = {"test": test, "then": step("noop", "big"), "else": step("noop", "small")}
            assert ok(await call(raw, "cf", "branch", {**base, "input": {"n": 7}})) == "big"
            assert ok(await call(raw, "cf", "branch", {**base, "input": {"n": 1}})) == "small"
            no_else = {"test": test, "then": step("noop", "big"), "input": {"n": 1}}
            assert ok(await call(raw, "cf", "branch", no_else)) == {"n": 1}
            by_step = {"input": None, "test": step("validate", group="cf"), "then": step("noop", "valid")}
            assert ok(await call(raw, "cf", "branch", by_step)) == "valid"  # {"valid": false} is truthy
            assert "then" in err(await call(raw, "cf", "branch", {"input": 1, "test": test}), "PF002")
    run(go())


def test_cf_loop_times_until_and_its_limit(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            assert ok(await call(raw, "cf", "loop", {"input": 1, "body": step("double"), "times": 5})) == \
                {"value": 32, "iterations": 5}
            until = {"path": "", "op": "ge", "value": 100}
            assert ok(await call(raw, "cf", "loop", {"input": 3, "body": step("double"), "until": until,
                                                     "max_iterations": 50})) == {"value": 192, "iterations": 6}
            message = err(await call(raw, "cf", "loop", {"input": 3, "body": step("double"), "until": until,
                                                         "max_iterations": 2}), "PF008")
            assert "max_iterations" in message
            assert "max_iterations" in err(await call(raw, "cf", "loop", {"input": 3, "body": step("inc"),
                                                                          "until": until}), "PF002")
    run(go())


def test_cf_gate_waits_for_the_submitters_packets(node):
    async def go():
        async with Raw(node.endpoint) as raw, Raw(node.endpoint) as other:
            a, b = new_id("a"), new_id("b")
            await raw.submit(1, packet("gate", {"wait": [a, b]}, group="cf"))
            await raw.submit(2, packet("sleep", 0.2, id=a))
            await raw.submit(3, packet("transform", "bee", id=b))
            replies = {r["seq"]: r["payload"] for r in await raw.recv_n(3)}
            assert ok(replies[1]) == {a: 0.2, b: "BEE"}
            # already completed: at once; another submitter's ids are not visible to it
            assert ok(await call(raw, "cf", "gate", {"wait": [b]}, seq=4)) == {b: "BEE"}
            assert "still waiting" in err(await call(other, "cf", "gate", {"wait": [b], "timeout_ms": 200}, seq=1),
                                          "PF408")
            bad = new_id("bad")
            await raw.submit(5, packet("boom", 1, id=bad))
            await raw.recv()
            assert bad in err(await call(raw, "cf", "gate", {"wait": [bad]}, seq=6), "PF006")
    run(go())


def test_df_consume_maps_a_step_over_items_across_the_workers_in_order(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            items = list(range(200))
            assert ok(await call(raw, "df", "consume", {"items": items, "step": step("inc")})) == [i + 1 for i in items]
            assert ok(await call(raw, "df", "consume", {"items": items, "step": step("inc_all"), "chunk": 32})) == \
                [i + 1 for i in items]
            pids = ok(await call(raw, "df", "consume", {"items": list(range(40)), "step": step("pid")}))
            assert len(set(pids)) == 2  # both df workers took part
            message = err(await call(raw, "df", "consume", {"items": [1, "x", 3], "step": step("inc")}), "PF500")
            assert message.startswith("items[1]: PF500"), message
            assert ok(await call(raw, "df", "consume", {"items": [], "step": step("inc")})) == []
    run(go())


def test_co_gather_all_and_the_first_k(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            steps = [step("inc", 1), step("double", 5), step("transform", "x")]
            assert ok(await call(raw, "co", "gather", {"steps": steps})) == [2, 10, "X"]
            some = [step("sleep", 2), step("inc", 1), step("boom", 0), step("double", 4)]
            started = time.monotonic()
            assert ok(await call(raw, "co", "gather", {"steps": some, "min": 2})) == [2, 8]
            assert time.monotonic() - started < 1.5  # the sleeping step was cancelled, not awaited
            message = err(await call(raw, "co", "gather", {"steps": some[1:3], "min": 2}), "PF500")
            assert "steps[1]" in message
    run(go())


def test_co_vote_and_its_quorum(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            assert ok(await call(raw, "co", "vote", {"step": step("inc", 41), "replicas": 3})) == \
                {"value": 42, "votes": 3, "replicas": 3, "tally": 1}
            # each worker answers its own pid: 3 replicas on 2 workers cannot all agree
            message = err(await call(raw, "co", "vote", {"step": step("pid"), "replicas": 3, "quorum": 3}), "PF007")
            assert "no quorum" in message
    run(go())


def test_co_broadcast_runs_once_on_every_worker_of_the_lane(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            return ok(await call(raw, "co", "broadcast", {"step": step("pid"), "targets": "workers"}))
    entries = run(go())
    assert len(entries) == 2 and all(e["ok"] for e in entries)
    assert {e["value"] for e in entries} == {int(e["target"].split(":")[1]) for e in entries}


def test_co_sync_gives_every_party_everyones_data_or_fails_them_all(node):
    async def go():
        async with Raw(node.endpoint) as a, Raw(node.endpoint) as b, Raw(node.endpoint) as c:
            name = new_id("barrier")
            for seq, (raw, value) in enumerate(((a, "A"), (b, "B"), (c, "C")), start=1):
                await raw.submit(seq, packet("sync", {"barrier": name, "parties": 3, "data": value}, group="co"))
                await asyncio.sleep(0.05)
            results = [(await raw.recv())["payload"] for raw in (a, b, c)]
            assert [ok(r) for r in results] == [["A", "B", "C"]] * 3
            lonely = new_id("barrier")
            await a.submit(9, packet("sync", {"barrier": lonely, "parties": 2, "data": 1}, group="co", timeout_ms=300))
            assert "1 of 2 parties" in err((await a.recv())["payload"], "PF408")
    run(go())


def test_a_parents_deadline_cancels_its_steps(node):
    async def go():
        async with Raw(node.endpoint) as raw:
            started = time.monotonic()
            payload = await call(raw, "cf", "seq", {"input": 5, "steps": [step("sleep")]}, timeout_ms=300)
            return payload, time.monotonic() - started
    payload, took = run(go())
    assert payload["error"]["code"] in ("PF408", "PF500") and took < 2.0, payload  # not the 5 s the step asked
    assert "deadline" in payload["error"]["message"]


# ---------------------------------------------------------------------------- the worker elements

def test_data_elements_run_in_the_workers_and_compose(node):
    """df:produce, df:transform, df:reduce from a client, alone and as one cf:seq; bad input
    is PF002 naming the field, from the worker."""
    async def go():
        async with Raw(node.endpoint) as raw:
            assert ok(await call(raw, "df", "produce", {"range": [0, 5]})) == [0, 1, 2, 3, 4]
            assert ok(await call(raw, "df", "produce", {"linspace": [0, 1, 3]})) == [0.0, 0.5, 1.0]
            assert ok(await call(raw, "df", "transform", {"input": [1, -4, 9], "ops": [
                {"op": "abs"}, {"op": "sqrt"}, {"op": "scale", "by": 2}]})) == [2.0, 4.0, 6.0]
            assert ok(await call(raw, "df", "transform", "hello world")) == "HELLO WORLD"  # the spec's example
            assert ok(await call(raw, "df", "reduce", {"values": [[1, 2], [3, 4]], "op": ["sum", "max"],
                                                       "axis": 0})) == {"sum": [4.0, 6.0], "max": [3.0, 4.0]}
            # the README's pipeline: produce -> a parallel map of a handler -> reduce, one cf:seq
            pipeline = {"input": None, "steps": [
                step("produce", {"range": [1, 6]}),
                {"group": "df", "element": "consume", "data": {"step": step("double")}, "input_as": "items"},
                {"group": "df", "element": "reduce", "data": {"op": ["sum", "max"]}, "input_as": "values"}],
                "collect": True}
            assert ok(await call(raw, "cf", "seq", pipeline)) == [
                [1, 2, 3, 4, 5], [2, 4, 6, 8, 10], {"sum": 30.0, "max": 10.0}]
            message = err(await call(raw, "cf", "seq", {"input": 1, "steps": [
                {"group": "df", "element": "reduce", "data": [1], "input_as": "values"}]}), "PF002")
            assert message.startswith("steps[0].data:"), message
            message = err(await call(raw, "df", "transform", {"input": [1], "ops": [{"op": "sqr"}]}), "PF002")
            assert message.startswith("ops[0].op: unknown op 'sqr'"), message
            message = err(await call(raw, "df", "produce", {"range": [0, 10**9]}), "PF002")
            assert message.startswith("range:"), message
    run(go())


def test_a_user_handler_module_replaces_a_standard_element(fresh_node):
    running = fresh_node(handlers="tests.handlers_testing,tests.handlers_override")
    assert "df:transform" in running.health()["handlers"]

    async def go():
        async with Raw(running.endpoint) as raw:
            assert ok(await call(raw, "df", "transform", "hello")) == "olleh"  # the user's, not upper-case
            assert ok(await call(raw, "df", "reduce", {"values": [1, 2]})) == 3.0  # the others stay
    run(go())
    assert "handlers df:transform replace the standard elements" in running.log()


def test_a_reactor_that_announces_a_standard_key_replaces_the_element(node):
    """A connected reactor that says it runs df:transform (the capabilities extension) gets
    the node's df:transform packets: its handler is a user's, the node's the standard one."""
    from pfnode.client import Reactor

    async def go():
        async with Reactor(node.endpoint) as runner:
            runner.register("df", "transform", lambda data: f"ran by the reactor: {data}")
            await runner.announce_capabilities()
            await asyncio.sleep(0.3)  # the announcement is a heartbeat: let the node read it
            async with Raw(node.endpoint) as raw:
                by_reactor = ok(await call(raw, "df", "transform", "x"))
        async with Raw(node.endpoint) as raw:  # the reactor gone: the standard element again
            by_node = ok(await call(raw, "df", "transform", "x"))
        return by_reactor, by_node

    assert run(go()) == ("ran by the reactor: x", "X")
