"""Resource management (rm): shared-memory buffers, locks and a cache, held by the node.

Every resource has an owner, the submitter scope that made it (a token's name, or the
connection without tokens), and goes when its ttl or lease passes, when it is freed, or
when its owner disconnects (the last connection of its token, with tokens). With tokens,
every name (a buffer's, a lock's, a cache key) is its principal's own, or a namespace's its
token holds (pfnode/core/names.py).

- `rm:alloc` (admin) {"name", "shape", "dtype", "ttl_ms"?} -> {"name", "shape", "dtype",
  "bytes", "expires_in_ms"}: a zero-filled shared-memory array held by the node (ttl
  default 1 h, at most 24 h). `name`: 1-64 characters of A-Z a-z 0-9 _ . -, one buffer per
  name (another of the same name: PF002 naming `name`); `dtype`: numpy's `dtype.str` of a
  bool or numeric type, byte order explicit (as numpy payloads: "<f8", "|u1"); `shape`: at
  most 32 non-negative integers, at least one byte in all. A worker's handler reads and
  writes it as a numpy array over the shared memory, no copy: `ctx.buffer(name)`.
- `rm:free`  {"name"} -> {"name", "bytes"}: the buffer goes (its owner, or an admin).
- `rm:lock`  {"name", "lease_ms", "wait_ms"?} -> {"name", "token", "expires_in_ms"}: the
  lock `name` (its principal's; 1-256 characters) for `lease_ms` (1 ms .. 1 h), waiting for it
  in turn (first come, first served) for at most `wait_ms` (default: until a little
  before the packet's deadline; 0: do not wait); not had by then: **PF009** (lock busy).
  {"name", "token", "lease_ms"} renews the lease, {"name", "token", "release": true}
  releases it -> {"name", "released": true}; a token that does not hold the lock: PF002
  naming `token`. The lease passing releases the lock as if its holder had.
  *Packets under a lock*: a packet whose `metadata.lock` is a lock's name runs only under
  it. Without `metadata.lock_token`, it takes its turn for the lock when it is admitted
  (waiting, as a blocked packet, within its deadline; PF408 if that passes first), and
  holds it from then until it is answered, however it ends. With `metadata.lock_token`
  equal to the token an `rm:lock` holder got, it runs at once, under that holder's lock
  (the holder's business to order them); a token that does not hold the lock (expired,
  released, wrong): PF002 at once. Only packets this node runs (a handler or a node
  element) can take a lock: one it would forward to a reactor is answered PF002.
- `rm:cache` {"op": "put", "key", "value", "ttl_ms"?} -> {"key", "stored": true, "bytes",
  "expires_in_ms"}; {"op": "get", "key"} -> {"key", "hit": true, "value", "expires_in_ms"}
  or {"key", "hit": false}; {"op": "delete", "key"} -> {"key", "deleted": bool}. Entries are
  the submitter's own (another submitter's `get` of the same key misses); ttl default
  10 min, at most 24 h. The least recently used entries make room for new ones.
  *Memoisation*: a packet with `metadata.cache: true` (exactly true) and no dependencies
  is answered from the cache, without running, when a packet of the same submitter with
  the same key (group:element) and the same data (the same JSON text) succeeded within
  its ttl (`metadata.cache_ttl_ms`, default 10 min): its result, `duration_ms` 0. A
  packet that ran and succeeded stores its result so.

Bounds: 256 buffers of at most `max_buffer_bytes` (256 MiB) in all (PF004 past them);
10 000 locks named at once (PF004); the cache at most 100 000 entries and `cache_bytes`
(64 MiB, counting each entry's value, key and records), each submitter's share of either
while others hold entries (a lone one may fill it; its oldest make room), one value at most
1/16 of the bytes
(PF002).
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import logging
import math
import os
import re
from typing import Any

import orjson

from ...errors import ErrorCode
from ...core.flight import BLOCKED, Flight
from ...core.protocol import _ELEMENT_RE, encode_json
from ...core.names import qualify, shown, space_of
from ...core.shares import Shares
from ..base import (ElementError, ElementFailed, answer_within_s, check_keys, need_dict, need_int, need_list,
                    need_str, node_element, optional_int, optional_ttl_ms, owner_name)

log = logging.getLogger("pfnode.front")

LOCK_BUSY = ErrorCode.LOCK_BUSY
DEFAULT_TTL_MS = 3_600_000
MAX_TTL_MS = 86_400_000
MAX_BUFFERS = 256
MAX_DIMENSIONS = 32
MAX_LOCKS = 10_000
MAX_LEASE_MS = 3_600_000
MAX_NAME_CHARS = 256
DEFAULT_CACHE_TTL_MS = 600_000
MAX_CACHE_ENTRIES = 100_000
MAX_KEY_CHARS = 1024
# a dtype.str of a bool or numeric type, byte order explicit (as pfnode/ndarray.py's)
_DTYPE_RE = re.compile(r"([<>|])([biufc])(\d{1,2})")


# ---------------------------------------------------------------------------- buffers

class Buffer:
    __slots__ = ("name", "path", "shape", "dtype", "bytes", "owner", "expires")

    def __init__(self, name, path, shape, dtype, nbytes, owner, expires) -> None:
        self.name, self.path, self.shape, self.dtype = name, path, shape, dtype
        self.bytes, self.owner, self.expires = nbytes, owner, expires


class Buffers:
    """rm:alloc's shared-memory arrays, and the table that names them for the workers."""

    def __init__(self, clock, max_bytes: int, table: str, files: Any) -> None:
        self.clock = clock
        self.max_bytes = max_bytes
        self.held: dict[str, Buffer] = {}
        self.bytes = 0
        self.table = table  # the file the workers read (the pool's supervisor names it)
        self.count_shares = Shares(MAX_BUFFERS, "buffers")
        self.byte_shares = Shares(max_bytes, "buffers' bytes", " bytes")
        self.files = files  # creates and removes the shared-memory files (the node gives pfnode.pool.buffers)

    def alloc(self, name: str, shape: list[int], dtype: str, itemsize: int, owner: Any, ttl_ms: int) -> Buffer:
        if name in self.held:
            raise ElementError("name", f"a buffer named {shown(name)!r} exists; rm:free it first")
        nbytes = math.prod(shape) * itemsize
        if nbytes <= 0:
            raise ElementError("shape", "the buffer must hold at least one byte")
        refusal = self.count_shares.refusal(owner) or self.byte_shares.refusal(owner, nbytes)
        if refusal is not None:
            raise ElementFailed(ErrorCode.OVERLOADED, f"{refusal} (max_buffer_bytes {self.max_bytes})")
        try:
            path = self.files.create_file(name.replace("/", "."), nbytes)
        except OSError as exc:
            raise ElementFailed(ErrorCode.OVERLOADED, f"no shared memory for {nbytes} bytes: {exc}") from None
        buffer = self.held[name] = Buffer(name, path, shape, dtype, nbytes, owner, self.clock() + ttl_ms / 1000)
        self.bytes += nbytes
        self.count_shares.add(owner)
        self.byte_shares.add(owner, nbytes)
        self._write_table()
        return buffer

    def free(self, buffer: Buffer) -> int:
        if self.held.get(buffer.name) is not buffer:
            return 0
        del self.held[buffer.name]
        self.bytes -= buffer.bytes
        self.count_shares.remove(buffer.owner)
        self.byte_shares.remove(buffer.owner, buffer.bytes)
        self.files.remove_file(buffer.path)
        self._write_table()
        return buffer.bytes

    def _write_table(self) -> None:
        try:
            self.files.write_table(self.table, {b.name: {"path": b.path, "shape": b.shape, "dtype": b.dtype}
                                             for b in self.held.values()})
        except OSError as exc:
            log.error("front: cannot write the buffer table %s: %s", self.table, exc)

    def sweep(self, now: float) -> None:
        for buffer in [b for b in self.held.values() if b.expires <= now]:
            log.info("front: buffer %s expired (%d bytes)", buffer.name, buffer.bytes)
            self.free(buffer)

    def release(self, owner: Any) -> None:
        for buffer in [b for b in self.held.values() if b.owner == owner]:
            self.free(buffer)

    def close(self) -> None:
        for buffer in list(self.held.values()):
            self.free(buffer)
        self.files.remove_file(self.table)

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        return {"count": len(self.held), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "held": {b.name: {"shape": b.shape, "dtype": b.dtype, "bytes": b.bytes, "owner": owner_name(b.owner),
                                  "expires_in_ms": max(0, int((b.expires - now) * 1000))}
                         for b in self.held.values()}}


