"""The dask lane (pfnode/dask/lane.py), for real: a node with `--dask local:2`, whose df lane runs
on a Dask LocalCluster of two worker processes, driven over its WebSocket by the Python reactor.

One node serves the whole module (starting a cluster costs seconds); the tests run in file
order and the last one stops its cluster. A second node, with no cluster where its --dask
points, shows the unreachable cluster at start and the node reconnecting once one is there.
"""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import orjson
import pytest

pytest.importorskip("distributed", reason="the dask extra (pip install 'pfnode[dask]') is not installed")

from pfnode.client import Reactor  # noqa: E402
from pfnode.dask.config import parse_target  # noqa: E402
from pfnode.dask.lane import DaskLane, retries_of  # noqa: E402
from pfnode.core.scheduler import Scheduler  # noqa: E402
from pfnode.settings import Settings, SettingsError  # noqa: E402
from tests.e2e_util import Raw, http_get, packet, run, wait_until  # noqa: E402

pytestmark = pytest.mark.timeout(90)

DASK_HANDLERS = "pfnode.handlers.examples,tests.handlers_testing,tests.handlers_dask"


@pytest.fixture(scope="module")
def dask_node(tmp_path_factory):
    from tests.conftest import start_node

    # a window of 4 (the default is 64): the tests that fill it with slow packets keep the rest
    # in the node's queue, where its own order and deadlines apply
    node = start_node(tmp_path_factory.mktemp("dask"), "--dask", "local:2", "--dask-window", "4", "--ed-workers",
                      "0", "--rm-workers", "0", workers=1, handlers=DASK_HANDLERS, timeout_s=90)
    yield node
    node.stop()


def submit(node, *packets, **common):
    """Submit (group, element, data, options) packets at once; their results, in order (the
    node's own answers: a PF503 is not retried)."""
    async def go():
        async with Reactor(node.endpoint, retry=None) as reactor:
            return await asyncio.gather(*(reactor.submit(g, e, d, **{**common, **o}) for g, e, d, o in packets))
    return run(go())


def dask_status(node) -> dict:
    return node.health()["dask"]


# ---------------------------------------------------------------------------- settings, no cluster

@pytest.mark.parametrize("text, expected", [
    ("local:2", (None, 2)), ("tcp://10.0.0.5:8786", ("tcp://10.0.0.5:8786", None)),
    ("scheduler:8786", ("scheduler:8786", None)), ("tls://s.example:8786", ("tls://s.example:8786", None))])
def test_the_dask_setting_names_a_scheduler_or_a_local_cluster(text, expected):
    assert parse_target(text) == expected


def test_bad_dask_settings_are_reported_together():
    with pytest.raises(SettingsError) as info:
        Settings(dask="local:0", dask_lanes=("df", "nope"), dask_window=0)
    assert info.value.problems == [
        "dask: local:N needs a number of workers N >= 1, got 'local:0'",
        "dask_lanes: 'nope' is neither a lane (cf, df, ed, rm) nor a handler key (group:element)",
        "dask_window must be >= 1, got 0"]
    with pytest.raises(SettingsError, match="expected a scheduler address"):
        Settings(dask="tcp://nowhere")


def test_the_lanes_and_keys_named_run_on_dask_and_the_rest_stays_local():
    lane = DaskLane(Settings(dask="local:1", dask_lanes=("df", "cf:heavy")), Scheduler(), lambda f, o: None,
                    wake=lambda: None)
    assert [lane.lane_for(key, where) for key, where in
            [("df:x", "df"), ("co:y", "df"), ("cf:heavy", "cf"), ("cf:validate", "cf"), ("ed:e", "ed")]] == \
        ["dask", "dask", "dask", "cf", "ed"]


