"""Faults, end to end: deadlines, dying workers, backpressure, disconnects, shutdown.

Every test here runs a node of its own (`fresh_node`), because it kills workers,
wedges them or stops the node.
"""
from __future__ import annotations

import asyncio
import signal
import time

import orjson
import psutil
import pytest
from websockets.exceptions import ConnectionClosed

from pfnode.client import Reactor
from tests.e2e_util import Raw, frame, http_get, packet, run, wait_until

pytestmark = pytest.mark.timeout(60)


def _gone_or_replaced(pid: int, create_time: float) -> bool:
    """True when the process that had this pid no longer exists (not even as a zombie)."""
    try:
        proc = psutil.Process(pid)
        return proc.create_time() != create_time  # the pid was reused by someone else
    except psutil.NoSuchProcess:
        return True


def _create_times(pids) -> dict[int, float]:
    return {pid: psutil.Process(pid).create_time() for pid in pids}


OTHER_LANES = 3  # cf, ed and rm have one worker each by default


def _healthy(node, workers: int):
    """/healthz once the df lane has `workers` ready workers and every other lane its one."""
    health = node.health()
    total = workers + OTHER_LANES
    ready = health["lanes"]["df"]["workers"] == workers and health["workers"] == total
    return health if ready and len(health["worker_pids"]) == total else None


# ---------------------------------------------------------------------------- deadlines

def test_deadline_kills_a_hung_worker_which_is_replaced_while_the_node_keeps_serving(fresh_node):
    n = fresh_node(workers=2)
    before = n.health()["worker_pids"]
    before_times = _create_times(before)

    async def go():
        async with Reactor(n.endpoint) as reactor:
            started = time.monotonic()
            hung = asyncio.ensure_future(reactor.submit("df", "hang", None, timeout_ms=300))
            # meanwhile other packets are served, by the other worker and then by the new one
            served = []
            while not hung.done():
                served.append(await reactor.submit("df", "transform", f"during {len(served)}"))
            hung_result = await hung
            elapsed = time.monotonic() - started
            return hung_result, elapsed, served
    hung, elapsed, served = run(go())
    assert hung.error_code == "PF408", hung
    assert "worker killed" in hung.error["message"]
    assert elapsed < 2.0
    assert served and all(r.ok and r.data == f"DURING {i}" for i, r in enumerate(served))

    after = wait_until(lambda: _healthy(n, 2), what="2 ready workers")["worker_pids"]
    killed = set(before) - set(after)
    assert len(killed) == 1, (before, after)  # exactly the hung worker was replaced
    assert len(set(after) - set(before)) == 1
    (dead,) = killed
    assert wait_until(lambda: _gone_or_replaced(dead, before_times[dead]), timeout_s=5)
    counters = n.health()["counters"]
    assert counters["workers_killed_deadline"] == 1 and counters["workers_replaced"] == 1

    async def after_kill():
        async with Reactor(n.endpoint) as reactor:
            return await asyncio.gather(*(reactor.submit("df", "pid", None) for _ in range(20)))
    pids = {r.data for r in run(after_kill())}
    assert pids <= set(after) and dead not in pids


def test_a_packet_still_queued_at_its_deadline_never_runs(fresh_node, tmp_path):
    # One worker busy for 1 s. Four packets with 200 ms deadlines wait behind it: with the
    # default prefetch of 4, three wait in the worker's pipe and one in the front's queue.
    # All four must be answered PF408 at their deadline (not after the sleep) and none may run.
    n = fresh_node(workers=1)
    marks = [tmp_path / f"ran-{i}" for i in range(4)]

    async def go():
        async with Reactor(n.endpoint) as reactor:
            started = time.monotonic()
            sleeper = asyncio.ensure_future(reactor.submit("df", "sleep", 1.0))
            await asyncio.sleep(0.05)
            late = await asyncio.gather(*(reactor.submit("df", "touch", str(m), timeout_ms=200) for m in marks))
            answered_after = time.monotonic() - started
            slept = await sleeper
            # the worker has now passed the expired packets: a marker packet proves it
            probe = await reactor.submit("df", "touch", str(tmp_path / "probe"))
            return late, answered_after, slept, probe
    late, answered_after, slept, probe = run(go())
    assert [r.error_code for r in late] == ["PF408"] * 4, late
    assert all("queued" in r.error["message"] for r in late)
    assert all(r.duration_ms == 0 for r in late)
    assert answered_after < 0.8  # at the deadline, while the 1 s sleep still ran
    assert slept.ok and slept.data == 1.0
    assert probe.ok and (tmp_path / "probe").exists()
    assert [m.exists() for m in marks] == [False] * 4
    counters = n.health()["counters"]
    assert counters["failed_PF408"] == 4
    assert counters["completed"] == 2
    assert counters.get("workers_killed_deadline", 0) == 0  # nothing running was killed


