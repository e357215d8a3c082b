"""Which worker gets which packet, pure: no processes, no asyncio, no clock of its own.

The dispatcher keeps the front's view of every worker (`WorkerView`: its lane, whether it
takes work, the packets it holds in the order it was handed them) and decides, from
the scheduler's lane queues, which packets go to which worker now. The supervisor
(pfnode/pool/supervisor.py) owns the processes and carries the decisions out.

Rules
- A worker runs what it holds strictly in order, one at a time. So the oldest packet it
  holds is the one it runs, and when it dies, that one is to blame (`died`); the others
  never started and go back to their lane queue in their original place. A worker that
  said it retires (`Retire`) has started none of what it still holds.
- Prefetch by estimated work: besides the packet it runs, a worker holds at most about
  `prefetch_ms` of *estimated* work (each handler key's moving average run time), and at
  most its lane's `window` packets. So a later, higher-priority packet never waits behind
  more than that; a slow handler's worker holds one packet (its running one), while
  microsecond handlers travel in batches of up to `window` per pipe write. A key never
  seen is taken to be slow until one of its packets has run: it is never prefetched.
- Low water: a worker is refilled once it is down to half its window and half its
  prefetch work, so that one pipe write carries many small packets, not one per answer.
- Least loaded first: each packet goes to the worker of its lane holding the least
  estimated work (an idle one first), so work fans out before any window fills.
- Answers come in order; an answer for any packet but the oldest held is a protocol
  error (the supervisor kills that worker).
"""
from __future__ import annotations

import collections
import heapq
import itertools
from typing import Any, Iterable

from .flight import DISPATCHED, Flight

ESTIMATE_WEIGHT = 0.2  # weight of the newest run time in a key's moving average
UNKNOWN_MS = 1e9  # a key never run yet: assumed slow, so never prefetched behind another


class WorkerView:
    """The dispatcher's view of one worker process."""

    __slots__ = ("slot", "lane", "handle", "ready", "retiring", "retired", "held", "work_ms", "ran", "burst")

    def __init__(self, slot: int, lane: str, handle: Any = None) -> None:
        self.slot = slot
        self.lane = lane
        self.handle = handle  # the supervisor's process handle, opaque here
        self.ready = True  # takes new packets
        self.retiring = False  # finishes what it holds, then leaves (a lane shrank)
        self.retired = False  # said it leaves now: nothing it holds has started
        self.held: collections.deque[Flight] = collections.deque()
        self.work_ms = 0.0  # estimated work of everything it holds
        self.ran = 0  # packets it has run (answered, not skipped)
        self.burst = False  # started for a starved client (pool/burst.py): not for the tenants it was started against

    @property
    def queued_ms(self) -> float:
        """Estimated work held beyond the packet it runs."""
        held = self.held
        return self.work_ms - held[0].cost_ms if held else 0.0

    @property
    def running(self) -> Flight | None:
        return self.held[0] if self.held else None

    def __repr__(self) -> str:
        return f"<WorkerView {self.lane}#{self.slot} holds {len(self.held)}>"


