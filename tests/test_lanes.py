"""Group-aware placement, for real: nodes in processes, workers in processes, real sockets.

Each claim of docs/ARCHITECTURE.md's lane table is checked by what the handlers report
about where and when they ran, not by timing thresholds.
"""
from __future__ import annotations

import asyncio
import os

import pytest

from pfnode.client import Reactor

LANE_HANDLERS = "pfnode.handlers.examples,tests.handlers_lanes"


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def lane_node(tmp_path_factory):
    from tests.conftest import start_node

    node = start_node(tmp_path_factory.mktemp("lanes"), "--rm-memory-limit-mb", "128",
                      handlers=LANE_HANDLERS, workers=2)
    yield node
    node.stop()


def lane_pids(node) -> dict[str, set[int]]:
    return {lane: set(info["pids"]) for lane, info in node.health()["lanes"].items()}


def test_lanes_start_with_their_configured_sizes(lane_node):
    lanes = lane_node.health()["lanes"]
    assert {lane: info["workers"] for lane, info in lanes.items()} == {"cf": 1, "df": 2, "ed": 1, "rm": 1}
    assert lanes["cf"]["cpus"] == [max(os.sched_getaffinity(0))]  # pinned to the last usable core


def test_cf_packets_never_overlap_run_on_the_pinned_core_in_priority_order(lane_node):
    async def go():
        async with Reactor(lane_node.endpoint) as r:
            first = asyncio.ensure_future(r.submit("cf", "span", {"tag": "first", "s": 0.3}))
            await asyncio.sleep(0.1)  # "first" is running: the rest queue behind it
            rest = [asyncio.ensure_future(r.submit("cf", "span", {"tag": f"p{prio}-{i}", "s": 0.02},
                                                   priority=prio))
                    for i, prio in enumerate([1, 5, 9, 5, 9, 1, 10])]
            return [await first] + list(await asyncio.gather(*rest))

    results = run(go())
    assert all(res.ok for res in results), [res.error for res in results]
    spans = sorted((res.data for res in results), key=lambda d: d["start"])
    for earlier, later in zip(spans, spans[1:]):
        assert earlier["end"] <= later["start"], f"cf packets overlapped: {earlier} {later}"
    core = max(os.sched_getaffinity(0))
    assert {d["affinity"] == [core] and d["cpu"] == core for d in spans} == {True}
    assert len({d["pid"] for d in spans}) == 1
    assert lane_pids(lane_node)["cf"] == {spans[0]["pid"]}
    # after the running one: priority order, arrival order within one priority
    assert [d["tag"] for d in spans[1:]] == ["p10-6", "p9-2", "p9-4", "p5-1", "p5-3", "p1-0", "p1-5"]


def test_df_packets_overlap_across_the_df_workers(lane_node):
    async def go():
        async with Reactor(lane_node.endpoint) as r:
            return await asyncio.gather(*(r.submit("df", "span", {"tag": i, "s": 0.3}) for i in range(2)))

    a, b = (res.data for res in run(go()))
    assert a["pid"] != b["pid"]
    assert a["start"] < b["end"] and b["start"] < a["end"], "df packets did not run in parallel"
    assert {a["pid"], b["pid"]} == lane_pids(lane_node)["df"]


def test_ed_packet_does_not_wait_behind_a_saturated_df_lane(lane_node):
    async def go():
        async with Reactor(lane_node.endpoint) as r:
            flood = [asyncio.ensure_future(r.submit("df", "span", {"tag": i, "s": 0.05})) for i in range(40)]
            await asyncio.sleep(0.1)
            ed = await r.submit("ed", "span", {"tag": "ed"})
            unfinished = sum(not f.done() for f in flood)
            done = await asyncio.gather(*flood)
            return ed, unfinished, done

    ed, unfinished, flood = run(go())
    assert ed.ok and ed.data["pid"] in lane_pids(lane_node)["ed"]
    # 40 x 50 ms on 2 workers is ~1 s of work: the ed answer came while most of it still waited
    assert unfinished >= 20
    assert all(res.ok for res in flood)


def test_co_user_handlers_run_on_the_df_lane(lane_node):
    async def go():
        async with Reactor(lane_node.endpoint) as r:
            return await r.submit("co", "gather", [1, 2, 3])

    result = run(go())
    assert result.ok and result.data["sum"] == 6
    assert result.data["pid"] in lane_pids(lane_node)["df"]


def test_rm_handler_over_its_cap_gets_pf501_and_the_node_keeps_serving(lane_node):
    async def go():
        async with Reactor(lane_node.endpoint) as r:
            small = await r.submit("rm", "alloc", {"mb": 16})
            big = await r.submit("rm", "alloc", {"mb": 512})
            after = await r.submit("rm", "alloc", {"mb": 16})
            capped = await r.submit("df", "alloc_capped", {"mb": 256})
            df_after = await r.submit("df", "transform", "still here")
            return small, big, after, capped, df_after

    small, big, after, capped, df_after = run(go())
    assert small.ok and after.ok, (small.error, after.error)
    assert big.error_code == "PF501" and "128 MiB" in big.error["message"]
    assert after.data["pid"] != small.data["pid"], "the rm worker that went over was not replaced"
    assert capped.error_code == "PF501" and "64 MiB" in capped.error["message"]  # the handler's own cap
    assert df_after.data == "STILL HERE"
    assert lane_node.health()["lanes"]["rm"]["workers"] == 1


