"""Scheduling rules, pure: no asyncio, no processes, no I/O.

The scheduler is driven by events (`submit`, `dispatch`, `complete`, `cancel`,
`requeue`) and by a clock it is given (`tick(now)`). It decides; the pool and the
front carry the decisions out. So every rule here is testable with a fake clock.

Rules
- Lanes: each packet belongs to one lane (cf, df, ed, rm); each lane has its own queue.
- Priority 1-10, higher first; FIFO within one priority.
- Bounded aging (no starvation): a queued packet's effective priority grows by one for
  every `aging_ms` it has waited, up to 10; among equal effective priorities the older
  packet goes first. So a priority-1 packet waits at most 9 x aging_ms before it competes
  with fresh priority-10 packets as an equal, and it then goes ahead of every one of them
  that arrived after it.
- Deadlines: every packet not yet answered has one; `tick(now)` returns the packets
  whose deadline has passed (queued, blocked on dependencies, or dispatched).
- Dependencies: a packet waits until every listed id has completed successfully on this
  node. A failed dependency fails the dependent (PF006), and that failure fails its own
  dependents in turn. An unknown id waits until it arrives or the dependent's deadline
  passes. Self-dependencies and cycles are refused at submit time.
- Results of completed packets are kept in a bounded store (entries and age) so that
  later packets can depend on them.
- Admission: at most `max_queued` packets queued or blocked at once; past it, PF004.
- Duplicate ids: a packet id already in flight is refused (PF409).
"""
from __future__ import annotations

import collections
import dataclasses
import heapq
import itertools
from typing import Any, Iterable

from .errors import ErrorCode

LANES = ("cf", "df", "ed", "rm")

BLOCKED = "blocked"  # waiting for dependencies
QUEUED = "queued"  # ready, in its lane's queue
DISPATCHED = "dispatched"  # handed to a worker
DONE = "done"


@dataclasses.dataclass(eq=False, slots=True)
class Entry:
    """One packet as the scheduler sees it. `payload` is the caller's, never read here."""

    id: str
    lane: str
    priority: int
    deadline: float
    dependencies: tuple[str, ...] = ()
    payload: Any = None
    arrived: float = 0.0
    order: int = 0  # arrival order, the FIFO tie-breaker
    state: str = QUEUED
    waiting_on: set[str] = dataclasses.field(default_factory=set)


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    code: ErrorCode
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    """A packet the scheduler ended without running it (e.g. its dependency failed)."""

    entry: Entry
    code: ErrorCode
    message: str


@dataclasses.dataclass(frozen=True, slots=True)
class StoredResult:
    ok: bool
    data_json: bytes | None  # the result's data as JSON (success)
    code: str | None  # the error code (failure)
    completed_at: float


class ResultStore:
    """Results of completed packets, bounded by count, bytes and age (oldest dropped first)."""

    def __init__(self, max_entries: int, max_age_s: float, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.bytes = 0
        self._results: collections.OrderedDict[str, StoredResult] = collections.OrderedDict()

    def put(self, packet_id: str, result: StoredResult) -> None:
        self._drop(packet_id)
        if result.data_json is not None and len(result.data_json) > self.max_bytes:
            result = dataclasses.replace(result, data_json=None)  # too big to keep: remember the outcome only
        self._results[packet_id] = result
        self.bytes += len(result.data_json or b"")
        while len(self._results) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._results)))

    def _drop(self, packet_id: str) -> None:
        old = self._results.pop(packet_id, None)
        if old is not None:
            self.bytes -= len(old.data_json or b"")

    def get(self, packet_id: str, now: float) -> StoredResult | None:
        self.evict(now)
        return self._results.get(packet_id)

    def evict(self, now: float) -> None:
        results = self._results
        while results:
            oldest = next(iter(results.values()))
            if now - oldest.completed_at <= self.max_age_s:
                break
            self._drop(next(iter(results)))

    def __len__(self) -> int:
        return len(self._results)


