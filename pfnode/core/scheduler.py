"""Scheduling rules, pure: no asyncio, no processes, no I/O.

The scheduler is the one table of packets in flight (`pfnode.flight.Flight` records,
found by submitter scope and id, by origin, and by time) and the rules that order them.
It is driven by events (`admit`, `admit_forwarded`, `dispatch`, `complete`, `forget`,
`requeue`) and by a clock it is given (`tick(now)`). It decides; the node, the pool and
the hub carry the decisions out. So every rule here is testable with a fake clock.

Rules
- Lanes: each local packet belongs to one lane (cf, df, ed, rm); each lane has its own
  queue. A forwarded packet (a connected reactor runs it) has no lane.
- Priority 1-10, higher first; within one priority, submitters ("tenants") take turns,
  each in FIFO order: one client's flood cannot starve another's packets.
- Bounded aging (no starvation): a queued packet's effective priority grows by one for
  every `aging_ms` it has waited, up to 10; among equal effective priorities the older
  packet goes first. So a priority-1 packet waits at most 9 x aging_ms before it competes
  with fresh priority-10 packets as an equal, and it then goes ahead of every one of them
  that arrived after it.
- Time: every packet has a deadline, and may have an earlier alarm (the hub's probe
  window or reroute grace). One table holds both: `tick(now)` returns the packets whose
  alarm has come; the caller tells a passed deadline from an earlier alarm.
- Dependencies: a packet waits until every listed id of its own submitter scope has
  completed successfully. A failed dependency fails the dependent (PF006), and that
  failure fails its own dependents in turn. An unknown id waits until it arrives or the
  dependent's deadline passes. Self-dependencies and cycles are refused at admission
  (PF006), and so is a dependency on an id whose submit was refused (core/dependencies.py
  has the order of these checks).
- Refused ids: the node tells `refuse(scope, id, code, now)` of every submit it refused
  (a cycle's PF006 included). The id is remembered for a bounded time and count
  (`RefusedIds`), so that a packet depending on it later is refused PF006; the packets
  already waiting for it fail PF006 now: `refuse` returns them (still BLOCKED) and the
  caller answers each through `complete(..., ok=False)` (the node's one answer path), which
  fails their own dependents in turn. So when a packet closes a cycle, it is refused and
  every packet of the cycle, and what depends on them, fails at once. An id refused while
  a packet of that id is in flight (PF409) is not a refused id. Admitting an id forgets its
  refusal.
- Results of completed packets (run here or by a reactor) are kept in a bounded store
  (entries, bytes and age) so that later packets can depend on them.
- Admission (PF004 past a bound, to that submitter only where the bound is its own):
  at most `max_queued` packets queued at once; once half of that is taken, a tenant
  holding its fair share (the bound over the tenants with packets in flight) or more is
  refused while the others, newcomers first, still get in. At most `max_blocked` packets wait on
  dependencies at once, `max_blocked_per_client` of one tenant. The packets' data held
  by the node is bounded too: `max_queued_bytes`, `max_queued_bytes_per_client`.
- Duplicate ids: an id already in flight in the same scope is refused (PF409).
- Holds: a packet may also wait, BLOCKED, for something other than a packet (an rm:lock:
  `admit(..., hold=marker)`, released by `unhold`); it counts as blocked for the bounds.
  Whoever sets `flight.hold` is told when that packet ends, however it ends (`on_retire`).
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Hashable, Iterable

from ..errors import ErrorCode
from .dependencies import RefusedIds, reaches, waits_for  # noqa: F401 (reaches: re-exported)
from .flight import BLOCKED, DISPATCHED, DONE, FORWARDED, QUEUED, Flight
from .loads import Loads, Refusal
from .timetable import MAX_DEADLINE_QUEUES, TimeTable  # noqa: F401 (MAX_DEADLINE_QUEUES: re-exported)

LANES = ("cf", "df", "ed", "rm")
__all__ = ["BLOCKED", "DISPATCHED", "DONE", "FORWARDED", "QUEUED", "LANES", "Failure", "Flight",
           "LaneQueue", "RefusedIds", "Refusal", "ResultStore", "Scheduler", "StoredResult", "reaches"]


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """A packet the scheduler ended without running it (e.g. its dependency failed)."""

    flight: Flight
    code: ErrorCode
    message: str


@dataclasses.dataclass(slots=True, init=False)
class StoredResult:
    ok: bool
    data_json: bytes | None  # the result's data as JSON (success)
    code: str | None  # the error code (failure)
    completed_at: float

    # its own __init__, not the generated one: compiled with this module (see protocol.Packet)
    def __init__(self, ok: bool, data_json: bytes | None, code: str | None, completed_at: float) -> None:
        self.ok = ok
        self.data_json = data_json
        self.code = code
        self.completed_at = completed_at


RESULT_OVERHEAD_BYTES = 200  # a stored result's records (StoredResult, its key, a dict slot), measured


def _cost(key: Hashable, result: "StoredResult") -> int:
    """What the store holds for a result: its JSON, its id's text, the records around them."""
    packet_id = key[1] if isinstance(key, tuple) and len(key) == 2 and isinstance(key[1], str) else ""
    return len(result.data_json or b"") + len(packet_id) + RESULT_OVERHEAD_BYTES