# ---------------------------------------------------------------------------- worker deaths

@pytest.mark.parametrize("element, data, how", [
    ("exit", 3, "exit status 3"),
    ("segfault", None, "SIGSEGV"),
    ("sigkill", None, "SIGKILL"),
])
def test_worker_death_gives_PF502_and_other_packets_are_unaffected(fresh_node, element, data, how):
    n = fresh_node(workers=2)
    before = n.health()["worker_pids"]

    async def go():
        async with Reactor(n.endpoint) as reactor:
            sleeps = [reactor.submit("df", "sleep", {"s": 0.05, "i": i}) for i in range(20)]
            crash = reactor.submit("df", element, data)
            # the crash in the middle of the stream, so that packets queued behind it at the
            # same worker have to be put back and run elsewhere
            results = await asyncio.gather(*sleeps[:10], crash, *sleeps[10:])
            return results[10], results[:10] + results[11:]
    crash, others = run(go())
    assert crash.error_code == "PF502", crash
    assert "died" in crash.error["message"] and how in crash.error["message"]
    assert [r.ok for r in others] == [True] * 20, [r for r in others if not r.ok]
    assert [r.data for r in others] == [{"s": 0.05, "i": i} for i in range(20)]

    # the node then serves normally, on a full set of workers, one of them new
    after = wait_until(lambda: _healthy(n, 2), what="2 ready workers")["worker_pids"]
    assert len(set(after) - set(before)) == 1

    async def again():
        async with Reactor(n.endpoint) as reactor:
            return await asyncio.gather(*(reactor.submit("df", "transform", f"v{i}") for i in range(20)))
    assert [r.data for r in run(again())] == [f"V{i}" for i in range(20)]
    counters = n.health()["counters"]
    assert counters["failed_PF502"] == 1 and counters["worker_deaths"] == 1


def test_repeated_crashes_on_one_worker_do_not_stop_the_node(fresh_node):
    n = fresh_node(workers=1)

    async def go():
        async with Reactor(n.endpoint) as reactor:
            outcomes = []
            for element in ("exit", "segfault", "sigkill"):
                outcomes.append((await reactor.submit("df", element, None)).error_code)
                outcomes.append((await reactor.submit("df", "transform", element)).data)
            return outcomes
    assert run(go()) == ["PF502", "EXIT", "PF502", "SEGFAULT", "PF502", "SIGKILL"]


# ---------------------------------------------------------------------------- flow control

def test_inflight_limit_applies_backpressure_and_every_packet_completes(fresh_node):
    n = fresh_node("--max-inflight-per-connection", "4", workers=2)
    seen_inflight: list[int] = []

    async def watch(stop: asyncio.Event):
        while not stop.is_set():
            health = await asyncio.to_thread(n.health)
            seen_inflight.append(health["inflight"])
            await asyncio.sleep(0.02)

    async def go():
        stop = asyncio.Event()
        watcher = asyncio.ensure_future(watch(stop))
        async with Reactor(n.endpoint) as reactor:
            results = await asyncio.gather(*(reactor.submit("df", "sleep", {"s": 0.02, "i": i})
                                             for i in range(50)))
        stop.set()
        await watcher
        return results
    results = run(go())
    assert [r.data for r in results] == [{"s": 0.02, "i": i} for i in range(50)]
    assert seen_inflight and max(seen_inflight) <= 4, seen_inflight
    assert max(seen_inflight) >= 2  # the limit was actually reached for a while


