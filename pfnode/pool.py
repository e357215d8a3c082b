"""The worker pool: N worker processes fed by the front's event loop.

Each worker is a child process (`python -m pfnode.worker`) with its own pipe pair,
driven through asyncio's subprocess protocol, so the event loop never blocks on a
worker. The pool hands a worker up to `worker_prefetch` packets at a time; a worker
runs them strictly in order, which is how the pool knows which packet a dead worker
was running: the oldest unanswered one. That packet gets PF502 (or PF408 when the
pool killed the worker for its deadline); the others never started and are queued
again in their original place. A replacement worker is started at once.

Why not concurrent.futures.ProcessPoolExecutor: it cannot stop one running task,
one dead worker breaks the whole executor, and it cannot place work on a chosen
worker. See DESIGN.md and docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import signal
import sys
import time
from typing import Any, Callable, NamedTuple

import orjson

from . import worker as wire
from .errors import ConfigError, ErrorCode
from .protocol import Packet
from .scheduler import PriorityFifo
from .settings import Settings

log = logging.getLogger("pfnode.pool")

QUEUED, ASSIGNED, DONE = "queued", "assigned", "done"


class Outcome(NamedTuple):
    ok: bool
    data_json: bytes | None  # the handler's return value, already JSON
    code: str | None
    message: str | None
    duration_ms: float


def failure(code: ErrorCode | str, message: str, duration_ms: float = 0.0) -> Outcome:
    return Outcome(False, None, code.value if isinstance(code, ErrorCode) else code, message, duration_ms)


class Task:
    """One packet's journey through the pool."""

    __slots__ = ("no", "packet", "deadline", "on_done", "state", "worker", "timer", "arrival",
                 "timeout_ms")

    def __init__(self, no: int, packet: Packet, deadline: float, timeout_ms: int,
                 on_done: Callable[[Outcome], None]) -> None:
        self.no = no
        self.packet = packet
        self.deadline = deadline
        self.timeout_ms = timeout_ms
        self.on_done = on_done
        self.state = QUEUED
        self.worker: WorkerProcess | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.arrival = 0

    def wire(self) -> tuple:
        p = self.packet
        return (self.no, p.key, p.data, p.id, p.group, p.element, p.priority, p.metadata, self.deadline)


