"""Ordering rules for queued packets, pure: no asyncio, no processes, no clock.

Priority 1-10, higher first; FIFO within one priority (by arrival number). Entries
are removed lazily: a cancelled or expired task stays in the heap until popped, and
the caller skips it (checking state is O(1); removing from a heap is O(n)).
"""
from __future__ import annotations

import heapq
import itertools
from typing import Generic, TypeVar

T = TypeVar("T")


class PriorityFifo(Generic[T]):
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, T]] = []
        self._arrivals = itertools.count()

    def next_arrival(self) -> int:
        return next(self._arrivals)

    def push(self, item: T, priority: int, arrival: int | None = None) -> int:
        """Queue `item`; pass the original `arrival` to put a requeued item back in its place."""
        if arrival is None:
            arrival = next(self._arrivals)
        heapq.heappush(self._heap, (-priority, arrival, item))
        return arrival

    def pop(self) -> T:
        return heapq.heappop(self._heap)[2]

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)
