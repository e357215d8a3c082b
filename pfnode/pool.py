"""The worker pool: lanes of worker processes fed by the front's event loop.

Each worker is a child process (`python -m pfnode.worker`) with its own pipe pair,
driven through asyncio's subprocess protocol, so the event loop never blocks on a
worker. Workers are grouped in lanes (cf, df, ed, rm; see `LaneSpec`); the pure
`Scheduler` decides which packet runs next in each lane and when deadlines pass;
the pool carries its decisions out.

A worker runs the packets it was handed strictly in order, which is how the pool
knows which packet a dead worker was running: the oldest unanswered one. That
packet gets PF502 (or PF408 when the pool killed the worker for its deadline); the
others never started and are queued again in their original place. A replacement
worker is started at once.

Why not concurrent.futures.ProcessPoolExecutor: it cannot stop one running task,
one dead worker breaks the whole executor, and it cannot place work on a chosen
worker. See docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import heapq
import itertools
import logging
import os
import signal
import sys
import time
from typing import Any, Callable, NamedTuple

import orjson

from . import worker as wire
from .arena import Arena, ShmRef
from .errors import ConfigError, ErrorCode
from .protocol import Packet, RawJSON
from .registry import DEFAULT_LANE
from .scheduler import BLOCKED, DISPATCHED, DONE, QUEUED, Entry, Refusal, Scheduler, adaptive_window
from .settings import Settings

log = logging.getLogger("pfnode.pool")


class Outcome(NamedTuple):
    ok: bool
    data_json: bytes | None  # the handler's return value, already JSON
    code: str | None
    message: str | None
    duration_ms: float


def failure(code: ErrorCode | str, message: str, duration_ms: float = 0.0) -> Outcome:
    return Outcome(False, None, code.value if isinstance(code, ErrorCode) else code, message, duration_ms)


@dataclasses.dataclass(frozen=True)
class LaneSpec:
    name: str
    size: int
    prefetch: int  # packets handed to one worker before it has answered any
    cpu: int | None = None  # pin every worker of the lane to this core
    memory_limit_mb: int | None = None  # default address-space cap for its handlers
    resizable: bool = True


def recommended_df_workers(settings: Settings) -> int:
    """The df lane's size when the settings leave it to capacity."""
    from .capacity import read_capacity, recommend

    others = {"cf": 1, "ed": settings.ed_workers, "rm": settings.rm_workers}
    return recommend(read_capacity(), rm_memory_limit_mb=settings.rm_memory_limit_mb,
                     current=others, df_max_workers=settings.df_max_workers)["df"]


def lane_specs(settings: Settings) -> dict[str, LaneSpec]:
    cf_core = settings.cf_core if settings.cf_core is not None else max(os.sched_getaffinity(0))
    return {
        # cf: strictly sequential, so one worker, one packet at a time, one core
        "cf": LaneSpec("cf", 1, 1, cpu=cf_core, resizable=False),
        "df": LaneSpec("df", settings.workers or recommended_df_workers(settings), settings.worker_prefetch),
        # ed: reserved workers that take one packet at a time, so an ed packet never
        # waits behind df work nor behind another packet prefetched to its worker
        "ed": LaneSpec("ed", settings.ed_workers, 1),
        "rm": LaneSpec("rm", settings.rm_workers, 1, memory_limit_mb=settings.rm_memory_limit_mb),
    }


class Task:
    """One packet's journey through the pool; its scheduling state is `entry.state`."""

    __slots__ = ("no", "packet", "timeout_ms", "on_done", "worker", "entry", "memory_limit_mb")

    def __init__(self, no: int, packet: Packet, timeout_ms: int, on_done: Callable[[Outcome], None],
                 memory_limit_mb: int | None) -> None:
        self.no = no
        self.packet = packet
        self.timeout_ms = timeout_ms
        self.on_done = on_done
        self.memory_limit_mb = memory_limit_mb
        self.worker: WorkerProcess | None = None
        self.entry: Entry = None  # type: ignore[assignment]

    @property
    def state(self) -> str:
        return self.entry.state

    def wire(self, dependencies: dict[str, bytes] | None, arena: Arena | None = None,
             threshold: int = 0) -> tuple:
        p = self.packet
        data = p.data
        if arena is not None and type(data) is RawJSON and len(data) > threshold:
            data = arena.put(data) or data  # the pipe carries it when the arena is full
        return (self.no, p.key, data, p.id, p.group, p.element, p.priority, p.metadata,
                self.entry.deadline, dependencies, self.memory_limit_mb)