def _dtype(value: Any) -> tuple[str, int]:
    """A buffer's dtype text and item size, checked."""
    text = need_str(value, "dtype", max_chars=8)
    match = _DTYPE_RE.fullmatch(text)
    size = int(match.group(3)) if match else 0
    kind = match.group(2) if match else ""
    sizes = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16)}
    if match is None or size not in sizes[kind] or (match.group(1) == "|" and size > 1):
        raise ElementError("dtype", f"must be numpy's dtype.str of a bool or numeric type with its byte "
                                    f"order ('<f8', '<i4', '|u1', '|b1', '<c16'), got {text!r}")
    return text, size


@node_element("rm:alloc", role="admin")
async def alloc(ctx, data: Any) -> Any:
    """Allocate a named shared-memory array that handlers reach with ctx.buffer(name)."""
    data = need_dict(data, "data")
    check_keys(data, "", {"name", "shape", "dtype", "ttl_ms"})
    name = need_str(data.get("name"), "name", max_chars=64)
    if not _ELEMENT_RE.fullmatch(name):
        raise ElementError("name", "must be 1-64 characters of A-Z a-z 0-9 _ . -")
    shape = need_list(data.get("shape"), "shape", max_items=MAX_DIMENSIONS)
    for i, size in enumerate(shape):
        need_int(size, f"shape[{i}]", low=0, high=1 << 40)
    dtype, itemsize = _dtype(data.get("dtype"))
    ttl_ms = optional_ttl_ms(data, "ttl_ms", DEFAULT_TTL_MS, MAX_TTL_MS)
    buffer = ctx.node.resources.buffers.alloc(qualify(name, ctx.identity), list(shape), dtype, itemsize, ctx.scope,
                                              ttl_ms)
    return {"name": name, "shape": buffer.shape, "dtype": dtype, "bytes": buffer.bytes, "expires_in_ms": ttl_ms}


