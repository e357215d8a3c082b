"""The hosted-element runner: the node elements (cf:*, co:*, ed:*, rm:*, mc:*, df:consume)
run in the front as packets of the `hosted` lane. The scheduler queues them like any lane
(priorities, aging, dependencies, deadlines); this runner takes them out at the end of a
loop turn, and runs each as a task with an
`ElementContext` that sees the node only through `NodeControl` (pfnode/node/control.py).

Each ends through the one answer path: its value as a success, `ElementError` as PF002,
`ElementFailed`/`HandlerError` with their code, anything else as PF500 with an incident id
that is in the log. Cancelled (its deadline, its submitter left, the node stops): no
answer from here; whoever cancelled it answered or nobody waits.
"""
from __future__ import annotations

import asyncio
import logging
import time

import orjson

from ..core import protocol
from ..core.flight import HOSTED, Flight, failure, success
from ..elements.base import ElementError, ElementFailed, Encoded
from ..elements.catalog import NODE_ELEMENTS
from ..elements.hosted.resources import exact
from ..elements.hosted.engine import ElementContext
from ..errors import ErrorCode, HandlerError
from .answers import incident_id
from .shared import NodeShared


log = logging.getLogger("pfnode.front")

MAX_HOSTED = 10_000  # node elements running or waiting, node-wide; each client's share of it (core/shares.py)


class HostedRunner:
    def __init__(self, node: NodeShared) -> None:
        self.node = node
        self.running: dict[Flight, asyncio.Task] = {}
        self._scheduled = False

    def pump(self) -> None:
        """Start queued node elements at the end of this loop turn."""
        node = self.node
        if not self._scheduled and node.loop is not None and node.scheduler.lanes[HOSTED].live:
            self._scheduled = True
            node.loop.call_soon(self._start)

    def _start(self) -> None:
        self._scheduled = False
        node = self.node
        now = node.clock()
        while len(self.running) < MAX_HOSTED:
            flight = node.scheduler.dispatch(HOSTED, now)
            if flight is None:
                break
            self.running[flight] = asyncio.ensure_future(self._run(flight))

    async def _run(self, flight: Flight) -> None:
        node = self.node
        element = NODE_ELEMENTS[flight.packet.key]
        ctx = ElementContext(node.control, flight, flight.identity)
        started = time.perf_counter()
        try:
            value = await element.run(ctx, orjson.loads(memoryview(flight.packet.data)))
            # kept in the result store for dependents: stored at its exact size (exact)
            data_json = value if isinstance(value, Encoded) else exact(protocol.encode_json(value))
            outcome = success(data_json, (time.perf_counter() - started) * 1000)
        except asyncio.CancelledError:
            return  # answered already (its deadline) or nobody waits (its submitter left)
        except ElementError as exc:
            outcome = failure(ErrorCode.INVALID_PACKET, str(exc), (time.perf_counter() - started) * 1000)
        except (ElementFailed, HandlerError) as exc:
            outcome = failure(exc.code, exc.message, (time.perf_counter() - started) * 1000)
        except Exception as exc:
            incident = incident_id()
            log.exception("front: internal error %s running %s for packet %s", incident, flight.packet.key, flight.id)
            outcome = failure(ErrorCode.HANDLER_FAILED, f"{flight.packet.key} failed ({type(exc).__name__}); "
                                                        f"internal error {incident}, in the node's log")
        finally:
            ctx.cancel_children()
            self.running.pop(flight, None)
            node.pump()
        node.settle(flight, outcome)

    def cancel(self, flight: Flight) -> None:
        """Stop a running node element (its steps still in flight are dropped with it)."""
        task = self.running.pop(flight, None)
        if task is not None:
            task.cancel()

    def cancel_all(self) -> None:
        for task in self.running.values():
            task.cancel()
