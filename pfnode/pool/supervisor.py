"""The worker supervisor: starts the lanes' worker processes, replaces the dead, resizes
lanes and stops them all, the way uvicorn's and gunicorn's supervisors keep their
children. It owns the processes; which packet goes where is the dispatcher's
(pfnode/core/dispatch.py), what a dead worker's packets become is the pool's.

Workers are forked by a fork server that has the handler modules imported
(`worker_start = "fork"`, the default: a replacement takes milliseconds), or started as
new interpreters (`"spawn"`: for handler modules that start threads at import). When the
fork server cannot be had, workers are spawned, and the fork server is tried again at
the next replacement.

Respawn rule (`respawn_delay_s`, pure): a worker that died running a packet (a crash,
or killed for its deadline) is replaced at once, whatever happened before: the packet
was to blame, not the lane. A worker that dies at start or while idle is replaced at
once the first two times in 10 s, then with a growing delay (up to 5 s), so a handler
module that crashes at import cannot make the node spin.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import os
import time
from typing import Callable

import orjson

from .arena import Arena, remove_orphans
from .buffers import table_path
from ..core.dispatch import Dispatcher, WorkerView
from ..errors import ConfigError
from .forkserver import ForkServer
from .pipe import WorkerSettings
from ..ops.jobs import keep
from ..settings import Settings
from .workerproc import WorkerListener, WorkerProcess

STANDARD_MODULE = "pfnode.elements.worker.standard"  # registers df:produce, df:transform, df:reduce

log = logging.getLogger("pfnode.pool")

CRASH_WINDOW_S = 10.0
MAX_RESPAWN_DELAY_S = 5.0


@dataclasses.dataclass(frozen=True)
class LaneSpec:
    name: str
    size: int
    window: int  # packets one worker may hold (1: one at a time)
    cpu: int | None = None  # pin every worker of the lane to this core
    memory_limit_mb: int | None = None  # default address-space cap for its handlers
    resizable: bool = True
    nice: int = 0  # niceness its workers add to the node's (the ed lane: none)


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
        "cf": LaneSpec("cf", 1, 1, cpu=cf_core, resizable=False, nice=settings.batch_nice),
        "df": LaneSpec("df", settings.workers or recommended_df_workers(settings), settings.worker_window,
                       nice=settings.batch_nice),
        # ed: reserved workers that take one packet at a time, so an ed packet never
        # waits behind df work nor behind another packet prefetched to its worker; at the
        # front's CPU priority, so that on a saturated machine it is not queued behind them
        "ed": LaneSpec("ed", settings.ed_workers, 1),
        "rm": LaneSpec("rm", settings.rm_workers, 1, memory_limit_mb=settings.rm_memory_limit_mb,
                       nice=settings.batch_nice),
    }


def respawn_delay_s(cause: str, recent: collections.deque[float], now: float) -> float:
    """How long to wait before replacing a worker that ended with `cause` ("packet": it
    died running one; "idle" or "start": it died on its own). `recent` holds the times of
    the lane's earlier on-its-own deaths; this one is added to it."""
    if cause == "packet":
        return 0.0
    recent.append(now)
    while recent and now - recent[0] > CRASH_WINDOW_S:
        recent.popleft()
    if len(recent) < 3:
        return 0.0
    return min(MAX_RESPAWN_DELAY_S, 0.25 * len(recent))


