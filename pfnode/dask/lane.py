"""The dask lane: chosen lanes and handler keys run on a Dask cluster instead of the local pool.

`pfnode serve --dask tcp://scheduler:8786` (or `--dask local:N`, a LocalCluster of N worker
processes the node starts: pfnode/dasklocal.py) sends the packets of `--dask-lanes` (df by
default; lane names or handler keys) to the cluster. Everything above the lane is unchanged:
the protocol, admission, priorities and fairness, deadlines, dependencies and hub routing,
and the one answer path (`Node.settle`, through the pool's `on_answer`). docs/DASK.md says
when to use it and what it costs.

How a packet goes
- The pool's `lane_of` gives a claimed packet the lane `DASK`, a lane queue of the node's
  scheduler like the others. `pump` (from the pool's pump) takes packets from it in the
  scheduler's order (priority, aging, tenants' turns) while fewer than the window
  (`--dask-window`, by default 2 per worker thread) are on the cluster, and submits each
  as one task (`daskworker.run_packet`) with `priority=` its packet's priority (Dask also runs
  higher first, FIFO within one). The rest wait in the node's queue, where the node's rules
  decide which goes next and a deadline ends a waiting packet as for the local pool.
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
  interrupt a running function; it runs to its end on its worker thread and its result is
  discarded.
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
import itertools
import logging
import os
import sys
import time
import uuid
from concurrent.futures import CancelledError  # what a cancelled Dask future raises
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError, ErrorCode, HandlerError
from ..core.flight import DISPATCHED, DONE, Flight, Outcome, failure, success
from .config import parse_target
from ..ops.jobs import keep
from ..core.scheduler import LaneQueue

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger("pfnode.dask")

DASK = "dask"  # the scheduler lane of the packets that run on the Dask cluster
MAX_RETRIES = 10  # the most runs a packet may ask for beyond its first (metadata.retries)
RECONNECT_S = 2.0  # between tries to reach an unreachable cluster
REFRESH_S = 1.0  # how often the cluster's workers are read again
REFRESH_TIMEOUT_S = 5.0  # how long the scheduler may take to say what workers it has
SILENT_LIMIT = 3  # that many unanswered reads in a row: the cluster counts as unreachable
STARTING, READY, UNREACHABLE = "starting", "ready", "unreachable"


def retries_of(metadata: Any) -> int:
    """How many more runs a packet asked for should a worker die running it. ValueError: bad."""
    value = metadata.get("retries", 0) if isinstance(metadata, dict) else 0
    if type(value) is not int or not 0 <= value <= MAX_RETRIES:
        raise ValueError(f"metadata.retries must be an integer 0..{MAX_RETRIES}, got {value!r}")
    return value


class Attempt:
    """One run of a packet on the cluster: its task's future and where it started."""

    __slots__ = ("flight", "future", "token", "run", "worker", "unstarted")

    def __init__(self, flight: Flight, future: Any, token: str, run: int) -> None:
        self.flight = flight
        self.future = future
        self.token = token  # its Dask key
        self.run = run  # 1 for its first run, 2 for its first retry, ...
        self.worker: str | None = None  # the worker it started on (None: not started yet)
        self.unstarted = False  # its worker died, and it is known not to have started there