@node_element("rm:free")
async def free(ctx, data: Any) -> Any:
    """Free a buffer (its owner's, or an admin's to free)."""
    data = need_dict(data, "data")
    check_keys(data, "", {"name"})
    name = need_str(data.get("name"), "name", max_chars=64)
    state = ctx.node.resources.buffers
    key = qualify(name, ctx.identity)
    buffer = state.held.get(key)
    if buffer is None or (buffer.owner != ctx.scope and space_of(key) is None
                          and not ctx.node.may(ctx.identity, "admin")):
        raise ElementError("name", f"no buffer named {name!r} of yours")
    return {"name": name, "bytes": state.free(buffer)}


# ---------------------------------------------------------------------------- locks

class _Hold(str):
    """What a packet under `metadata.lock` is blocked on: a text for messages ("lock 'db'")
    that equals nothing but itself, so no packet id can be taken for it."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    __hash__ = object.__hash__


class Request:
    """An rm:lock waiting its turn."""

    __slots__ = ("future", "owner", "lease_s")

    def __init__(self, owner: Any, lease_s: float) -> None:
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.owner = owner
        self.lease_s = lease_s


class Lock:
    __slots__ = ("name", "marker", "holder", "token", "owner", "expires", "timer", "waiters", "creator")

    def __init__(self, name: str, creator: Any = None) -> None:
        self.name = name
        self.creator = creator  # whose share of lock names it counts against while it is in use
        self.marker = _Hold(f"lock {shown(name)!r}")
        self.holder: Flight | None = None  # a packet holding it (metadata.lock)
        self.token: str | None = None  # or an rm:lock lease holder's token
        self.owner: Any = None  # whose lease
        self.expires = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.waiters: collections.deque[Request | Flight] = collections.deque()

    @property
    def free(self) -> bool:
        return self.holder is None and self.token is None


class Locks:
    """The node's named locks: held by an rm:lock lease or by a packet under it; waiters
    take it in arrival order."""

    def __init__(self, clock, control: Any) -> None:
        self.clock = clock
        # the scheduler holds packets under a lock, blocked (`control.unhold`), the node
        # hands out those that became ready (`control.pump`), leases lapse on its timer
        self.control = control
        self.named: dict[str, Lock] = {}
        self.shares = Shares(MAX_LOCKS, "lock names in use")
        self.counters: collections.Counter[str] = collections.Counter()

    def _lock(self, name: str, owner: Any = None) -> Lock:
        lock = self.named.get(name)
        if lock is None:
            refusal = self.shares.refusal(owner)
            if refusal is not None:
                raise ElementFailed(ErrorCode.OVERLOADED, refusal)
            lock = self.named[name] = Lock(name, owner)
            self.shares.add(owner)
        return lock

    # -- rm:lock
    async def acquire(self, name: str, owner: Any, lease_s: float, wait_s: float) -> Lock:
        lock = self._lock(name, owner)
        if lock.free and not lock.waiters:
            self._lease(lock, owner, lease_s)
            return lock
        if wait_s <= 0:
            self._forget_if_idle(lock)
            raise ElementFailed(LOCK_BUSY, self._busy(lock))
        request = Request(owner, lease_s)
        lock.waiters.append(request)
        try:
            await asyncio.wait((request.future,), timeout=wait_s)
        except BaseException:
            if request.future.done() and not request.future.cancelled():
                self.release(lock)  # granted as its packet went: it goes on to the next
            raise
        finally:
            if not request.future.done():
                request.future.cancel()
                if request in lock.waiters:
                    lock.waiters.remove(request)
                self._forget_if_idle(lock)
        if request.future.cancelled():
            raise ElementFailed(LOCK_BUSY, self._busy(lock))
        return lock

    def _busy(self, lock: Lock) -> str:
        left = ""
        if lock.token is not None:
            left = f", its lease for {max(0, int((lock.expires - self.clock()) * 1000))} ms more"
        elif lock.holder is not None:
            left = f", by packet {lock.holder.id!r}"
        return f"lock {shown(lock.name)!r} is held{left} ({len(lock.waiters)} waiting); retry later"

    def _lease(self, lock: Lock, owner: Any, lease_s: float) -> None:
        lock.token = os.urandom(16).hex()
        lock.owner = owner
        self._renew(lock, lease_s)
        self.counters["granted"] += 1

    def _renew(self, lock: Lock, lease_s: float) -> None:
        lock.expires = self.clock() + lease_s
        if lock.timer is not None:
            lock.timer.cancel()
        lock.timer = self.control.call_at(lock.expires, self._lapse, lock, lock.token)

    def _lapse(self, lock: Lock, token: str) -> None:
        if lock.token == token and self.named.get(lock.name) is lock:
            log.info("front: the lease of lock %s passed", lock.name)
            self.counters["leases_expired"] += 1
            self.release(lock)

    def holding(self, name: str, token: Any) -> Lock | None:
        """The lock `name` if `token` is its lease holder's token now."""
        lock = self.named.get(name)
        if lock is None or lock.token is None or not isinstance(token, str) or token != lock.token:
            return None
        if lock.expires <= self.clock():  # its timer is late: expired all the same
            self.release(lock)
            return None
        return lock

    def renew(self, lock: Lock, lease_s: float) -> None:
        self._renew(lock, lease_s)

    def release(self, lock: Lock) -> None:
        """Its holder is done: the next waiter still waiting takes it."""
        if lock.timer is not None:
            lock.timer.cancel()
            lock.timer = None
        lock.holder = lock.token = lock.owner = None
        while lock.waiters:
            waiter = lock.waiters.popleft()
            if isinstance(waiter, Request):
                if not waiter.future.done():
                    self._lease(lock, waiter.owner, waiter.lease_s)
                    waiter.future.set_result(lock)
                    return
            elif waiter.state is BLOCKED:
                lock.holder = waiter
                self.counters["granted"] += 1
                if self.control.unhold(waiter, lock.marker):
                    self.control.pump()
                return
        self._forget_if_idle(lock)

    def unused(self, lock: Lock) -> None:
        """A packet planned to take its turn for `lock` was refused at admission."""
        self._forget_if_idle(lock)

    def _forget_if_idle(self, lock: Lock) -> None:
        if lock.free and not lock.waiters and self.named.get(lock.name) is lock:
            del self.named[lock.name]
            self.shares.remove(lock.creator)

    # -- packets under a lock (metadata.lock)
    def plan(self, name: Any, token: Any, owner: Any = None) -> Lock | None:
        """At admission: the lock a packet must take its turn for, or None when it runs at
        once under its holder's token. ElementError for bad metadata."""
        if token is not None:
            if self.holding(name, token) is None:
                raise ElementError("metadata.lock_token", f"does not hold lock {shown(name)!r} (its lease passed, "
                                                          "it was released, or it is another lock's)")
            return None
        return self._lock(name, owner)

    def hold_for(self, lock: Lock) -> Any:
        """The marker a packet is admitted blocked on, or None when it takes the lock at once."""
        return None if lock.free and not lock.waiters else lock.marker

    def admitted(self, flight: Flight, lock: Lock, waits: bool) -> None:
        flight.hold = lock.name
        if waits:
            lock.waiters.append(flight)
        else:
            lock.holder = flight
            self.counters["granted"] += 1

    def retired(self, flight: Flight) -> None:
        """A packet under a lock ended (answered, dropped, failed): it lets go, or stops waiting."""
        lock = self.named.get(flight.hold)
        if lock is None:
            return
        if lock.holder is flight:
            self.release(lock)
        elif flight in lock.waiters:
            lock.waiters.remove(flight)
            self._forget_if_idle(lock)

    # -- housekeeping
    def sweep(self, now: float) -> None:
        for lock in [lock for lock in self.named.values() if lock.token is not None and lock.expires <= now]:
            self.release(lock)

    def release_owner(self, owner: Any) -> None:
        for lock in [lock for lock in self.named.values() if lock.token is not None and lock.owner == owner]:
            self.counters["released_on_disconnect"] += 1
            self.release(lock)

    def close(self) -> None:
        for lock in self.named.values():
            if lock.timer is not None:
                lock.timer.cancel()

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        held = {}
        for lock in list(self.named.values())[:100]:
            entry: dict[str, Any] = {"waiting": len(lock.waiters)}
            if lock.token is not None:
                entry.update(owner=owner_name(lock.owner), expires_in_ms=max(0, int((lock.expires - now) * 1000)))
            elif lock.holder is not None:
                entry.update(packet=lock.holder.id, owner=owner_name(lock.holder.scope))
            held[lock.name] = entry
        return {"count": len(self.named), "held": sum(1 for lock in self.named.values() if not lock.free),
                "waiting": sum(len(lock.waiters) for lock in self.named.values()),
                "counters": dict(self.counters), "locks": held}


