"""The dask lane: chosen lanes and handler keys run on a Dask cluster instead of the local pool.

`pfnode serve --dask tcp://scheduler:8786` (or `--dask local:N`, a LocalCluster of N worker
processes the node starts: pfnode/dask/local.py) sends the packets of `--dask-lanes` (df by
default; lane names or handler keys) to the cluster. Everything above the lane is unchanged:
the protocol, admission, priorities and fairness, deadlines, dependencies and hub routing,
and the one answer path (`Node.settle`, through the pool's `on_answer`). docs/DASK.md says
when to use it and what it costs.

How a packet goes
- The pool's `lane_of` gives a claimed packet the lane `DASK`, a lane queue of the node's
  scheduler like the others. `pump` (from the pool's pump) takes packets from it in the
  scheduler's order (priority, aging, tenants' turns) while fewer than the window
  (`--dask-window`, by default 8 per worker thread, at least 64: enough that the workers do
  not wait for the node) are on the cluster, and submits each as one task
  (`worker.run_packet`) with `priority=` its packet's priority (Dask also runs higher first,
  FIFO within one), many in one request (pfnode/dask/tasks.py): once a quarter of the window
  is free, or LINGER_S after a slot freed. The rest wait in the node's queue, where the node's
  rules decide which goes next and a deadline ends a waiting packet as for the local pool.
- A packet's dependencies are the futures of the packets it depends on, kept on the cluster
  (`--dask-kept-results` of them): Dask hands the dependency's result to the dependent's task
  on the cluster. Only a dependency that did not run on the cluster (or whose future is no
  longer kept) is sent from the node's result store. The node still waits for the
  dependencies to complete (the scheduler's BLOCKED state), so a failed dependency still
  fails its dependents PF006 without running them.
- Each task says when it starts and how it ended (events on this node's topic, which the
  scheduler forwards on the client's stream): the node knows which packets run, where, and
  gets small results without a request of its own. Larger results are gathered in batches
  (one request per loop turn), straight from the workers (`--no-dask-direct`: through the
  scheduler).

Endings (every packet is answered once, whatever Dask does)
- Deadline (`expire`, called by the node's timer): PF408 at once. A task that had not
  started is cancelled and never runs. A running one cannot be stopped: Dask does not
  interrupt a running function; its result is discarded, and should it still run
  `dask_reclaim_grace_ms` later its worker is restarted (pfnode/dask/upkeep.py).
- A worker lost while running the packet: PF502, unless the packet asked for more runs
  (`metadata.retries`: 0-10): then it is submitted again, up to that many times. A packet
  that the lost worker held but cannot have started (its threads were all running other
  packets of this node) is submitted again without counting as a run; one that may have
  started (its "started" event can die with the worker) counts as lost: at most once.
- The submitter left (`cancel`): a packet not started is cancelled; a running one runs on
  (its answer goes nowhere), as in the local pool.
- The cluster unreachable (the client lost its scheduler, or never reached it): every packet
  on the cluster is answered PF503 (it may have run), and so is every packet of the lane until
  the cluster is back; `/healthz` answers 503 "degraded" and `/status` and `mc:status` say
  why. The node reconnects by itself.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from ..core.flight import DISPATCHED, DONE, Flight, Outcome, failure, success
from ..core.scheduler import LaneQueue
from ..errors import ErrorCode
from .cluster import READY, UNREACHABLE, Cluster
from .tasks import Attempt, Requests, Submissions, retries_of
from .upkeep import Reclaimer, reload

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger("pfnode.dask")

DASK = "dask"  # the scheduler lane of the packets that run on the Dask cluster
LINGER_S = 0.02  # the longest a free slot of the window waits for others to fill it in one batch
# the lane's counters /metrics exports (with "expired": queued and running together)
COUNTED = ("submitted", "completed", "failed", "worker_lost", "retried", "requeued", "cancelled", "unavailable",
           "reclaimed")


class DaskLane:
    """The backend the pool owns when `--dask` is set: the DASK lane's packets to the cluster
    (pfnode/dask/cluster.py) and their endings back to `on_answer` (the node's one answer path)."""

    def __init__(self, settings: "Settings", scheduler: Any, on_answer: Callable[[Flight, Outcome], None], *,
                 wake: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.on_answer = on_answer
        self.wake = wake  # the pool's pump: the window has room again
        self.clock = clock
        self.cluster = Cluster(settings, on_ready=wake, on_unreachable=self._unreachable,
                               on_task_event=self._on_task_event, on_worker_gone=self._worker_gone)
        self.lanes = {name for name in settings.dask_lanes if ":" not in name}
        self.keys = {name for name in settings.dask_lanes if ":" in name}
        # the DASK lane: a queue of the node's scheduler like the others (same aging)
        scheduler.lanes.setdefault(DASK, LaneQueue(settings.aging_ms / 1000))
        self.attempts: dict[Flight, Attempt] = {}  # the packets on the cluster now
        self.by_token: dict[str, Attempt] = {}
        # results on the cluster that blocked packets wait for: (scope, id) -> [future, token, uses left]
        self.kept: collections.OrderedDict[Any, list] = collections.OrderedDict()
        self.counters: collections.Counter[str] = collections.Counter()
        self.requests = Requests(self)
        self.submissions = Submissions(self)
        self._linger: asyncio.TimerHandle | None = None  # a batch smaller than a quarter of the window waits
        self._lingered = False  # it waited: it goes now
        self.reclaimer = Reclaimer(self.cluster, self.counters)  # a hung handler's worker restarted

    # ------------------------------------------------------------------ what the pool and node read
    @property
    def problem(self) -> str | None:
        """Why the cluster is unusable now (None: it is usable); /healthz says "degraded"."""
        return self.cluster.problem

    @property
    def state(self) -> str:
        return self.cluster.state

    def lane_for(self, key: str, lane: str) -> str:
        """The lane a packet of `key` runs on: DASK when its key or its lane is claimed."""
        return DASK if key in self.keys or lane in self.lanes else lane

    async def start(self, handler_keys: frozenset[str], modules: list[str]) -> None:
        """Start the local cluster (local:N) and connect (pfnode/dask/cluster.py); the
        Dask workers run the keys the pool's workers run and import the same modules."""
        await self.cluster.start(handler_keys, modules)
        if self.cluster.state is READY:
            log.info("dask: lanes %s run on the cluster", ", ".join(sorted(self.lanes | self.keys)))

    async def close(self) -> None:
        self.cluster.closing = True
        if self._linger is not None:
            self._linger.cancel()
        for attempt in list(self.attempts.values()):
            self._forget(attempt)
        self.kept.clear()
        self.requests.release_now()
        await self.cluster.close()

    # ------------------------------------------------------------------ packets out
    def pump(self, now: float) -> None:
        """Hand queued DASK packets to the cluster while the window has room, in batches (or,
        the cluster unreachable, answer them PF503). A batch goes as soon as a quarter of the
        window is free, or the oldest free slot has waited LINGER_S: one request and one
        `update-graph` on the scheduler for many packets, while the packets still on the
        cluster (three quarters of the window) keep its workers busy."""
        if self.cluster.state is READY:
            window = self.cluster.window()
            room = window - len(self.attempts)
            if room <= 0 or self.scheduler.depth(DASK) == 0:
                return
            if room < window // 4 and not self._lingered:
                if self._linger is None:
                    self._linger = asyncio.get_running_loop().call_later(LINGER_S, self._linger_ends)
                return
            self._lingered = False
            runs = []
            while len(runs) < room and (flight := self.scheduler.dispatch(DASK, now)) is not None:
                runs.append((flight, 1))
            if runs:
                self.submissions.submit(runs, now)
        elif self.cluster.state is UNREACHABLE:
            while (flight := self.scheduler.dispatch(DASK, now)) is not None:
                self.counters["unavailable"] += 1
                self.on_answer(flight, failure(ErrorCode.UNAVAILABLE, self.cluster.unavailable_text()))

    def _linger_ends(self) -> None:
        self._linger = None
        self._lingered = True
        self.wake()

    # ------------------------------------------------------------------ endings
    def cancelled(self, attempt: Attempt) -> None:
        """Its task was cancelled, not by this node: the client lost its scheduler (which
        cancels every future), or another client cancelled it."""
        client = self.cluster.client
        if client is None or client.status != "running":
            self.cluster.unreachable("lost the connection to the scheduler")
        else:
            self._end(attempt, failure(ErrorCode.UNAVAILABLE, "the Dask cluster cancelled the packet's task"))

    def answered(self, attempt: Attempt, answer: Any) -> None:
        from ..pool.pipe import Done, Failed

        if self.attempts.get(attempt.flight) is not attempt:
            return  # its deadline passed while its result travelled
        flight = attempt.flight
        if type(answer) is Done:
            waiting = self.scheduler.waiting_for(flight.key)
            if waiting:  # its dependents will take it from the cluster
                self.kept[flight.key] = [attempt.future, attempt.token, waiting]
                self.kept.move_to_end(flight.key)
                while len(self.kept) > self.settings.dask_kept_results:
                    self.kept.popitem(last=False)
            self._end(attempt, success(answer.body, answer.duration_ms))
        elif type(answer) is Failed:
            self._end(attempt, failure(answer.code, answer.message, answer.duration_ms))
        else:
            self._end(attempt, failure(ErrorCode.HANDLER_FAILED, f"the Dask task returned {type(answer).__name__}, "
                                                                 "not a pfnode answer"))

    def errored(self, attempt: Attempt, exc: BaseException) -> None:
        """The task itself failed (not the handler, whose errors are answers)."""
        if type(exc).__name__ == "KilledWorker":
            if attempt.unstarted:  # it never started: the dead worker only held it
                self.counters["requeued"] += 1
                self._resubmit(attempt, attempt.run)
            else:
                self._lost(attempt, getattr(getattr(exc, "last_worker", None), "address", None) or attempt.worker)
            return
        text = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ImportError):
            self._end(attempt, failure(ErrorCode.NO_HANDLER, f"a Dask worker cannot run pfnode's task ({text}); "
                                                             "install pfnode and the handler modules on every worker"))
        else:
            self._end(attempt, failure(ErrorCode.HANDLER_FAILED, f"the Dask task failed: {text}"[:1000]))

    def _lost(self, attempt: Attempt, worker: str | None) -> None:
        """The worker running the packet is gone: another run if it asked for one, else PF502."""
        flight = attempt.flight
        self._forget(attempt, cancel=True)  # Dask may have sent it to another worker already
        self.counters["worker_lost"] += 1
        retries = retries_of(flight.packet.metadata)
        if attempt.run <= retries:
            self.counters["retried"] += 1
            log.warning("dask: worker %s died running %s packet %s; run %d of %d", worker, flight.packet.key,
                        flight.id, attempt.run + 1, retries + 1)
            self._resubmit(attempt, attempt.run + 1)
            return
        runs = f" (its {attempt.run} runs all lost)" if attempt.run > 1 else ""
        log.warning("dask: worker %s died running %s packet %s%s", worker, flight.packet.key, flight.id, runs)
        self._end(attempt, failure(ErrorCode.WORKER_DIED, f"Dask worker {worker} died while running the packet{runs}"
                                                          + ("" if retries else "; set metadata.retries to "
                                                             "have it run again")))

    def _resubmit(self, attempt: Attempt, run: int) -> None:
        self._forget(attempt)
        flight = attempt.flight
        if flight.state is DISPATCHED and self.cluster.state is READY:
            self.submissions.submit([(flight, run)], self.clock())
        elif flight.state is DISPATCHED:
            self.on_answer(flight, failure(ErrorCode.UNAVAILABLE, self.cluster.unavailable_text()))

    def _end(self, attempt: Attempt, outcome: Outcome) -> None:
        self._forget(attempt)
        self.counters["completed" if outcome.ok else "failed"] += 1
        if attempt.flight.state is not DONE:
            self.on_answer(attempt.flight, outcome)
        self.wake()

    def _forget(self, attempt: Attempt, cancel: bool = False) -> None:
        if self.attempts.get(attempt.flight) is attempt:
            del self.attempts[attempt.flight]
        self.by_token.pop(attempt.token, None)
        if cancel:
            self.requests.cancel(attempt.future)
        self.requests.release(attempt.future)

    def expire(self, flight: Flight) -> None:
        """Its deadline passed while it was on the cluster: PF408 now; cancelled if it had not
        started, its result discarded if it had (Dask cannot stop a running task)."""
        attempt = self.attempts.get(flight)
        limit = flight.timeout_ms
        if attempt is not None and attempt.worker is not None:
            text = (f"deadline of {limit} ms passed while running on Dask worker {attempt.worker}; "
                    "its result will be discarded")
            self.counters["expired_running"] += 1
            self.reclaimer.overdue(attempt.token, attempt.worker, f"{flight.packet.key} packet {flight.id}")
        else:
            text = f"deadline of {limit} ms passed while queued on the Dask cluster; cancelled"
            self.counters["expired_queued"] += 1
        self.on_answer(flight, failure(ErrorCode.DEADLINE_EXCEEDED, text))
        if attempt is not None:
            self._forget(attempt, cancel=True)
        self.wake()

    def cancel(self, flight: Flight) -> None:
        """Its submitter left: cancelled if it has not started (a running one runs on, or
        meets its deadline, and its answer goes nowhere)."""
        attempt = self.attempts.get(flight)
        if attempt is None or attempt.worker is not None:
            return
        self._forget(attempt, cancel=True)
        self.counters["cancelled"] += 1
        if flight.state is not DONE:
            self.scheduler.forget(flight)
        self.wake()

    # ------------------------------------------------------------------ what the cluster tells
    def _unreachable(self, why: str) -> None:
        """The cluster cannot be used: PF503 for every packet on it or waiting for it."""
        self.kept.clear()
        self._answer_all(f"lost the Dask cluster at {self.cluster.address} while the packet was on it ({why}); "
                         "it may have run")

    def _answer_all(self, text: str) -> None:
        """PF503 (`text`) for every packet on the cluster."""
        for attempt in list(self.attempts.values()):
            self._forget(attempt)
            self.counters["unavailable"] += 1
            if attempt.flight.state is not DONE:
                self.on_answer(attempt.flight, failure(ErrorCode.UNAVAILABLE, text))
        self.wake()

    async def reload(self) -> None:
        """SIGHUP: the workers onto new handler code (pfnode/dask/upkeep.py)."""
        await reload(self, self._answer_all)

    def _on_task_event(self, event: Any) -> None:
        """A task of ours started, or ended with a small result (pfnode/dask/worker.py)."""
        from ..pool.pipe import Done, Failed

        _, msg = event
        kind, token = msg[0], msg[1]
        attempt = self.by_token.get(token)
        if attempt is None:
            return
        if kind == "started":
            attempt.worker = msg[2]
        elif kind == "done":
            self.counters["results_by_event"] += 1
            self.answered(attempt, Done(0, msg[2], msg[3]))
        elif kind == "failed":
            self.answered(attempt, Failed(0, msg[2], msg[3], msg[4]))

    def _worker_gone(self, worker: str, processing: Any, threads: int, lost_computed: Any) -> None:
        """A worker left with these tasks assigned. Those of ours that started there are lost.
        One whose start the node had not heard of yet may have started all the same (the
        event may have died with the worker): it counts as lost too, unless the worker's
        threads were all known to be running other packets of ours, so it cannot have."""
        ours = [a for a in map(self.by_token.get, processing) if a is not None]
        running = sum(1 for a in ours if a.worker == worker) + self.reclaimer.holding(worker)
        for attempt in ours:
            if attempt.worker == worker or running < threads:
                self._lost(attempt, worker)
            else:
                attempt.unstarted = True  # Dask sends it elsewhere, or fails it (KilledWorker): run again
        if lost_computed and self.kept:  # not computed again for us: the node has their results
            for key in [key for key, kept in self.kept.items() if kept[1] in lost_computed]:
                del self.kept[key]

    # ------------------------------------------------------------------ mc:scale, mc:status
    def stats(self) -> dict[str, Any]:
        running: collections.Counter[str] = collections.Counter(
            a.worker for a in self.attempts.values() if a.worker is not None)
        return {**self.cluster.stats(running), "lanes": sorted(self.lanes | self.keys),
                "on_cluster": len(self.attempts), "running": sum(running.values()),
                "queued": self.scheduler.depth(DASK), "counters": dict(self.counters)}

    def gauges(self) -> dict[str, Any]:
        """/metrics' Dask gauges and counters (ops/metrics.DaskState)."""
        c = self.counters
        return {"state": self.cluster.state, "workers": len(self.cluster.workers), "threads": self.cluster.threads,
                "window": self.cluster.window(), "on_cluster": len(self.attempts), "queued": self.scheduler.depth(DASK),
                "running": sum(1 for a in self.attempts.values() if a.worker is not None),
                "counters": {**{name: c[name] for name in COUNTED}, "expired": c["expired_queued"] + c["expired_running"]}}

    async def scale(self, data: dict) -> dict[str, Any]:
        """mc:scale with "lane": "dask" (pfnode/dask/cluster.py says what it takes)."""
        from ..pool.capacity import read_capacity

        before = await self.cluster.scale(data, read_capacity().usable_cores)
        return {"before": {DASK: before}, "after": {DASK: len(self.cluster.workers)},
                "adaptive": self.cluster.adaptive, "dask": self.stats()}
