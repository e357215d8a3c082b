"""Shared-memory arenas: bulk payloads between the front and a worker without the pipe.

The pipes stay the control channel: every task and every result still travels as a
small pipe frame, in order. A payload larger than `threshold` is written into a
shared-memory ring instead, and the frame carries a `ShmRef` to it. So:

- ordering and wake-ups are the pipe's (a write() and the matching read() also order
  the memory accesses around them), and no lock or atomic is needed;
- a payload is copied once into the ring and once out, instead of going through the
  kernel's 64 KiB pipe buffer in pieces with a wake-up for each;
- the consumer frees space in order (tasks and results are consumed in the order they
  were produced) by storing how far it has consumed in the ring's header. The producer
  may read a stale value: it then sees less free space than there is, never more, and
  falls back to the pipe for that payload.

One arena has one producer and one consumer. The front creates both arenas of a
worker (a file in /dev/shm each, unlinked when the worker is gone).
"""
from __future__ import annotations

import mmap
import os
import struct
import tempfile

from .pipe import ShmRef

_CONSUMED = struct.Struct("<Q")  # header: bytes consumed so far, written by the consumer
HEADER_BYTES = 64


PREFIX = "pfnode-"  # pfnode-<front pid>-<slot>-<in|out>-<random>: a later start can tell whose


def remove_orphans(shm_dir: str | None = None) -> list[str]:
    """Unlink the arenas of pfnode nodes that are gone (SIGKILLed, say): their names carry
    the front's pid, and a segment whose pid is no live process is nobody's. Returns what
    was removed."""
    shm_dir = shm_dir or _shm_dir()
    removed = []
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(PREFIX):
            continue
        pid_text = name[len(PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        try:
            os.unlink(os.path.join(shm_dir, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True


def _shm_dir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


class Arena:
    def __init__(self, path: str, size: int, *, create: bool) -> None:
        self.path = path
        if create:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.ftruncate(fd, size)
                self._map = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        else:
            fd = os.open(path, os.O_RDWR)
            try:
                self._map = mmap.mmap(fd, 0)
            finally:
                os.close(fd)
        self._view = memoryview(self._map)
        self.capacity = len(self._map) - HEADER_BYTES
        self._produced = 0  # producer side only: bytes handed out so far (with wrap gaps)

    @classmethod
    def create(cls, size: int, tag: str) -> "Arena":
        path = os.path.join(_shm_dir(), f"{PREFIX}{os.getpid()}-{tag}-{os.urandom(4).hex()}")
        return cls(path, HEADER_BYTES + size, create=True)

    @classmethod
    def attach(cls, path: str) -> "Arena":
        return cls(path, 0, create=False)

    # -- producer
    def put(self, payload: bytes) -> ShmRef | None:
        """Copy `payload` in; None when it does not fit now (send it through the pipe)."""
        size = len(payload)
        capacity = self.capacity
        start = self._produced % capacity
        gap = capacity - start if start + size > capacity else 0  # records never wrap
        (consumed,) = _CONSUMED.unpack_from(self._map, 0)
        if size == 0 or self._produced + gap + size - consumed > capacity:
            return None
        if gap:
            self._produced += gap
            start = 0
        self._view[HEADER_BYTES + start:HEADER_BYTES + start + size] = payload
        self._produced += size
        return ShmRef(start, size, self._produced)

    # -- consumer
    def take(self, ref: ShmRef) -> bytes:
        """Copy a payload out and free its space."""
        data = bytes(self._view[HEADER_BYTES + ref.offset:HEADER_BYTES + ref.offset + ref.length])
        self.release(ref)
        return data

    def release(self, ref: ShmRef) -> None:
        _CONSUMED.pack_into(self._map, 0, ref.end)

    def close(self, unlink: bool = False) -> None:
        try:
            self._view.release()
            self._map.close()
        except BufferError:  # a view is still exported; the mapping goes with the process
            pass
        if unlink:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
