"""The node: the composition root. It builds the parts, wires them, and holds the state
they share (settings, the clock, the links, ready/draining); each rule lives in a part:

    transport --deliver--> intake (frames, roles, admission carried out)
        admission.decide (pure) --> scheduler (core) --> pool --> worker processes
                                                    --> hosted (node elements, via control)
                                                    --> hub (core) --> a connected reactor
    every ending --> answers.settle --> scheduler.complete --> the origin's one reply
    timer (the one call_later) --> expiries and hub alarms;  loops --> heartbeats, sweeps
    http (routes and auth) and status (/status from the same state as /metrics)

The parts reach each other through the node's attributes (`node.scheduler`,
`node.answers`, ...); nothing here reads a socket or a pipe.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from .. import __version__, native
from ..core import protocol
from ..core.flight import HOSTED, Flight, Outcome, failure
from ..core.hub import Hub
from ..core.scheduler import LANES, Scheduler
from ..elements.catalog import NODE_ELEMENTS
from ..elements.hosted.state import ElementState
from ..errors import ErrorCode
from ..ops import logs
from ..ops.jobs import keep
from ..ops.metrics import Metrics, NodeState
from ..pool import buffers
from ..pool.pool import Pool
from ..registry import STANDARD_HANDLERS
from ..settings import Settings
from ..transports.base import HttpReply, PeerLink
from . import status as status_of
from .answers import Answers
from .auth import Access
from .backoff import AuthBackoff
from .control import Control
from .hosted import MAX_HOSTED, HostedRunner
from .http import HttpRoutes
from .intake import Intake
from .links import Links, scope_of
from .loops import Loops
from .timer import Timer

log = logging.getLogger("pfnode.front")


class Node:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.loop: asyncio.AbstractEventLoop | None = None  # set by start()
        self.ready = False
        self.draining = False
        self.stopping = asyncio.Event()
        self.started_at = time.time()
        self.uplink: Any = None  # app/dialout.py's Uplink, for `pfnode connect`
        self._jobs: set[asyncio.Task] = set()
        self.hot_path = native.report()  # which per-packet modules run compiled (pfnode/native.py)
        self.metrics = Metrics(self.gauges, info={"version": __version__, "transport": settings.transport,
                                                  "hot_path": self.hot_path["mode"]})
        self.access = Access(settings.token_file)
        # who failed to authenticate lately (node/backoff.py), and the refused connections' log lines
        self.auth_backoff = AuthBackoff(settings.auth_backoff_failures, settings.auth_backoff_ms / 1000)
        self.refusals = logs.RateLimiter(1, 60.0, clock=clock)  # per reason
        self.scheduler = Scheduler(aging_ms=settings.aging_ms, max_queued=settings.max_queued,
                                   max_blocked=settings.max_blocked,
                                   max_blocked_per_client=settings.max_blocked_per_client,
                                   max_queued_bytes=settings.max_queued_bytes,
                                   max_queued_bytes_per_client=settings.max_queued_bytes_per_client,
                                   result_store_entries=settings.result_store_entries,
                                   result_store_age_ms=settings.result_store_age_ms,
                                   result_store_bytes=settings.result_store_bytes, lanes=(*LANES, HOSTED),
                                   lane_bounds={HOSTED: MAX_HOSTED})
        self.pool = Pool(settings, self.scheduler, self.settle, clock=clock, metrics=self.metrics)
        self.timer = Timer(self)
        self.answers = Answers(self)
        self.links = Links(self)
        self.control = Control(self)
        self.hub = Hub(self, probe_ms=settings.probe_ms, reroute_grace_ms=settings.reroute_grace_ms,
                       clock=clock, may_run=self._may_run)
        self.intake = Intake(self)
        self.hosted = HostedRunner(self)
        self.http = HttpRoutes(self)
        self.loops = Loops(self)
        self.elements = ElementState(self.control, max_buffer_bytes=settings.max_buffer_bytes,
                                     cache_bytes=settings.cache_bytes,
                                     buffer_table=self.pool.supervisor.buffer_table, buffer_files=buffers,
                                     max_frame_bytes=settings.max_frame_bytes,
                                     migrations=(self.pool.lane_overrides, self.hub.preferences))
        self.scheduler.on_retire = self.elements.locks.retired
        self.admission_view = _AdmissionView(self)

    # ------------------------------------------------------------------ lifecycle
    @property
    def state(self) -> str:
        return "draining" if self.draining else ("ready" if self.ready else "starting")

    async def start(self) -> None:
        """Start the workers and the node's own loops (heartbeats, housekeeping, autoscaling)."""
        self.loop = asyncio.get_running_loop()
        self.access.load()
        await self.pool.start()
        self.ready = True
        standard = NODE_ELEMENTS.keys() | (STANDARD_HANDLERS.keys() if self.settings.data_elements else set())
        replaced = sorted(key for key in standard & self.pool.handler_keys
                          if not self.pool.handlers[key].get("standard"))
        if replaced:
            log.info("front: handlers %s replace the standard elements of the same keys", ", ".join(replaced))
        self.loops.start()

    async def shutdown(self, quiet: bool = False) -> None:
        """Stop accepting, let in-flight packets finish for shutdown_grace_ms, answer the
        rest PF503, close every link, stop the workers. `quiet`: a node that never started
        (its start failed) stops what it started without a line of log."""
        if self.draining:
            return
        self.draining = True
        self.ready = False
        grace = self.settings.shutdown_grace_ms / 1000
        if not quiet:
            log.info("front: draining %d in-flight packets (grace %.1f s)", len(self.scheduler.inflight), grace)
        if self.uplink is not None:  # our hub: send us nothing more
            self.uplink.link.send(self.announcement())
        await self._until(lambda: not self.scheduler.inflight, grace)
        for job in self._jobs:
            job.cancel()
        self.hosted.cancel_all()
        for flight in sorted(self.scheduler.inflight.values(), key=lambda f: f.order):
            self.settle(flight, failure(ErrorCode.UNAVAILABLE, "node is shutting down"))
        self.timer.cancel()
        self.elements.close()
        await self.pool.close(grace_s=min(2.0, grace))
        for link in self.links:
            await link.flush(1.0)
            link.close(1001, "node shutting down")
        await self._until(lambda: not self.links, 2.0)  # let the close handshakes finish
        for link in self.links:  # peers that do not answer a close (not reading at all)
            link.abort()
        if not quiet:
            log.info("front: stopped (%s)", {**self.pool.counters, **self.metrics.counts})

    async def _until(self, done: Callable[[], bool], within_s: float) -> None:
        """Wait (polling on the node's clock) until `done()` or `within_s` has passed."""
        deadline = self.clock() + within_s
        while not done() and self.clock() < deadline:
            await asyncio.sleep(0.01)

    def background(self, coro) -> asyncio.Task:
        return keep(self._jobs, coro)

    def request_reload(self) -> None:
        """SIGHUP: read the token file again and roll the workers onto fresh handler code
        (one at a time, in the background: a signal handler only enqueues), and with --dask
        the Dask workers (docs/DASK.md)."""
        self.background(self._reload())

    async def _reload(self) -> None:
        log.info("front: SIGHUP: reloading the token file and rolling the workers")
        self.links.reload_tokens()
        try:
            await self.pool.roll()
        except Exception as exc:
            log.error("front: rolling the workers failed: %s", exc)
        if self.pool.dask is not None:  # --dask: its workers too (pfnode/dask/upkeep.py)
            try:
                await self.pool.dask.reload()
            except Exception as exc:
                log.error("front: rolling the Dask workers failed: %s: %s", type(exc).__name__, exc)

    # ------------------------------------------------------------------ what the transports call
    def http_route(self, path: str, upgrade: bool = True, headers: Any = None,
                   peer: str | None = None, pending: int = 0) -> HttpReply | None:
        return self.http.route(path, upgrade, headers, peer, pending)

    def on_open(self, link: PeerLink) -> None:
        self.links.on_open(link)

    def on_message(self, link: PeerLink, frame: bytes | str) -> None:
        self.intake.on_message(link, frame)

    def on_close(self, link: PeerLink, code: int | None) -> None:
        self.links.on_close(link, code)

    def take_frame(self) -> bool:
        return self.intake.take_frame()

    # ------------------------------------------------------------------ shared by the parts
    def settle(self, flight: Flight, outcome: Outcome) -> None:
        """The one answer path (node/answers.py); also the hub's and the pool's."""
        self.answers.settle(flight, outcome)

    def pump(self) -> None:
        """Hand queued packets out at the end of this loop turn: to workers, and the hosted
        ones to their node elements."""
        self.pool.pump()
        self.hosted.pump()

    def keys(self) -> list[str]:
        """Every key this node answers itself: its handlers and its node elements."""
        return sorted(self.pool.handler_keys | NODE_ELEMENTS.keys())

    def scope_of(self, link: PeerLink) -> Any:
        return scope_of(link)

    def gauges(self) -> NodeState:
        return status_of.gauges(self)

    def status(self) -> dict[str, Any]:
        return status_of.status(self)

    def heartbeat_payload(self) -> dict[str, Any]:
        return status_of.heartbeat_payload(self)

    def announcement(self, seq: int = 0) -> bytes:
        """A heartbeat that tells a hub what this node runs (the capabilities extension):
        its handlers, not the standard elements (the hub has its own, which only a user's
        replaces); nothing once draining."""
        keys = [] if self.draining else sorted(key for key in self.pool.handler_keys
                                               if not self.pool.handlers[key].get("standard"))
        return protocol.encode_heartbeat(seq, {**self.heartbeat_payload(), "capabilities": keys})

    # ------------------------------------------------------------------ the hub's effects (core/hub.HubEffects)
    def offer(self, link: PeerLink, seq: int, flight: Flight, remaining_ms: int) -> None:
        link.send(protocol.encode_submit_raw(seq, flight.packet, remaining_ms))

    def set_alarm(self, flight: Flight, when: float) -> None:
        self.scheduler.set_alarm(flight, when)
        self.timer.arm(flight.alarm)

    def links_may_come(self) -> bool:
        return not self.draining

    def _may_run(self, link: PeerLink, flight: Flight) -> bool:
        """Whether the hub may send `flight` to `link` to run: a peer with the reactor role;
        without authentication, any peer (the spec's reactors never say what they run: the
        hub asks them, in the order of core/hub.py's rules)."""
        return not self.access.enabled or self.access.may(link.identity, "reactor")


class _AdmissionView:
    """What admission.decide reads of the node (node/admission.AdmissionView)."""

    __slots__ = ("_node", "elements", "hub_routing")

    def __init__(self, node: Node) -> None:
        self._node = node
        self.elements = NODE_ELEMENTS
        self.hub_routing = node.settings.hub_routing

    @property
    def handlers(self) -> dict[str, dict]:
        return self._node.pool.handlers

    def runs_elsewhere(self, key: str) -> bool:
        return self._node.hub.runs_elsewhere(key)

    def migrated(self, key: str) -> bool:
        node = self._node
        return bool(node.hub.preferences) and key in node.hub.preferences \
            and node.control.migrated_link(key) is not None

    def lane_of(self, key: str, group: str) -> str:
        return self._node.pool.lane_of(key, group)

    def may(self, identity: Any, role: str) -> bool:
        return self._node.access.may(identity, role)
