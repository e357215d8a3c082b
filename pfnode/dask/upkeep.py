"""Keeping the Dask workers fit to run the node's packets: reclaiming a worker that a hung
handler holds, rolling the workers onto new handler code (SIGHUP), and shipping the handler
modules' source to workers that lack them (`--dask-upload`). The lane (pfnode/dask/lane.py)
calls these; the cluster's connection is pfnode/dask/cluster.py. docs/DASK.md says what each
does and cannot do.

- Reclaim: a packet answered PF408 while it ran on a worker is noted (`Reclaimer.overdue`).
  `dask_reclaim_grace_ms` later the worker is asked whether it still runs it (the worker keeps
  the tokens it runs: pfnode/dask/worker.py's `running_tokens`); if so, the worker is restarted
  (`Client.restart_workers`, through its nanny), once for all of its overdue packets, logged
  and counted (`reclaimed`). The other packets on it end by the worker-lost rules; the threads
  the overdue packets held are known busy, so a packet that was only waiting there is run again.
- Reload (SIGHUP): on a cluster this node started (`local:N`), new packets wait in the node's
  queue, those on the cluster are given `shutdown_grace_ms` to end (the rest are answered PF503),
  then `Client.restart` replaces every worker process (each imports the modules afresh). On a
  cluster of its own deployment the node registers the modules' plugin again (and ships their
  source with `--dask-upload`): its workers import new code when they restart.
- Upload (`--dask-upload`: pfnode/dask/upload.py builds the files, pfnode/dask/worker.py's
  `UploadedModules` writes them on each worker): registered with the modules' plugin, at
  connection and on SIGHUP.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from .cluster import READY, RESTARTING, Cluster

log = logging.getLogger("pfnode.dask")


class Reclaimer:
    """Restarts a Dask worker still running a packet `dask_reclaim_grace_ms` after its deadline."""

    def __init__(self, cluster: Cluster, counters: Any) -> None:
        self.cluster = cluster
        self.counters = counters
        self.overdue_on: dict[str, set[str]] = {}  # worker -> tokens of overdue packets to check
        self.held: dict[str, int] = {}  # worker being restarted -> its threads overdue packets hold

    def overdue(self, token: str, worker: str, what: str) -> None:
        """A packet (`what`: key and id) was answered PF408 while running on `worker`."""
        self.overdue_on.setdefault(worker, set()).add(token)
        self.cluster.background(self._check(token, worker, what))

    async def _check(self, token: str, worker: str, what: str) -> None:
        from .worker import running_tokens

        grace_ms = self.cluster.settings.dask_reclaim_grace_ms
        await asyncio.sleep(grace_ms / 1000)
        tokens = self.overdue_on.pop(worker, set())
        cluster, client = self.cluster, self.cluster.client
        if token not in tokens or client is None or cluster.state is not READY or worker not in cluster.workers:
            return  # checked with another of its worker's packets, or the worker is gone already
        try:
            replies = await client.run(running_tokens, sorted(tokens), workers=[worker], on_error="return")
        except Exception as exc:
            log.debug("dask: asking %s what it runs: %s", worker, exc)
            return
        running = replies.get(worker)
        if not isinstance(running, list) or not running or worker in self.held:
            return
        self.held[worker] = len(running)
        self.counters["reclaimed"] += 1
        log.error("dask: Dask worker %s still runs %d packet(s) (%s among them) %d ms after their deadline "
                  "(answered PF408 then); restarting it so that a hung handler cannot hold it forever "
                  "(dask_reclaim_grace_ms)", worker, len(running), what, grace_ms)
        try:
            result = await client.restart_workers([worker], raise_for_error=False)
        except Exception as exc:
            result = {worker: f"{type(exc).__name__}: {exc}"}
        if (result or {}).get(worker) != "OK":
            self.held.pop(worker, None)
            log.error("dask: could not restart Dask worker %s (%s): it is held until its handler returns; "
                      "workers without a nanny cannot be restarted by the node", worker, (result or {}).get(worker))

    def holding(self, worker: str) -> int:
        """The threads of a worker that is leaving which overdue packets held (counted once)."""
        return self.held.pop(worker, 0)


async def reload(lane: Any, answer_all: Callable[[str], None]) -> None:
    """SIGHUP: the Dask workers onto the handler code as it is on disk now (see the module's doc).
    `lane`: the DaskLane (its attempts, kept results, wake); `answer_all`: PF503 for its packets."""
    cluster = lane.cluster
    if cluster.state is not READY or cluster.client is None:
        log.warning("dask: SIGHUP: the cluster is %s; its workers import the handler modules when it is back",
                    cluster.state)
        return
    if cluster.local is None:
        await cluster.install_modules(cluster.client)
        log.info("dask: SIGHUP: handler modules registered again on the cluster at %s%s; its workers import new "
                 "handler code when they restart (restart them with the cluster's own tooling)", cluster.address,
                 " and their source shipped" if cluster.settings.dask_upload else "")
        return
    cluster.state = RESTARTING
    try:
        deadline = time.monotonic() + cluster.settings.shutdown_grace_ms / 1000
        while lane.attempts and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if lane.attempts:
            log.warning("dask: SIGHUP: %d packets still on the cluster after %d ms are answered PF503",
                        len(lane.attempts), cluster.settings.shutdown_grace_ms)
            answer_all("the Dask workers are restarting onto new handler code (SIGHUP); it may have run")
        lane.kept.clear()  # the restart forgets every result on the cluster
        await cluster.restart()
        log.info("dask: SIGHUP: restarted the local cluster's %d workers onto new handler code", len(cluster.workers))
    finally:
        if cluster.state is RESTARTING:
            cluster.state = READY
        lane.wake()
