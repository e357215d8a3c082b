"""The Dask side of the dask lane: what runs on a Dask worker (pfnode/dask/lane.py is the node's).

`run_packet` is the task the node submits for each packet. On the worker it imports the
node's handler modules (once per process), tells the node that the packet started (an event
on the node's own topic: so a worker lost mid-packet can be told from one that had not
started it; sent once the packet has run NOTICE_AFTER_S, or at once when its deadline is near:
`StartNotices`), and runs the packet with `pfnode.worker.run_task`, as a pool worker does. It
returns run_task's `pipe.Done` or `pipe.Failed`, which Dask keeps on the worker: a dependent
packet's task is given it by Dask from the dependency's future, on the cluster, so a
dependency's result never travels back through the node to reach it. The node learns the
answer from a second event, sent by the worker plugin below from the worker's event loop as the
task's answer lands in its memory (results up to EVENT_RESULT_BYTES: no request of its own, the
scheduler forwards it on the stream it already has), or gathers it from the worker (larger).

`HandlerModules` is the worker plugin that imports the handler modules on every worker, those
that join later included; a worker that cannot import them, or whose modules do not register
a key, answers that key's packets PF001 naming itself and the key.

Deadlines travel as wall-clock times (the node's monotonic clock means nothing on another
machine) and become this worker's monotonic deadline when the task starts: the cluster's
clocks must agree (NTP) for a worker's own check before it starts a packet to be exact; the
node's deadline, kept by the node, is exact whatever the clocks.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..pool import pipe
from ..registry import default_registry, load_handler_modules
from ..pool.worker import run_task

try:  # a worker plugin must be a WorkerPlugin for Client.register_plugin to send it to workers
    from distributed import WorkerPlugin
except ImportError:  # dask is an extra: without it this module still imports (and is not used)
    WorkerPlugin = object  # type: ignore[misc,assignment]

log = logging.getLogger("pfnode.dask")

# Results up to this size reach the node in the "done" event; larger ones it gathers. The
# scheduler keeps each topic's last 1 000 events (distributed.admin.low-level-log-length), so
# this bounds what a node's topic can hold there to about 64 MiB.
EVENT_RESULT_BYTES = 64 * 1024
# A packet tells the node it started once it has run this long (StartNotices), or at once when
# its deadline is nearer than NOTICE_NOW_S: a packet running at its deadline must be known to run
# (the node then restarts its worker should it hang, pfnode/dask/upkeep.py, rather than cancel it).
NOTICE_AFTER_S = 0.05
NOTICE_NOW_S = 1.0

_imported: dict[tuple[str, ...], str | None] = {}  # handler modules -> why importing them failed
_running: set[str] = set()  # the tokens of the packets this worker process runs now
_topics: dict[str, str] = {}  # token -> the node's topic, for the packets whose answer is not sent yet


def import_handlers(modules: tuple[str, ...]) -> str | None:
    """Import the handler modules in this process, once; None, or why they could not be."""
    modules = tuple(modules)
    if modules not in _imported:
        try:
            load_handler_modules(modules)
            _imported[modules] = None
        except Exception as exc:
            _imported[modules] = str(exc)
    return _imported[modules]


class HandlerModules(WorkerPlugin):
    """Imports the node's handler modules on each Dask worker as it starts or joins, and sends
    the node its packets' answers (`transition`)."""

    def __init__(self, modules: tuple[str, ...]) -> None:
        self.modules = tuple(modules)
        self.worker: Any = None

    def setup(self, worker: Any) -> None:
        self.worker = worker
        error = import_handlers(self.modules)
        if error is not None:  # not raised: the worker stays up and answers the keys PF001
            log.error("pfnode: Dask worker %s cannot run pfnode packets: %s", worker.address, error)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        """A task of this worker changed state (on its event loop). A packet's task that ended
        with its answer in memory sends it to the node now, in the same batch as Dask's own
        "task finished" message: sent from the task's thread, the event woke the loop once
        more per packet. A packet whose task failed (an exception, not an answer) or that no
        plugin saw end is found by the node's watch of its future (pfnode/dask/tasks.py)."""
        topic = _topics.pop(key, None) if finish == "memory" or finish == "error" else None
        if topic is None or finish != "memory" or self.worker is None:
            return
        answer = self.worker.data.get(key)
        if type(answer) is pipe.Failed:
            self.worker.log_event(topic, ("failed", key, answer.code, answer.message, answer.duration_ms))
        elif type(answer) is pipe.Done and len(answer.body) <= EVENT_RESULT_BYTES:
            self.worker.log_event(topic, ("done", key, answer.body, answer.duration_ms))