class Dispatcher:
    def __init__(self, windows: dict[str, int], prefetch_ms: float = 1.0) -> None:
        self.windows = dict(windows)  # lane -> most packets one worker holds
        self.prefetch_ms = prefetch_ms
        # lane -> estimated work a worker holds beyond its running packet (mc:tune sets one)
        self.prefetch = {lane: prefetch_ms for lane in windows}
        self.workers: dict[int, WorkerView] = {}
        self.estimates: dict[str, float] = {}
        self._heavy: Any = ()  # during assign: the tenants a lane's burst workers are not for  # handler key -> moving average run time, ms
        self._numbers = itertools.count(1)

    # ------------------------------------------------------------------ tuning (mc:tune)
    def tuning(self, lane: str) -> tuple[float, int]:
        """A lane's (prefetch_ms, window): the estimated work and the packets one worker holds."""
        return self.prefetch[lane], self.windows[lane]

    def tune(self, lane: str, *, prefetch_ms: float | None = None, window: int | None = None) -> None:
        """Set a lane's prefetch (ms of estimated work, >= 0) and window (packets one worker
        holds, >= 1). A window over 1 on a lane whose window is 1 (it runs in priority
        order, one at a time) is refused: ValueError."""
        if lane not in self.windows:
            raise ValueError(f"unknown lane {lane!r}")
        if prefetch_ms is not None and not prefetch_ms >= 0:
            raise ValueError(f"prefetch_ms must be >= 0, got {prefetch_ms!r}")
        if window is not None and (type(window) is not int or window < 1):
            raise ValueError(f"window must be an integer >= 1, got {window!r}")
        if prefetch_ms is not None:
            self.prefetch[lane] = float(prefetch_ms)
        if window is not None:
            self.windows[lane] = window

    # ------------------------------------------------------------------ workers
    def add(self, slot: int, lane: str, handle: Any = None) -> WorkerView:
        view = self.workers[slot] = WorkerView(slot, lane, handle)
        return view

    def remove(self, view: WorkerView) -> None:
        if self.workers.get(view.slot) is view:
            del self.workers[view.slot]

    def members(self, lane: str) -> list[WorkerView]:
        """The lane's workers that count towards its size (not those retiring)."""
        return [w for w in self.workers.values() if w.lane == lane and not w.retiring]

    def retire(self, lane: str, count: int) -> list[WorkerView]:
        """Pick the `count` least busy workers of a lane to finish what they hold and leave."""
        chosen = sorted(self.members(lane), key=lambda w: (len(w.held), -w.slot))[:count]
        for view in chosen:
            view.retiring = True
            view.ready = False
        return chosen

    def estimate(self, key: str) -> float:
        return self.estimates.get(key, UNKNOWN_MS)

    # ------------------------------------------------------------------ handing out packets
    def _eligible(self, view: WorkerView) -> bool:
        held = view.held
        if not held:
            return True
        lane = view.lane
        return len(held) <= self.windows[lane] // 2 and view.queued_ms <= self.prefetch[lane] / 2

    def _fits(self, view: WorkerView, cost_ms: float, tenant: Any = None) -> bool:
        """Whether `view` may take a packet of `tenant` costing `cost_ms` now: an idle
        worker, or one running a packet of the same tenant with room in its window and its
        prefetch. Never behind another tenant's running packet, which may hang: a client
        waits behind its own packets only (and a burst worker comes for it, pool/burst.py)."""
        held = view.held
        if view.burst and tenant in self._heavy:
            return False  # a burst worker is for the client others starve, not for them
        if not held:
            return True
        if held[0].tenant != tenant:
            return False
        lane = view.lane
        return len(held) < self.windows[lane] and view.queued_ms + cost_ms <= self.prefetch[lane]

    def assign(self, scheduler, now: float) -> list[tuple[WorkerView, list[Flight]]]:
        """Hand queued packets to workers that may take them; returns the batches to send,
        one per worker, each in the order the worker must run them."""
        batches: dict[int, tuple[WorkerView, list[Flight]]] = {}
        free: dict[str, list[tuple[int, float, int, int, WorkerView]]] = {}
        for view in self.workers.values():
            if view.ready and self._eligible(view):
                free.setdefault(view.lane, []).append(self._rank(view))
        for lane, heap in free.items():
            queue = scheduler.lanes[lane]
            heapq.heapify(heap)
            skip = self.over_share(lane, queue.waiting) if len(queue.waiting) > 1 else ()
            self._heavy = self.heavy(lane, queue.waiting) if any(item[4].burst for item in heap) else ()
            while heap and len(queue):
                flight = scheduler.dispatch(lane, now, skip)
                if flight is None:
                    break
                cost = self.estimate(flight.packet.key)
                skipped = []
                while heap and not self._fits(heap[0][4], cost, flight.tenant):
                    skipped.append(heapq.heappop(heap))
                if not heap:  # nobody has room for it now: it stays first in line
                    scheduler.undispatch(flight)
                    break
                view = heap[0][4]
                self._give(view, flight, cost)
                batches.setdefault(view.slot, (view, []))[1].append(flight)
                heapq.heapreplace(heap, self._rank(view))
                for item in skipped:
                    heapq.heappush(heap, item)
        return list(batches.values())

    def heavy(self, lane: str, waiting: dict[Any, int]) -> set[Any]:
        """The tenants that run their share of `lane`'s regular workers (not its burst ones)
        or more: they get no burst worker, even when nobody else waits at that moment."""
        views = [view for view in self.members(lane) if not view.burst]
        held = holders(views)
        if not held:
            return set()
        share = worker_share(len(views), held, waiting)
        return {tenant for tenant, count in held.items() if count >= share}

    def over_share(self, lane: str, waiting: dict[Any, int]) -> set[Any]:
        """The tenants that run their share of `lane`'s workers or more while another tenant
        waits (`waiting`: the lane queue's tenants): their next packets wait for their own
        workers to free up, so a client whose packets hang holds no more than its share."""
        views = self.members(lane)
        held = holders(views)
        if not held:
            return set()
        share = worker_share(len(views), held, waiting)
        return {tenant for tenant, count in held.items()
                if count >= share and any(other != tenant for other in waiting)}

    @staticmethod
    def _rank(view: WorkerView) -> tuple[int, float, int, int, WorkerView]:
        # idle workers first, then the least estimated work held, then the fewest packets
        return (1 if view.held else 0, view.queued_ms, len(view.held), view.slot, view)

    def give(self, view: WorkerView, flight: Flight) -> None:
        """Hand `flight` to `view` now, whatever its window (a packet for that worker only)."""
        self._give(view, flight, self.estimate(flight.packet.key))

    def _give(self, view: WorkerView, flight: Flight, cost_ms: float) -> None:
        flight.no = next(self._numbers)
        flight.worker = view
        flight.cost_ms = cost_ms
        view.held.append(flight)
        view.work_ms += cost_ms

    # ------------------------------------------------------------------ answers and deaths
    def answered(self, view: WorkerView, no: int, duration_ms: float | None) -> Flight | None:
        """The worker answered task `no` (ran it, or skipped it: `duration_ms` None).
        Returns its flight, or None when that is not the oldest it holds (a protocol error)."""
        held = view.held
        if not held or held[0].no != no:
            return None
        flight = held.popleft()
        view.work_ms = max(0.0, view.work_ms - flight.cost_ms) if held else 0.0
        flight.worker = None
        if duration_ms is not None:
            view.ran += 1
            key = flight.packet.key
            old = self.estimates.get(key)
            self.estimates[key] = duration_ms if old is None else old + (duration_ms - old) * ESTIMATE_WEIGHT
        return flight

    def is_running(self, flight: Flight) -> bool:
        """Whether `flight` is the packet its worker runs now (or will run next)."""
        view = flight.worker
        return view is not None and bool(view.held) and view.held[0] is flight

    def died(self, view: WorkerView) -> tuple[Flight | None, list[Flight]]:
        """A worker is gone. Returns the packet it was running (None when it had said it
        retires, or held nothing) and those it held that never started, oldest first."""
        self.remove(view)
        held = list(view.held)
        view.held.clear()
        view.work_ms = 0.0
        for flight in held:
            flight.worker = None
        if view.retired or not held:
            return None, held
        return held[0], held[1:]

    # ------------------------------------------------------------------ introspection
    def lane_stats(self, lane: str) -> dict[str, int]:
        members = [w for w in self.workers.values() if w.lane == lane and w.ready]
        return {"workers": len(members), "running": sum(len(w.held) for w in members),
                "busy": sum(1 for w in members if w.held)}

    def held(self) -> Iterable[Flight]:
        for view in self.workers.values():
            yield from view.held

    def check(self) -> None:
        """The invariants, for tests: every held packet is DISPATCHED to that worker,
        work sums match, windows hold."""
        for view in self.workers.values():
            assert abs(view.work_ms - sum(f.cost_ms for f in view.held)) < 1e-6, view
            for flight in view.held:
                assert flight.worker is view, (flight, view)
            if not view.retiring:
                assert len(view.held) <= max(1, self.windows[view.lane]), view
            for flight in view.held:
                assert flight.state is DISPATCHED or flight.state == "done", flight


def holders(views: Iterable[WorkerView]) -> dict[Any, int]:
    """Tenant -> how many of these workers run one of its packets."""
    held: dict[Any, int] = {}
    for view in views:
        if view.held:
            owner = view.held[0].tenant
            held[owner] = held.get(owner, 0) + 1
    return held


def worker_share(workers: int, held: dict[Any, int], waiting: Iterable[Any]) -> int:
    """A tenant's share of a lane's workers: the workers over the tenants running or waiting."""
    active = len(held.keys() | set(waiting))
    return max(1, workers // max(1, active))


def starved(views: list[WorkerView], waiting: dict[Any, int]) -> bool:
    """Whether a tenant with packets waiting in a lane's queue is kept from the lane's
    workers by others: every ready worker runs a packet, and that tenant runs fewer of them
    than its share. A client whose own packets hang or crash is not starved by them: it
    waits for its own workers."""
    ready = [view for view in views if view.ready]
    if not ready or any(not view.held for view in ready):
        return False
    held = holders(ready)
    share = worker_share(len(ready), held, waiting)
    return any(held.get(tenant, 0) < share for tenant in waiting)
