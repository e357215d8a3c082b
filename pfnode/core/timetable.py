"""The one time table of packets in flight, pure: every packet's deadline, and earlier
alarms (the hub's probe windows and reroute grace), on a clock the caller reads.

- Each packet's deadline waits in the queue of its timeout: packets with the same timeout
  are admitted in deadline order, so each queue is sorted (a deque, O(1) at both ends).
  At most `MAX_DEADLINE_QUEUES` such queues; a deadline beyond them, an earlier alarm, or
  a deadline out of its queue's order goes into one heap.
- `tick(now)` returns the packets whose alarm has come, in time order (ties: admission
  order), each once; an early alarm falls back to the deadline after it fired.
- Answered packets are not searched for: their entries fall off the front of their queue
  or the top of the heap, and `retired` rebuilds a structure that a slow packet keeps
  from shrinking, so memory follows the live packets.
"""
from __future__ import annotations

import collections
import heapq
import itertools

from .flight import DONE, Flight

MAX_DEADLINE_QUEUES = 64  # distinct timeouts with a queue of their own; packets of others use the heap


def _when_and_order(item: tuple[float, int, Flight]) -> tuple[float, int]:
    return item[0], item[1]


class TimeTable:
    def __init__(self) -> None:
        self._deadlines: dict[int, collections.deque[Flight]] = {}
        self._alarms: list[tuple[float, int, Flight]] = []
        self.order = itertools.count()  # admission order, and the heap's tie-breaker

    def enter(self, flight: Flight) -> None:
        """File an admitted packet's deadline (its `order` is set)."""
        flight.alarm = deadline = flight.deadline
        queue = self._deadlines.get(flight.timeout_ms)
        if queue is None and len(self._deadlines) < MAX_DEADLINE_QUEUES:
            queue = self._deadlines[flight.timeout_ms] = collections.deque()
        if queue is not None and (not queue or queue[-1].deadline <= deadline):
            queue.append(flight)
        else:
            heapq.heappush(self._alarms, (deadline, flight.order, flight))

    def set_alarm(self, flight: Flight, when: float) -> None:
        """Look at `flight` again at `when`, or at its deadline if that comes first."""
        if when >= flight.deadline:
            flight.alarm = flight.deadline  # its deadline's item is waiting since admission
        else:
            flight.alarm = when
            heapq.heappush(self._alarms, (when, next(self.order), flight))

    def tick(self, now: float) -> list[Flight]:
        """Packets whose alarm has come, in time order; each is still in its state."""
        due = []
        heap = self._alarms
        while heap and heap[0][0] <= now:  # first the heap: an early alarm may defer to its deadline's item
            item = heapq.heappop(heap)
            when, _, flight = item
            if flight.state is DONE or flight.alarm != when:
                continue  # answered, or its alarm moved
            if when < flight.deadline:
                flight.alarm = flight.deadline  # an early alarm falls back to the deadline
                if flight.deadline <= now:
                    continue  # whose own item comes later in this same tick
            else:
                flight.alarm = None
            due.append(item)
        for queue in self._deadlines.values():
            while queue and queue[0].deadline <= now:
                flight = queue.popleft()
                if flight.state is DONE or flight.alarm is None:
                    continue  # answered, or its deadline was seen to already
                flight.alarm = None
                due.append((flight.deadline, flight.order, flight))
        if len(due) > 1:
            due.sort(key=_when_and_order)
        return [item[2] for item in due]

    def next_alarm(self) -> float | None:
        """When the earliest live alarm or deadline comes, or None."""
        best = None
        heap = self._alarms
        while heap:
            when, _, flight = heap[0]
            if flight.state is not DONE and flight.alarm is not None and (
                    flight.alarm == when or flight.deadline == when):
                best = when
                break
            heapq.heappop(heap)  # answered, or its alarm moved
        for queue in self._deadlines.values():
            while queue and (queue[0].state is DONE or queue[0].alarm is None):
                queue.popleft()
            if queue and (best is None or queue[0].deadline < best):
                best = queue[0].deadline
        return best

    @property
    def entries(self) -> int:
        """Entries held (answered packets included, until they are dropped)."""
        return len(self._alarms) + sum(len(queue) for queue in self._deadlines.values())

    def retired(self, flight: Flight, live: int) -> None:
        """`flight` ended (with `live` packets still in flight): drop what it leaves behind
        where that is cheap, and rebuild a queue or the heap that answered packets fill."""
        flight.alarm = None
        queue = self._deadlines.get(flight.timeout_ms)
        if queue:
            while queue and queue[0].state is DONE:
                queue.popleft()  # answered in the order they came: the queue stays short
            if len(queue) > 1024 and len(queue) > 2 * live:  # one slow packet holds the head
                kept = [f for f in queue if f.state is not DONE]
                queue.clear()
                queue.extend(kept)
        heap = self._alarms
        if len(heap) > 1024 and len(heap) > 2 * live:
            # most of the heap is answered packets waiting to fall off its top
            self._alarms = [item for item in heap if item[2].state is not DONE
                            and (item[0] == item[2].alarm or item[0] == item[2].deadline)]
            heapq.heapify(self._alarms)