def test_the_default_window_keeps_8_packets_per_worker_thread_on_the_cluster_at_least_64():
    from pfnode.dask.cluster import Cluster

    def window(threads: list[int], setting: int | None = None) -> int:
        cluster = Cluster(Settings(dask="local:1", dask_window=setting), on_ready=lambda: None,
                          on_unreachable=lambda why: None, on_task_event=lambda event: None,
                          on_worker_gone=lambda *args: None)
        cluster.workers = {f"tcp://w{i}": {"nthreads": n} for i, n in enumerate(threads)}
        return cluster.window()

    assert (window([]), window([1, 1]), window([4] * 4), window([4] * 4, setting=10)) == (64, 64, 128, 10)


def test_retries_are_opted_into_with_metadata():
    assert [retries_of(m) for m in (None, {}, {"retries": 0}, {"retries": 3}, {"other": 1})] == [0, 0, 0, 3, 0]
    for bad in ({"retries": -1}, {"retries": 11}, {"retries": "2"}, {"retries": True}):
        with pytest.raises(ValueError, match="metadata.retries must be an integer 0..10"):
            retries_of(bad)


# ---------------------------------------------------------------------------- a node on a LocalCluster

def test_df_runs_on_the_dask_workers_and_cf_stays_in_the_local_pool(dask_node):
    status = dask_node.health()
    dask = status["dask"]
    assert dask["state"] == "ready" and dask["problem"] is None
    assert [w["nthreads"] for w in dask["workers"]] == [1, 1]
    df, cf, upper, reduce = submit(dask_node, ("df", "where", 7, {}), ("cf", "where", None, {}),
                                   ("df", "uppercase", "hello", {}),
                                   ("df", "reduce", {"values": [1, 2, 3], "op": "mean"}, {}))
    assert df.ok and df.data["dask_worker"] in {w["address"] for w in dask["workers"]}
    assert df.data["pid"] not in status["worker_pids"] and df.data["data"] == 7
    assert cf.ok and cf.data["dask_worker"] is None and cf.data["pid"] in status["lanes"]["cf"]["pids"]
    assert upper.ok and upper.data == "HELLO"
    assert reduce.ok and reduce.data == 2.0  # a standard worker element: its module reaches the workers too
    assert http_get(dask_node.http, "/healthz")[0] == 200


def test_the_dashboard_shows_the_cluster_its_workers_and_its_packets(dask_node):
    status, _, body = http_get(dask_node.http, "/dashboard/data")
    assert status == 200, body
    data = orjson.loads(body)
    dask = data["dask"]
    assert dask["state"] == "ready" and dask["local"]["alive"]
    assert len(dask["workers"]) == 2 and all(w["address"].startswith("tcp://") for w in dask["workers"])
    assert "dask" in data["lanes"] and data["lanes"]["dask"]["queued"] == 0
    assert data["groups"]["df"]["ok"] >= 3  # the packets the test before ran on the cluster


def test_priorities_decide_what_goes_to_the_cluster_next(dask_node):
    async def go():
        async with Reactor(dask_node.endpoint) as r:
            # four slow packets fill the window (--dask-window 4): the others wait in the
            # node's queue, and go on in priority order as the cluster frees up
            fill = [asyncio.ensure_future(r.submit("df", "run_for", {"s": 0.5, "tag": f"fill{i}"})) for i in range(4)]
            await asyncio.sleep(0.2)
            prios = [3, 7, 5, 10, 4, 9, 6, 8]
            rest = [asyncio.ensure_future(r.submit("df", "run_for", {"s": 0.1, "tag": p}, priority=p)) for p in prios]
            await asyncio.gather(*fill)
            return await asyncio.gather(*rest)

    results = run(go())
    assert all(res.ok for res in results), [res.error for res in results]
    order = [res.data["tag"] for res in sorted(results, key=lambda res: res.data["start"])]
    # two workers: the packets start two by two, the two highest first (in either order)
    assert [set(order[i:i + 2]) for i in range(0, 8, 2)] == [{10, 9}, {8, 7}, {6, 5}, {4, 3}], order