class ResultStore:
    """Results of completed packets by (scope, id), bounded by count, bytes (what it really
    holds: each result's JSON, its id and its records) and age (oldest dropped first)."""

    def __init__(self, max_entries: int, max_age_s: float, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.bytes = 0
        self._results: collections.OrderedDict[Hashable, StoredResult] = collections.OrderedDict()

    def put(self, key: Hashable, result: StoredResult) -> None:
        results = self._results
        if key in results:
            self._drop(key)
        data = result.data_json
        if data is not None and len(data) > self.max_bytes:
            result.data_json = None  # too big to keep: remember the outcome only
        self.bytes += _cost(key, result)
        results[key] = result
        while len(results) > self.max_entries or self.bytes > self.max_bytes:
            old_key, old = results.popitem(last=False)  # the oldest
            self.bytes -= _cost(old_key, old)

    def _drop(self, key: Hashable) -> None:
        old = self._results.pop(key, None)
        if old is not None:
            self.bytes -= _cost(key, old)

    def get(self, key: Hashable, now: float) -> StoredResult | None:
        self.evict(now)
        return self._results.get(key)

    def evict(self, now: float) -> None:
        results = self._results
        while results:
            oldest = next(iter(results.values()))
            if now - oldest.completed_at <= self.max_age_s:
                break
            self._drop(next(iter(results)))

    def __len__(self) -> int:
        return len(self._results)


class _Level:
    """One priority level of a lane: a FIFO per tenant (a submitter), served round-robin."""

    __slots__ = ("tenants",)

    def __init__(self) -> None:
        self.tenants: collections.OrderedDict[Any, collections.deque[Flight]] = collections.OrderedDict()

    def head(self, skip: Any = ()) -> Flight | None:
        """The packet this level serves next: the oldest of the tenant whose turn it is
        (passing over the tenants in `skip`, who hold their share of the lane's workers)."""
        tenants = self.tenants
        if skip:
            return self._head_skipping(skip)
        while tenants:
            tenant, fifo = next(iter(tenants.items()))
            while fifo and fifo[0].state is not QUEUED:
                fifo.popleft()  # forgotten, expired or failed while queued
            if fifo:
                return fifo[0]
            del tenants[tenant]
        return None

    def _head_skipping(self, skip: Any) -> Flight | None:
        empty = []
        found = None
        for tenant, fifo in self.tenants.items():
            while fifo and fifo[0].state is not QUEUED:
                fifo.popleft()
            if not fifo:
                empty.append(tenant)
            elif tenant not in skip:
                found = fifo[0]
                break
        for tenant in empty:
            del self.tenants[tenant]
        return found


class LaneQueue:
    """Ten priority levels, popped by effective (aged) priority; within a level, the
    tenants (submitters) take turns, each in FIFO order, so that one client's flood does
    not starve another's packets of the same priority."""

    def __init__(self, aging_s: float) -> None:
        self.aging_s = aging_s
        self._levels = [_Level() for _ in range(11)]
        # flights still QUEUED per level (the FIFOs also hold stale ones, skipped lazily): a
        # pop looks at the levels that have one, not at all ten
        self._counts = [0] * 11
        self.live = 0
        self.waiting: dict[Any, int] = {}  # tenant -> its packets queued here

    def push(self, flight: Flight) -> None:
        level = self._levels[flight.priority]
        fifo = level.tenants.get(flight.tenant)
        if fifo is None:
            fifo = level.tenants[flight.tenant] = collections.deque()
        if fifo and fifo[-1].order > flight.order:
            # a requeued flight goes back to its original place, and its tenant's turn is next
            index = next(i for i, f in enumerate(fifo) if f.order > flight.order)
            fifo.insert(index, flight)
            level.tenants.move_to_end(flight.tenant, last=False)
        else:
            fifo.append(flight)
        self._counts[flight.priority] += 1
        self.live += 1
        self._wait(flight.tenant, 1)

    def _wait(self, tenant: Any, count: int) -> None:
        left = self.waiting.get(tenant, 0) + count
        if left > 0:
            self.waiting[tenant] = left
        else:
            self.waiting.pop(tenant, None)

    def unpop(self, flight: Flight) -> None:
        """Undo the last `pop` of `flight` (nobody could take it): back at the head, its turn."""
        level = self._levels[flight.priority]
        fifo = level.tenants.get(flight.tenant)
        if fifo is None:
            fifo = level.tenants[flight.tenant] = collections.deque()
        fifo.appendleft(flight)
        level.tenants.move_to_end(flight.tenant, last=False)
        self._counts[flight.priority] += 1
        self.live += 1
        self._wait(flight.tenant, 1)

    def discard(self, flight: Flight) -> None:
        """`flight`, queued here, left the queue otherwise (answered, forgotten): its
        entry is skipped when its level's turn comes."""
        self._counts[flight.priority] -= 1
        self.live -= 1
        self._wait(flight.tenant, -1)

    def effective_priority(self, flight: Flight, now: float) -> int:
        if self.aging_s <= 0:
            return flight.priority
        return min(10, flight.priority + int((now - flight.arrived) / self.aging_s))

    def pop(self, now: float, skip: Any = ()) -> Flight | None:
        if not self.live:
            return None
        best: Flight | None = None
        best_rank = (0, 0)
        counts, levels, aging_s = self._counts, self._levels, self.aging_s
        for priority in range(10, 0, -1):
            if not counts[priority]:
                continue
            head = levels[priority].head(skip)
            if head is None:
                continue
            rank = (self.effective_priority(head, now), -head.order)
            if best is None or rank > best_rank:
                best, best_rank = head, rank
            if aging_s <= 0:
                break  # without aging, nothing below the highest level with a packet outranks it
        if best is not None:
            tenants = levels[best.priority].tenants
            fifo = tenants[best.tenant]
            fifo.popleft()
            if fifo:
                tenants.move_to_end(best.tenant)  # the next tenant's turn
            else:
                del tenants[best.tenant]
            counts[best.priority] -= 1
            self.live -= 1
            self._wait(best.tenant, -1)
        return best

    def __len__(self) -> int:
        return self.live

    def by_priority(self) -> dict[int, int]:
        """Packets waiting at each priority level they were submitted with (not aged)."""
        return {priority: count for priority, count in enumerate(self._counts) if count}


class Scheduler:
    def __init__(self, *, aging_ms: int = 1000, max_queued: int = 100_000, max_blocked: int = 10_000,
                 max_blocked_per_client: int = 1_000, max_queued_bytes: int = 1 << 30,
                 max_queued_bytes_per_client: int = 256 << 20,
                 result_store_entries: int = 10_000, result_store_age_ms: int = 600_000,
                 result_store_bytes: int = 256 * 1024 * 1024, lanes: Iterable[str] = LANES,
                 lane_bounds: dict[str, int] | None = None) -> None:
        self.loads = Loads(max_queued=max_queued, max_blocked=max_blocked,
                           max_blocked_per_client=max_blocked_per_client, max_queued_bytes=max_queued_bytes,
                           max_queued_bytes_per_client=max_queued_bytes_per_client, lane_bounds=lane_bounds)
        self.lanes: dict[str, LaneQueue] = {lane: LaneQueue(aging_ms / 1000) for lane in lanes}
        self.results = ResultStore(result_store_entries, result_store_age_ms / 1000, result_store_bytes)
        self.refused = RefusedIds(max_age_s=result_store_age_ms / 1000)  # ids whose submit was refused
        self.inflight: dict[Hashable, Flight] = {}  # every flight not DONE, by (scope, id)
        self._origins: dict[Any, dict[Hashable, Flight]] = {}  # origin -> its flights
        self._waiters: dict[Hashable, list[Flight]] = collections.defaultdict(list)  # dep key -> blocked
        self.times = TimeTable()  # every deadline and alarm
        self.dispatched = 0
        self.forwarded = 0
        self.released = 0  # blocked packets that became ready, ever (a caller sees whether to pump)
        # called with every flight that ends (answered, forgotten, failed) whose `hold` is set
        self.on_retire: Callable[[Flight], None] | None = None

    # ------------------------------------------------------------------ admission
    def admit(self, flight: Flight, now: float, hold: Hashable | None = None) -> Refusal | None:
        """Admit a local packet (queued, or blocked on dependencies) or say why not. With
        `hold` (a marker that equals nothing but itself), it is also blocked until
        `unhold(flight, hold)`."""
        refusal = self._duplicate(flight)
        if refusal is not None:
            return refusal
        if flight.lane not in self.lanes:
            raise ValueError(f"unknown lane {flight.lane!r}")
        refusal = self.loads.over_queued(flight, self.queued)
        if refusal is not None:
            return refusal
        waiting = waits_for(flight, now, self.results, self.refused, self.inflight) if flight.dependencies else set()
        if not isinstance(waiting, set):
            return waiting  # PF006: see core/dependencies.py
        if hold is not None:
            waiting.add(hold)
        if waiting:
            refusal = self.loads.over_blocked(flight)
            if refusal is not None:
                return refusal
        self._enter(flight, now)
        if waiting:
            flight.state = BLOCKED
            flight.waiting_on = waiting
            self.loads.block(flight)
            for dep in waiting:
                if dep is not hold:
                    self._waiters[(flight.scope, dep)].append(flight)
        else:
            flight.state = QUEUED
            self.lanes[flight.lane].push(flight)
        return None

    def admit_forwarded(self, flight: Flight, now: float) -> Refusal | None:
        """Admit a packet that a connected reactor will run (the hub routes it): it has
        an id, a deadline and an answer to come, but no lane and nothing to wait for here
        (its dependencies travel with it)."""
        refusal = self._admit_past_the_queues(flight, now, FORWARDED)
        if refusal is None:
            self.forwarded += 1
        return refusal

    def admit_pinned(self, flight: Flight, now: float) -> Refusal | None:
        """Admit a packet that goes to one chosen worker at once (a co:broadcast step): it
        is DISPATCHED from the start, past the lane queue and its priorities."""
        refusal = self._admit_past_the_queues(flight, now, DISPATCHED)
        if refusal is None:
            self.dispatched += 1
        return refusal

    def _admit_past_the_queues(self, flight: Flight, now: float, state: str) -> Refusal | None:
        """Admit a packet that waits in no lane queue (only its id and its bytes are
        checked), straight into `state`."""
        refusal = self._duplicate(flight) or self.loads.over_bytes(flight)
        if refusal is not None:
            return refusal
        self._enter(flight, now)
        flight.state = state
        return None

    def _duplicate(self, flight: Flight) -> Refusal | None:
        if flight.key in self.inflight:
            return Refusal(ErrorCode.DUPLICATE_ID, f"a packet with id {flight.id!r} is already in flight")
        return None

    def _enter(self, flight: Flight, now: float) -> None:
        self.loads.entered(flight)
        flight.arrived = now
        flight.order = next(self.times.order)
        self.inflight[flight.key] = flight
        self.refused.discard(flight.scope, flight.id)
        if flight.origin is not None:
            mine = self._origins.get(flight.origin)
            if mine is None:
                mine = self._origins[flight.origin] = {}
            mine[flight.key] = flight
        self.times.enter(flight)

    # ------------------------------------------------------------------ local packets
    def dispatch(self, lane: str, now: float, skip: Any = ()) -> Flight | None:
        """The next packet for a free worker of `lane` (of a tenant not in `skip`), or None."""
        flight = self.lanes[lane].pop(now, skip)
        if flight is not None:
            flight.state = DISPATCHED
            self.dispatched += 1
        return flight

    def unhold(self, flight: Flight, hold: Hashable) -> bool:
        """What `flight` was held for (`admit(..., hold=)`) has come; True when it is now
        queued (nothing else to wait for)."""
        waiting = flight.waiting_on
        if flight.state is not BLOCKED or waiting is None or hold not in waiting:
            return False
        waiting.discard(hold)
        if waiting:
            return False
        self.loads.block(flight, -1)
        flight.state = QUEUED
        self.lanes[flight.lane].push(flight)
        self.released += 1
        return True

    def undispatch(self, flight: Flight) -> None:
        """Undo `dispatch` (no worker could take it now): first in line again."""
        if flight.state is DISPATCHED:
            flight.state = QUEUED
            self.dispatched -= 1
            self.lanes[flight.lane].unpop(flight)

    def requeue(self, flight: Flight) -> None:
        """A dispatched packet that never started (its worker died) goes back in its place."""
        if flight.state is DISPATCHED:
            flight.state = QUEUED
            self.dispatched -= 1
            self.lanes[flight.lane].push(flight)

    # ------------------------------------------------------------------ endings
    def complete(self, flight: Flight, now: float, *, ok: bool, data_json: bytes | None = None,
                 code: str | None = None) -> list[Failure]:
        """Record how a packet ended (here or on a reactor). Returns the packets that fail
        because of it (its dependents, transitively, when it failed); newly ready ones are
        queued."""
        self._retire(flight)
        failures: list[Failure] = []
        if not self._waiters or flight.key not in self._waiters:  # nothing waits for it: the usual case
            self.results.put(flight.key, StoredResult(ok, data_json, code, now))
            return failures
        pending = [(flight.scope, flight.id, ok, data_json, code)]
        while pending:
            scope, done_id, done_ok, done_json, done_code = pending.pop()
            self.results.put((scope, done_id), StoredResult(done_ok, done_json, done_code, now))
            for waiter in self._waiters.pop((scope, done_id), ()):
                if waiter.state is not BLOCKED:
                    continue
                if done_ok:
                    waiter.waiting_on.discard(done_id)
                    if not waiter.waiting_on:
                        self.loads.block(waiter, -1)
                        waiter.state = QUEUED
                        self.lanes[waiter.lane].push(waiter)
                        self.released += 1
                else:
                    message = f"dependency {done_id!r} failed ({done_code})"
                    failures.append(Failure(waiter, ErrorCode.DEPENDENCY_FAILED, message))
                    self._retire(waiter)
                    pending.append((scope, waiter.id, False, None, ErrorCode.DEPENDENCY_FAILED.value))
        return failures

    def refuse(self, scope: Hashable, packet_id: str, code: str, now: float, message: str = "") -> list[Failure]:
        """A submit of `packet_id` in `scope` was refused with `code`: remember it, and return
        the packets waiting for it, still BLOCKED, each to be answered with its Failure
        through `complete` (the module's rules, "Refused ids")."""
        key = (scope, packet_id)
        if key in self.inflight:
            return []  # a duplicate (PF409): what waits for the id waits for the one in flight
        self.refused.add(scope, packet_id, code, now)
        why = f"dependency {packet_id!r} was refused ({code}{': ' if message else ''}{message})"
        return [Failure(waiter, ErrorCode.DEPENDENCY_FAILED, why)
                for waiter in self._waiters.pop(key, ()) if waiter.state is BLOCKED]

    def forget(self, flight: Flight) -> None:
        """Drop a packet without recording a result (its submitter left and it never ran)."""
        self._retire(flight)

    def orphan(self, flight: Flight) -> None:
        """Its submitter left: nobody waits for its answer any more, but it stays in flight
        (a running packet still holds its worker and its deadline)."""
        mine = self._origins.get(flight.origin)
        if mine is not None:
            mine.pop(flight.key, None)
            if not mine:
                del self._origins[flight.origin]
        flight.origin = None

    def of_origin(self, origin: Any) -> list[Flight]:
        """The packets `origin` waits for, oldest first."""
        return sorted(self._origins.get(origin, {}).values(), key=lambda f: f.order)

    def load_of(self, tenant: Any) -> tuple[int, int, int]:
        """A tenant's packets in flight, of them blocked, and the bytes of their data."""
        return self.loads.of(tenant)

    def count_of(self, origin: Any) -> int:
        mine = self._origins.get(origin)
        return len(mine) if mine else 0

    # ------------------------------------------------------------------ time (core/timetable.py)
    def set_alarm(self, flight: Flight, when: float) -> None:
        """Look at `flight` again at `when`, or at its deadline if that comes first."""
        self.times.set_alarm(flight, when)

    def tick(self, now: float) -> list[Flight]:
        """Packets whose alarm has come, in time order; each is still in its state. The
        caller answers those past their deadline (PF408, or the hub's code for a
        forwarded one: `complete(..., ok=False)`, which also fails their dependents) and
        hands the others (an earlier alarm of the hub's) back to the hub, whose next
        alarm is the deadline unless it sets an earlier one."""
        return self.times.tick(now)

    def next_alarm(self) -> float | None:
        return self.times.next_alarm()

    @property
    def alarm_entries(self) -> int:
        """Entries the time table holds (answered packets included, until they are dropped)."""
        return self.times.entries

    def waiting_for(self, key: Hashable) -> int:
        """How many blocked packets wait for the packet of `key` ((scope, id)) to complete."""
        return sum(1 for waiter in self._waiters.get(key, ()) if waiter.state is BLOCKED)

    def dependency_results(self, flight: Flight, now: float) -> dict[str, bytes]:
        """The JSON results of a packet's dependencies, for its handler's ctx."""
        out = {}
        scope = flight.scope
        for dep in flight.dependencies:
            stored = self.results.get((scope, dep), now)
            if stored is not None and stored.ok and stored.data_json is not None:
                out[dep] = stored.data_json
        return out

    # ------------------------------------------------------------------ state
    @property
    def bytes(self) -> int:
        """The data of every packet in flight."""
        return self.loads.bytes

    @property
    def blocked(self) -> int:
        """Packets waiting for dependencies or a hold."""
        return self.loads.blocked

    @property
    def queued(self) -> int:
        """Packets ready and waiting in a lane queue."""
        return len(self.inflight) - self.blocked - self.dispatched - self.forwarded

    def aging_ms(self, lane: str) -> int:
        return round(self.lanes[lane].aging_s * 1000)

    def set_aging(self, lane: str, aging_ms: int) -> None:
        """A lane's aging: a queued packet gains one priority level per `aging_ms` waited
        (0: strict priorities). ValueError for an unknown lane or a negative value."""
        if lane not in self.lanes:
            raise ValueError(f"unknown lane {lane!r}")
        if type(aging_ms) is not int or aging_ms < 0:
            raise ValueError(f"aging_ms must be an integer >= 0, got {aging_ms!r}")
        self.lanes[lane].aging_s = aging_ms / 1000

    def depth(self, lane: str) -> int:
        return len(self.lanes[lane])

    def _retire(self, flight: Flight) -> None:
        state = flight.state
        if state is DONE:
            return
        if state is QUEUED:
            self.lanes[flight.lane].discard(flight)
        elif state is BLOCKED:
            self.loads.block(flight, -1)
        elif state is DISPATCHED:
            self.dispatched -= 1
        elif state is FORWARDED:
            self.forwarded -= 1
        flight.state = DONE
        self.loads.left(flight)
        if self.inflight.get(flight.key) is flight:
            del self.inflight[flight.key]
        if flight.origin is not None:
            mine = self._origins.get(flight.origin)
            if mine is not None:
                mine.pop(flight.key, None)
                if not mine:
                    del self._origins[flight.origin]
        if flight.hold is not None and self.on_retire is not None:
            self.on_retire(flight)
        self.times.retired(flight, len(self.inflight))