class WorkerProcess(asyncio.SubprocessProtocol):
    """The front's side of one worker: its pipes, its outstanding packets, its exit."""

    def __init__(self, pool: "Pool", lane: str, slot: int,
                 arenas: tuple[Arena, Arena] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.pool = pool
        # shared memory for bulk payloads: tasks' data in, results out (see pfnode/arena.py)
        self.inbound, self.outbound = arenas if arenas else (None, None)
        self.lane = lane
        self.slot = slot
        self.pid: int | None = None
        self.cpus: list[int] = []
        self.transport: asyncio.SubprocessTransport | None = None
        self.outstanding: collections.deque[Task] = collections.deque()
        self.window = pool.lanes[lane].prefetch  # packets it may hold; adapts to handler time
        self.mean_ms = 1.0  # moving average of its handlers' run time
        self.ready = False
        self.retiring = False  # finishing its outstanding packets, then leaving (lane shrink)
        self.retired = False  # said it leaves on its own: nothing it still holds has started
        self.hello: asyncio.Future = loop.create_future()
        self.keys: dict[str, dict] = {}
        self.exited: asyncio.Future = loop.create_future()
        self._reader = wire.FrameReader()
        self._process_exited = False
        self._stdout_closed = False
        self.kill_reason: str | None = None

    # -- asyncio.SubprocessProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pid = transport.get_pid()  # type: ignore[attr-defined]

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        for frame in self._reader.feed(data):
            kind = frame[1]
            if kind == wire.OK or kind == wire.FAILED or kind == wire.SKIPPED:
                self.pool._on_result(self, frame)
            elif kind == wire.RETIRE:
                self.retired = True
                self.ready = False
            elif kind == wire.HELLO and not self.hello.done():
                self.keys, self.cpus = frame[2], frame[4]
                self.hello.set_result(frame[2])
            elif kind == wire.FATAL and not self.hello.done():
                self.hello.set_exception(ConfigError(frame[2]))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._stdout_closed = True
            self._maybe_finish()

    def process_exited(self) -> None:
        self._process_exited = True
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        # Wait for both: results written just before a crash are still in the pipe
        # when the exit is reported, and must be delivered, not blamed on the crash.
        if self._process_exited and self._stdout_closed and not self.exited.done():
            if not self.hello.done():
                self.hello.set_exception(ConfigError(
                    f"worker exited with {describe_exit(self.returncode)} before it was ready"))
            self.exited.set_result(self.returncode)
            for arena in (self.inbound, self.outbound):
                if arena is not None:
                    arena.close(unlink=True)
            self.pool._on_worker_exit(self)

    # -- helpers
    @property
    def returncode(self) -> int | None:
        return self.transport.get_returncode() if self.transport else None

    def send(self, kind: int, items: list) -> None:
        pipe = self.transport.get_pipe_transport(0)  # type: ignore[union-attr]
        if pipe is not None and not pipe.is_closing():
            pipe.write(wire.pack((kind, items)))

    def kill(self, reason: str) -> None:
        if self.kill_reason is None:
            self.kill_reason = reason
        self.ready = False
        if self.transport is not None and self.transport.get_returncode() is None:
            try:
                self.transport.kill()
            except ProcessLookupError:
                pass

    def close_channel(self) -> None:
        """End of input: the worker finishes what it holds and exits."""
        self.ready = False
        if self.transport is not None:
            pipe = self.transport.get_pipe_transport(0)
            if pipe is not None:
                pipe.close()


def _nobody_waits(outcome: Outcome) -> None:
    """on_done of a packet whose submitter has gone."""


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "unknown status"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


class Pool:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self.lanes = lane_specs(settings)
        self.targets = {name: spec.size for name, spec in self.lanes.items()}  # wanted lane sizes
        self.scheduler = Scheduler(aging_ms=settings.aging_ms, max_queued=settings.max_queued,
                                   result_store_entries=settings.result_store_entries,
                                   result_store_age_ms=settings.result_store_age_ms,
                                   result_store_bytes=settings.result_store_bytes)
        self._numbers = itertools.count(1)
        self._slots = itertools.count()
        self._workers: dict[int, WorkerProcess] = {}  # slot -> worker (ready or retiring)
        self._starting: set[WorkerProcess] = set()
        self._spawning: collections.Counter[str] = collections.Counter()  # lane -> workers on their way
        self._pump_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closing = False
        self._background: set[asyncio.Task] = set()
        self._recent_deaths: dict[str, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=5))
        self.handlers: dict[str, dict] = {}  # key -> options (lane, timeout_ms, memory_limit_mb)
        self._handler_keys: frozenset[str] = frozenset()
        self.counters: collections.Counter[str] = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def handler_keys(self) -> frozenset[str]:
        return self._handler_keys

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        spawns = [self._spawn(name) for name, spec in self.lanes.items() for _ in range(spec.size)]
        results = await asyncio.gather(*spawns, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close(grace_s=0)
            raise errors[0]
        key_sets = {orjson.dumps(w.keys, option=orjson.OPT_SORT_KEYS) for w in self._workers.values()}
        if len(key_sets) != 1:
            await self.close(grace_s=0)
            raise ConfigError("workers registered different handlers; check the handler modules "
                              "for import-time randomness")
        self.handlers = next(iter(self._workers.values())).keys
        self._handler_keys = frozenset(self.handlers)
        log.info("pool: lanes %s ready; %d handlers",
                 ", ".join(f"{name}={self.lane_size(name)}" for name in self.lanes), len(self.handlers))

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        threads = str(self.settings.worker_blas_threads)
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, threads)
        return env

    async def _spawn(self, lane: str) -> WorkerProcess:
        spec = self.lanes[lane]
        slot = next(self._slots)
        self._spawning[lane] += 1
        try:
            return await self._start_worker(lane, spec, slot)
        finally:
            self._spawning[lane] -= 1

    async def _start_worker(self, lane: str, spec: LaneSpec, slot: int) -> WorkerProcess:
        loop = asyncio.get_running_loop()
        s = self.settings
        arenas = None
        if s.worker_shm_bytes:  # bulk payloads through shared memory, both ways
            try:
                inbound = Arena.create(s.worker_shm_bytes, f"{slot}-in")
                try:
                    arenas = (inbound, Arena.create(s.worker_shm_bytes, f"{slot}-out"))
                except BaseException:
                    inbound.close(unlink=True)
                    raise
            except OSError as exc:  # no room in /dev/shm, say: the pipes carry everything
                log.warning("pool: no shared memory for a %s worker (%s); payloads go by pipe", lane, exc)
        config = orjson.dumps({"handler_modules": list(s.handler_modules), "slot": slot,
                               "lane": lane, "cpu": spec.cpu, "memory_limit_mb": spec.memory_limit_mb,
                               "arenas": [a.path for a in arenas] if arenas else None,
                               "shm_threshold_bytes": s.shm_threshold_bytes})
        try:
            transport, proc = await loop.subprocess_exec(
                lambda: WorkerProcess(self, lane, slot, arenas), sys.executable, "-m", "pfnode.worker",
                config, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None,
                env=self._worker_env())
        except BaseException:
            for arena in arenas or ():
                arena.close(unlink=True)
            raise
        self._starting.add(proc)
        try:
            await asyncio.wait_for(asyncio.shield(proc.hello),
                                   self.settings.worker_start_timeout_ms / 1000)
        except asyncio.TimeoutError:
            proc.kill("start timeout")
            raise ConfigError(f"{lane} worker (pid {proc.pid}) did not become ready within "
                              f"{self.settings.worker_start_timeout_ms} ms") from None
        except BaseException:
            proc.kill("start failed")
            raise
        finally:
            self._starting.discard(proc)
        if self._closing:
            proc.close_channel()
            raise ConfigError("pool closed while a worker was starting")
        if self.handlers and proc.keys != self.handlers:
            proc.kill("handler mismatch")
            raise ConfigError(f"a new {lane} worker registered different handlers than the others")
        proc.ready = True
        self._workers[slot] = proc
        self.counters["workers_started"] += 1
        self._schedule_pump()
        return proc

    async def close(self, grace_s: float = 2.0) -> None:
        """Fail whatever is still waiting or running with PF503, then stop every worker."""
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
        for job in list(self._background):
            job.cancel()
        for entry in list(self.scheduler.inflight.values()):
            self._finish(entry.payload, failure(ErrorCode.UNAVAILABLE, "node is shutting down"))
        for proc in self._starting:
            proc.kill("shutdown")
        procs = list(self._workers.values())
        for proc in procs:
            if proc.outstanding:
                # busy: its packets are answered already, and it cannot notice end of
                # input until its handler returns, which may be never
                proc.kill("shutdown")
            else:
                proc.close_channel()
        if not procs:
            return
        _, pending = await asyncio.wait([p.exited for p in procs], timeout=grace_s)
        for proc in procs:
            if not proc.exited.done():
                proc.kill("shutdown")
        if pending:
            await asyncio.wait([p.exited for p in procs], timeout=5)

    def _in_background(self, coro) -> asyncio.Task:
        job = asyncio.ensure_future(coro)
        self._background.add(job)
        job.add_done_callback(self._background.discard)
        return job

    # ------------------------------------------------------------------ packets
    def submit(self, packet: Packet, timeout_ms: int | None,
               on_done: Callable[[Outcome], None]) -> Task | Refusal:
        """Queue a packet whose handler exists; `on_done` is called exactly once, unless
        the packet is refused (a `Refusal` is returned and nothing is queued)."""
        if self._closing:
            return Refusal(ErrorCode.UNAVAILABLE, "node is shutting down")
        options = self.handlers.get(packet.key, {})
        if timeout_ms is None:
            timeout_ms = options.get("timeout_ms") or self.settings.default_timeout_ms
        lane = options.get("lane") or DEFAULT_LANE[packet.group]
        if self.targets[lane] == 0 and self.lane_size(lane) == 0:
            lane = "df"  # a lane configured with no workers hands its packets to df
        task = Task(next(self._numbers), packet, timeout_ms, on_done, options.get("memory_limit_mb"))
        now = self._clock()
        entry = Entry(packet.id, lane, packet.priority, now + timeout_ms / 1000,
                      packet.dependencies or (), task)
        task.entry = entry
        refusal = self.scheduler.submit(entry, now)
        if refusal is not None:
            self.counters[f"refused_{refusal.code.value}"] += 1
            return refusal
        self.counters["submitted"] += 1
        self._arm_timer(entry.deadline)
        self._schedule_pump()
        return task

    def cancel(self, task: Task) -> None:
        """Forget a packet whose submitter has gone: it will not run if it has not started,
        and its result is dropped if it has. `on_done` is not called.

        A packet already handed to a worker stays in flight until the worker skips it
        (it has not started) or finishes it; its deadline still applies, so a hung
        handler is killed even when nobody waits for its answer."""
        entry = task.entry
        if entry.state is DONE:
            return
        self.counters["cancelled"] += 1
        if entry.state is DISPATCHED and task.worker is not None:
            task.on_done = _nobody_waits
            task.worker.send(wire.CANCEL, [task.no])
            return
        self.scheduler.cancel(entry)
        self._schedule_pump()

    def _finish(self, task: Task, outcome: Outcome) -> None:
        """Record a packet's end with the scheduler and answer it (and any dependents
        that fail because it failed)."""
        if task.entry.state is DONE:
            return
        failures = self.scheduler.complete(task.entry, self._clock(), ok=outcome.ok,
                                           data_json=outcome.data_json, code=outcome.code)
        self._answer(task, outcome)
        self._release_dependents(failures, outcome.ok)

    def record_elsewhere(self, packet_id: str, ok: bool, data_json: bytes | None, code: str | None) -> None:
        """A packet that ended on a reactor (hub routing): packets here that depend on it
        go on, or fail with it, as if it had run here."""
        failures = self.scheduler.record(packet_id, self._clock(), ok=ok, data_json=data_json, code=code)
        self._release_dependents(failures, ok)

    def _release_dependents(self, failures: list, ok: bool) -> None:
        """Answer the dependents that failed with a packet; run those it made ready."""
        for failed in failures:
            self._answer(failed.entry.payload, failure(failed.code, failed.message))
        if failures or ok:
            self._schedule_pump()  # dependents may have become ready

    def _answer(self, task: Task, outcome: Outcome) -> None:
        if outcome.ok:
            self.counters["completed"] += 1
        else:
            self.counters["failed"] += 1
            self.counters[f"failed_{outcome.code}"] += 1
        try:
            task.on_done(outcome)
        except Exception:
            log.exception("pool: on_done callback failed for packet %s", task.packet.id)

    # ------------------------------------------------------------------ deadlines
    def _arm_timer(self, deadline: float) -> None:
        if self._timer_at is not None and self._timer_at <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_at = deadline
        self._timer = self._loop.call_later(max(0.0, deadline - self._clock()), self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = self._timer_at = None
        for entry in self.scheduler.tick(self._clock()):
            self._expire(entry.payload)
        following = self.scheduler.next_deadline()
        if following is not None and not self._closing:
            self._arm_timer(following)

    def _expire(self, task: Task) -> None:
        state, limit = task.entry.state, task.timeout_ms
        if state is QUEUED:
            self._finish(task, failure(ErrorCode.DEADLINE_EXCEEDED, f"deadline of {limit} ms passed while queued"))
        elif state is BLOCKED:
            waiting = ", ".join(sorted(task.entry.waiting_on))
            self._finish(task, failure(ErrorCode.DEADLINE_EXCEEDED,
                                       f"deadline of {limit} ms passed while waiting for dependencies: {waiting}"))
        elif state is DISPATCHED:
            proc = task.worker
            running = proc is not None and bool(proc.outstanding) and proc.outstanding[0] is task
            self._finish(task, failure(
                ErrorCode.DEADLINE_EXCEEDED,
                f"deadline of {limit} ms passed while running; worker killed" if running
                else f"deadline of {limit} ms passed while queued at a worker"))
            if running:
                log.warning("pool: %s packet %s passed its %d ms deadline; killing worker pid %s",
                            task.packet.key, task.packet.id, limit, proc.pid)
                self.counters["workers_killed_deadline"] += 1
                proc.kill("deadline")

    # ------------------------------------------------------------------ dispatch
    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self._closing:
            return
        scheduler = self.scheduler
        now = self._clock()
        batches: dict[WorkerProcess, list[tuple]] = {}
        free: dict[str, list[tuple[int, int, WorkerProcess]]] = collections.defaultdict(list)
        for proc in self._workers.values():
            # A worker is refilled once it is down to half its window (the low-water mark),
            # so each pipe write carries several packets instead of one per answer.
            if proc.ready and len(proc.outstanding) <= proc.window // 2:
                free[proc.lane].append((len(proc.outstanding), proc.slot, proc))
        for lane, loads in free.items():
            lane_queue = scheduler.lanes[lane]
            heapq.heapify(loads)
            # each packet goes to the least loaded worker of its lane, so work fans out
            # across idle workers before any worker's prefetch window fills
            while loads and len(lane_queue):
                load, slot, proc = loads[0]
                entry = scheduler.dispatch(lane, now)
                if entry is None:
                    break
                task: Task = entry.payload
                task.worker = proc
                proc.outstanding.append(task)
                deps = scheduler.dependency_results(entry, now) if entry.dependencies else None
                item = task.wire(deps, proc.inbound, self.settings.shm_threshold_bytes)
                if type(item[2]) is ShmRef:
                    self.counters["shm_payloads_in"] += 1
                batches.setdefault(proc, []).append(item)
                if load + 1 < proc.window:
                    heapq.heapreplace(loads, (load + 1, slot, proc))
                else:
                    heapq.heappop(loads)
        for proc, batch in batches.items():
            proc.send(wire.TASKS, batch)

    def _on_result(self, proc: WorkerProcess, frame: tuple) -> None:
        task_no, status, body, duration_ms = frame
        if type(body) is ShmRef:
            body = proc.outbound.take(body)  # copy out and free, whatever becomes of the result
            self.counters["shm_payloads_out"] += 1
        if not proc.outstanding or proc.outstanding[0].no != task_no:
            log.error("pool: worker pid %s answered task %s out of order; killing it", proc.pid, task_no)
            proc.kill("protocol error")
            return
        task = proc.outstanding.popleft()
        proc.mean_ms += (duration_ms - proc.mean_ms) * 0.1
        proc.window = adaptive_window(self.lanes[proc.lane].prefetch, proc.mean_ms)
        if status == wire.OK:
            self._finish(task, Outcome(True, body, None, None, duration_ms))
        elif status == wire.SKIPPED:
            self.scheduler.cancel(task.entry)  # never ran: no result to record
        else:
            self._finish(task, failure(body[0], body[1], duration_ms))
        if proc.retiring and not proc.outstanding:
            proc.close_channel()
        self._schedule_pump()

    def _on_worker_exit(self, proc: WorkerProcess) -> None:
        if self._workers.get(proc.slot) is not proc:
            return  # never became ready: whoever spawned it handles the failure
        del self._workers[proc.slot]
        if self._closing:
            return
        how = describe_exit(proc.returncode)
        outstanding = list(proc.outstanding)
        proc.outstanding.clear()
        if proc.retired or proc.retiring:
            never_started = outstanding
        else:
            never_started = outstanding[1:]
            if outstanding and outstanding[0].state is not DONE:
                running = outstanding[0]
                log.warning("pool: worker pid %s died (%s) while running %s packet %s",
                            proc.pid, how, running.packet.key, running.packet.id)
                self._finish(running, failure(ErrorCode.WORKER_DIED,
                                              f"worker pid {proc.pid} died ({how}) while running the packet"))
            elif proc.kill_reason is None:
                log.warning("pool: %s worker pid %s exited (%s)", proc.lane, proc.pid, how)
        for task in never_started:
            if task.state is DISPATCHED:  # back in its original place
                task.worker = None
                self.scheduler.requeue(task.entry)
                self.counters["requeued"] += 1
        if proc.retiring:
            self.counters["workers_retired"] += 1
        else:
            self.counters["worker_deaths" if not proc.retired else "workers_recycled"] += 1
        self._replace_if_short(proc.lane)
        self._schedule_pump()

    def _replace_if_short(self, lane: str) -> None:
        if self._closing:
            return
        missing = self.targets[lane] - self.lane_size(lane) - self._spawning[lane]
        if missing <= 0:
            return
        deaths = self._recent_deaths[lane]
        deaths.append(time.monotonic())
        # Back off when a lane keeps dying quickly (a handler crashing at import, say).
        delay = 0.0 if len(deaths) < 3 or deaths[-1] - deaths[0] > 10 else min(5.0, 0.25 * len(deaths))
        for _ in range(missing):
            self._in_background(self._respawn(lane, delay))

    async def _respawn(self, lane: str, delay: float) -> None:
        if delay:
            self._spawning[lane] += 1  # counted as on its way while it waits
            try:
                await asyncio.sleep(delay)
            finally:
                self._spawning[lane] -= 1
        try:
            proc = await self._spawn(lane)
        except Exception as exc:
            if not self._closing:
                log.error("pool: cannot start a %s worker: %s; retrying in 5 s", lane, exc)
                self._in_background(self._respawn(lane, 5.0))
            return
        self.counters["workers_replaced"] += 1
        log.info("pool: %s worker pid %s started", lane, proc.pid)

    # ------------------------------------------------------------------ lanes
    def lane_size(self, lane: str) -> int:
        return sum(1 for p in self._workers.values() if p.lane == lane and not p.retiring)

    def lane_sizes(self) -> dict[str, int]:
        return {lane: self.lane_size(lane) for lane in self.lanes}

    async def resize(self, lane: str, size: int) -> None:
        """Grow or shrink a lane. Growing waits until the new workers are ready;
        shrinking retires the least-busy workers, which finish what they hold first."""
        spec = self.lanes[lane]
        if not spec.resizable and size != spec.size:
            raise ConfigError(f"the {lane} lane has a fixed size of {spec.size}")
        self.targets[lane] = size
        current = self.lane_size(lane)
        if size > current:
            results = await asyncio.gather(*(self._spawn(lane) for _ in range(size - current)),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                raise ConfigError(f"could not start {len(errors)} of {size - current} {lane} workers: {errors[0]}")
        elif size < current:
            members = sorted((p for p in self._workers.values() if p.lane == lane and not p.retiring),
                             key=lambda p: len(p.outstanding))
            for proc in members[:current - size]:
                proc.retiring = True
                proc.ready = False
                if not proc.outstanding:
                    proc.close_channel()
        self._schedule_pump()

    # ------------------------------------------------------------------ introspection
    @property
    def queued(self) -> int:
        return self.scheduler.queued + self.scheduler.blocked

    @property
    def inflight(self) -> int:
        return len(self.scheduler.inflight)

    def worker_pids(self, lane: str | None = None) -> list[int]:
        return sorted(p.pid for p in self._workers.values()
                      if p.pid and p.ready and (lane is None or p.lane == lane))

    def stats(self) -> dict[str, Any]:
        lanes = {}
        for lane in self.lanes:
            members = [p for p in self._workers.values() if p.lane == lane and p.ready]
            lanes[lane] = {"workers": len(members), "target": self.targets[lane],
                           "queued": self.scheduler.depth(lane),
                           "running": sum(len(p.outstanding) for p in members),
                           "busy": sum(1 for p in members if p.outstanding),
                           "pids": sorted(p.pid for p in members if p.pid),
                           "cpus": sorted({c for p in members for c in p.cpus})}
        return {
            "workers": sum(v["workers"] for v in lanes.values()),
            "worker_pids": self.worker_pids(),
            "queued": self.scheduler.queued,
            "blocked": self.scheduler.blocked,
            "inflight": self.inflight,
            "lanes": lanes,
            "results_stored": len(self.scheduler.results),
            "counters": dict(self.counters),
        }