def test_a_peer_at_its_inflight_limit_that_sends_heartbeats_is_not_dropped(fresh_node):
    n = fresh_node("--heartbeat-interval-ms", "300", "--max-inflight-per-connection", "2", workers=2)

    async def go():
        async with Raw(n.endpoint) as raw:
            await raw.submit(1, packet("sleep", 1.5))  # 1.5 s > 3 intervals of 0.3 s
            await raw.submit(2, packet("sleep", 1.5))

            async def beat():
                for i in range(25):
                    await raw.send(frame("heartbeat", 100 + i, {"timestamp": 0}))
                    await asyncio.sleep(0.1)
            beats = asyncio.ensure_future(beat())
            try:
                results = []
                while len(results) < 2:
                    msg = await raw.recv(timeout_s=5)
                    results.append(msg)
                return sorted(r["seq"] for r in results)
            except ConnectionClosed:
                return f"closed with {raw.close_code}"
            finally:
                beats.cancel()
    assert run(go()) == [1, 2]


# ---------------------------------------------------------------------------- disconnects

def test_disconnect_drops_the_peers_queued_packets_and_frees_the_worker(fresh_node):
    n = fresh_node(workers=1)

    async def go():
        async with Raw(n.endpoint) as raw:
            await raw.submit(1, packet("sleep", 0.5))
            for seq in range(2, 22):
                await raw.submit(seq, packet("sleep", 0.2))
            await asyncio.sleep(0.1)
        closed_at = time.monotonic()
        counters = wait_until(lambda: (c := n.health()["counters"]).get("cancelled", 0) >= 21 and c,
                              timeout_s=2, interval_s=0.02, what="21 cancelled packets")
        assert time.monotonic() - closed_at < 1.0
        assert counters["cancelled"] == 21 and counters["submitted"] == 21
        # 20 x 0.2 s were queued: had they run, the worker would be busy for 4 more seconds
        async with Reactor(n.endpoint) as reactor:
            probe = await reactor.submit("df", "pid", None, timeout_ms=5000)
        return probe, time.monotonic() - closed_at
    probe, free_after = run(go())
    assert probe.ok, probe
    assert free_after < 1.5
    # the probe may have had a burst worker of its own (pfnode/pool/burst.py) and been answered
    # before the abandoned 0.5 s packet ended: that one leaves once it has run
    health = wait_until(lambda: (h := n.health())["connections"] == 0 and h["inflight"] == 0 and h, timeout_s=3)
    assert health["queued"] == 0 and health["inflight"] == 0


def test_disconnect_drops_packets_that_had_not_started(fresh_node, tmp_path):
    n = fresh_node(workers=1)
    marks = [tmp_path / f"ran-{i}" for i in range(10)]

    async def go():
        async with Raw(n.endpoint) as raw:
            await raw.submit(1, packet("sleep", 0.5))
            for seq, mark in enumerate(marks, start=2):
                await raw.submit(seq, packet("touch", str(mark)))
            await asyncio.sleep(0.1)
        async with Reactor(n.endpoint) as reactor:  # queued behind whatever still runs
            return await reactor.submit("df", "touch", str(tmp_path / "probe"))
    probe = run(go())
    assert probe.ok and (tmp_path / "probe").exists()
    assert [m.name for m in marks if m.exists()] == []


@pytest.mark.timeout(30)
def test_a_hung_packet_whose_peer_disconnected_is_still_killed_at_its_deadline(fresh_node):
    n = fresh_node(workers=1)

    async def go():
        async with Raw(n.endpoint) as raw:
            await raw.submit(1, packet("hang", None, timeout_ms=500))
            await asyncio.sleep(0.1)
        async with Reactor(n.endpoint) as reactor:
            return await reactor.submit("df", "transform", "served", timeout_ms=4000)
    result = run(go())
    assert result.ok and result.data == "SERVED", result


# ---------------------------------------------------------------------------- shutdown