def test_a_dependency_reaches_its_dependent_on_the_cluster_not_through_the_node(dask_node):
    before = dask_status(dask_node)["counters"]
    dep, dependent = submit(dask_node, ("df", "run_for", {"s": 0.3, "tag": "dep"}, {"packet_id": "dask-dep-1"}),
                            ("df", "ctx_deps", None, {"dependencies": ["dask-dep-1"]}))
    assert dep.ok and dependent.ok, (dep.error, dependent.error)
    assert dependent.data == {"dask-dep-1": dep.data}
    after = dask_status(dask_node)["counters"]
    assert after.get("dependencies_on_cluster", 0) == before.get("dependencies_on_cluster", 0) + 1
    assert after.get("dependencies_from_node", 0) == before.get("dependencies_from_node", 0)


def test_a_failed_dependency_fails_its_dependent_without_running_it(dask_node):
    dep, dependent = submit(dask_node, ("df", "boom", 1, {"packet_id": "dask-dep-2"}),
                            ("df", "where", None, {"dependencies": ["dask-dep-2"]}))
    assert dep.error["code"] == "PF500" and dependent.error["code"] == "PF006"


def test_a_queued_packet_past_its_deadline_is_cancelled_and_never_runs(dask_node, tmp_path):
    on_cluster, in_node = tmp_path / "on-cluster", tmp_path / "in-node"

    async def go():
        async with Reactor(dask_node.endpoint) as r:
            fill = [asyncio.ensure_future(r.submit("df", "run_for", {"s": 0.8})) for _ in range(3)]
            await asyncio.sleep(0.2)
            # the 4th of the window: handed to the cluster, waiting behind a slow one on a worker
            waiting = await asyncio.gather(r.submit("df", "touch", str(on_cluster), timeout_ms=300),
                                           r.submit("df", "touch", str(in_node), timeout_ms=300))
            await asyncio.gather(*fill)
            await asyncio.sleep(0.3)
            return waiting

    a, b = run(go())
    assert (a.error["code"], b.error["code"]) == ("PF408", "PF408")
    assert "queued on the Dask cluster; cancelled" in a.error["message"]
    assert "passed while queued" in b.error["message"]
    assert not on_cluster.exists() and not in_node.exists()


def test_a_running_packet_past_its_deadline_is_answered_at_once(dask_node):
    started = time.monotonic()
    [late] = submit(dask_node, ("df", "run_for", {"s": 2.0}, {"timeout_ms": 300}))
    took = time.monotonic() - started
    assert late.error["code"] == "PF408" and "while running on Dask worker tcp://" in late.error["message"]
    assert took < 1.5, took  # not when the handler returns (Dask cannot stop it; its result is dropped)
    [after] = submit(dask_node, ("df", "double", 4, {}))
    assert after.ok and after.data == 8


def test_packets_of_a_submitter_that_left_are_cancelled_before_they_start(dask_node, tmp_path):
    marks = [tmp_path / f"left-{i}" for i in range(2)]
    before = dask_status(dask_node)["counters"].get("cancelled", 0)

    async def go():
        async with Reactor(dask_node.endpoint) as r:
            fill = [asyncio.ensure_future(r.submit("df", "run_for", {"s": 0.8})) for _ in range(3)]
            await asyncio.sleep(0.2)
            async with Raw(dask_node.endpoint) as leaver:  # one on the cluster, one in the node's queue
                for seq, mark in enumerate(marks, 1):
                    await leaver.submit(seq, packet("touch", str(mark)))
                await asyncio.sleep(0.1)
            results = await asyncio.gather(*fill)
            await asyncio.sleep(0.3)
            return results

    assert all(res.ok for res in run(go()))
    assert not any(mark.exists() for mark in marks)
    assert dask_status(dask_node)["counters"].get("cancelled", 0) >= before + 1


