"""Named shared-memory arrays (rm:alloc): the files, the table that names them, and the
worker's view of them (`ctx.buffer(name)`).

The front creates each buffer as a file in /dev/shm, `pfnode-<front pid>-buf-<name>-<random>`
(the `pfnode-<pid>-` prefix lets a later start remove those of a node that is gone:
`pfnode.arena.remove_orphans`), with its room reserved (`posix_fallocate`: a full /dev/shm
fails the allocation, not a worker's write later), and rewrites one small table,
`pfnode-<front pid>-buffers-<random>.json` (`{name: {"path", "shape", "dtype"}}`),
atomically (a new file renamed over the old) whenever a buffer comes or goes. Workers are told the table's
path in their configuration. A packet that never asks for a buffer costs nothing: a worker
reads the table only in `ctx.buffer`, and only when the table changed since it last read it
(one `stat`). A buffer is a numpy array over the mapped file, no copy: what one worker
writes, the others (and later packets) see.

When a buffer is freed, the front unlinks its file; a worker that still maps it keeps a
valid mapping (no crash) until it next asks for buffers, when it drops the mappings of
names that are gone or were allocated again.
"""
from __future__ import annotations

import math
import os
from typing import Any

import orjson

from .arena import PREFIX  # pfnode-<front pid>-...: remove_orphans knows whose
from .arena import _shm_dir as shm_dir


def table_path(directory: str | None = None) -> str:
    """A new buffer table's path for this process's node (a process may run more than one
    node, as tests do: each has its own table)."""
    return os.path.join(directory or shm_dir(), f"{PREFIX}{os.getpid()}-buffers-{os.urandom(4).hex()}.json")


def create_file(name: str, nbytes: int, directory: str | None = None) -> str:
    """A new zero-filled shared-memory file of `nbytes` for buffer `name`; its path.
    OSError when there is no room (the file is then gone)."""
    path = os.path.join(directory or shm_dir(), f"{PREFIX}{os.getpid()}-buf-{name}-{os.urandom(4).hex()}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return path


def remove_file(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_table(path: str, table: dict[str, dict[str, Any]]) -> None:
    """Replace the table at `path` at once (readers see the old one or the new one)."""
    tmp = f"{path}.{os.urandom(4).hex()}.tmp"
    with open(tmp, "wb") as f:
        f.write(orjson.dumps(table))
    os.replace(tmp, path)


class WorkerBuffers:
    """A worker's view of the node's buffers, read from the table when it changes."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._table: dict[str, dict[str, Any]] = {}
        self._open: dict[str, tuple[str, Any]] = {}  # name -> (its file's path, the array)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except (OSError, TypeError):
            self._stamp, self._table = None, {}
        else:
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                with open(self.path, "rb") as f:
                    self._table = orjson.loads(f.read())
                self._stamp = stamp
        for name in [n for n, (p, _) in self._open.items() if self._table.get(n, {}).get("path") != p]:
            del self._open[name]  # freed, or allocated again: its old mapping goes with its last array

    def get(self, name: str):
        import mmap

        import numpy as np

        self._refresh()
        entry = self._table.get(name)
        if entry is None:
            raise KeyError(f"no buffer named {name!r} on this node (rm:alloc creates one)")
        held = self._open.get(name)
        if held is not None:
            return held[1]
        dtype = np.dtype(entry["dtype"])
        shape = tuple(entry["shape"])
        nbytes = math.prod(shape) * dtype.itemsize
        fd = os.open(entry["path"], os.O_RDWR)
        try:
            mapped = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)
        array = np.ndarray(shape, dtype=dtype, buffer=mapped)
        self._open[name] = (entry["path"], array)
        return array


_worker_buffers = WorkerBuffers(None)


def configure(path: str | None) -> None:
    """The worker's start-up: where its front's buffer table is."""
    global _worker_buffers
    _worker_buffers = WorkerBuffers(path)


def buffer(name: str):
    """The numpy array over the node's shared-memory buffer `name` (KeyError if none)."""
    return _worker_buffers.get(name)