class WorkerProcess(asyncio.SubprocessProtocol):
    """The front's side of one worker: its pipes, its outstanding packets, its exit."""

    def __init__(self, pool: "Pool", slot: int) -> None:
        self.pool = pool
        self.slot = slot
        self.pid: int | None = None
        self.transport: asyncio.SubprocessTransport | None = None
        self.outstanding: collections.deque[Task] = collections.deque()
        self.ready = False
        self.started_at = time.monotonic()
        self.hello: asyncio.Future = asyncio.get_running_loop().create_future()
        self.keys: list[str] = []
        self.exited = asyncio.get_running_loop().create_future()
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
            if kind in (wire.OK, wire.FAILED):
                self.pool._on_result(self, frame)
            elif kind == wire.HELLO and not self.hello.done():
                self.keys = frame[2]
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
                    f"worker exited with status {self.returncode} before it was ready"))
            self.exited.set_result(self.returncode)
            self.pool._on_worker_exit(self)

    # -- helpers
    @property
    def returncode(self) -> int | None:
        return self.transport.get_returncode() if self.transport else None

    def send(self, batch: list[tuple]) -> None:
        pipe = self.transport.get_pipe_transport(0)  # type: ignore[union-attr]
        if pipe is not None and not pipe.is_closing():
            pipe.write(wire.pack(batch))

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
        if self.transport is not None:
            pipe = self.transport.get_pipe_transport(0)
            if pipe is not None:
                pipe.close()


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
        self._queue: PriorityFifo[Task] = PriorityFifo()
        self._queued = 0
        self._numbers = itertools.count(1)
        self._workers: dict[int, WorkerProcess] = {}
        self._starting: set[WorkerProcess] = set()  # spawned, not yet ready: not in _workers
        self._pump_scheduled = False
        self._closing = False
        self._respawns: set[asyncio.Task] = set()
        self._recent_deaths: dict[int, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=5))
        self.handler_keys: frozenset[str] = frozenset()
        self.counters = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(self._spawn(slot) for slot in range(self.settings.workers)),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.close(grace_s=0)
            raise errors[0]
        key_sets = {tuple(w.keys) for w in self._workers.values()}
        if len(key_sets) != 1:
            await self.close(grace_s=0)
            raise ConfigError(f"workers registered different handlers: {sorted(key_sets)}")
        self.handler_keys = frozenset(key_sets.pop())
        log.info("pool: %d workers ready (%s), %d handlers",
                 len(self._workers), ", ".join(str(w.pid) for w in self._workers.values()),
                 len(self.handler_keys))

    async def _spawn(self, slot: int) -> WorkerProcess:
        loop = asyncio.get_running_loop()
        config = orjson.dumps({"handler_modules": list(self.settings.handler_modules), "slot": slot})
        transport, proc = await loop.subprocess_exec(
            lambda: WorkerProcess(self, slot), sys.executable, "-m", "pfnode.worker", config,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=None)
        self._starting.add(proc)
        try:
            await asyncio.wait_for(asyncio.shield(proc.hello),
                                   self.settings.worker_start_timeout_ms / 1000)
        except asyncio.TimeoutError:
            proc.kill("start timeout")
            raise ConfigError(f"worker {slot} (pid {proc.pid}) did not become ready within "
                              f"{self.settings.worker_start_timeout_ms} ms") from None
        except BaseException:
            proc.kill("start failed")
            raise
        finally:
            self._starting.discard(proc)
        if self._closing:
            proc.close_channel()
            raise ConfigError("pool closed while a worker was starting")
        self._workers[slot] = proc
        proc.ready = True
        self.counters["workers_started"] += 1
        self._schedule_pump()
        return proc

    async def close(self, grace_s: float = 2.0) -> None:
        """Fail whatever is still queued or running with PF503, then stop every worker."""
        self._closing = True
        for respawn in list(self._respawns):
            respawn.cancel()
        while self._queue:
            task = self._queue.pop()
            if task.state is QUEUED:
                self._queued -= 1
                self._finish(task, failure(ErrorCode.UNAVAILABLE, "node is shutting down"))
        for proc in self._starting:
            proc.kill("shutdown")
        for proc in list(self._workers.values()):
            for task in proc.outstanding:
                if task.state is not DONE:
                    self._finish(task, failure(ErrorCode.UNAVAILABLE, "node is shutting down"))
            proc.close_channel()
        procs = list(self._workers.values())
        if not procs:
            return
        done, pending = await asyncio.wait([p.exited for p in procs], timeout=grace_s)
        for proc in procs:
            if not proc.exited.done():
                proc.kill("shutdown")
        if pending:
            await asyncio.wait([p.exited for p in procs], timeout=5)

    # ------------------------------------------------------------------ packets
    def submit(self, packet: Packet, timeout_ms: int, on_done: Callable[[Outcome], None]) -> Task:
        """Queue a packet whose handler exists; `on_done` is called exactly once."""
        now = self._clock()
        task = Task(next(self._numbers), packet, now + timeout_ms / 1000, timeout_ms, on_done)
        if self._closing:
            self._finish(task, failure(ErrorCode.UNAVAILABLE, "node is shutting down"))
            return task
        task.arrival = self._queue.push(task, packet.priority)
        self._queued += 1
        self.counters["submitted"] += 1
        assert self._loop is not None
        task.timer = self._loop.call_later(timeout_ms / 1000, self._expire, task)
        self._schedule_pump()
        return task

    def cancel(self, task: Task) -> None:
        """Forget a packet whose submitter has gone: it will not run if it has not started,
        and its result is dropped if it has. `on_done` is not called."""
        if task.state is DONE:
            return
        if task.state is QUEUED:
            self._queued -= 1
        task.state = DONE
        if task.timer is not None:
            task.timer.cancel()
        self.counters["cancelled"] += 1

    def _finish(self, task: Task, outcome: Outcome) -> None:
        task.state = DONE
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        if outcome.ok:
            self.counters["completed"] += 1
        else:
            self.counters["failed"] += 1
            self.counters[f"failed_{outcome.code}"] += 1
        try:
            task.on_done(outcome)
        except Exception:
            log.exception("pool: on_done callback failed for packet %s", task.packet.id)

    def _expire(self, task: Task) -> None:
        task.timer = None
        if task.state is QUEUED:
            self._queued -= 1
            self._finish(task, failure(ErrorCode.DEADLINE_EXCEEDED,
                                       f"deadline of {task.timeout_ms} ms passed while queued"))
        elif task.state is ASSIGNED:
            proc = task.worker
            running = proc is not None and proc.outstanding and proc.outstanding[0] is task
            self._finish(task, failure(
                ErrorCode.DEADLINE_EXCEEDED,
                f"deadline of {task.timeout_ms} ms passed while running; worker killed" if running
                else f"deadline of {task.timeout_ms} ms passed while queued at a worker"))
            if running:
                log.warning("pool: %s packet %s passed its %d ms deadline; killing worker pid %s",
                            task.packet.key, task.packet.id, task.timeout_ms, proc.pid)
                self.counters["workers_killed_deadline"] += 1
                proc.kill("deadline")

    # ------------------------------------------------------------------ dispatch
    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pick_worker(self) -> WorkerProcess | None:
        best = None
        limit = self.settings.worker_prefetch
        for proc in self._workers.values():
            if proc.ready and len(proc.outstanding) < limit and (
                    best is None or len(proc.outstanding) < len(best.outstanding)):
                best = proc
        return best

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self._closing:
            return
        batches: dict[WorkerProcess, list[tuple]] = {}
        now = self._clock()
        while self._queued:
            proc = self._pick_worker()
            if proc is None:
                break
            task = self._queue.pop()
            if task.state is not QUEUED:
                continue  # cancelled or expired while queued
            self._queued -= 1
            if task.deadline <= now:
                self._finish(task, failure(ErrorCode.DEADLINE_EXCEEDED,
                                           f"deadline of {task.timeout_ms} ms passed while queued"))
                continue
            task.state = ASSIGNED
            task.worker = proc
            proc.outstanding.append(task)
            batches.setdefault(proc, []).append(task.wire())
        for proc, batch in batches.items():
            proc.send(batch)

    def _on_result(self, proc: WorkerProcess, frame: tuple) -> None:
        task_no, status, body, duration_ms = frame
        if not proc.outstanding or proc.outstanding[0].no != task_no:
            log.error("pool: worker pid %s answered task %s out of order; killing it", proc.pid, task_no)
            proc.kill("protocol error")
            return
        task = proc.outstanding.popleft()
        if task.state is not DONE:
            if status == wire.OK:
                self._finish(task, Outcome(True, body, None, None, duration_ms))
            else:
                self._finish(task, failure(body[0], body[1], duration_ms))
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
        if outstanding and outstanding[0].state is not DONE:
            running = outstanding[0]
            log.warning("pool: worker pid %s died (%s) while running %s packet %s",
                        proc.pid, how, running.packet.key, running.packet.id)
            self._finish(running, failure(ErrorCode.WORKER_DIED,
                                          f"worker pid {proc.pid} died ({how}) while running the packet"))
        else:
            log.warning("pool: worker pid %s exited (%s)%s", proc.pid, how,
                        f" after being killed ({proc.kill_reason})" if proc.kill_reason else "")
        for task in outstanding[1:]:
            if task.state is ASSIGNED:  # never started: back in its original place
                task.state = QUEUED
                task.worker = None
                self._queue.push(task, task.packet.priority, task.arrival)
                self._queued += 1
                self.counters["requeued"] += 1
        self.counters["worker_deaths"] += 1
        deaths = self._recent_deaths[proc.slot]
        deaths.append(time.monotonic())
        # Back off when a slot keeps dying quickly (a handler crashing at import, say).
        delay = 0.0 if len(deaths) < 3 or deaths[-1] - deaths[0] > 10 else min(5.0, 0.25 * len(deaths))
        self._respawn_later(proc.slot, delay)
        self._schedule_pump()

    def _respawn_later(self, slot: int, delay: float) -> None:
        respawn = asyncio.ensure_future(self._respawn(slot, delay))
        self._respawns.add(respawn)
        respawn.add_done_callback(self._respawns.discard)

    async def _respawn(self, slot: int, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        try:
            proc = await self._spawn(slot)
        except Exception as exc:
            if self._closing:
                return
            log.error("pool: cannot start a replacement worker for slot %d: %s", slot, exc)
            self._respawn_later(slot, 5.0)
            return
        self.counters["workers_replaced"] += 1
        log.info("pool: worker slot %d replaced by pid %s", slot, proc.pid)

    # ------------------------------------------------------------------ introspection
    @property
    def queued(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return sum(len(p.outstanding) for p in self._workers.values())

    def stats(self) -> dict[str, Any]:
        return {
            "workers": len([p for p in self._workers.values() if p.ready]),
            "worker_pids": sorted(p.pid for p in self._workers.values() if p.pid),
            "queued": self._queued,
            "assigned": self.running,
            "counters": dict(self.counters),
        }
