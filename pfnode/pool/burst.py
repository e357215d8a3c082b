"""Workers shared fairly between clients: a burst worker for a starved client.

A handler that hangs or crashes holds its worker until its deadline or its death. The
dispatcher already gives a client no more than its share of a lane's workers while another
client waits (`Dispatcher.over_share`), but a worker cannot be taken back from a packet that
runs. When one client's packets run on every worker of a lane while another client's packet
waits (`core/dispatch.starved`: it runs fewer than its share), the lane gets an extra worker,
which the dispatcher gives to the waiting client, so that it waits for its own workers, not
for its neighbour's hung ones:

- the condition must hold for `BURST_AFTER_S` (a packet of a busy lane normally gets a worker
  within a few milliseconds: contention between healthy clients starts nothing);
- at most `MAX_BURST` extra workers per resizable lane (cf stays one, sequential); their
  number is the lane's size above its target (`mc:scale` and autoscaling set targets;
  bursts never change them);
- an extra worker takes no packet of a client that runs its share of the lane's regular
  workers (`Dispatcher.heavy`): it stays free for the starved one, even between its packets;
- extra workers retire (finishing what they hold) once, for BURST_IDLE_S, no packet but the
  heavy clients' has waited in the lane.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..core.dispatch import starved

log = logging.getLogger("pfnode.pool")

BURST_AFTER_S = 0.25
BURST_IDLE_S = 2.0  # the extra workers stay this long after the last starved packet left the queue
MAX_BURST = 2


class Bursts:
    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.starting: set[str] = set()
        self._checking: set[str] = set()  # lanes with a check due
        self.started = 0
        self._needed_at: dict[str, float] = {}  # lane -> when a starved client last had a packet waiting
        self._idle_checks: dict[str, asyncio.TimerHandle] = {}  # lane -> its extra workers' next look

    def extra(self, lane: str) -> int:
        supervisor = self.pool.supervisor
        return max(0, supervisor.lane_size(lane) - supervisor.targets[lane])

    def after_pump(self) -> None:
        """After handing out packets: a lane whose next packet's client is starved is
        looked at again in BURST_AFTER_S; an extra worker of an emptied lane retires."""
        pool = self.pool
        for lane, spec in pool.lanes.items():
            if not spec.resizable:
                continue
            queue = pool.scheduler.lanes.get(lane)
            if queue is None:
                continue
            if self.extra(lane) and lane not in self.starting:
                if self._unneeded(lane, queue):
                    self._shrink(lane)
                else:
                    self._look_again(lane)
            elif lane not in self._checking and lane not in self.starting and self.extra(lane) < MAX_BURST:
                if starved(self._views(lane), queue.waiting):
                    self._checking.add(lane)
                    asyncio.get_running_loop().call_later(BURST_AFTER_S, self._check, lane)

    def _check(self, lane: str) -> None:
        self._checking.discard(lane)
        pool = self.pool
        if pool.supervisor.closing or lane in self.starting or self.extra(lane) >= MAX_BURST:
            return
        if starved(self._views(lane), pool.scheduler.lanes[lane].waiting):
            self.starting.add(lane)
            pool.supervisor.in_background(self._grow(lane))

    async def _grow(self, lane: str) -> None:
        pool = self.pool
        try:
            proc = await pool.supervisor.spawn(lane)
            view = pool.supervisor.view_of(proc)
            if view is not None:
                view.burst = True
            pool.on_worker_ready(proc)
            self._needed_at[lane] = pool.clock()
            self._look_again(lane)
            self.started += 1
            pool.counters["burst_workers"] += 1
            log.info("pool: a burst worker for the %s lane (pid %s): its workers are all held by other "
                     "clients' packets while a client's packet waits", lane, proc.pid)
        except Exception as exc:
            log.warning("pool: could not start a burst worker for the %s lane: %s", lane, exc)
        finally:
            self.starting.discard(lane)
            pool.pump()

    def _unneeded(self, lane: str, queue: Any) -> bool:
        """Whether the lane's extra workers have served their purpose: for BURST_IDLE_S, the
        queue has held no packet but of clients that run their share of the regular workers
        (a starved client's next packet, one at a time, finds its worker still there)."""
        pool = self.pool
        now = pool.clock()
        if len(queue) and not set(queue.waiting) <= pool.dispatcher.heavy(lane, queue.waiting):
            self._needed_at[lane] = now
            return False
        return now - self._needed_at.get(lane, now) >= BURST_IDLE_S

    def _look_again(self, lane: str) -> None:
        """Look at the lane's extra workers again in BURST_IDLE_S even if no packet comes by then
        (packets are what call after_pump): idle, they must not outlive what started them."""
        if lane not in self._idle_checks:
            self._idle_checks[lane] = asyncio.get_running_loop().call_later(BURST_IDLE_S, self._idle_check, lane)

    def _idle_check(self, lane: str) -> None:
        self._idle_checks.pop(lane, None)
        pool = self.pool
        queue = pool.scheduler.lanes.get(lane)
        if pool.supervisor.closing or queue is None or not self.extra(lane) or lane in self.starting:
            return
        if self._unneeded(lane, queue):
            self._shrink(lane)
        else:
            self._look_again(lane)

    def _shrink(self, lane: str) -> None:
        self.pool.supervisor.retire(lane, self.extra(lane))

    def _views(self, lane: str) -> list:
        return [view for view in self.pool.dispatcher.workers.values() if view.lane == lane]
