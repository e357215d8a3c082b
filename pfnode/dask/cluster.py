"""The Dask cluster as the dask lane sees it: the client's connection to the scheduler, the
workers and what they run, the local cluster a node may start (`--dask local:N`), and
scaling it. The packets on it are the lane's (pfnode/dask/lane.py); this module tells the
lane when the cluster becomes ready or unreachable and when a worker leaves.

- Connect: a `distributed.Client` (asynchronous) to `--dask` (or to the local cluster's
  scheduler), subscribed to the lane's topic (its tasks' start and end events) and to the
  cluster's own events (workers joining and leaving); the handler modules' plugin is
  registered so every worker imports them; each worker is asked which handler keys it runs
  (one that lacks some is logged: its packets of those keys get PF001).
- Watch: every `REFRESH_S` the worker list is read again; a client that is no longer
  running, or a scheduler that does not answer `SILENT_LIMIT` reads in a row, makes the
  cluster unreachable; then every `RECONNECT_S` it is dialled again.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any, Callable

from ..errors import ConfigError, ErrorCode, HandlerError
from ..ops.jobs import keep
from .config import parse_target

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger("pfnode.dask")

RECONNECT_S = 2.0  # between tries to reach an unreachable cluster
REFRESH_S = 1.0  # how often the cluster's workers are read again
REFRESH_TIMEOUT_S = 5.0  # how long the scheduler may take to say what workers it has
SILENT_LIMIT = 3  # that many unanswered reads in a row: the cluster counts as unreachable
STARTING, READY, UNREACHABLE = "starting", "ready", "unreachable"
RESTARTING = "restarting"  # SIGHUP: the local cluster's workers restart onto new handler code (upkeep.py)
WINDOW_PER_THREAD, WINDOW_MIN = 8, 64  # the default window (--dask-window auto)
RESTART_TIMEOUT_S = 120.0  # how long the workers may take to restart and come back


class LocalCluster:
    """The child process running `--dask local:N` (pfnode/dask/local.py)."""

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


class Cluster:
    """The connection to the cluster and what the node knows of its workers. The lane gives
    it `on_ready()` (the window may have room), `on_unreachable(why)` (answer what is on the
    cluster), `on_task_event(event)` and `on_worker_gone(worker, processing, threads)`."""

    def __init__(self, settings: "Settings", *, on_ready: Callable[[], None],
                 on_unreachable: Callable[[str], None], on_task_event: Callable[[Any], None],
                 on_worker_gone: Callable[[str, Any, int, Any], None]) -> None:
        self.settings = settings
        self.on_ready = on_ready
        self.on_unreachable = on_unreachable
        self.on_task_event = on_task_event
        self.on_worker_gone = on_worker_gone
        self.address, self.local_workers = parse_target(settings.dask)
        self.modules = tuple(settings.handler_modules)  # what the workers import (start() says)
        self.handler_keys: frozenset[str] = frozenset()
        self.tag = uuid.uuid4().hex[:8]
        self.topic = f"pfnode-{self.tag}"  # where this node's tasks say they started and ended
        self.state = STARTING
        self.problem: str | None = None  # why the cluster is unusable now (None: it is usable)
        self.client: Any = None
        self.local: LocalCluster | None = None
        self.workers: dict[str, dict[str, Any]] = {}  # address -> name, nthreads, memory_limit
        self.missing: dict[str, str] = {}  # worker -> the handler keys it lacks, or its import error
        self.adaptive: dict | None = None
        self.closing = False
        self._jobs: set[asyncio.Task] = set()

    @property
    def threads(self) -> int:
        return sum(int(info.get("nthreads") or 0) for info in self.workers.values())

    def window(self) -> int:
        """How many packets of the node may be on the cluster at once: by default enough that
        the workers never wait for the node (a packet's trip from the node to a worker and its
        answer's back take longer than a short handler runs) and the lane can hand them over in
        batches (pfnode/dask/lane.py), WINDOW_PER_THREAD per worker thread, at least WINDOW_MIN."""
        return self.settings.dask_window or max(WINDOW_MIN, WINDOW_PER_THREAD * self.threads)

    def background(self, coro) -> asyncio.Task:
        return keep(self._jobs, coro)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, handler_keys: frozenset[str], modules: list[str]) -> None:
        """Start the local cluster (local:N) and connect; a remote cluster that cannot be
        reached leaves the node up and degraded (it reconnects by itself)."""
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
            self.unreachable(f"cannot reach the scheduler: {type(exc).__name__}: {exc}")
        self.background(self._watch_loop())

    async def close(self) -> None:
        self.closing = True
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

        from .worker import worker_keys

        client = await Client(self.address, asynchronous=True, timeout=timeout_s, set_as_default=False,
                              direct_to_workers=self.settings.dask_direct, name=f"pfnode-{self.tag}")
        try:
            client.subscribe_topic(self.topic, self.on_task_event)
            client.subscribe_topic("all", self._on_cluster_event)
            await self.install_modules(client)
            self.client = client
            await self._refresh_workers()
            await self._check_workers(worker_keys)
        except BaseException:
            self.client = None
            await client.close()
            raise
        self.state, self.problem = READY, None
        log.info("dask: connected to %s: %d workers, %d threads", self.address, len(self.workers), self.threads)
        self.on_ready()

    async def install_modules(self, client: Any) -> None:
        """The plugins that make every worker (those that join later too) import the handler
        modules, after writing their source with `--dask-upload` (pfnode/dask/upload.py).
        Registered again under the same names, they replace the ones before (SIGHUP)."""
        from .upload import handler_files
        from .worker import HandlerModules, UploadedModules

        try:
            if self.settings.dask_upload:
                files = handler_files(self.modules)
                await client.register_plugin(UploadedModules(files), name="pfnode-upload")
                log.info("dask: shipped %s to the workers (dask_upload)", ", ".join(sorted(files)) or "nothing")
            await client.register_plugin(HandlerModules(self.modules), name="pfnode-handlers")
        except Exception as exc:
            log.error("dask: cannot install the handler modules on the workers (%s: %s); "
                      "install pfnode and %s on every Dask worker", type(exc).__name__, exc,
                      ", ".join(self.modules))

    async def restart(self) -> None:
        """Restart every worker of the cluster (through their nannies) and wait for them to
        come back; each imports the handler modules afresh (SIGHUP on a local:N cluster)."""
        from .worker import worker_keys

        await self.client.restart(timeout=RESTART_TIMEOUT_S, wait_for_workers=True)
        await self._refresh_workers()
        await self._check_workers(worker_keys)

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
            if reported.get(address) != why:
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
        while not self.closing:
            await asyncio.sleep(REFRESH_S if self.state is READY else RECONNECT_S)
            if self.state is RESTARTING:
                continue  # upkeep.reload watches its own restart
            if self.state is READY:
                silent = await self._refresh_or_notice(silent)
            elif self.local is not None and not self.local.alive:
                self.problem = (f"the local Dask cluster (pid {self.local.proc.pid}) exited with status "
                                f"{self.local.proc.returncode}; restart the node")
            else:
                await self._reconnect()

    async def _refresh_or_notice(self, silent: int) -> int:
        """Read the workers again; the count of unanswered reads in a row after this one."""
        if self.client is None or self.client.status != "running":
            self.unreachable("lost the connection to the scheduler")
            return 0
        try:
            before = self.window()
            await asyncio.wait_for(self._refresh_workers(), REFRESH_TIMEOUT_S)
            if self.window() > before:
                self.on_ready()
            return 0
        except Exception as exc:
            log.debug("dask: reading the workers: %s", exc)
            if silent + 1 >= SILENT_LIMIT:  # a scheduler that does not answer is as good as gone
                self.unreachable(f"the scheduler did not answer for {SILENT_LIMIT} tries of "
                                 f"{REFRESH_TIMEOUT_S:.0f} s")
                return 0
            return silent + 1

    async def _reconnect(self) -> None:
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

    def unreachable(self, why: str) -> None:
        """The cluster cannot be used: the lane answers PF503 for what is on it or waits for it."""
        self.problem = why
        if self.state is UNREACHABLE:
            return
        self.state = UNREACHABLE
        log.error("dask: the cluster at %s is unreachable (%s); its packets are answered PF503 until it is back",
                  self.address, why)
        self.on_unreachable(why)

    def unavailable_text(self) -> str:
        return f"the Dask cluster at {self.address} is unreachable: {self.problem}"

    # ------------------------------------------------------------------ the cluster's events
    def _on_cluster_event(self, event: Any) -> None:
        _, msg = event
        if not isinstance(msg, dict):
            return
        action = msg.get("action")
        if action == "remove-worker":
            worker = msg.get("worker")
            threads = int((self.workers.pop(worker, None) or {}).get("nthreads") or 1)
            self.missing.pop(worker, None)
            self.on_worker_gone(worker, msg.get("processing-tasks") or (), threads,
                                msg.get("lost-computed-tasks"))
        elif action == "add-worker" and self.client is not None and self.state is READY:
            from .worker import worker_keys

            self.background(self._worker_added(worker_keys, msg.get("worker")))

    async def _worker_added(self, worker_keys: Callable, worker: str | None) -> None:
        try:
            await self._refresh_workers()
            await self._check_workers(worker_keys, [worker] if worker else None)
        except Exception as exc:
            log.debug("dask: reading a new worker: %s", exc)
        self.on_ready()

    # ------------------------------------------------------------------ mc:scale, mc:status
    def stats(self, running: dict[str, int]) -> dict[str, Any]:
        return {"state": self.state, "problem": self.problem, "scheduler": self.address,
                "local": ({"pid": self.local.proc.pid, "alive": self.local.alive} if self.local else None),
                "window": self.window(), "threads": self.threads, "adaptive": self.adaptive,
                "workers": [{"address": address, **info, "running": running.get(address, 0),
                             **({"problem": self.missing[address]} if address in self.missing else {})}
                            for address, info in sorted(self.workers.items())]}

    async def scale(self, data: dict, usable_cores: int) -> int:
        """mc:scale with "lane": "dask": {"workers": N} or {"adapt": {"minimum": a, "maximum": b}}
        (or {"adapt": false}); only for a cluster this node started (local:N). The workers before."""
        unknown = sorted(set(data) - {"lane", "workers", "adapt"})
        if unknown or ("workers" in data) == ("adapt" in data):
            raise HandlerError(ErrorCode.INVALID_PACKET, 'mc:scale expects {"lane": "dask", "workers": N} or '
                               '{"lane": "dask", "adapt": {"minimum": A, "maximum": B}} (or "adapt": false)')
        if self.local is None:
            raise HandlerError(ErrorCode.INVALID_PACKET, f"the Dask cluster at {self.address} was not started by "
                               "this node: scale it with its own deployment (its cluster manager's scale or adapt)")
        if self.state is not READY:
            raise HandlerError(ErrorCode.UNAVAILABLE, self.unavailable_text())
        limit = 4 * max(1, usable_cores)
        before = len(self.workers)
        if "workers" in data:
            await self._scale_to(data["workers"], limit)
        else:
            await self._adapt(data["adapt"], limit)
        await self._refresh_workers()
        self.on_ready()
        return before

    async def _scale_to(self, workers: Any, limit: int) -> None:
        if type(workers) is not int or not 0 <= workers <= limit:
            raise HandlerError(ErrorCode.INVALID_PACKET, f"mc:scale: the dask lane's \"workers\" must be "
                               f"0..{limit} on this machine, got {workers!r}"[:300])
        await self.client.scheduler.pfnode_scale(n=workers)
        deadline = time.monotonic() + 60
        while len(self.workers) != workers and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            await self._refresh_workers()

    async def _adapt(self, adapt: Any, limit: int) -> None:
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