def _kill_when_started(pidfile, result, after_s: float = 0.0):
    """Wait until the run_for packet wrote its worker's pid (and `after_s` more), then SIGKILL
    that worker."""
    async def go():
        while not pidfile.exists() or not pidfile.read_text().strip():
            if result.done():
                return None
            await asyncio.sleep(0.01)
        await asyncio.sleep(after_s)
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        return pid
    return go()


def test_a_worker_killed_mid_packet_is_pf502_unless_the_packet_asked_for_a_retry(dask_node, tmp_path):
    once, twice = tmp_path / "once", tmp_path / "twice"

    async def go():
        async with Reactor(dask_node.endpoint) as r:
            # both workers busy (one with the packet to lose), and packets waiting behind them: the
            # node knows (its "started" event) which one the killed worker runs, so the one it
            # only held is run elsewhere, not failed
            lost = asyncio.ensure_future(r.submit("df", "run_for", {"s": 3, "pidfile": str(once)}))
            other = asyncio.ensure_future(r.submit("df", "run_for", {"s": 1}))
            await asyncio.sleep(0.1)
            waiting = [asyncio.ensure_future(r.submit("df", "where", i)) for i in range(2)]
            killed = await _kill_when_started(once, lost, after_s=0.3)
            retried = asyncio.ensure_future(r.submit("df", "run_for", {"s": 0.5, "pidfile": str(twice)},
                                                     metadata={"retries": 1}))
            await _kill_when_started(twice, retried)
            bad = await r.submit("df", "where", None, metadata={"retries": "yes"})
            return killed, await lost, await other, await asyncio.gather(*waiting), await retried, bad

    killed, lost, other, waiting, retried, bad = run(go())
    assert lost.error["code"] == "PF502", lost.error
    assert lost.error["message"].startswith("Dask worker tcp://") and "metadata.retries" in lost.error["message"]
    assert other.ok and all(w.ok for w in waiting), (other.error, [w.error for w in waiting])  # only one lost
    assert retried.ok, retried.error
    pids = [int(p) for p in twice.read_text().split()]
    assert len(pids) == 2 and retried.data["pid"] == pids[1] != pids[0]  # ran again, on another process
    assert bad.error["code"] == "PF002" and "metadata.retries" in bad.error["message"]
    counters = dask_status(dask_node)["counters"]
    assert counters["worker_lost"] >= 2 and counters["retried"] >= 1
    wait_until(lambda: len(dask_status(dask_node)["workers"]) == 2, 20, what="the nannies' new workers")


def test_a_key_the_dask_workers_lack_is_pf001_naming_the_worker_and_the_key(dask_node):
    [res] = submit(dask_node, ("df", "front_only", 1, {}))
    assert res.error["code"] == "PF001"
    assert res.error["message"].startswith("no handler for df:front_only on Dask worker tcp://127.0.0.1:")
    workers = dask_status(dask_node)["workers"]
    assert all(w.get("problem") == "lacks df:front_only" for w in workers), workers


def test_mc_scale_and_mc_status_act_on_the_cluster(dask_node):
    async def go():
        async with Reactor(dask_node.endpoint) as r:
            status = await r.submit("mc", "status", {})
            up = await r.submit("mc", "scale", {"lane": "dask", "workers": 3})
            adapt = await r.submit("mc", "scale", {"lane": "dask", "adapt": {"minimum": 2, "maximum": 3}})
            bad = await r.submit("mc", "scale", {"lane": "dask", "workers": -1})
            down = await r.submit("mc", "scale", {"lane": "dask", "workers": 2})
            return status, up, adapt, bad, down

    status, up, adapt, bad, down = run(go())
    assert status.ok and len(status.data["dask"]["workers"]) == 2 and status.data["dask"]["threads"] == 2
    assert up.ok, up.error
    assert (up.data["before"], up.data["after"]) == ({"dask": 2}, {"dask": 3})
    assert len(up.data["dask"]["workers"]) == 3
    assert adapt.ok and adapt.data["adaptive"] == {"minimum": 2, "maximum": 3}, adapt
    assert bad.error["code"] == "PF002"
    assert down.ok and down.data["after"] == {"dask": 2} and down.data["adaptive"] is None
    assert 'mc:scale by local: {"dask":2} -> {"dask":3}' in dask_node.log()