class UploadedModules(WorkerPlugin):
    """`--dask-upload`: the node's handler modules' source, written where this worker imports
    from (its local directory, on sys.path; a package's .zip put on sys.path itself). It
    imports nothing: `HandlerModules`, registered after it, does (a worker that joins later
    runs both, in that order). Registered again (same name) on SIGHUP: the files change on
    disk, and the worker's process imports them when it next starts."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)  # file name -> its bytes (.py, or .zip for a package)

    def setup(self, worker: Any) -> None:
        import importlib
        import os
        import sys

        for name, data in self.files.items():
            path = os.path.join(worker.local_directory, name)
            with open(path, "wb") as f:
                f.write(data)
            if name.endswith(".zip") and path not in sys.path:
                sys.path.insert(0, path)
        importlib.invalidate_caches()
        for modules in [m for m, error in _imported.items() if error is not None]:
            del _imported[modules]  # an import that failed before the upload is tried again


def running_tokens(tokens: list[str]) -> list[str]:
    """Which of these packets still run in this worker process (for `Client.run`)."""
    return [token for token in tokens if token in _running]


def worker_keys(modules: tuple[str, ...]) -> dict[str, Any]:
    """What this worker runs (for `Client.run`): its handler keys and its import error."""
    error = import_handlers(modules)
    return {"keys": default_registry.keys(), "error": error}


def run_packet(modules: tuple[str, ...], topic: str, token: str, key: str, data: bytes, packet_id: str,
               priority: int, metadata: dict | None, deadline_wall: float,
               dependencies: dict[str, Any] | None) -> pipe.Done | pipe.Failed:
    """Run one packet on this Dask worker. `dependencies`: {dependency id: its task's
    `pipe.Done` (Dask passes the result of the future the node gave), or its JSON bytes}."""
    from distributed import get_worker

    worker = get_worker()
    _running.add(token)
    if deadline_wall - time.time() <= NOTICE_NOW_S:  # its deadline is near: the node must know it runs
        worker.log_event(topic, ("started", token, worker.address))
    else:
        _notices.wait(worker, token, topic)
    _topics[token] = topic  # HandlerModules.transition sends its answer
    try:
        return _run(worker, modules, key, data, packet_id, priority, metadata, deadline_wall, dependencies)
    except BaseException:
        _topics.pop(token, None)
        raise
    finally:
        _running.discard(token)
        _notices.unheard.pop(token, None)


class StartNotices:
    """The "started" events of this worker process's packets, sent by its event loop for the
    packets still running NOTICE_AFTER_S after they started (a packet that ends sooner says
    only how it ended): an event of its own per packet woke the worker's loop, the scheduler
    and the node once more for every packet, most of them over before the node could use it.
    What the node makes of a packet whose start it has not heard of is what it made of one
    whose event died with its worker: it may have started (pfnode/dask/lane.py)."""

    def __init__(self) -> None:
        self.unheard: dict[str, tuple[float, str]] = {}  # token -> (its start, monotonic; its topic)
        self._lock = threading.Lock()
        self._ticking = False  # the loop checks the unheard packets every NOTICE_AFTER_S / 2

    def wait(self, worker: Any, token: str, topic: str) -> None:
        """A packet starts (in a task's thread): its notice goes if it still runs in a while."""
        with self._lock:
            self.unheard[token] = (time.monotonic(), topic)
            start, self._ticking = not self._ticking, True
        if start:
            worker.loop.add_callback(self._tick, worker)

    def _tick(self, worker: Any) -> None:
        """On the worker's loop: send the notices that are due; come back while any wait."""
        now = time.monotonic()
        for token, (started, topic) in list(self.unheard.items()):
            if now - started >= NOTICE_AFTER_S and self.unheard.pop(token, None) is not None:
                worker.log_event(topic, ("started", token, worker.address))
        with self._lock:
            self._ticking = bool(self.unheard)
        if self._ticking:
            worker.loop.call_later(NOTICE_AFTER_S / 2, self._tick, worker)


_notices = StartNotices()


def _run(worker: Any, modules: tuple[str, ...], key: str, data: bytes, packet_id: str, priority: int,
         metadata: dict | None, deadline_wall: float, dependencies: dict[str, Any] | None) -> pipe.Done | pipe.Failed:
    """The packet's answer: PF001 for a key this worker lacks, else its handler's."""
    error = import_handlers(modules)
    if default_registry.get(key) is None:
        why = (f": its handler modules failed to import: {error}" if error is not None
               else f"; its handler modules ({', '.join(modules)}) do not register it")
        answer = pipe.Failed(0, "PF001", f"no handler for {key} on Dask worker {worker.address}{why}", 0.0)
    else:
        deps = None
        if dependencies:
            deps = {dep: value.body if isinstance(value, pipe.Done) else value
                    for dep, value in dependencies.items() if value is not None}
        deadline = time.monotonic() + (deadline_wall - time.time())
        answer = run_task(default_registry, pipe.Task(0, key, data, packet_id, priority, metadata, deadline, deps,
                                                      None))
    return answer