def test_sigterm_drains_in_flight_packets_exits_0_and_leaves_no_workers(fresh_node):
    n = fresh_node("--shutdown-grace-ms", "1500", workers=2)
    pids = n.health()["worker_pids"]
    times = _create_times(pids)

    async def go():
        async with Raw(n.endpoint) as raw:
            await raw.submit(1, packet("sleep", 0.6))  # finishes within the grace
            await raw.submit(2, packet("hang", None))  # never finishes: PF503 at the grace
            await asyncio.sleep(0.2)
            n.proc.terminate()
            sent_at = time.monotonic()
            await asyncio.sleep(0.2)
            await raw.submit(3, packet("transform", "too late"))  # arrives while draining
            await raw.send(frame("heartbeat", 4, None))
            frames, arrived = [], {}
            try:
                while True:
                    frames.append(await raw.recv(timeout_s=15, heartbeats=True))
                    arrived[frames[-1]["seq"]] = time.monotonic() - sent_at
            except ConnectionClosed:
                pass
            return frames, arrived, raw.close_code, time.monotonic() - sent_at
    frames, arrived, close_code, closed_after = run(go())
    beats = [f for f in frames if f["type"] == "heartbeat"]
    assert [b["seq"] for b in beats] == [4] and beats[0]["payload"]["node"]["status"] == "draining"
    by_seq = {f["seq"]: f for f in frames if f["type"] == "result"}
    assert sorted(by_seq) == [1, 2, 3] and len(frames) == 4, frames  # one answer each, no silence
    assert by_seq[1]["payload"]["status"] == "success" and by_seq[1]["payload"]["data"] == 0.6
    assert by_seq[2]["payload"]["error"]["code"] == "PF503"
    assert by_seq[3]["payload"]["error"]["code"] == "PF503"
    assert arrived[1] < 1.0 and arrived[3] < 1.0
    assert 1.3 < arrived[2] < 2.5  # PF503 when the 1.5 s grace ran out, not before, not much later
    assert close_code == 1001
    assert n.proc.wait(timeout=10) == 0
    # the grace, then up to min(2 s, grace) for the workers to stop, then up to 1 s of flushing
    assert closed_after < 1.5 + 1.5 + 1.5
    for pid in pids:
        assert _gone_or_replaced(pid, times[pid]), f"worker {pid} still exists: {psutil.Process(pid)}"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_with_nothing_left_to_finish_exits_promptly(fresh_node, sig):
    n = fresh_node(workers=2)  # default grace: 10 s, which must not be waited out needlessly
    pids = n.health()["worker_pids"]
    times = _create_times(pids)

    async def go():
        async with Reactor(n.endpoint) as reactor:
            pending = asyncio.ensure_future(reactor.submit("df", "sleep", 0.3))
            await asyncio.sleep(0.1)
            n.proc.send_signal(sig)
            return await pending
    result = run(go())
    assert result.ok and result.data == 0.3
    started = time.monotonic()
    assert n.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 3.0
    for pid in pids:
        assert wait_until(lambda pid=pid: _gone_or_replaced(pid, times[pid]), timeout_s=3)


def test_sigterm_exits_within_the_grace_even_when_a_handler_hangs(fresh_node):
    n = fresh_node("--shutdown-grace-ms", "1500", workers=1)

    async def go():
        async with Raw(n.endpoint) as raw:
            await raw.submit(1, packet("hang", None))
            await asyncio.sleep(0.2)
            n.proc.terminate()
            started = time.monotonic()
            frames = await raw.recv_until_closed(timeout_s=15)
            return frames, started
    frames, started = run(go())
    assert [f["payload"]["error"]["code"] for f in frames] == ["PF503"]
    assert n.proc.wait(timeout=10) == 0
    exited_after = time.monotonic() - started
    assert exited_after < 1.5 + 1.0, f"exited {exited_after:.2f} s after SIGTERM with a 1.5 s grace"


def test_healthz_reports_draining_during_the_grace(fresh_node):
    n = fresh_node("--shutdown-grace-ms", "1500", workers=1)

    async def go():
        async with Raw(n.endpoint) as raw:
            await raw.submit(1, packet("sleep", 1.0))
            await asyncio.sleep(0.1)
            n.proc.terminate()
            await asyncio.sleep(0.2)
            try:
                return await asyncio.to_thread(http_get, n.http, "/healthz")
            except OSError as exc:
                return exc
            finally:
                await raw.recv_until_closed()
    answer = run(go())
    assert n.proc.wait(timeout=10) == 0
    assert not isinstance(answer, OSError), answer
    status, _, body = answer
    assert status == 503 and orjson.loads(body)["status"] == "draining"
