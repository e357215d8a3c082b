"""The worker pool as the node sees it: packets from the scheduler's lane queues to worker
processes, and their answers back to the node's one answer path.

It composes three parts, each testable alone:
- `pfnode/core/dispatch.py`, pure: which worker gets which packet, which packet a dead worker
  was running;
- `pfnode/pool/supervisor.py`: the processes: start, replace, resize, stop;
- `pfnode/pool/workerproc.py`: one process handle, speaking `pfnode/pool/pipe.py`.

A worker runs the packets it was handed strictly in order, which is how the pool knows
which packet a dead worker was running: the oldest unanswered one. That packet gets
PF502 (or was answered PF408 already, when the node killed the worker for its deadline);
the others never started and are queued again in their original place.

Why not concurrent.futures.ProcessPoolExecutor: it cannot stop one running task, one
dead worker breaks the whole executor, and it cannot place work on a chosen worker.
See docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from ..ops import logs
from . import pipe
from ..dask.lane import DASK, DaskLane
from ..core.dispatch import Dispatcher
from ..errors import ErrorCode
from ..core.flight import DISPATCHED, DONE, Flight, Outcome, failure, success
from ..registry import DEFAULT_LANE
from ..core.scheduler import Scheduler
from ..settings import Settings
from .burst import Bursts
from .supervisor import LaneSpec, Supervisor, lane_specs
from ..ops.metrics import Metrics, exit_cause
from .workerproc import WorkerProcess, describe_exit

log = logging.getLogger("pfnode.pool")

__all__ = ["LaneSpec", "Pool", "lane_specs"]


class Pool:
    def __init__(self, settings: Settings, scheduler: Scheduler, on_answer: Callable[[Flight, Outcome], None],
                 *, clock: Callable[[], float] = time.monotonic, metrics: Metrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else Metrics(process=False)
        self.handler_errors = logs.RateLimiter(5, 60.0, clock=clock)
        self.settings = settings
        self.scheduler = scheduler
        self.on_answer = on_answer  # the node's answer path
        self.clock = clock
        windows = {name: spec.window for name, spec in lane_specs(settings).items()}
        self.dispatcher = Dispatcher(windows, prefetch_ms=settings.prefetch_ms)
        self.supervisor = Supervisor(settings, self.dispatcher, self, clock)
        self.counters = self.supervisor.counters
        self.bursts = Bursts(self)  # a worker of its own for a client others' packets starve
        self._handler_keys: frozenset[str] = frozenset()
        self._pump_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resizing = asyncio.Lock()  # one resize at a time: sizes are absolute, never summed
        self.lane_overrides: dict[str, str] = {}  # key -> lane, set by mc:migrate
        # --dask: the lanes it names run on a Dask cluster (pfnode/dask/lane.py)
        self.dask = DaskLane(settings, scheduler, on_answer, wake=self.pump, clock=clock) if settings.dask else None

    @property
    def lanes(self) -> dict[str, LaneSpec]:
        return self.supervisor.lanes

    @property
    def targets(self) -> dict[str, int]:
        return self.supervisor.targets

    @property
    def handlers(self) -> dict[str, dict]:
        return self.supervisor.handlers

    @property
    def handler_keys(self) -> frozenset[str]:
        return self._handler_keys

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.supervisor.start()
        self._handler_keys = frozenset(self.supervisor.handlers)
        if self.dask is not None:
            try:
                await self.dask.start(self._handler_keys, self.supervisor.handler_modules())
            except BaseException:
                await self.supervisor.close(grace_s=0)
                raise

    async def close(self, grace_s: float = 2.0) -> None:
        """Stop every worker; the node answers whatever is still in flight first."""
        if self.dask is not None:
            await self.dask.close()
        await self.supervisor.close(grace_s)

    # ------------------------------------------------------------------ packets
    def lane_of(self, key: str, group: str) -> str:
        """The lane a packet of `key` runs on: where mc:migrate moved it, else its handler's
        choice, else its group's; a lane configured with no workers hands its packets to df."""
        lane = self.lane_overrides.get(key) if self.lane_overrides else None
        if lane is None:
            options = self.handlers.get(key)
            lane = (options.get("lane") if options else None) or DEFAULT_LANE[group]
        if self.supervisor.targets[lane] == 0 and self.lane_size(lane) == 0:
            lane = "df"
        return lane if self.dask is None else self.dask.lane_for(key, lane)

    def pump(self) -> None:
        """Hand queued packets to workers, once, at the end of this loop turn."""
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self.supervisor.closing:
            return
        now = self.clock()
        for view, flights in self.dispatcher.assign(self.scheduler, now):
            self._send(view, flights, now)
        self.bursts.after_pump()
        if self.dask is not None:
            self.dask.pump(now)

    def run_on(self, view, flight: Flight) -> None:
        """Hand a packet to one chosen worker now (a co:broadcast step), past its lane's
        queue and window; it runs after what the worker holds."""
        self.dispatcher.give(view, flight)
        self._send(view, [flight], self.clock())

    def _send(self, view, flights: list[Flight], now: float) -> None:
        """One pipe message to a worker with these packets, in the order it runs them."""
        proc: WorkerProcess = view.handle
        threshold = self.settings.shm_threshold_bytes
        tasks = []
        for flight in flights:
            packet = flight.packet
            # a view of the JSON text (msgspec.Raw would be taken for ready msgpack)
            data = memoryview(packet.data)
            if proc.inbound is not None and len(data) > threshold:
                ref = proc.inbound.put(data)  # None when the arena is full: the pipe carries it
                if ref is not None:
                    data = ref
                    self.counters["shm_payloads_in"] += 1
            deps = self.scheduler.dependency_results(flight, now) if flight.dependencies else None
            identity = flight.identity
            tasks.append(pipe.Task(flight.no, packet.key, data, flight.id, flight.priority,
                                   packet.metadata, flight.deadline, deps, flight.memory_limit_mb,
                                   None if identity is None else identity.wire))
        proc.send(pipe.pack(pipe.Tasks(tasks)))

    def cancel(self, flight: Flight) -> None:
        """Its submitter left while a worker holds it: the worker skips it if it has not
        started (a running one finishes, or meets its deadline)."""
        if flight.lane == DASK:
            self.dask.cancel(flight)
            return
        view = flight.worker
        if flight.state is DISPATCHED and view is not None:
            view.handle.send(pipe.pack(pipe.Cancel([flight.no])))

    def kill_running(self, flight: Flight, reason: str) -> bool:
        """Kill the worker running `flight` (it passed its deadline); False if it had not
        started (its worker will skip it: the deadline is checked before each packet)."""
        if not self.dispatcher.is_running(flight):
            return False
        proc: WorkerProcess = flight.worker.handle
        log.warning("pool: %s packet %s passed its %d ms deadline; killing worker pid %s",
                    flight.packet.key, flight.id, flight.timeout_ms, proc.pid)
        self.counters["workers_killed_deadline"] += 1
        proc.kill(reason)
        return True

    # ------------------------------------------------------------------ from the workers
    def on_worker_ready(self, proc: WorkerProcess) -> None:
        self.pump()

    def on_worker_messages(self, proc: WorkerProcess, messages: list) -> None:
        view = proc.view
        if view is None:
            return
        for message in messages:
            try:
                if not self._on_message(proc, view, message):
                    return
            except Exception:  # one bad answer must not cost the others in this read
                log.exception("pool: handling %s from worker pid %s failed", type(message).__name__, proc.pid)
        proc.ran_packets = True
        if view.retiring and not view.held:
            proc.close_channel()
        self.pump()

    def _on_message(self, proc: WorkerProcess, view, message) -> bool:
        """One message from a worker; False when the worker broke the protocol (killed)."""
        kind = type(message)
        if kind is pipe.Retire:
            view.retired = True
            view.ready = False
            return True
        if kind is pipe.Done and type(message.body) is pipe.ShmRef:
            message.body = proc.outbound.take(message.body)  # copy out and free, whatever becomes of it
            self.counters["shm_payloads_out"] += 1
        flight = self.dispatcher.answered(view, message.no, None if kind is pipe.Skipped else message.duration_ms)
        if flight is None:
            return self._out_of_order(proc, message.no)
        if kind is pipe.Done:
            self.on_answer(flight, success(message.body, message.duration_ms))
        elif kind is pipe.Failed:
            if message.code in ("PF500", "PF501"):
                logs.handler_error(log, self.handler_errors, key=flight.packet.key, packet_id=flight.id,
                                   code=message.code, message=message.message, lane=proc.lane, pid=proc.pid,
                                   traceback=message.traceback)
            self.on_answer(flight, failure(message.code, message.message, message.duration_ms))
        elif flight.state is not DONE:  # Skipped: never ran, no result to record
            self.scheduler.forget(flight)
        return True

    def _out_of_order(self, proc: WorkerProcess, no: int) -> bool:
        log.error("pool: worker pid %s answered task %s out of order; killing it", proc.pid, no)
        proc.view.ready = False
        proc.kill("protocol error")
        return False

    def on_worker_exit(self, proc: WorkerProcess) -> None:
        if not self.supervisor.forget(proc) or self.supervisor.closing:
            return  # never took work (whoever started it handles that), or the pool is closing
        view = proc.view
        running, never_started = self.dispatcher.died(view)
        how = describe_exit(proc.returncode)
        cause = "idle"
        if running is not None:
            cause = "packet"
            if running.state is not DONE:
                self.on_answer(running, failure(ErrorCode.WORKER_DIED,
                                                f"worker pid {proc.pid} died ({how}) while running the packet"))
        elif view.retired or proc.kill_reason is not None:
            cause = "packet"  # it retired after a packet (its memory cap), or we killed it
        for flight in never_started:
            if flight.state is DISPATCHED:  # back in its original place
                self.scheduler.requeue(flight)
                self.counters["requeued"] += 1
        if not view.retiring:  # a retirement (resize) is planned: no restart
            restart_cause = exit_cause(running=running is not None, kill_reason=proc.kill_reason,
                                       retired=view.retired)
            self.metrics.worker_restart(proc.lane, restart_cause)
            logs.worker_exit(log, lane=proc.lane, pid=proc.pid, cause=restart_cause, how=how,
                             key=running.packet.key if running is not None else None,
                             packet_id=running.id if running is not None else None)
        if view.retiring:
            self.counters["workers_retired"] += 1
        elif view.retired:
            self.counters["workers_recycled"] += 1
        else:
            self.counters["worker_deaths"] += 1
            self.counters[f"worker_deaths_{proc.kill_reason or ('crash' if running else 'idle')}"] += 1
        self.supervisor.replace(proc.lane, cause)
        self.pump()

    # ------------------------------------------------------------------ lanes
    def lane_size(self, lane: str) -> int:
        return self.supervisor.lane_size(lane)

    def lane_sizes(self) -> dict[str, int]:
        return self.supervisor.lane_sizes()

    async def resize(self, lane: str, size: int) -> None:
        async with self._resizing:
            await self.supervisor.resize(lane, size)
        self.pump()

    async def roll(self) -> int:
        """Replace every worker with one running the handler code as it is now (SIGHUP)."""
        async with self._resizing:
            replaced = await self.supervisor.roll()
        self.pump()
        return replaced

    def worker_pids(self, lane: str | None = None) -> list[int]:
        return self.supervisor.pids(lane)

    def stats(self) -> dict[str, Any]:
        lanes = {}
        for lane in self.lanes:
            view_stats = self.dispatcher.lane_stats(lane)
            procs = [p for p in self.supervisor.procs.values()
                     if p.lane == lane and p.view is not None and p.view.ready]
            lanes[lane] = {**view_stats, "target": self.targets[lane], "queued": self.scheduler.depth(lane),
                           "pids": sorted(p.pid for p in procs if p.pid),
                           "cpus": sorted({c for p in procs for c in p.cpus})}
        return {"workers": sum(v["workers"] for v in lanes.values()), "worker_pids": self.worker_pids(),
                "lanes": lanes, "counters": dict(self.counters),
                **({"dask": self.dask.stats()} if self.dask is not None else {})}
