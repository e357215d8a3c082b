"""Dependencies at admission, pure: what a packet's `dependencies` say when it arrives, and
the ids whose submit was refused. No asyncio, no I/O; time comes in as `now`.

The scheduler (core/scheduler.py) applies these rules; its docstring and docs/PROTOCOL.md
("Dependencies") state them for the whole life of a packet. Here, for one arriving packet
of scope S, each listed id D is, in this order:
- the packet's own id: PF006 (it would wait for itself);
- completed (its result is in the result store): nothing to wait for if it succeeded;
  PF006 if it failed;
- in flight in S: waited for;
- refused (a submit of D in S was refused within the last `max_age_s`, and D has not been
  admitted since): PF006 at once, naming the refusal's code;
- else unknown: waited for (until it arrives, or the dependent's deadline passes).
Then, when it would wait, a blocked packet of S reachable from what it waits for that waits
for it closes a cycle: PF006 (`reaches`). The node answers that refusal like any other,
and every refusal of an id fails, PF006, the packets already waiting for it
(`Scheduler.refuse`): so the packets of a cycle all fail as it closes.

`RefusedIds` is bounded: `max_entries` ids node-wide, `max_per_scope` of one scope (a
tenant's flood of refused submits pushes out its own oldest entries, not others'), each
for `max_age_s`. A forgotten refusal makes a dependency on it unknown again: it waits, as
before this rule.
"""
from __future__ import annotations

import collections
from typing import Hashable

from ..errors import ErrorCode
from .flight import BLOCKED, Flight
from .loads import Refusal
from .protocol import MAX_ID_CHARS

__all__ = ["RefusedIds", "reaches", "waits_for"]


class RefusedIds:
    """(scope, id) -> the code its submit was refused with, for a bounded time and count
    (oldest dropped first, node-wide and within a scope)."""

    def __init__(self, max_entries: int = 10_000, max_per_scope: int = 1_000, max_age_s: float = 600.0) -> None:
        self.max_entries = max_entries
        self.max_per_scope = max_per_scope
        self.max_age_s = max_age_s
        self._all: collections.OrderedDict[tuple, tuple[str, float]] = collections.OrderedDict()
        self._by_scope: dict[Hashable, collections.OrderedDict[str, None]] = {}

    def add(self, scope: Hashable, packet_id: str, code: str, now: float) -> None:
        if not 0 < len(packet_id) <= MAX_ID_CHARS:
            return  # no dependency can name it (a submit refused for its id, say)
        key = (scope, packet_id)
        self._drop(key)
        self._all[key] = (code, now)
        ids = self._by_scope.get(scope)
        if ids is None:
            ids = self._by_scope[scope] = collections.OrderedDict()
        ids[packet_id] = None
        if len(ids) > self.max_per_scope:
            self._drop((scope, next(iter(ids))))
        while len(self._all) > self.max_entries:
            self._drop(next(iter(self._all)))
        self.evict(now)

    def get(self, scope: Hashable, packet_id: str, now: float) -> str | None:
        """The code a submit of `packet_id` in `scope` was refused with, if remembered."""
        if not self._all:
            return None
        self.evict(now)
        found = self._all.get((scope, packet_id))
        return found[0] if found is not None else None

    def discard(self, scope: Hashable, packet_id: str) -> None:
        """A packet of that id was admitted: the id is no longer refused."""
        if self._all:
            self._drop((scope, packet_id))

    def forget(self, scope: Hashable) -> None:
        """`scope` can submit no more (it was a connection, now closed): drop its entries."""
        for packet_id in list(self._by_scope.get(scope, ())):
            self._drop((scope, packet_id))

    def evict(self, now: float) -> None:
        entries = self._all
        while entries:
            key, (_, when) = next(iter(entries.items()))
            if now - when <= self.max_age_s:
                break
            self._drop(key)

    def _drop(self, key: tuple) -> None:
        if self._all.pop(key, None) is None:
            return
        scope, packet_id = key
        ids = self._by_scope[scope]
        del ids[packet_id]
        if not ids:
            del self._by_scope[scope]

    def __len__(self) -> int:
        return len(self._all)


def waits_for(flight: Flight, now: float, results, refused: RefusedIds,
              inflight: dict[Hashable, Flight]) -> set[str] | Refusal:
    """The ids among `flight`'s dependencies it must wait for, or why it is refused (PF006):
    the rules in this module's docstring. `results` is the scheduler's ResultStore."""
    waiting: set[str] = set()
    scope = flight.scope
    for dep in flight.dependencies:
        if dep == flight.id:
            return Refusal(ErrorCode.DEPENDENCY_FAILED, f"packet {flight.id!r} depends on itself")
        stored = results.get((scope, dep), now)
        if stored is not None:
            if not stored.ok:
                return Refusal(ErrorCode.DEPENDENCY_FAILED, f"dependency {dep!r} failed ({stored.code})")
            continue
        if (scope, dep) not in inflight:
            code = refused.get(scope, dep, now)
            if code is not None:
                return Refusal(ErrorCode.DEPENDENCY_FAILED, f"dependency {dep!r} was refused ({code})")
        waiting.add(dep)
    if waiting and reaches(inflight, scope, waiting, flight.id):
        return Refusal(ErrorCode.DEPENDENCY_FAILED, f"dependency cycle: packet {flight.id!r} would wait for itself")
    return waiting


def reaches(inflight: dict[Hashable, Flight], scope: Hashable, start: set[str], target: str) -> bool:
    """Does any blocked packet of `scope` reachable from `start` wait on `target`?"""
    seen: set[str] = set()
    stack = list(start)
    while stack:
        packet_id = stack.pop()
        if packet_id == target:
            return True
        if packet_id in seen:
            continue
        seen.add(packet_id)
        blocked = inflight.get((scope, packet_id))
        if blocked is not None and blocked.state is BLOCKED:
            stack.extend(blocked.waiting_on)
    return False
