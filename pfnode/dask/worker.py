"""The Dask side of the dask lane: what runs on a Dask worker (pfnode/dask/lane.py is the node's).

`run_packet` is the task the node submits for each packet. On the worker it imports the
node's handler modules (once per process), tells the node that the packet started (an event
on the node's own topic: so a worker lost mid-packet can be told from one that had not
started it), and runs the packet with `pfnode.worker.run_task`, as a pool worker does. It
returns run_task's `pipe.Done` or `pipe.Failed`, which Dask keeps on the worker: a dependent
packet's task is given it by Dask from the dependency's future, on the cluster, so a
dependency's result never travels back through the node to reach it. The node learns the
answer from a second event (results up to EVENT_RESULT_BYTES: no request of its own, the
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

_imported: dict[tuple[str, ...], str | None] = {}  # handler modules -> why importing them failed
_running: set[str] = set()  # the tokens of the packets this worker process runs now


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
    """Imports the node's handler modules on each Dask worker as it starts or joins."""

    def __init__(self, modules: tuple[str, ...]) -> None:
        self.modules = tuple(modules)

    def setup(self, worker: Any) -> None:
        error = import_handlers(self.modules)
        if error is not None:  # not raised: the worker stays up and answers the keys PF001
            log.error("pfnode: Dask worker %s cannot run pfnode packets: %s", worker.address, error)


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
    worker.log_event(topic, ("started", token, worker.address))  # before anything can fail
    _running.add(token)
    try:
        answer = _run(worker, modules, key, data, packet_id, priority, metadata, deadline_wall, dependencies)
    finally:
        _running.discard(token)
    if type(answer) is pipe.Failed:
        worker.log_event(topic, ("failed", token, answer.code, answer.message, answer.duration_ms))
    elif len(answer.body) <= EVENT_RESULT_BYTES:
        worker.log_event(topic, ("done", token, answer.body, answer.duration_ms))
    return answer


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
