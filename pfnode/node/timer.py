"""The node's one timer, on its one clock: every deadline and hub alarm is in the
scheduler's time table, and one `call_later` wakes the node for the earliest of them.

`expire` is the rule for a packet whose deadline passed, by where it is:

| state      | lane    | what happens                                                        |
|------------|---------|---------------------------------------------------------------------|
| QUEUED     | any     | PF408 "passed while queued"                                         |
| BLOCKED    | any     | PF408 naming what it waited for (dependencies, or its lock)         |
| DISPATCHED | hosted  | PF408, and its node element is cancelled (its steps with it)        |
| DISPATCHED | dask    | the Dask lane's own rule (pfnode/dask/lane.py)                      |
| DISPATCHED | a lane  | PF408; a running one's worker is killed, a prefetched one dropped   |
| FORWARDED  | -       | the hub's rule (PF504)                                              |
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from ..core.flight import BLOCKED, DISPATCHED, DONE, FORWARDED, HOSTED, QUEUED, Flight, failure
from ..dask.lane import DASK
from ..errors import ErrorCode
from .shared import NodeShared


log = logging.getLogger("pfnode.front")


class Timer:
    def __init__(self, node: NodeShared) -> None:
        self.node = node
        self.clock = node.clock
        self._handle: asyncio.TimerHandle | None = None
        self._at: float | None = None

    def arm(self, when: float | None) -> None:
        """Wake at `when` (a time on the node's clock) unless an earlier wake is set."""
        if when is None or (self._at is not None and self._at <= when):
            return
        if self._handle is not None:
            self._handle.cancel()
        self._at = when
        self._handle = self._loop().call_later(max(0.0, when - self.clock()), self._fire)

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        """Run `callback(*args)` at `when` on the node's clock (rm:lock's leases)."""
        return self._loop().call_later(max(0.0, when - self.clock()), callback, *args)

    def _loop(self) -> asyncio.AbstractEventLoop:
        return self.node.loop or asyncio.get_running_loop()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._at = None

    def _fire(self) -> None:
        self._handle = self._at = None
        now = self.clock()
        node = self.node
        for flight in node.scheduler.tick(now):
            if flight.state is DONE:
                continue
            try:
                if now >= flight.deadline:
                    self.expire(flight)
                else:
                    node.hub.on_alarm(flight)
            except Exception:  # answer it rather than lose it, and keep the timer going
                log.exception("front: handling the alarm of packet %s failed", flight.id)
                node.settle(flight, failure(ErrorCode.HANDLER_FAILED, "internal error handling its deadline"))
        self.arm(node.scheduler.next_alarm())

    def expire(self, flight: Flight) -> None:
        """Its deadline passed: the table in the module's docstring."""
        node = self.node
        state, limit = flight.state, flight.timeout_ms
        if state is QUEUED:
            node.settle(flight, failure(ErrorCode.DEADLINE_EXCEEDED, f"deadline of {limit} ms passed while queued"))
        elif state is BLOCKED:
            waiting = ", ".join(sorted(flight.waiting_on))
            node.settle(flight, failure(ErrorCode.DEADLINE_EXCEEDED,
                                        f"deadline of {limit} ms passed while waiting for "
                                        f"{'' if flight.hold is not None else 'dependencies: '}{waiting}"))
        elif state is DISPATCHED and flight.lane == HOSTED:
            node.settle(flight, failure(ErrorCode.DEADLINE_EXCEEDED,
                                        f"deadline of {limit} ms passed while {flight.packet.key} ran"))
            node.hosted.cancel(flight)  # its steps still in flight are cancelled with it
        elif state is DISPATCHED and flight.lane == DASK:
            node.pool.dask.expire(flight)
        elif state is DISPATCHED:
            running = node.pool.dispatcher.is_running(flight)
            node.settle(flight, failure(
                ErrorCode.DEADLINE_EXCEEDED,
                f"deadline of {limit} ms passed while running; worker killed" if running
                else f"deadline of {limit} ms passed while queued at a worker"))
            if running:
                node.pool.kill_running(flight, "deadline")
        elif state is FORWARDED:
            node.hub.deadline_passed(flight)