class LocalCluster:
    """The child process running `--dask local:N` (pfnode/dasklocal.py)."""

    def __init__(self, proc: asyncio.subprocess.Process, address: str, workers: int) -> None:
        self.proc = proc
        self.address = address
        self.workers = workers

    @classmethod
    async def start(cls, workers: int, env: dict[str, str], timeout_s: float) -> "LocalCluster":
        from .local import READY_PREFIX

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pfnode.dask.local", str(workers), env=env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
        except asyncio.TimeoutError:
            line = b""
        text = line.decode(errors="replace").strip()
        if not text.startswith(READY_PREFIX):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            raise ConfigError(f"the local Dask cluster (local:{workers}) did not start "
                              f"(exit status {proc.returncode}); its errors are in the node's log")
        return cls(proc, text[len(READY_PREFIX):], workers)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()  # it closes its cluster and exits
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class DaskLane:
    """The backend the pool owns when `--dask` is set: the DASK lane's packets to the cluster
    and their endings back to `on_answer` (the node's one answer path)."""

    def __init__(self, settings: "Settings", scheduler: Any, on_answer: Callable[[Flight, Outcome], None], *,
                 wake: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.on_answer = on_answer
        self.wake = wake  # the pool's pump: the window has room again
        self.clock = clock
        self.address, self.local_workers = parse_target(settings.dask)
        self.lanes = {name for name in settings.dask_lanes if ":" not in name}
        self.keys = {name for name in settings.dask_lanes if ":" in name}
        self.modules = tuple(settings.handler_modules)  # what the workers import (start() says)
        self.handler_keys: frozenset[str] = frozenset()
        # the DASK lane: a queue of the node's scheduler like the others (same aging)
        scheduler.lanes.setdefault(DASK, LaneQueue(settings.aging_ms / 1000))
        self.tag = uuid.uuid4().hex[:8]
        self.topic = f"pfnode-{self.tag}"  # where this node's tasks say they started and ended
        self.state = STARTING
        self.problem: str | None = None  # why the cluster is unusable now (None: it is usable)
        self.client: Any = None
        self.local: LocalCluster | None = None
        self.workers: dict[str, dict[str, Any]] = {}  # address -> name, nthreads, memory_limit
        self.missing: dict[str, str] = {}  # worker -> the handler keys it lacks, or its import error
        self.adaptive: dict | None = None
        self.attempts: dict[Flight, Attempt] = {}  # the packets on the cluster now
        self.by_token: dict[str, Attempt] = {}
        # results on the cluster that blocked packets wait for: (scope, id) -> [future, token, uses left]
        self.kept: collections.OrderedDict[Any, list] = collections.OrderedDict()
        self.counters: collections.Counter[str] = collections.Counter()
        self._serial = itertools.count(1)
        self._finished: list[Attempt] = []  # results to gather, this loop turn
        self._cancels: list[Any] = []  # futures to cancel, this loop turn
        self._jobs: set[asyncio.Task] = set()
        self._gathering = False
        self._cancelling = False
        self._closing = False

    # ------------------------------------------------------------------ placement
    def lane_for(self, key: str, lane: str) -> str:
        """The lane a packet of `key` runs on: DASK when its key or its lane is claimed."""
        return DASK if key in self.keys or lane in self.lanes else lane

    @property
    def threads(self) -> int:
        return sum(int(info.get("nthreads") or 0) for info in self.workers.values())

    def window(self) -> int:
        return self.settings.dask_window or max(2, 2 * self.threads)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, handler_keys: frozenset[str], modules: list[str]) -> None:
        """Start the local cluster (local:N) and connect; a remote cluster that cannot be
        reached leaves the node up and degraded (it reconnects by itself). `handler_keys`
        and `modules`: the keys the pool's workers run and the modules they import (the
        standard worker elements' first), which the Dask workers run and import too."""
        self.handler_keys = frozenset(handler_keys)
        self.modules = tuple(modules)
        timeout_s = self.settings.dask_connect_timeout_ms / 1000
        if self.local_workers is not None:
            env = dict(os.environ)
            for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env.setdefault(name, str(self.settings.worker_blas_threads))
            env.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # the cluster's INFO lines: not in our log
            self.local = await LocalCluster.start(self.local_workers, env, max(60.0, timeout_s))
            self.address = self.local.address
            log.info("dask: local cluster of %d workers (pid %s) at %s", self.local_workers,
                     self.local.proc.pid, self.address)
        try:
            await self._connect(timeout_s)
        except Exception as exc:
            if self.local is not None:
                await self.local.stop()
                raise ConfigError(f"cannot use the local Dask cluster: {exc}") from exc
            self._unreachable(f"cannot reach the scheduler: {type(exc).__name__}: {exc}")
        self._background(self._watch_loop())

    async def close(self) -> None:
        self._closing = True
        for attempt in list(self.attempts.values()):
            self._forget(attempt)
        self.kept.clear()
        for job in list(self._jobs):
            job.cancel()
        if self.client is not None:
            try:
                for topic in (self.topic, "all"):  # else the scheduler tells us of our own leaving, too late
                    self.client.unsubscribe_topic(topic)
                await asyncio.wait_for(self.client.close(), 5.0)
            except Exception as exc:
                log.debug("dask: closing the client: %s", exc)
            self.client = None
        if self.local is not None:
            await self.local.stop()

    async def _connect(self, timeout_s: float) -> None:
        from distributed import Client

        from .worker import HandlerModules, worker_keys

        client = await Client(self.address, asynchronous=True, timeout=timeout_s, set_as_default=False,
                              direct_to_workers=self.settings.dask_direct, name=f"pfnode-{self.tag}")
        try:
            client.subscribe_topic(self.topic, self._on_task_event)
            client.subscribe_topic("all", self._on_cluster_event)
            try:
                await client.register_plugin(HandlerModules(self.modules), name="pfnode-handlers")
            except Exception as exc:
                log.error("dask: cannot install the handler modules' plugin on the workers (%s: %s); "
                          "install pfnode and %s on every Dask worker", type(exc).__name__, exc,
                          ", ".join(self.modules))
            self.client = client
            await self._refresh_workers()
            await self._check_workers(worker_keys)
        except BaseException:
            self.client = None
            await client.close()
            raise
        self.state, self.problem = READY, None
        log.info("dask: connected to %s: %d workers, %d threads; lanes %s run there", self.address,
                 len(self.workers), self.threads, ", ".join(sorted(self.lanes | self.keys)))
        self.wake()

    async def _check_workers(self, worker_keys: Callable, workers: list[str] | None = None) -> None:
        """Log the workers (all, or those named) that lack handlers the node has (their
        packets get PF001)."""
        try:
            replies = await self.client.run(worker_keys, self.modules, workers=workers, on_error="return")
        except Exception as exc:
            log.warning("dask: cannot ask the workers what they run: %s", exc)
            return
        local = self.handler_keys
        reported = dict(self.missing)
        for address, reply in replies.items():
            if isinstance(reply, BaseException):
                self.missing[address] = f"{type(reply).__name__}: {reply}"
            elif reply["error"] is not None:
                self.missing[address] = reply["error"]
            elif local - set(reply["keys"]):
                self.missing[address] = "lacks " + ", ".join(sorted(local - set(reply["keys"])))
            else:
                self.missing.pop(address, None)
        for address, why in self.missing.items():
            if reported.get(address) == why:
                continue
            log.error("dask: worker %s cannot run all of this node's handlers (%s): its packets of those "
                      "keys are answered PF001", address, why)

    async def _refresh_workers(self) -> None:
        try:  # newer schedulers list only a few workers unless asked for all
            info = await self.client.scheduler.identity(n_workers=-1)
        except TypeError:  # older ones list them all and take no n_workers
            info = await self.client.scheduler.identity()
        self.workers = {address: {"name": str(w.get("name")), "nthreads": w.get("nthreads"),
                                  "memory_limit": w.get("memory_limit")}
                        for address, w in (info.get("workers") or {}).items()}
        if self.local is not None:
            try:
                self.adaptive = await self.client.scheduler.pfnode_adaptive()
            except Exception:
                self.adaptive = None

    async def _watch_loop(self) -> None:
        """Notice a lost scheduler, reconnect to it, and keep the worker list fresh."""
        silent = 0  # reads of the workers in a row that the scheduler did not answer
        while not self._closing:
            await asyncio.sleep(REFRESH_S if self.state is READY else RECONNECT_S)
            if self.state is READY:
                if self.client is None or self.client.status != "running":
                    self._unreachable("lost the connection to the scheduler")
                    continue
                try:
                    before = self.window()
                    await asyncio.wait_for(self._refresh_workers(), REFRESH_TIMEOUT_S)
                    silent = 0
                    if self.window() > before:
                        self.wake()
                except Exception as exc:
                    silent += 1
                    log.debug("dask: reading the workers: %s", exc)
                    if silent >= SILENT_LIMIT:  # a scheduler that does not answer is as good as gone
                        silent = 0
                        self._unreachable(f"the scheduler did not answer for {SILENT_LIMIT} tries of "
                                          f"{REFRESH_TIMEOUT_S:.0f} s")
                continue
            if self.local is not None and not self.local.alive:
                self.problem = (f"the local Dask cluster (pid {self.local.proc.pid}) exited with status "
                                f"{self.local.proc.returncode}; restart the node")
                continue
            old, self.client = self.client, None
            if old is not None:
                try:
                    await asyncio.wait_for(old.close(), 2.0)
                except Exception:
                    pass
            try:
                await self._connect(min(RECONNECT_S * 2, self.settings.dask_connect_timeout_ms / 1000))
            except Exception as exc:
                log.debug("dask: %s still unreachable: %s", self.address, exc)

    def _background(self, coro) -> asyncio.Task:
        return keep(self._jobs, coro)

    # ------------------------------------------------------------------ packets out
    def pump(self, now: float) -> None:
        """Hand queued DASK packets to the cluster while the window has room (or, the
        cluster unreachable, answer them PF503)."""
        if self.state is READY:
            limit = self.window()
            while len(self.attempts) < limit:
                flight = self.scheduler.dispatch(DASK, now)
                if flight is None:
                    break
                self._submit(flight, now)
        elif self.state is UNREACHABLE:
            while (flight := self.scheduler.dispatch(DASK, now)) is not None:
                self.counters["unavailable"] += 1
                self.on_answer(flight, failure(ErrorCode.UNAVAILABLE, self._unavailable_text()))

    def _unavailable_text(self) -> str:
        return f"the Dask cluster at {self.address} is unreachable: {self.problem}"

    def _submit(self, flight: Flight, now: float, run: int = 1) -> None:
        from .worker import run_packet

        try:
            retries_of(flight.packet.metadata)
        except ValueError as exc:
            self.on_answer(flight, failure(ErrorCode.INVALID_PACKET, str(exc)))
            return
        token = f"{flight.packet.key}-{flight.id}-{self.tag}.{next(self._serial)}"
        deadline_wall = time.time() + (flight.deadline - self.clock())
        try:
            future = self.client.submit(
                run_packet, self.modules, self.topic, token, flight.packet.key, bytes(flight.packet.data),
                flight.id, flight.priority, flight.packet.metadata, deadline_wall,
                self._dependencies(flight, now), key=token, priority=flight.priority, pure=False)
        except Exception as exc:  # a closed client, say: the cluster is gone
            self._unreachable(f"submitting failed: {type(exc).__name__}: {exc}")
            self.on_answer(flight, failure(ErrorCode.UNAVAILABLE, self._unavailable_text()))
            return
        attempt = Attempt(flight, future, token, run)
        self.attempts[flight] = attempt
        self.by_token[token] = attempt
        self.counters["submitted"] += 1
        self._background(self._watch(attempt))

    def _dependencies(self, flight: Flight, now: float) -> dict[str, Any] | None:
        """{dependency id: its future on the cluster, else its JSON from the node's store}."""
        if not flight.dependencies:
            return None
        deps: dict[str, Any] = {}
        stored = None
        for dep in flight.dependencies:
            kept = self.kept.get((flight.scope, dep))
            if kept is not None:
                deps[dep] = kept[0]
                self.counters["dependencies_on_cluster"] += 1
                kept[2] -= 1
                if kept[2] <= 0:  # its last waiting dependent has it: the dependents' tasks hold it now
                    del self.kept[(flight.scope, dep)]
                continue
            if stored is None:
                stored = self.scheduler.dependency_results(flight, now)
            if dep in stored:
                deps[dep] = bytes(stored[dep])
                self.counters["dependencies_from_node"] += 1
        return deps

    # ------------------------------------------------------------------ endings
    async def _watch(self, attempt: Attempt) -> None:
        try:  # waits for the task to end without fetching its result: the task's exception or None
            exc = await attempt.future.exception()
        except Exception as error:
            exc = error
        if self.attempts.get(attempt.flight) is not attempt:
            return  # answered already (its deadline, a lost worker) or no longer wanted
        status = attempt.future.status
        if status == "finished":
            self._finished.append(attempt)
            if not self._gathering:
                self._gathering = True
                self._background(self._gather())
        elif status == "error":
            self._errored(attempt, exc)
        else:
            self._cancelled(attempt)

    def _cancelled(self, attempt: Attempt) -> None:
        """Its task was cancelled, not by this node: the client lost its scheduler (which
        cancels every future), or another client cancelled it."""
        if self.client is None or self.client.status != "running":
            self._unreachable("lost the connection to the scheduler")
        else:
            self._end(attempt, failure(ErrorCode.UNAVAILABLE, "the Dask cluster cancelled the packet's task"))

    async def _gather(self) -> None:
        """Fetch the results of the tasks that finished, in one request per loop turn."""
        try:
            while self._finished and self.client is not None:
                batch = [a for a in self._finished if self.attempts.get(a.flight) is a]
                self._finished = []
                if not batch:
                    continue
                try:
                    answers = await self.client.gather([a.future for a in batch])
                except Exception:  # one of them was lost or cancelled meanwhile: one at a time
                    answers = None
                if answers is not None:
                    for attempt, answer in zip(batch, answers):
                        self._answered(attempt, answer)
                    continue
                for attempt in batch:
                    try:
                        answer = await self.client.gather(attempt.future)
                    except CancelledError:
                        if self.attempts.get(attempt.flight) is attempt:
                            self._cancelled(attempt)
                    except Exception as exc:
                        if self.attempts.get(attempt.flight) is attempt:
                            self._errored(attempt, exc)
                    else:
                        self._answered(attempt, answer)
        finally:
            self._gathering = False

    def _answered(self, attempt: Attempt, answer: Any) -> None:
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

    def _errored(self, attempt: Attempt, exc: BaseException) -> None:
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
        if flight.state is DISPATCHED and self.state is READY:
            self._submit(flight, self.clock(), run)
        elif flight.state is DISPATCHED:
            self.on_answer(flight, failure(ErrorCode.UNAVAILABLE, self._unavailable_text()))

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
            self._cancel(attempt.future)

    def _cancel(self, future: Any) -> None:
        """Cancel tasks, one request per loop turn."""
        self._cancels.append(future)
        if not self._cancelling and self.client is not None:
            self._cancelling = True
            self._background(self._send_cancels())

    async def _send_cancels(self) -> None:
        try:
            while self._cancels and self.client is not None:
                batch, self._cancels = self._cancels, []
                try:
                    await self.client.cancel(batch)
                except Exception as exc:
                    log.debug("dask: cancelling %d tasks: %s", len(batch), exc)
        finally:
            self._cancelling = False
            self._cancels.clear()

    def expire(self, flight: Flight) -> None:
        """Its deadline passed while it was on the cluster: PF408 now; cancelled if it had not
        started, its result discarded if it had (Dask cannot stop a running task)."""
        attempt = self.attempts.get(flight)
        limit = flight.timeout_ms
        if attempt is not None and attempt.worker is not None:
            text = (f"deadline of {limit} ms passed while running on Dask worker {attempt.worker}; "
                    "its result will be discarded")
            self.counters["expired_running"] += 1
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

    def _unreachable(self, why: str) -> None:
        """The cluster cannot be used: PF503 for every packet on it or waiting for it."""
        self.problem = why
        if self.state is UNREACHABLE:
            return
        self.state = UNREACHABLE
        log.error("dask: the cluster at %s is unreachable (%s); its packets are answered PF503 until it is back",
                  self.address, why)
        self.kept.clear()
        for attempt in list(self.attempts.values()):
            self._forget(attempt)
            self.counters["unavailable"] += 1
            if attempt.flight.state is not DONE:
                self.on_answer(attempt.flight, failure(
                    ErrorCode.UNAVAILABLE, f"lost the Dask cluster at {self.address} while the packet was on it "
                                           f"({why}); it may have run"))
        self.wake()

    # ------------------------------------------------------------------ events from the cluster
    def _on_task_event(self, event: Any) -> None:
        """A task of ours started, or ended with a small result (pfnode/daskworker.py)."""
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
            self._answered(attempt, Done(0, msg[2], msg[3]))
        elif kind == "failed":
            self._answered(attempt, Failed(0, msg[2], msg[3], msg[4]))

    def _on_cluster_event(self, event: Any) -> None:
        _, msg = event
        if not isinstance(msg, dict):
            return
        action = msg.get("action")
        if action == "remove-worker":
            worker = msg.get("worker")
            self._worker_gone(worker, msg.get("processing-tasks") or ())
            lost = msg.get("lost-computed-tasks")
            if lost and self.kept:  # not computed again for us: the node has their results
                for key in [key for key, kept in self.kept.items() if kept[1] in lost]:
                    del self.kept[key]
        elif action == "add-worker" and self.client is not None and self.state is READY:
            from .worker import worker_keys

            self._background(self._worker_added(worker_keys, msg.get("worker")))

    def _worker_gone(self, worker: str, processing: Any) -> None:
        """A worker left with these tasks assigned. Those of ours that started there are lost.
        One whose start the node had not heard of yet may have started all the same (the
        event may have died with the worker): it counts as lost too, unless the worker's
        threads were all known to be running other packets of ours, so it cannot have."""
        threads = int((self.workers.pop(worker, None) or {}).get("nthreads") or 1)
        self.missing.pop(worker, None)
        ours = [a for a in map(self.by_token.get, processing) if a is not None]
        running = sum(1 for a in ours if a.worker == worker)
        for attempt in ours:
            if attempt.worker == worker or running < threads:
                self._lost(attempt, worker)
            else:
                attempt.unstarted = True  # Dask sends it elsewhere, or fails it (KilledWorker): run again

    async def _worker_added(self, worker_keys: Callable, worker: str | None) -> None:
        try:
            await self._refresh_workers()
            await self._check_workers(worker_keys, [worker] if worker else None)
        except Exception as exc:
            log.debug("dask: reading a new worker: %s", exc)
        self.wake()

    # ------------------------------------------------------------------ mc:scale, mc:status
    def stats(self) -> dict[str, Any]:
        running: collections.Counter[str] = collections.Counter(
            a.worker for a in self.attempts.values() if a.worker is not None)
        return {"state": self.state, "problem": self.problem, "scheduler": self.address,
                "local": ({"pid": self.local.proc.pid, "alive": self.local.alive} if self.local else None),
                "lanes": sorted(self.lanes | self.keys), "window": self.window(),
                "on_cluster": len(self.attempts), "running": sum(running.values()),
                "queued": self.scheduler.depth(DASK), "threads": self.threads, "adaptive": self.adaptive,
                "workers": [{"address": address, **info, "running": running.get(address, 0),
                             **({"problem": self.missing[address]} if address in self.missing else {})}
                            for address, info in sorted(self.workers.items())],
                "counters": dict(self.counters)}

    async def scale(self, data: dict) -> dict[str, Any]:
        """mc:scale with "lane": "dask": {"workers": N} or {"adapt": {"minimum": a, "maximum": b}}
        (or {"adapt": false}); only for a cluster this node started (local:N)."""
        from ..pool.capacity import read_capacity

        unknown = sorted(set(data) - {"lane", "workers", "adapt"})
        if unknown or ("workers" in data) == ("adapt" in data):
            raise HandlerError(ErrorCode.INVALID_PACKET, 'mc:scale expects {"lane": "dask", "workers": N} or '
                               '{"lane": "dask", "adapt": {"minimum": A, "maximum": B}} (or "adapt": false)')
        if self.local is None:
            raise HandlerError(ErrorCode.INVALID_PACKET, f"the Dask cluster at {self.address} was not started by "
                               "this node: scale it with its own deployment (its cluster manager's scale or adapt)")
        if self.state is not READY:
            raise HandlerError(ErrorCode.UNAVAILABLE, self._unavailable_text())
        limit = 4 * max(1, read_capacity().usable_cores)
        before = len(self.workers)
        if "workers" in data:
            workers = data["workers"]
            if type(workers) is not int or not 0 <= workers <= limit:
                raise HandlerError(ErrorCode.INVALID_PACKET, f"mc:scale: the dask lane's \"workers\" must be "
                                   f"0..{limit} on this machine, got {workers!r}"[:300])
            await self.client.scheduler.pfnode_scale(n=workers)
            deadline = time.monotonic() + 60
            while len(self.workers) != workers and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                await self._refresh_workers()
        else:
            adapt = data["adapt"]
            if adapt is False:
                await self.client.scheduler.pfnode_adapt(stop=True)
            elif (isinstance(adapt, dict) and set(adapt) <= {"minimum", "maximum"}
                  and all(type(adapt.get(k, 0)) is int for k in adapt)
                  and 0 <= adapt.get("minimum", 0) <= adapt.get("maximum", limit) <= limit):
                await self.client.scheduler.pfnode_adapt(minimum=adapt.get("minimum", 0),
                                                         maximum=adapt.get("maximum", limit))
            else:
                raise HandlerError(ErrorCode.INVALID_PACKET, f"mc:scale: \"adapt\" must be false or "
                                   f"{{\"minimum\": A, \"maximum\": B}} with 0 <= A <= B <= {limit}, got {adapt!r}"[:300])
        await self._refresh_workers()
        self.wake()
        return {"before": {DASK: before}, "after": {DASK: len(self.workers)}, "adaptive": self.adaptive,
                "dask": self.stats()}