class LaneQueue:
    """Ten FIFOs, one per priority, popped by effective (aged) priority."""

    def __init__(self, aging_s: float) -> None:
        self.aging_s = aging_s
        self._fifos: list[collections.deque[Entry]] = [collections.deque() for _ in range(11)]
        self.live = 0  # entries still QUEUED (the deques also hold stale ones, skipped lazily)

    def push(self, entry: Entry) -> None:
        fifo = self._fifos[entry.priority]
        if fifo and fifo[-1].order > entry.order:
            # a requeued entry goes back to its original place
            index = next(i for i, e in enumerate(fifo) if e.order > entry.order)
            fifo.insert(index, entry)
        else:
            fifo.append(entry)
        self.live += 1

    def effective_priority(self, entry: Entry, now: float) -> int:
        if self.aging_s <= 0:
            return entry.priority
        return min(10, entry.priority + int((now - entry.arrived) / self.aging_s))

    def pop(self, now: float) -> Entry | None:
        best: Entry | None = None
        best_rank = (0, 0)
        for fifo in self._fifos:
            while fifo and fifo[0].state is not QUEUED:
                fifo.popleft()  # cancelled, expired or failed while queued
            if fifo:
                head = fifo[0]
                rank = (self.effective_priority(head, now), -head.order)
                if best is None or rank > best_rank:
                    best, best_rank = head, rank
        if best is not None:
            self._fifos[best.priority].popleft()
            self.live -= 1
        return best

    def __len__(self) -> int:
        return self.live


MAX_WINDOW = 32
WINDOW_WORK_MS = 1.0


def adaptive_window(base: int, mean_ms: float) -> int:
    """How many packets one worker may hold, given its handlers' mean run time.

    A lane that allows prefetch (`base` > 1) holds about WINDOW_WORK_MS of queued work
    per worker: up to MAX_WINDOW packets when handlers take microseconds (so they travel
    to the worker in batches, one pipe write for many), never fewer than `base`. A slow
    handler keeps the window at `base`, so priorities still decide what runs next.
    """
    if base <= 1:
        return 1
    return max(base, min(MAX_WINDOW, int(WINDOW_WORK_MS / max(mean_ms, 0.001))))


