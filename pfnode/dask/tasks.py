"""The dask lane's traffic with the cluster (pfnode/dask/lane.py decides what it means): handing
packets to the cluster, watching their tasks end, gathering the results that did not come in an
event, and cancelling tasks, each in as few client requests as it can.

- `Submissions`: every packet the pump takes from the DASK queue in one loop turn goes to the
  scheduler in one request (`Client.map`, one per priority among them), not one each: a Dask
  client's request and the scheduler's `update-graph` cost the same for one task as for many, and
  one per packet was most of what the node and the scheduler spent on a short packet.
- `Requests`: results too large for the task's event are gathered, and tasks cancelled, in one
  request per loop turn for all the packets that need one; the futures of finished packets are
  let go of together (RELEASE_S), so the scheduler frees their results in few messages.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from concurrent.futures import CancelledError  # what a cancelled Dask future raises
from typing import Any

from ..core.flight import Flight, failure
from ..errors import ErrorCode

log = logging.getLogger("pfnode.dask")

RELEASE_S = 0.05  # how long the futures of finished packets are held, to be let go of together
MAX_RETRIES = 10  # the most runs a packet may ask for beyond its first (metadata.retries)


def retries_of(metadata: Any) -> int:
    """How many more runs a packet asked for should a worker die running it. ValueError: bad."""
    value = metadata.get("retries", 0) if isinstance(metadata, dict) else 0
    if type(value) is not int or not 0 <= value <= MAX_RETRIES:
        raise ValueError(f"metadata.retries must be an integer 0..{MAX_RETRIES}, got {value!r}")
    return value


class Attempt:
    """One run of a packet on the cluster: its task's future and where it started."""

    __slots__ = ("flight", "future", "token", "run", "worker", "unstarted")

    def __init__(self, flight: Flight, future: Any, token: str, run: int) -> None:
        self.flight = flight
        self.future = future
        self.token = token  # its Dask key
        self.run = run  # 1 for its first run, 2 for its first retry, ...
        self.worker: str | None = None  # the worker it started on (None: not started yet)
        self.unstarted = False  # its worker died, and it is known not to have started there


class Submissions:
    """Packets to the cluster, all those of one loop turn in one request per priority: each as
    one task (`worker.run_packet`) with `priority=` its packet's priority."""

    def __init__(self, lane: Any) -> None:
        self.lane = lane  # the DaskLane (pfnode/dask/lane.py; not imported: it imports this module)
        self._serial = itertools.count(1)

    def submit(self, runs: list[tuple[Flight, int]], now: float) -> None:
        """Submit (packet, its run: 1 for the first) pairs, in the order given within a priority."""
        by_priority: dict[int, list[tuple[Flight, int]]] = {}
        for flight, run in runs:
            try:
                retries_of(flight.packet.metadata)
            except ValueError as exc:
                self.lane.on_answer(flight, failure(ErrorCode.INVALID_PACKET, str(exc)))
                continue
            by_priority.setdefault(flight.priority, []).append((flight, run))
        for priority, group in by_priority.items():
            self._map(priority, group, now)

    def _map(self, priority: int, group: list[tuple[Flight, int]], now: float) -> None:
        from .worker import run_packet

        lane, cluster = self.lane, self.lane.cluster
        flights = [flight for flight, _ in group]
        tokens = [f"{f.packet.key}-{f.id}-{cluster.tag}.{next(self._serial)}" for f in flights]
        to_wall = time.time() - lane.clock()  # deadlines travel as wall-clock times
        n = len(flights)
        try:
            futures = cluster.client.map(
                run_packet, [cluster.modules] * n, [cluster.topic] * n, tokens, [f.packet.key for f in flights],
                [bytes(f.packet.data) for f in flights], [f.id for f in flights], [f.priority for f in flights],
                [f.packet.metadata for f in flights], [f.deadline + to_wall for f in flights],
                [dependencies_of(lane, f, now) for f in flights], key=tokens, priority=priority, pure=False)
        except Exception as exc:  # a closed client, say: the cluster is gone
            cluster.unreachable(f"submitting failed: {type(exc).__name__}: {exc}")
            for flight in flights:
                lane.on_answer(flight, failure(ErrorCode.UNAVAILABLE, cluster.unavailable_text()))
            return
        for (flight, run), token, future in zip(group, tokens, futures):
            attempt = Attempt(flight, future, token, run)
            lane.attempts[flight] = attempt
            lane.by_token[token] = attempt
            cluster.background(self._watch(attempt))
        lane.counters["submitted"] += n
        lane.counters["submit_requests"] += 1

    async def _watch(self, attempt: Attempt) -> None:
        lane = self.lane
        try:  # waits for the task to end without fetching its result: the task's exception or None
            exc = await attempt.future.exception()
        except Exception as error:
            exc = error
        if lane.attempts.get(attempt.flight) is not attempt:
            return  # answered already (its event, its deadline, a lost worker) or no longer wanted
        status = attempt.future.status
        if status == "finished":
            lane.requests.gather(attempt)
        elif status == "error":
            lane.errored(attempt, exc)
        else:
            lane.cancelled(attempt)