def _samples(node) -> dict[str, float]:
    """/metrics' pfnode_dask_* samples: {'name{labels}': value}."""
    status, _, body = http_get(node.http, "/metrics")
    assert status == 200
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
            if line.startswith("pfnode_dask_")}


def test_metrics_export_the_cluster_and_the_dask_lane(dask_node):
    [res] = submit(dask_node, ("df", "double", 2, {}))
    assert res.ok
    samples = _samples(dask_node)
    assert samples['pfnode_dask_state{state="ready"}'] == 1.0
    assert samples['pfnode_dask_state{state="unreachable"}'] == 0.0
    assert (samples["pfnode_dask_workers"], samples["pfnode_dask_threads"], samples["pfnode_dask_window"]) == (2, 2, 4)
    assert (samples["pfnode_dask_packets_on_cluster"], samples["pfnode_dask_packets_running"],
            samples["pfnode_dask_queued_packets"]) == (0, 0, 0)
    counters = dask_status(dask_node)["counters"]
    for event in ("submitted", "completed", "failed", "worker_lost", "retried"):
        assert samples[f'pfnode_dask_tasks_total{{event="{event}"}}'] == counters.get(event, 0) > 0, event
    assert samples['pfnode_dask_tasks_total{event="expired"}'] == \
        counters["expired_queued"] + counters["expired_running"] >= 2
    assert samples['pfnode_dask_tasks_total{event="reclaimed"}'] == 0


def test_the_cluster_stopped_under_load_answers_its_packets_pf503_once(dask_node):
    pid = dask_status(dask_node)["local"]["pid"]
    count = 40

    async def go():
        async with Raw(dask_node.endpoint) as raw:
            for seq in range(1, count + 1):
                await raw.submit(seq, packet("run_for", {"s": 0.1}))
            await asyncio.sleep(0.4)
            os.kill(pid, signal.SIGKILL)
            replies = await raw.recv_n(count, timeout_s=20)
            with pytest.raises(asyncio.TimeoutError):
                await raw.recv(0.5)  # nothing more: every packet answered once
            await raw.submit(count + 1, packet("double", 2))
            after = await raw.recv()
            await raw.submit(count + 2, packet("validate", 1, group="cf"))
            local = await raw.recv()
            return replies, after, local

    replies, after, local = run(go())
    assert sorted(r["seq"] for r in replies) == list(range(1, count + 1))
    codes = [r["payload"].get("error", {}).get("code", "ok") for r in replies]
    assert set(codes) <= {"ok", "PF503"} and codes.count("PF503") >= count // 2, codes
    assert after["payload"]["error"]["code"] == "PF503"
    assert local["payload"]["status"] == "success"  # the local lanes go on
    status, _, body = http_get(dask_node.http, "/healthz")
    assert status == 503 and orjson.loads(body)["status"] == "degraded"
    dask = dask_status(dask_node)
    assert dask["state"] == "unreachable" and dask["problem"]


# ---------------------------------------------------------------------------- SIGHUP and a hung handler, local:1

ROLLING = '''
import os
from pfnode import handler

@handler("df", "dask_version")
def dask_version(data):
    return {{"version": {version}, "pid": os.getpid()}}
'''


@pytest.fixture(scope="module")
def dask_one(tmp_path_factory):
    """A node on a one-worker LocalCluster, with a handler module of its own (in a folder on its
    PYTHONPATH) that the tests rewrite, and a short reclaim grace."""
    from tests.conftest import start_node

    folder = tmp_path_factory.mktemp("dask-one")
    (folder / "dask_rolling.py").write_text(textwrap.dedent(ROLLING.format(version=1)))
    node = start_node(folder, "--dask", "local:1", "--dask-reclaim-grace-ms", "500", "--ed-workers", "0",
                      "--rm-workers", "0", workers=1, handlers=DASK_HANDLERS + ",dask_rolling", timeout_s=90,
                      env={"PYTHONPATH": str(folder), "PYTHONDONTWRITEBYTECODE": "1"})
    node.folder = folder
    yield node
    node.stop()