class Supervisor:
    def __init__(self, settings: Settings, dispatcher: Dispatcher, listener: WorkerListener,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.listener = listener
        self.clock = clock
        self.lanes = lane_specs(settings)
        self.targets = {name: spec.size for name, spec in self.lanes.items()}  # wanted lane sizes
        self.handlers: dict[str, dict] = {}  # key -> options (lane, timeout_ms, memory_limit_mb)
        self.procs: dict[int, WorkerProcess] = {}  # slot -> every live worker, ready or retiring
        self.counters: collections.Counter[str] = collections.Counter()
        self.closing = False
        self._slots = itertools.count()
        self._starting: set[WorkerProcess] = set()
        self._spawning: collections.Counter[str] = collections.Counter()  # lane -> on their way
        self._deaths: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._background: set[asyncio.Task] = set()
        self.forkserver: ForkServer | None = None
        self.buffer_table = table_path()  # rm:alloc's buffers, by name, for the workers (pfnode/pool/buffers.py)
        self._forkserver_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        removed = remove_orphans()
        if removed:
            log.info("pool: removed %d shared-memory segments of nodes that are gone", len(removed))
        if self.settings.worker_start == "fork":
            await self._start_forkserver()  # a handler module that cannot be imported stops us here
        spawns = [self.spawn(name) for name, spec in self.lanes.items() for _ in range(spec.size)]
        results = await asyncio.gather(*spawns, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close(grace_s=0)
            raise errors[0]
        key_sets = {orjson.dumps(p.handlers, option=orjson.OPT_SORT_KEYS) for p in self.procs.values()}
        if len(key_sets) > 1:
            await self.close(grace_s=0)
            raise ConfigError("workers registered different handlers; check the handler modules "
                              "for import-time randomness")
        if self.procs:
            self.handlers = next(iter(self.procs.values())).handlers
        # the front says that the node is ready, with every key it answers (node elements too)
        log.debug("pool: lanes %s ready; the workers run %d handler keys",
                  ", ".join(f"{name}={self.lane_size(name)}" for name in self.lanes), len(self.handlers))

    async def _start_forkserver(self) -> bool:
        """(Re)start the fork server, once for any number of workers waiting on it."""
        async with self._forkserver_lock:
            if self.forkserver is not None and self.forkserver.alive:
                return True
            if self.forkserver is not None:
                log.warning("pool: the fork server (pid %s) went away; starting another", self.forkserver.pid)
            server = ForkServer(self.handler_modules(), self._worker_env())
            try:
                await server.start(self.settings.worker_start_timeout_ms / 1000)
            except OSError as exc:
                log.warning("pool: no fork server (%s); starting workers as new interpreters", exc)
                return False
            self.forkserver = server
            log.debug("pool: fork server pid %s ready", server.pid)
            return True

    async def _launch(self, lane: str, slot: int, config: WorkerSettings, arenas) -> WorkerProcess:
        """A new worker process: forked if the fork server is (or can be made) alive."""
        s = self.settings
        if s.worker_start == "fork" and not self.closing:
            if self.forkserver is None or not self.forkserver.alive:
                await self._start_forkserver()
            if self.forkserver is not None and self.forkserver.alive:
                return await WorkerProcess.fork(self.forkserver, self.listener, lane, slot, config, arenas,
                                                s.worker_start_timeout_ms / 1000)
        return await WorkerProcess.start(self.listener, lane, slot, config, self._worker_env(), arenas)

    def handler_modules(self) -> list[str]:
        """The modules every worker imports, in order: the standard worker elements first
        (any handler of the same key replaces them), then the node's handler modules."""
        standard = [STANDARD_MODULE] if self.settings.data_elements else []
        return standard + list(self.settings.handler_modules)

    def _worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        threads = str(self.settings.worker_blas_threads)
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, threads)
        return env

    def _arenas(self, lane: str, slot: int) -> tuple[Arena, Arena] | None:
        size = self.settings.worker_shm_bytes
        if not size:
            return None
        try:  # bulk payloads through shared memory, both ways
            inbound = Arena.create(size, f"{slot}-in")
            try:
                return inbound, Arena.create(size, f"{slot}-out")
            except BaseException:
                inbound.close(unlink=True)
                raise
        except OSError as exc:  # no room in /dev/shm, say: the pipes carry everything
            log.warning("pool: no shared memory for a %s worker (%s); payloads go by pipe", lane, exc)
            return None

    async def spawn(self, lane: str, counted: bool = False) -> WorkerProcess:
        """Start one worker of `lane` and wait until it is ready and takes work (`counted`:
        the caller already counted it as on its way)."""
        spec = self.lanes[lane]
        s = self.settings
        slot = next(self._slots)
        if not counted:
            self._spawning[lane] += 1
        try:
            arenas = self._arenas(lane, slot)
            config = WorkerSettings(handler_modules=tuple(self.handler_modules()), slot=slot, lane=lane,
                                    cpu=spec.cpu, memory_limit_mb=spec.memory_limit_mb, nice=spec.nice,
                                    arenas=tuple(a.path for a in arenas) if arenas else None,
                                    shm_threshold_bytes=s.shm_threshold_bytes, buffer_table=self.buffer_table,
                                    max_result_bytes=s.max_frame_bytes)
            try:
                proc = await self._launch(lane, slot, config, arenas)
            except BaseException:
                for arena in arenas or ():
                    arena.close(unlink=True)
                raise
            self._starting.add(proc)
            try:
                await asyncio.wait_for(asyncio.shield(proc.hello), s.worker_start_timeout_ms / 1000)
            except asyncio.TimeoutError:
                self._abort(proc, arenas, "start timeout")
                raise ConfigError(f"{lane} worker (pid {proc.pid}) did not become ready within "
                                  f"{s.worker_start_timeout_ms} ms") from None
            except BaseException:
                self._abort(proc, arenas, "start failed")
                raise
            finally:
                self._starting.discard(proc)
        finally:
            self._spawning[lane] -= 1
        if self.closing:
            proc.close_channel()
            raise ConfigError("pool closed while a worker was starting")
        if self.handlers and proc.handlers != self.handlers:
            proc.kill("handler mismatch")
            raise ConfigError(f"a new {lane} worker registered different handlers than the others")
        self.procs[slot] = proc
        proc.view = self.dispatcher.add(slot, lane, proc)
        self.counters["workers_started"] += 1
        return proc

    @staticmethod
    def _abort(proc: WorkerProcess, arenas, reason: str) -> None:
        """A worker that will never take work: kill it and remove its shared memory now,
        not when its exit is noticed (a node failing to start may not wait for that)."""
        proc.kill(reason)
        for arena in arenas or ():
            arena.close(unlink=True)

    def forget(self, proc: WorkerProcess) -> bool:
        """A worker exited; True when it was one of ours that had taken work."""
        return self.procs.pop(proc.slot, None) is proc

    def replace(self, lane: str, cause: str) -> None:
        """Start workers until the lane is back at its target, after the respawn delay."""
        if self.closing:
            return
        missing = self.targets[lane] - self.lane_size(lane) - self._spawning[lane]
        if missing <= 0:
            return
        delay = respawn_delay_s(cause, self._deaths[lane], self.clock())
        self._spawning[lane] += missing  # on their way from now: the next exit counts them
        for _ in range(missing):
            self.in_background(self._respawn(lane, delay))

    async def _respawn(self, lane: str, delay_s: float) -> None:
        try:
            if delay_s:
                await asyncio.sleep(delay_s)
        except BaseException:
            self._spawning[lane] -= 1
            raise
        try:
            proc = await self.spawn(lane, counted=True)
        except Exception as exc:
            if not self.closing:
                log.error("pool: cannot start a %s worker: %s; retrying", lane, exc,
                          extra={"event": "worker_exit", "lane": lane, "cause": "start", "how": str(exc)})
                self.listener.metrics.worker_restart(lane, "start")
                self.replace(lane, "start")
            return
        self.counters["workers_replaced"] += 1
        log.info("pool: %s worker pid %s started", lane, proc.pid)
        self.listener.on_worker_ready(proc)

    async def resize(self, lane: str, size: int) -> None:
        """Grow or shrink a lane. Growing waits until the new workers are ready;
        shrinking retires the least busy workers, which finish what they hold first."""
        spec = self.lanes[lane]
        if not spec.resizable and size != spec.size:
            raise ConfigError(f"the {lane} lane has a fixed size of {spec.size}")
        self.targets[lane] = size
        current = self.lane_size(lane) + self._spawning[lane]
        if size > current:
            results = await asyncio.gather(*(self.spawn(lane) for _ in range(size - current)),
                                           return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            for proc in results:
                if isinstance(proc, WorkerProcess):
                    self.listener.on_worker_ready(proc)
            if errors:
                raise ConfigError(f"could not start {len(errors)} of {size - current} {lane} workers: {errors[0]}")
        elif size < self.lane_size(lane):
            self.retire(lane, self.lane_size(lane) - size)

    def retire(self, lane: str, count: int) -> None:
        """The `count` least busy workers of `lane` finish what they hold and leave."""
        for view in self.dispatcher.retire(lane, count):
            self._retire(view.handle)

    async def roll(self) -> int:
        """Replace every worker with one running the handler modules as they are on disk
        now (SIGHUP), one lane slot at a time, losing no packet: a new worker is started
        first and the old one retired (it finishes what it holds); the cf lane, being
        sequential, retires its worker first. A new fork server imports the modules afresh;
        the old one goes once its last worker has. New code must register the same handler
        keys (adding or removing handlers needs a restart). Returns the workers replaced."""
        old_server = self.forkserver
        if self.settings.worker_start == "fork":
            self.forkserver = None
            if not await self._start_forkserver():
                self.forkserver = old_server
                old_server = None
        replaced = 0
        try:
            for lane in self.lanes:
                for proc in [p for p in self.procs.values() if p.lane == lane and p.view and not p.view.retiring]:
                    if proc.exited.done() or self.closing:
                        continue
                    if lane == "cf":
                        self._spawning[lane] += 1  # its successor is on its way: no other refills
                        try:
                            self._retire(proc)
                            await proc.exited
                        except BaseException:
                            self._spawning[lane] -= 1
                            raise
                        self.listener.on_worker_ready(await self.spawn(lane, counted=True))
                    else:
                        self.listener.on_worker_ready(await self.spawn(lane))
                        self._retire(proc)
                        await proc.exited
                    replaced += 1
        finally:
            if old_server is not None:
                self.in_background(self._close_when_empty(old_server))
        log.info("pool: rolled %d workers onto the handler modules as they are now", replaced)
        return replaced

    def _retire(self, proc: WorkerProcess) -> None:
        view = proc.view
        view.retiring = True
        view.ready = False
        if not view.held:
            proc.close_channel()

    async def _close_when_empty(self, server: ForkServer) -> None:
        while server.children and not self.closing:
            await asyncio.sleep(0.1)
        await server.close()

    async def close(self, grace_s: float = 2.0) -> None:
        """Stop every worker: idle ones by closing their input, busy ones (whose packets
        the pool answered already) by SIGKILL, since a busy worker cannot notice the end
        of its input until its handler returns, which may be never."""
        self.closing = True
        for job in list(self._background):
            job.cancel()
        for proc in self._starting:
            proc.kill("shutdown")
        procs = list(self.procs.values())
        for proc in procs:
            if proc.view is not None and proc.view.held:
                proc.kill("shutdown")
            else:
                proc.close_channel()
        if procs:
            _, pending = await asyncio.wait([p.exited for p in procs], timeout=grace_s)
            for proc in procs:
                if not proc.exited.done():
                    proc.kill("shutdown")
            if pending:
                await asyncio.wait([p.exited for p in procs], timeout=5)
        if self.forkserver is not None:
            await self.forkserver.close()

    def in_background(self, coro) -> asyncio.Task:
        """Run `coro` as a task the supervisor keeps, and cancels when it closes."""
        return keep(self._background, coro)

    # ------------------------------------------------------------------ introspection
    def lane_size(self, lane: str) -> int:
        return len(self.dispatcher.members(lane))

    def lane_sizes(self) -> dict[str, int]:
        return {lane: self.lane_size(lane) for lane in self.lanes}

    def pids(self, lane: str | None = None) -> list[int]:
        return sorted(p.pid for p in self.procs.values()
                      if p.pid and p.view is not None and p.view.ready and (lane is None or p.lane == lane))

    def view_of(self, proc: WorkerProcess) -> WorkerView | None:
        return proc.view