class Requests:
    """Gathering results and cancelling tasks, one client request per loop turn for all the
    packets that need one (not one each); and letting go of finished tasks' futures in bulk,
    every RELEASE_S: each future dropped alone had the scheduler tell a worker to free its
    result in a message of its own, most often one per packet."""

    def __init__(self, lane: Any) -> None:
        self.lane = lane  # the DaskLane (pfnode/dask/lane.py; not imported: it imports this module)
        self._finished: list[Attempt] = []  # results to gather, this loop turn
        self._cancels: list[Any] = []  # futures to cancel, this loop turn
        self._gathering = False
        self._cancelling = False
        self._released: list[Any] = []  # futures this node no longer needs, held until the next release
        self._release_timer: Any = None

    def release(self, future: Any) -> None:
        self._released.append(future)
        if self._release_timer is None:
            self._release_timer = asyncio.get_running_loop().call_later(RELEASE_S, self.release_now)

    def release_now(self) -> None:
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._release_timer = None
        self._released.clear()

    def gather(self, attempt: Attempt) -> None:
        self._finished.append(attempt)
        if not self._gathering:
            self._gathering = True
            self.lane.cluster.background(self._gather())

    def cancel(self, future: Any) -> None:
        self._cancels.append(future)
        if not self._cancelling and self.lane.cluster.client is not None:
            self._cancelling = True
            self.lane.cluster.background(self._send_cancels())

    async def _gather(self) -> None:
        """Fetch the results of the tasks that finished, in one request per loop turn."""
        lane = self.lane
        try:
            while self._finished and lane.cluster.client is not None:
                batch = [a for a in self._finished if lane.attempts.get(a.flight) is a]
                self._finished = []
                if batch:
                    await self._gather_batch(batch)
        finally:
            self._gathering = False

    async def _gather_batch(self, batch: list[Attempt]) -> None:
        lane = self.lane
        client = lane.cluster.client
        try:
            answers = await client.gather([a.future for a in batch])
        except Exception:  # one of them was lost or cancelled meanwhile: one at a time
            answers = None
        if answers is not None:
            for attempt, answer in zip(batch, answers):
                lane.answered(attempt, answer)
            return
        for attempt in batch:
            try:
                answer = await client.gather(attempt.future)
            except CancelledError:
                if lane.attempts.get(attempt.flight) is attempt:
                    lane.cancelled(attempt)
            except Exception as exc:
                if lane.attempts.get(attempt.flight) is attempt:
                    lane.errored(attempt, exc)
            else:
                lane.answered(attempt, answer)

    async def _send_cancels(self) -> None:
        try:
            while self._cancels and self.lane.cluster.client is not None:
                batch, self._cancels = self._cancels, []
                try:
                    await self.lane.cluster.client.cancel(batch)
                except Exception as exc:
                    log.debug("dask: cancelling %d tasks: %s", len(batch), exc)
        finally:
            self._cancelling = False
            self._cancels.clear()


def dependencies_of(lane: Any, flight: Flight, now: float) -> dict[str, Any] | None:
    """{dependency id: its future on the cluster, else its JSON from the node's store}."""
    if not flight.dependencies:
        return None
    deps: dict[str, Any] = {}
    stored = None
    for dep in flight.dependencies:
        kept = lane.kept.get((flight.scope, dep))
        if kept is not None:
            deps[dep] = kept[0]
            lane.counters["dependencies_on_cluster"] += 1
            kept[2] -= 1
            if kept[2] <= 0:  # its last waiting dependent has it: the dependents' tasks hold it now
                del lane.kept[(flight.scope, dep)]
            continue
        if stored is None:
            stored = lane.scheduler.dependency_results(flight, now)
        if dep in stored:
            deps[dep] = bytes(stored[dep])
            lane.counters["dependencies_from_node"] += 1
    return deps