def test_handler_declared_timeout_applies_when_the_packet_has_none(lane_node):
    async def go():
        async with Reactor(lane_node.endpoint) as r:
            default = await r.submit("df", "slow_timeout", 1.0)
            own = await r.submit("df", "slow_timeout", 0.5, timeout_ms=5000)
            return default, own

    default, own = run(go())
    assert default.error_code == "PF408"
    assert own.ok  # the packet's own timeout_ms wins over the handler's default


def test_dependencies_wait_expose_results_and_fail_together(lane_node):
    async def go():
        async with Reactor(lane_node.endpoint) as r:
            dependent = asyncio.ensure_future(
                r.submit("df", "deps", "c", packet_id="dep-c", dependencies=["dep-a", "dep-b"]))
            await asyncio.sleep(0.2)
            assert not dependent.done()  # dep-a and dep-b have not even arrived
            a = await r.submit("df", "transform", "from a", packet_id="dep-a")
            b = await r.submit("df", "process_data", {"items": [1, 2]}, packet_id="dep-b")
            c = await dependent
            failing = await r.submit("df", "uppercase", 42, packet_id="dep-bad")  # PF500
            after_failure = await r.submit("df", "deps", "d", packet_id="dep-d", dependencies=["dep-bad"])
            myself = await r.submit("df", "deps", "e", packet_id="dep-e", dependencies=["dep-e"])
            never = await r.submit("df", "deps", "f", dependencies=["nobody-sends-this"], timeout_ms=300)
            return a, b, c, failing, after_failure, myself, never

    a, b, c, failing, after_failure, myself, never = run(go())
    assert a.ok and b.ok
    assert c.ok and c.data == {"dependencies": {"dep-a": "FROM A", "dep-b": 6}, "data": "c"}
    assert failing.error_code == "PF500"
    assert after_failure.error_code == "PF006" and "dep-bad" in after_failure.error["message"]
    assert myself.error_code == "PF006"
    assert never.error_code == "PF408" and "nobody-sends-this" in never.error["message"]


def test_admission_refuses_past_max_queued_without_dropping_queued_packets(fresh_node):
    node = fresh_node("--max-queued", "5", handlers=LANE_HANDLERS, workers=1)

    async def go():
        async with Reactor(node.endpoint, retry=None) as r:  # the node's own answers, PF004 not retried
            return await asyncio.gather(*(r.submit("cf", "span", {"tag": i, "s": 0.05}) for i in range(12)))

    results = run(go())
    refused = [res for res in results if not res.ok]
    assert refused and all(res.error_code == "PF004" for res in refused)
    # one running plus at most five waiting were admitted; every admitted packet completed
    assert 5 <= sum(res.ok for res in results) <= 6


def test_mc_scale_grows_and_shrinks_df_under_load_without_losing_a_packet(fresh_node):
    node = fresh_node(handlers=LANE_HANDLERS, workers=1)

    async def go():
        async with Reactor(node.endpoint) as r:
            load = [asyncio.ensure_future(r.submit("df", "span", {"tag": i, "s": 0.01})) for i in range(300)]
            await asyncio.sleep(0.05)
            grow = await r.submit("mc", "scale", {"lane": "df", "workers": 3})
            during = node.health()["lanes"]["df"]["workers"]
            shrink = await r.submit("mc", "scale", {"lane": "df", "workers": 1})
            results = await asyncio.gather(*load)
            status = await r.submit("mc", "status", None)
            bad = await r.submit("mc", "scale", {"lane": "cf", "workers": 2})
            auto = await r.submit("mc", "scale", {"workers": "auto"})
            return grow, during, shrink, results, status, bad, auto

    grow, during, shrink, results, status, bad, auto = run(go())
    assert grow.ok and grow.data["before"]["df"] == 1 and grow.data["after"]["df"] == 3
    assert during == 3
    assert "usable_cores" in grow.data["capacity"] and "df" in grow.data["recommended"]
    assert shrink.ok and shrink.data["after"]["df"] == 1
    assert all(res.ok for res in results), [res.error for res in results if not res.ok]
    assert len({res.data["tag"] for res in results}) == 300
    assert len({res.data["pid"] for res in results}) >= 2  # the new workers took part
    assert status.ok and status.data["lanes"]["df"]["workers"] == 1
    assert status.data["counters"]["workers_retired"] == 2
    assert bad.error_code == "PF002" and "fixed size" in bad.error["message"]
    assert auto.ok and auto.data["after"]["df"] == auto.data["recommended"]["df"]


def test_autoscale_grows_the_df_lane_while_work_queues(fresh_node):
    node = fresh_node("--autoscale", "--df-max-workers", "3", handlers=LANE_HANDLERS, workers=1)

    async def go():
        async with Reactor(node.endpoint) as r:
            load = [asyncio.ensure_future(r.submit("df", "span", {"tag": i, "s": 0.02})) for i in range(250)]
            results = await asyncio.gather(*load)
            return results, node.health()

    results, health = run(go())
    assert all(res.ok for res in results)
    assert health["lanes"]["df"]["target"] >= 2, "autoscaling did not grow the df lane"
    assert len({res.data["pid"] for res in results}) >= 2