class Scheduler:
    def __init__(self, *, aging_ms: int = 1000, max_queued: int = 100_000,
                 result_store_entries: int = 10_000, result_store_age_ms: int = 600_000,
                 result_store_bytes: int = 256 * 1024 * 1024, lanes: Iterable[str] = LANES) -> None:
        self.max_queued = max_queued
        self.lanes: dict[str, LaneQueue] = {lane: LaneQueue(aging_ms / 1000) for lane in lanes}
        self.results = ResultStore(result_store_entries, result_store_age_ms / 1000, result_store_bytes)
        self.inflight: dict[str, Entry] = {}  # every entry not DONE, by packet id
        self._waiters: dict[str, list[Entry]] = collections.defaultdict(list)  # dep id -> blocked entries
        self._deadlines: list[tuple[float, int, Entry]] = []
        self._order = itertools.count()
        self.blocked = 0
        self.dispatched = 0
        self._retired_in_heap = 0  # done entries still in _deadlines, dropped lazily

    # ------------------------------------------------------------------ events
    def submit(self, entry: Entry, now: float) -> Refusal | None:
        """Admit a packet (queued, or blocked on dependencies) or say why not."""
        if entry.id in self.inflight:
            return Refusal(ErrorCode.DUPLICATE_ID, f"a packet with id {entry.id!r} is already in flight")
        if entry.lane not in self.lanes:
            raise ValueError(f"unknown lane {entry.lane!r}")
        if self.queued + self.blocked >= self.max_queued:
            return Refusal(ErrorCode.OVERLOADED,
                           f"node overloaded: {self.max_queued} packets already waiting; retry later")
        waiting: set[str] = set()
        for dep in entry.dependencies:
            if dep == entry.id:
                return Refusal(ErrorCode.DEPENDENCY_FAILED, f"packet {entry.id!r} depends on itself")
            stored = self.results.get(dep, now)
            if stored is not None:
                if not stored.ok:
                    return Refusal(ErrorCode.DEPENDENCY_FAILED, f"dependency {dep!r} failed ({stored.code})")
                continue
            waiting.add(dep)
        if waiting and self._reaches(waiting, entry.id):
            return Refusal(ErrorCode.DEPENDENCY_FAILED,
                           f"dependency cycle: packet {entry.id!r} would wait for itself")
        entry.arrived = now
        entry.order = next(self._order)
        entry.waiting_on = waiting
        self.inflight[entry.id] = entry
        heapq.heappush(self._deadlines, (entry.deadline, entry.order, entry))
        if waiting:
            entry.state = BLOCKED
            self.blocked += 1
            for dep in waiting:
                self._waiters[dep].append(entry)
        else:
            entry.state = QUEUED
            self.lanes[entry.lane].push(entry)
        return None

    def dispatch(self, lane: str, now: float) -> Entry | None:
        """The next packet for a free worker of `lane`, or None."""
        entry = self.lanes[lane].pop(now)
        if entry is not None:
            entry.state = DISPATCHED
            self.dispatched += 1
        return entry

    def requeue(self, entry: Entry) -> None:
        """A dispatched packet that never started (its worker died) goes back in its place."""
        if entry.state is DISPATCHED:
            entry.state = QUEUED
            self.dispatched -= 1
            self.lanes[entry.lane].push(entry)

    def complete(self, entry: Entry, now: float, *, ok: bool, data_json: bytes | None = None,
                 code: str | None = None) -> list[Failure]:
        """Record how a packet ended. Returns the packets that fail because of it
        (its dependents, transitively, when it failed); newly ready ones are queued."""
        self._retire(entry)
        return self.record(entry.id, now, ok=ok, data_json=data_json, code=code)

    def record(self, packet_id: str, now: float, *, ok: bool, data_json: bytes | None = None,
               code: str | None = None) -> list[Failure]:
        """Record how packet `packet_id` ended, here or elsewhere (a reactor ran it for this
        node's hub): its result serves the packets that depend on it, as `complete` says."""
        failures: list[Failure] = []
        pending = [(packet_id, ok, data_json, code)]
        while pending:
            done_id, done_ok, done_json, done_code = pending.pop()
            self.results.put(done_id, StoredResult(done_ok, done_json, done_code, now))
            for waiter in self._waiters.pop(done_id, ()):
                if waiter.state is not BLOCKED:
                    continue
                if done_ok:
                    waiter.waiting_on.discard(done_id)
                    if not waiter.waiting_on:
                        self.blocked -= 1
                        waiter.state = QUEUED
                        self.lanes[waiter.lane].push(waiter)
                else:
                    message = f"dependency {done_id!r} failed ({done_code})"
                    failures.append(Failure(waiter, ErrorCode.DEPENDENCY_FAILED, message))
                    self._retire(waiter)
                    pending.append((waiter.id, False, None, ErrorCode.DEPENDENCY_FAILED.value))
        return failures

    def cancel(self, entry: Entry) -> None:
        """Forget a packet (its submitter left). It is not recorded as a result."""
        self._retire(entry)

    def tick(self, now: float) -> list[Entry]:
        """Packets whose deadline has passed, in deadline order. Each is still in its
        state (QUEUED, BLOCKED or DISPATCHED); the caller answers it and calls
        `complete(..., ok=False, code="PF408")`, which also fails its dependents."""
        expired = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)[2]
            if entry.state is not DONE:
                expired.append(entry)
            else:
                self._retired_in_heap -= 1
        return expired

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap and heap[0][2].state is DONE:
            heapq.heappop(heap)
            self._retired_in_heap -= 1
        return heap[0][0] if heap else None

    def dependency_results(self, entry: Entry, now: float) -> dict[str, bytes]:
        """The JSON results of a packet's dependencies, for its handler's ctx."""
        out = {}
        for dep in entry.dependencies:
            stored = self.results.get(dep, now)
            if stored is not None and stored.ok and stored.data_json is not None:
                out[dep] = stored.data_json
        return out

    # ------------------------------------------------------------------ state
    @property
    def queued(self) -> int:
        """Packets ready and waiting in a lane queue (every in-flight packet is queued,
        blocked or dispatched)."""
        return len(self.inflight) - self.blocked - self.dispatched

    def depth(self, lane: str) -> int:
        return len(self.lanes[lane])

    def _retire(self, entry: Entry) -> None:
        if entry.state is DONE:
            return
        if entry.state is QUEUED:
            self.lanes[entry.lane].live -= 1
        elif entry.state is BLOCKED:
            self.blocked -= 1
        elif entry.state is DISPATCHED:
            self.dispatched -= 1
        entry.state = DONE
        if self.inflight.get(entry.id) is entry:
            del self.inflight[entry.id]
        self._retired_in_heap += 1
        heap = self._deadlines
        if self._retired_in_heap > 1024 and self._retired_in_heap * 2 > len(heap):
            # Most of the deadline heap is answered packets waiting to fall off its top;
            # rebuild it so memory follows the live packets, not the recent throughput.
            self._deadlines = [item for item in heap if item[2].state is not DONE]
            heapq.heapify(self._deadlines)
            self._retired_in_heap = 0

    def _reaches(self, start: set[str], target: str) -> bool:
        """Does any blocked packet reachable from `start` wait on `target`?"""
        seen: set[str] = set()
        stack = list(start)
        while stack:
            packet_id = stack.pop()
            if packet_id == target:
                return True
            if packet_id in seen:
                continue
            seen.add(packet_id)
            blocked = self.inflight.get(packet_id)
            if blocked is not None and blocked.state is BLOCKED:
                stack.extend(blocked.waiting_on)
        return False
