"""The peers family's clients (bench/peers.py): one function per system, each run in a fresh
process by `Processes.call`, each driving its system through that system's own Python API.

Every one runs the same two task functions on the same data (bench/common.py's DATA):
`pfnode.handlers.examples.noop` (returns its input) and `bench.handlers_bench.numpy_5ms` (5 ms of
its thread's CPU time in numpy, then its input), the very functions the pfnode node runs as
df:noop and df:numpy_5ms. Each checks every result equal to DATA, and returns the same dict
(`_result`): per workload its task count, seconds and tasks/s, and the one-at-a-time round trips'
p50/p99, plus how long the system took to start.

Only the Ray client imports Ray, and only when it is installed (bench/peers.py asks first).
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable

from bench.common import DATA, ROOT, BenchError, percentile, run_loop

WORKLOADS = ("noop", "cpu5")  # the throughput workloads; the round trips are no-ops
# Each workload's df element on a pfnode node; cpu1 is bench/scaling.py's (pfnode and the executor only).
ELEMENTS = {"noop": "noop", "cpu5": "numpy_5ms", "cpu1": "numpy_1ms"}


def _tasks():
    """The task functions, the same objects for every system."""
    from bench.handlers_bench import numpy_1ms, numpy_5ms
    from pfnode.handlers.examples import noop

    return {"noop": noop, "cpu5": numpy_5ms, "cpu1": numpy_1ms}


def _check(results, what: str) -> None:
    for value in results:
        if value != DATA:
            raise BenchError(f"{what} returned wrong data: {value!r}")


def _rtt(one: Callable[[], object], count: int, what: str) -> dict:
    """`count` calls of `one()` (a no-op round trip, one in flight), each answer checked."""
    clock, times = time.perf_counter_ns, []
    for _ in range(count):
        t0 = clock()
        value = one()
        times.append((clock() - t0) / 1000)
        if value != DATA:
            raise BenchError(f"{what} returned wrong data: {value!r}")
    times.sort()
    return {"samples": count, "p50_us": percentile(times, 50), "p99_us": percentile(times, 99),
            "mean_us": statistics.fmean(times)}


def _timed(run: Callable[[], list], count: int, what: str) -> dict:
    t0 = time.perf_counter()
    results = run()
    elapsed = time.perf_counter() - t0
    if len(results) != count:
        raise BenchError(f"{what}: {len(results)} results for {count} tasks")
    _check(results, what)
    return {"tasks": count, "elapsed_s": elapsed, "tasks_per_s": count / elapsed}


def _result(start_s: float, runs: dict, rtt: dict, **extra) -> dict:
    return {"start_s": start_s, **runs, "rtt": rtt, **extra}


# ---------------------------------------------------------------------------- pfnode

def pfnode_client(endpoint: str, counts: dict, rtt_count: int, window: int, warmup: int, timeout_s: float) -> dict:
    """pfnode through its asyncio client, `pfnode.client.Reactor`, over one WebSocket: `window`
    submits in flight for throughput (df:noop, then df:numpy_5ms), then df:noop one at a time."""
    from pfnode.client import Reactor

    elements = {name: ELEMENTS[name] for name in counts}  # the workloads asked for, in their order

    async def main() -> dict:
        import asyncio

        t0 = time.perf_counter()
        reactor = Reactor(endpoint, announce=False)  # it runs nothing: a plain client
        await reactor.start()
        try:
            async def one(element: str):
                result = await reactor.submit("df", element, DATA)
                if not result.ok:
                    raise BenchError(f"pfnode df:{element} failed: {result.error}")
                return result.data

            async def many(element: str, count: int) -> list:
                """`count` submits, at most `window` unanswered: `window` senders, each one after another."""
                left, out = [count], []

                async def sender() -> None:
                    while left[0] > 0:
                        left[0] -= 1
                        out.append(await one(element))

                await asyncio.gather(*(sender() for _ in range(min(window, count))))
                return out

            async def timed(element: str, count: int) -> dict:
                t = time.perf_counter()
                results = await asyncio.wait_for(many(element, count), timeout_s)
                elapsed = time.perf_counter() - t
                _check(results, f"pfnode df:{element}")
                return {"tasks": count, "elapsed_s": elapsed, "tasks_per_s": count / elapsed}

            _check(await many("noop", warmup), "pfnode df:noop")
            start_s = time.perf_counter() - t0  # the node's own start is added by bench/peers.py
            _check(await many("numpy_5ms", 4), "pfnode df:numpy_5ms")  # numpy imported in both workers
            runs = {name: await timed(element, counts[name]) for name, element in elements.items()}
            clock, times = time.perf_counter_ns, []
            for _ in range(rtt_count):
                t = clock()
                value = await one("noop")
                times.append((clock() - t) / 1000)
                _check([value], "pfnode df:noop")
            times.sort()
            rtt = {"samples": rtt_count, "p50_us": percentile(times, 50), "p99_us": percentile(times, 99),
                   "mean_us": statistics.fmean(times)}
        finally:
            await reactor.stop()
        return _result(start_s, runs, rtt, window=window)

    return run_loop(main)


# ---------------------------------------------------------------------------- the stdlib pool

def executor_client(workers: int, counts: dict, rtt_count: int, warmup: int, timeout_s: float) -> dict:
    """`concurrent.futures.ProcessPoolExecutor(workers)` (its default start method), no network:
    `map` for throughput (every task submitted at once, results in order), `submit().result()`
    one at a time for the round trips."""
    from concurrent.futures import ProcessPoolExecutor

    from bench.processes import die_with_parent

    tasks = _tasks()
    t0 = time.perf_counter()
    # The initializer only makes the workers die with this process should it be killed.
    with ProcessPoolExecutor(workers, initializer=die_with_parent) as ex:
        _check(ex.map(tasks["noop"], [DATA] * max(warmup, 4 * workers)), "executor noop")  # every worker up
        start_s = time.perf_counter() - t0
        _check(ex.map(tasks["cpu5"], [DATA] * (2 * workers)), "executor numpy_5ms")
        runs = {name: _timed(lambda fn=tasks[name], n=counts[name]: list(ex.map(fn, [DATA] * n, timeout=timeout_s)),
                             counts[name], f"executor {name}") for name in counts}
        rtt = _rtt(lambda: ex.submit(tasks["noop"], DATA).result(timeout_s), rtt_count, "executor noop")
    return _result(start_s, runs, rtt)


# ---------------------------------------------------------------------------- Dask

def dask_client(workers: int, counts: dict, rtt_count: int, warmup: int, timeout_s: float) -> dict:
    """Dask distributed: a `LocalCluster` of `workers` single-threaded worker processes and a
    `Client`; `client.map` (pure=False: every task its own key) + `client.gather` for throughput,
    `client.submit(...).result()` one at a time for the round trips."""
    import logging

    from dask.distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)  # its start-up notes are not results
    tasks = _tasks()
    t0 = time.perf_counter()
    # On loopback, its HTTP server on a free port (as pfnode's own LocalCluster, pfnode/dask/local.py):
    # the default, 8787, may be taken by another cluster on the machine.
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(workers, timeout=timeout_s)

        def run_map(fn, n: int) -> list:
            return client.gather(client.map(fn, [DATA] * n, pure=False))

        _check(run_map(tasks["noop"], max(warmup, 4 * workers)), "dask noop")
        start_s = time.perf_counter() - t0
        _check(run_map(tasks["cpu5"], 2 * workers), "dask numpy_5ms")
        runs = {name: _timed(lambda fn=tasks[name], n=counts[name]: run_map(fn, n), counts[name], f"dask {name}")
                for name in WORKLOADS}
        rtt = _rtt(lambda: client.submit(tasks["noop"], DATA, pure=False).result(timeout_s), rtt_count, "dask noop")
    return _result(start_s, runs, rtt)


# ---------------------------------------------------------------------------- Ray

def ray_client(workers: int, counts: dict, rtt_count: int, warmup: int, timeout_s: float) -> dict:
    """Ray: `ray.init(num_cpus=workers)` (a local instance, no dashboard), the two functions as
    `@ray.remote` tasks (num_cpus=1 each, so `workers` run at once); every task's `.remote()`
    then one `ray.get` of all their refs for throughput, `ray.get(f.remote(...))` one at a time
    for the round trips. Returns {"skipped": why} when Ray does not import."""
    try:
        import ray
    except ImportError as exc:
        return {"skipped": f"import ray failed: {exc}"}

    # Ray's workers are new interpreters started by its raylet, which inherits this environment:
    # with the repository root on their path they import bench.handlers_bench as this process does.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    tasks = _tasks()
    t0 = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        remote = {name: ray.remote(num_cpus=1)(fn) for name, fn in tasks.items()}

        def run_all(name: str, n: int) -> list:
            return ray.get([remote[name].remote(DATA) for _ in range(n)], timeout=timeout_s)

        _check(run_all("noop", max(warmup, 4 * workers)), "ray noop")
        start_s = time.perf_counter() - t0
        _check(run_all("cpu5", 2 * workers), "ray numpy_5ms")
        runs = {name: _timed(lambda name=name, n=counts[name]: run_all(name, n), counts[name], f"ray {name}")
                for name in WORKLOADS}
        rtt = _rtt(lambda: ray.get(remote["noop"].remote(DATA), timeout=timeout_s), rtt_count, "ray noop")
        version = ray.__version__
    finally:
        ray.shutdown()
    return _result(start_s, runs, rtt, version=version)