@node_element("rm:lock")
async def lock(ctx, data: Any) -> Any:
    """Take, renew or release a named lock, with a lease."""
    data = need_dict(data, "data")
    locks = ctx.node.resources.locks
    name = need_str(data.get("name"), "name", max_chars=MAX_NAME_CHARS)
    key = qualify(name, ctx.identity)  # whose lock (pfnode/core/names.py)
    if "token" in data:
        if data.get("release") is not None:
            check_keys(data, "", {"name", "token", "release"})
            if data["release"] is not True:
                raise ElementError("release", "must be true (or absent, to renew the lease)")
        else:
            check_keys(data, "", {"name", "token", "lease_ms"})
        held = locks.holding(key, data["token"])
        if held is None:
            raise ElementError("token", f"does not hold lock {name!r} (its lease passed, it was released, or it "
                                        "is another lock's)")
        if data.get("release") is True:
            locks.release(held)
            return {"name": name, "released": True}
        lease_ms = need_int(data.get("lease_ms"), "lease_ms", low=1, high=MAX_LEASE_MS)
        locks.renew(held, lease_ms / 1000)
        return {"name": name, "token": held.token, "expires_in_ms": lease_ms}
    check_keys(data, "", {"name", "lease_ms", "wait_ms"})
    lease_ms = need_int(data.get("lease_ms"), "lease_ms", low=1, high=MAX_LEASE_MS)
    wait_ms = optional_int(data, "wait_ms", "wait_ms", low=0)
    wait_s = answer_within_s(ctx)
    if wait_ms is not None:
        wait_s = min(wait_s, wait_ms / 1000)
    held = await locks.acquire(key, ctx.scope, lease_ms / 1000, wait_s)
    return {"name": name, "token": held.token, "expires_in_ms": int((held.expires - ctx.node.now()) * 1000)}