def test_sighup_restarts_the_local_dask_workers_onto_new_handler_code(dask_one):
    [before] = submit(dask_one, ("df", "dask_version", None, {}))
    assert before.ok and before.data["version"] == 1, before.error
    (dask_one.folder / "dask_rolling.py").write_text(textwrap.dedent(ROLLING.format(version=22)))
    dask_one.proc.send_signal(signal.SIGHUP)

    def new_code():
        [res] = submit(dask_one, ("df", "dask_version", None, {}))
        assert res.ok, res.error  # packets wait in the node's queue while the workers restart
        return res.data["version"] == 22 and res.data

    after = wait_until(new_code, 60, interval_s=0.2, what="the Dask worker running the new code")
    assert after["pid"] != before.data["pid"]
    assert "restarted the local cluster's 1 workers onto new handler code" in dask_one.log()
    assert dask_status(dask_one)["state"] == "ready"


def test_a_handler_overrunning_its_deadline_on_dask_has_its_worker_restarted(dask_one, tmp_path):
    pidfile = tmp_path / "hung"

    async def go():
        async with Reactor(dask_one.endpoint) as r:
            hung = asyncio.ensure_future(r.submit("df", "run_for", {"s": 60, "pidfile": str(pidfile)},
                                                  timeout_ms=300))
            while not pidfile.exists() or not pidfile.read_text().strip():
                await asyncio.sleep(0.01)
            # handed to the cluster while the only worker's thread is held by the hung handler
            after = asyncio.ensure_future(r.submit("df", "where", 1, timeout_ms=30_000))
            return await hung, await after

    hung, after = run(go(), 60)
    assert hung.error["code"] == "PF408" and "while running on Dask worker" in hung.error["message"]
    assert after.ok, after.error  # the worker was restarted after the grace, and the packet ran again
    assert after.data["pid"] != int(pidfile.read_text().split()[0]) and after.data["dask_worker"]
    assert dask_status(dask_one)["counters"]["reclaimed"] == 1
    assert dask_one.log().count("restarting it so that a hung handler cannot hold it forever") == 1
    wait_until(lambda: len(dask_status(dask_one)["workers"]) == 1, 20, what="the restarted worker back")
    assert _samples(dask_one)['pfnode_dask_tasks_total{event="reclaimed"}'] == 1


# ---------------------------------------------------------------------------- --dask-upload

UPLOADED = '''
import os
from pfnode import handler

@handler("df", "uploaded_single")
def uploaded_single(data):
    return {{"version": {version}, "pid": os.getpid(), "file": __file__}}
'''


def _dask_cluster(port: int, log, cwd, env) -> list[subprocess.Popen]:
    """A scheduler and one worker (with its nanny) as separate processes."""
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"], stdout=log, stderr=log, env=env, cwd=cwd)]
    procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", f"tcp://127.0.0.1:{port}",
                                   "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                                  stdout=log, stderr=log, env=env, cwd=cwd))
    return procs


