"""The one answer path: every ending of every packet (a worker's result, a reactor's, a
node element's, a deadline, a death, a disconnect, the shutdown) comes through
`Answers.settle`, exactly once (a late outcome for a settled flight is dropped).

settle -> scheduler.complete (the result store; dependents released or failed with it)
       -> the flight's origin: a link gets a `result` frame with its `seq` (the worker's
          JSON spliced in, not re-parsed); a node element's step resolves its waiter
       -> the origin's reading resumes if it was paused at its in-flight limit
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any

from ..core import protocol
from ..core.flight import DONE, Flight, Outcome, failure
from ..errors import ErrorCode
from ..transports.base import PeerLink
from .shared import NodeShared


log = logging.getLogger("pfnode.front")

_incidents = itertools.count(1)


def incident_id() -> str:
    """A short id that names one internal error in the answer and in the log."""
    return f"E{next(_incidents):06d}-{os.urandom(3).hex()}"


class Answers:
    def __init__(self, node: NodeShared) -> None:
        self.node = node
        self.scheduler = node.scheduler
        self.metrics = node.metrics
        self._completions: dict[Any, list[asyncio.Future]] = {}  # (scope, id) -> cf:gate waiters

    def settle(self, flight: Flight, outcome: Outcome) -> None:
        """The one way a packet is answered: record its end with the scheduler (which
        releases or fails its dependents) and send its one reply to its origin."""
        if flight.state is DONE:
            return  # answered already (its deadline passed, say); a late outcome is dropped
        node = self.node
        now = node.clock()
        metadata = flight.packet.metadata
        if metadata is not None and outcome.ok and metadata.get("cache") is True:
            node.elements.answered(flight, outcome.data_json)  # rm:cache's memoisation
        scheduler = self.scheduler
        released = scheduler.released
        failures = scheduler.complete(flight, now, ok=outcome.ok, data_json=outcome.data_json, code=outcome.code)
        if self._completions:
            self._completed(flight.key)
            for failed in failures:
                self._completed(failed.flight.key)
        self._answer(flight, outcome, now)
        for failed in failures:  # its dependents, failed with it
            self._answer(failed.flight, failure(failed.code, failed.message), now)
        if failures or scheduler.released != released:
            node.pump()  # dependents became ready (or a lock it held passed on)

    def _answer(self, flight: Flight, outcome: Outcome, now: float) -> None:
        self.metrics.packet_done(flight.packet.group, flight.lane, outcome.code, now - flight.arrived,
                                 outcome.duration_ms)
        try:
            self._deliver(flight, outcome)
        except Exception:  # the reply must still go: a plain PF500 with an incident id
            incident = incident_id()
            log.exception("front: internal error %s answering packet %s", incident, flight.id)
            if flight.origin is not None:
                flight.origin.send(protocol.encode_failure(
                    flight.seq, flight.id, ErrorCode.HANDLER_FAILED,
                    f"internal error {incident}; the node's log has the details"))

    def _deliver(self, flight: Flight, outcome: Outcome) -> None:
        origin = flight.origin
        if origin is None:
            return  # its submitter left
        limit = self.node.settings.max_frame_bytes
        if outcome.ok and len(outcome.data_json) > limit:  # no peer is sent a frame it may not take
            outcome = failure(ErrorCode.TOO_LARGE, f"the result is {len(outcome.data_json)} bytes of JSON, over "
                                                   f"the node's frame limit of {limit} (max_frame_bytes)",
                              outcome.duration_ms)
        self.metrics.answered(outcome.code)
        if not isinstance(origin, PeerLink):  # a node element's step: its element waits for it
            origin.resolve(flight, outcome)
            return
        if outcome.ok:
            frame = protocol.encode_success_raw(flight.seq, flight.id, outcome.data_json, outcome.duration_ms)
        else:
            frame = protocol.encode_failure(flight.seq, flight.id, outcome.code, outcome.message,
                                            outcome.duration_ms)
        origin.send(frame)
        node = self.node
        if node.uplink is not None and origin is node.uplink.link:
            node.uplink.remember(flight.id, frame)
        if origin.reading_paused and node.links.awaiting(origin) < node.settings.max_inflight_per_connection:
            origin.resume_reading("inflight")

    # -- cf:gate: waiting for how another packet ended
    def completion(self, scope: Any, packet_id: str) -> asyncio.Future:
        """A future of how packet `packet_id` of `scope` ended (a StoredResult): at once if
        it is in the result store, else when it completes."""
        future = (self.node.loop or asyncio.get_running_loop()).create_future()
        stored = self.scheduler.results.get((scope, packet_id), self.node.clock())
        if stored is not None:
            future.set_result(stored)
        else:
            self._completions.setdefault((scope, packet_id), []).append(future)
        return future

    def _completed(self, key: Any) -> None:
        waiters = self._completions.pop(key, None)
        if waiters:
            stored = self.scheduler.results.get(key, self.node.clock())
            for future in waiters:
                if not future.done() and stored is not None:
                    future.set_result(stored)