# ---------------------------------------------------------------------------- cache

class Entry:
    __slots__ = ("value_json", "owner", "expires", "cost")

    def __init__(self, value_json: bytes, owner: Any, expires: float, cost: int) -> None:
        self.value_json = value_json
        self.owner = owner
        self.expires = expires
        self.cost = cost  # what the node holds for it: the value, the key, the records


ENTRY_OVERHEAD_BYTES = 480  # an entry's records (its Entry, its key tuple and text, slots in two ordered dicts), measured


def entry_cost(key: tuple, value_json: bytes) -> int:
    """The bytes an entry really holds: its value (stored at its exact size), its key's text
    and the records around them."""
    return len(value_json) + sum(len(part) for part in key if isinstance(part, (str, bytes))) + ENTRY_OVERHEAD_BYTES


def exact(data: bytes) -> bytes:
    """A copy of `data` in storage of exactly its size (an encoder's output may keep a larger
    allocation than its length, which a cache of many small values would pay for each)."""
    return memoryview(data).tobytes()


class Cache:
    """rm:cache's entries and memoised results, by (owner, kind, key), bounded in entries
    and in the bytes they really hold. Every operation is O(1): one LRU order for the node
    and one per owner. An owner over its share (the bound over the owners holding entries:
    a lone owner may fill the cache, a newcomer always has room) makes room from its own
    oldest entries; past the node's bound the node's oldest go."""

    def __init__(self, clock, max_bytes: int) -> None:
        self.clock = clock
        self.max_bytes = max_bytes
        self.max_entry_bytes = max(1, max_bytes // 16)
        self.entries: collections.OrderedDict[tuple, Entry] = collections.OrderedDict()
        self.bytes = 0
        self.owners: dict[Any, collections.OrderedDict[tuple, None]] = {}  # owner -> its keys, oldest first
        self.owner_bytes: collections.Counter[Any] = collections.Counter()
        self.counters: collections.Counter[str] = collections.Counter()

    def put(self, key: tuple, value_json: bytes, ttl_ms: int) -> None:
        """Store (replacing an entry of that key); a value over the entry bound is ElementError."""
        size = len(value_json)
        if size > self.max_entry_bytes:
            raise ElementError("value", f"{size} bytes of JSON; a cache entry may hold at most {self.max_entry_bytes}")
        owner = key[0]
        self._drop(key)
        value_json = exact(value_json)
        cost = entry_cost(key, value_json)
        self.entries[key] = Entry(value_json, owner, self.clock() + ttl_ms / 1000, cost)
        self.bytes += cost
        mine = self.owners.get(owner)
        if mine is None:
            mine = self.owners[owner] = collections.OrderedDict()
        mine[key] = None
        self.owner_bytes[owner] += cost
        owners = len(self.owners)
        share_entries, share_bytes = MAX_CACHE_ENTRIES // owners, self.max_bytes // owners
        while len(mine) > share_entries or self.owner_bytes[owner] > share_bytes:
            self._drop(next(iter(mine)), "evicted")  # its own oldest first
        while len(self.entries) > MAX_CACHE_ENTRIES or self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)), "evicted")

    def get(self, key: tuple) -> Entry | None:
        entry = self.entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            self._drop(key, "expired")
            return None
        self.entries.move_to_end(key)
        self.owners[entry.owner].move_to_end(key)
        return entry

    def delete(self, key: tuple) -> bool:
        return self._drop(key)

    def _drop(self, key: tuple, why: str | None = None) -> bool:
        entry = self.entries.pop(key, None)
        if entry is None:
            return False
        self.bytes -= entry.cost
        mine = self.owners[entry.owner]
        del mine[key]
        self.owner_bytes[entry.owner] -= entry.cost
        if not mine:
            del self.owners[entry.owner]
            del self.owner_bytes[entry.owner]
        if why is not None:
            self.counters[why] += 1
        return True

    def sweep(self, now: float) -> None:
        """Expired entries among the 1 024 least recently used go (a bounded amount of work a
        second; an expired entry elsewhere goes at its next `get`, or as the oldest used)."""
        for key, entry in list(itertools.islice(self.entries.items(), 1024)):
            if entry.expires <= now:
                self._drop(key, "expired")

    def release(self, owner: Any) -> None:
        for key in list(self.owners.get(owner, ())):
            self._drop(key, "released")

    def stats(self) -> dict[str, Any]:
        return {"count": len(self.entries), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "owners": len(self.owners), "counters": dict(self.counters)}

    # -- memoisation (metadata.cache)
    @staticmethod
    def memo_key(scope: Any, packet: Any) -> tuple:
        return (scope, "memo", packet.key, hashlib.blake2b(memoryview(packet.data), digest_size=16).digest())

    def recall(self, scope: Any, packet: Any) -> bytes | None:
        entry = self.get(self.memo_key(scope, packet))
        self.counters["memo_hits" if entry is not None else "memo_misses"] += 1
        return entry.value_json if entry is not None else None

    def memoise(self, flight: Flight, data_json: bytes) -> None:
        metadata = flight.packet.metadata
        ttl_ms = metadata.get("cache_ttl_ms")
        try:
            self.put(self.memo_key(flight.scope, flight.packet), bytes(data_json),
                     ttl_ms if type(ttl_ms) is int and 0 < ttl_ms <= MAX_TTL_MS else DEFAULT_CACHE_TTL_MS)
        except ElementError:
            self.counters["memo_too_large"] += 1