def _stop(procs) -> None:
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_dask_upload_ships_handler_modules_the_workers_lack(fresh_node, tmp_path):
    source, elsewhere = tmp_path / "src", tmp_path / "workers"
    (source / "uploaded_pkg").mkdir(parents=True)
    elsewhere.mkdir()
    (source / "uploaded_single.py").write_text(textwrap.dedent(UPLOADED.format(version=1)))
    (source / "uploaded_pkg" / "__init__.py").write_text("")
    (source / "uploaded_pkg" / "handlers.py").write_text(textwrap.dedent('''
        from pfnode import handler
        from .helper import shout

        @handler("df", "uploaded_pkg")
        def uploaded_pkg(data):
            return shout(data)
        '''))
    (source / "uploaded_pkg" / "helper.py").write_text("def shout(text):\n    return text.upper() + '!'\n")
    port = _free_port()
    # the workers' environment lacks the handler modules: no PYTHONPATH, run from an empty folder
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(DASK_LOGGING__DISTRIBUTED="warning", PYTHONDONTWRITEBYTECODE="1")
    log = open(tmp_path / "cluster.log", "wb")
    procs = _dask_cluster(port, log, elsewhere, env)
    try:
        node = fresh_node("--dask", f"tcp://127.0.0.1:{port}", "--dask-upload", "--ed-workers", "0",
                          "--rm-workers", "0", workers=1, handlers="uploaded_single,uploaded_pkg.handlers",
                          env={"PYTHONPATH": str(source), "PYTHONDONTWRITEBYTECODE": "1"})
        wait_until(lambda: node.health()["dask"]["state"] == "ready" and node.health()["dask"]["workers"],
                   30, what="the node connected to the cluster")
        single, pkg = submit(node, ("df", "uploaded_single", None, {}), ("df", "uploaded_pkg", "hi", {}))
        assert single.ok, single.error
        assert single.data["version"] == 1 and not single.data["file"].startswith(str(source))
        assert pkg.ok and pkg.data == "HI!", pkg.error
        assert not any(w.get("problem") for w in node.health()["dask"]["workers"])
        # SIGHUP ships the new source; the remote worker imports it when it restarts (here: killed,
        # its nanny starts it again)
        (source / "uploaded_single.py").write_text(textwrap.dedent(UPLOADED.format(version=22)))
        node.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "import new handler code when they restart" in node.log(), 20, what="the SIGHUP")
        os.kill(single.data["pid"], signal.SIGKILL)

        def new_code():
            [res] = submit(node, ("df", "uploaded_single", None, {}))
            return res.ok and res.data["version"] == 22 and res.data

        wait_until(new_code, 40, interval_s=0.3, what="the restarted worker running the shipped new code")
    finally:
        _stop(procs)
        log.close()


# ---------------------------------------------------------------------------- a scheduler that is not there yet

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_leaves_the_node_degraded_until_it_can_connect(fresh_node, tmp_path):
    port = _free_port()
    node = fresh_node("--dask", f"tcp://127.0.0.1:{port}", "--dask-connect-timeout-ms", "500",
                      "--ed-workers", "0", "--rm-workers", "0", workers=1, handlers=DASK_HANDLERS)
    [res] = submit(node, ("df", "where", 1, {}))
    assert res.error["code"] == "PF503" and f"tcp://127.0.0.1:{port} is unreachable" in res.error["message"]
    status, _, body = http_get(node.http, "/healthz")
    assert status == 503 and "cannot reach the scheduler" in orjson.loads(body)["dask"]
    [local] = submit(node, ("cf", "validate", 1, {}))
    assert local.ok
    # a cluster appears at that address: the node connects by itself
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
            "--no-dashboard"]
    env = {**os.environ, "DASK_LOGGING__DISTRIBUTED": "warning"}
    log = open(tmp_path / "cluster.log", "wb")
    procs = [subprocess.Popen(dask, stdout=log, stderr=log, env=env)]
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker",
                                       f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--no-dashboard",
                                       "--no-nanny"], stdout=log, stderr=log, env=env, cwd=os.getcwd()))
        wait_until(lambda: node.health()["dask"]["state"] == "ready" and node.health()["dask"]["workers"],
                   30, what="the node connected to the new cluster")
        [res] = submit(node, ("df", "where", 2, {}))
        assert res.ok and res.data["dask_worker"] and res.data["data"] == 2
        assert http_get(node.http, "/healthz")[0] == 200
    finally:
        _stop(procs)
        log.close()
