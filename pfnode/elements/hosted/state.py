"""The node-held state of the standard elements, one object the node owns
(`node.elements`): co:sync's barriers, ed's topics and subscriptions, rm's buffers, locks
and cache, and what mc:migrate and mc:tune changed. Each resource is bounded in count and
bytes, expires by its ttl or lease (`sweep`, which the node runs every second; locks'
leases and watches also by their own timers), is shown in `/status` (`stats`) and
`/metrics`, and is released when the submitter that alone held it disconnects (`release`).

The node's hooks into packets are here too: `admission` (at admit: `metadata.cache` and
`metadata.lock`), `answered` (at settle: memoising a result), and `retired` (whenever a
packet holding or waiting for a lock ends). A packet whose metadata names neither costs
the node one dict lookup at admission and none at its answer.
"""
from __future__ import annotations

import asyncio
from typing import Any

from ...core.flight import DISPATCHED, FORWARDED
from ..base import owner_name
from ..host import NodeControl
from .collective import Barriers
from .events import Events
from .resources import Admission, Buffers, Cache, Locks, admission


class ElementState:
    """Built by the node with the elements' interface (`control`, a NodeControl), its
    limits, the buffer table's path (the pool's supervisor names it), what makes the
    buffers' files (pfnode.pool.buffers) and the migrations'
    two tables (shown in `stats`). The node wires `locks.retired` to the scheduler."""

    def __init__(self, control: NodeControl, *, max_buffer_bytes: int, cache_bytes: int, buffer_table: str,
                 buffer_files: Any, max_frame_bytes: int = 16 << 20, migrations: tuple[dict, dict] = ({}, {})) -> None:
        clock = control.now
        self.clock = clock
        self.barriers = Barriers(max_frame_bytes)
        self.events = Events(clock)
        self.buffers = Buffers(clock, max_buffer_bytes, buffer_table, buffer_files)
        self.locks = Locks(clock, control)
        self.cache = Cache(clock, cache_bytes)
        self.tuned: dict[str, dict] = {}  # lane -> its parameters after mc:tune
        self.meta_lock = asyncio.Lock()  # mc:spawn: one at a time
        self._migrations = migrations

    # -- the node's hooks
    def admission(self, packet: Any, scope: Any, local: bool, identity: Any = None) -> Admission:
        """What a packet's `metadata.cache` / `metadata.lock` ask (ElementError: PF002);
        the lock's name is `identity`'s (pfnode/core/names.py)."""
        return admission(self, packet, scope, local, identity)

    def answered(self, flight: Any, data_json: bytes) -> None:
        """A packet with `metadata.cache: true` succeeded: memoise its result if it ran
        (not if it was answered from the cache)."""
        if flight.state in (DISPATCHED, FORWARDED) and not flight.packet.dependencies:
            self.cache.memoise(flight, data_json)

    # -- housekeeping
    def sweep(self, now: float) -> None:
        """Whatever's ttl or lease has passed goes."""
        self.events.sweep(now)
        self.buffers.sweep(now)
        self.locks.sweep(now)
        self.cache.sweep(now)

    def release(self, owner: Any) -> None:
        """A submitter disconnected (its last connection): what only it held goes."""
        self.events.release(owner)
        self.buffers.release(owner)
        self.locks.release_owner(owner)
        self.cache.release(owner)

    def close(self) -> None:
        """The node stops: reactions stop, buffers and their table are removed."""
        self.events.close()
        self.locks.close()
        self.buffers.close()

    def stats(self) -> dict:
        lane_overrides, preferences = self._migrations
        return {"barriers": len(self.barriers.open), "events": self.events.stats(),
                "buffers": self.buffers.stats(), "locks": self.locks.stats(), "cache": self.cache.stats(),
                "migrations": {"lanes": dict(lane_overrides), "reactors": dict(preferences)},
                "tuned": dict(self.tuned)}

    def by_principal(self) -> dict[str, dict[str, list[int]]]:
        """Who holds what: principal (a token's name, else a connection's address) -> kind
        (subscriptions, buffers, locks, cache) -> [count, bytes]. Watches and barriers belong to
        the packets waiting on them, not to a principal."""
        out: dict[str, dict[str, list[int]]] = {}

        def add(owner: Any, kind: str, count: int, nbytes: int) -> None:
            mine = out.setdefault(owner_name(owner), {}).setdefault(kind, [0, 0])
            mine[0] += count
            mine[1] += nbytes

        for sub in self.events.subscriptions.values():
            add(sub.owner, "subscriptions", 1, sub.bytes)
        for buffer in self.buffers.held.values():
            add(buffer.owner, "buffers", 1, buffer.bytes)
        for lock in self.locks.named.values():
            owner = lock.owner if lock.token is not None else getattr(lock.holder, "scope", None)
            if owner is not None:
                add(owner, "locks", 1, 0)
        cache = self.cache
        for owner, keys in cache.owners.items():
            add(owner, "cache", len(keys), cache.owner_bytes[owner])
        return out

    def gauges(self) -> dict[str, tuple[int, int]]:
        """Resource kind -> (count, bytes), for /metrics."""
        events = self.events
        return {"barriers": (len(self.barriers.open), self.barriers.bytes),
                "watchers": (events.watch_count, events.held_bytes),
                "subscriptions": (len(events.subscriptions), events.sub_bytes),
                "buffers": (len(self.buffers.held), self.buffers.bytes),
                "locks": (len(self.locks.named), 0),
                "cache": (len(self.cache.entries), self.cache.bytes)}