@node_element("rm:cache")
async def cache(ctx, data: Any) -> Any:
    """Put, get or delete a value in the submitter's own cache."""
    data = need_dict(data, "data")
    op = data.get("op")
    if op not in ("put", "get", "delete"):
        raise ElementError("op", f"must be put, get or delete, got {op!r}"[:200])
    check_keys(data, "", {"op", "key", "value", "ttl_ms"} if op == "put" else {"op", "key"})
    key = need_str(data.get("key"), "key", max_chars=MAX_KEY_CHARS)
    state = ctx.node.resources.cache
    space = space_of(qualify(key, ctx.identity))  # a namespace's key is its holders' (core/names.py)
    full_key = (ctx.scope if space is None else f"#{space}", "key", key)
    if op == "put":
        if "value" not in data:
            raise ElementError("value", "is required with put")
        ttl_ms = optional_ttl_ms(data, "ttl_ms", DEFAULT_CACHE_TTL_MS, MAX_TTL_MS)
        value_json = encode_json(data["value"])
        state.put(full_key, value_json, ttl_ms)
        return {"key": key, "stored": True, "bytes": len(value_json), "expires_in_ms": ttl_ms}
    if op == "delete":
        return {"key": key, "deleted": state.delete(full_key)}
    entry = state.get(full_key)
    state.counters["hits" if entry is not None else "misses"] += 1
    if entry is None:
        return {"key": key, "hit": False}
    return {"key": key, "hit": True, "value": orjson.loads(entry.value_json),
            "expires_in_ms": max(0, int((entry.expires - ctx.node.now()) * 1000))}


# ---------------------------------------------------------------------------- the node's hooks

class Admission:
    """What a packet's metadata asks of the node at admission (`metadata.lock`,
    `metadata.cache`): its answer from the cache, or the lock it takes its turn for."""

    __slots__ = ("cached", "lock", "hold")

    def __init__(self) -> None:
        self.cached: bytes | None = None  # memoised result: answer with it, do not run
        self.lock: Lock | None = None  # the lock it takes (at once, or in turn)
        self.hold: Any = None  # the marker it is admitted blocked on, when it waits


def admission(state, packet: Any, scope: Any, local: bool, identity: Any = None) -> Admission:
    """Read a packet's `metadata.cache` and `metadata.lock`; ElementError for bad ones."""
    metadata = packet.metadata
    plan = Admission()
    if metadata.get("cache") is True and not packet.dependencies:
        ttl_ms = metadata.get("cache_ttl_ms")
        if ttl_ms is not None:
            need_int(ttl_ms, "metadata.cache_ttl_ms", low=1, high=MAX_TTL_MS)
        plan.cached = state.cache.recall(scope, packet)
        if plan.cached is not None:
            return plan
    if "lock" in metadata:
        if not local:
            raise ElementError("metadata.lock", "only packets this node runs can take a lock; no handler here "
                                                f"runs {packet.key}")
        name = need_str(metadata["lock"], "metadata.lock", max_chars=MAX_NAME_CHARS)
        plan.lock = state.locks.plan(qualify(name, identity), metadata.get("lock_token"), scope)
        if plan.lock is not None:
            plan.hold = state.locks.hold_for(plan.lock)
    return plan
