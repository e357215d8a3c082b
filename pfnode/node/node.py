"""The node: frames in from the links, packets out to the pool or the hub, one answer back.

    transport --deliver--> Node.on_message --decode--> admit (scheduler)
        --> local handler: scheduler lane queue --> pool --> worker
        --> no handler here: hub --> a connected reactor
        --> built-in (mc:scale, mc:status): run here
    every ending --> Node.settle --> scheduler.complete --> the origin's one reply

The node owns the links, the one timer (every deadline and hub alarm is in the
scheduler's table, and one `call_later` wakes the node for the earliest), and the answer
path. The scheduler owns the packets in flight; the pool, the hub and the transports
act on them and report back here. Nothing here reads a socket or a pipe.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
import time
from typing import Any, Callable, NamedTuple

import orjson

from .. import __version__
from ..ops import logs
from ..pool import pipe
from ..core import protocol
from .auth import TokenTable, token_hash, token_of
from ..pool.capacity import autoscale_step, read_capacity, recommend
from ..errors import ErrorCode, HandlerError
from ..elements.catalog import NODE_ELEMENTS
from ..elements.base import ElementError, ElementFailed
from ..elements.hosted.engine import ElementContext
from ..elements.hosted.state import ElementState
from ..core.flight import (BLOCKED, DISPATCHED, DONE, FORWARDED, HOSTED, QUEUED, Flight, Outcome, failure,
                           resolve_timeout_ms, success)
from ..core.hub import Hub
from ..ops.jobs import keep
from ..transports.base import HEARTBEAT_TIMEOUT_CLOSE_CODE, HttpReply, PeerLink
from ..ops.metrics import Metrics, NodeState
from ..dask.lane import DASK
from ..pool.pool import Pool
from ..registry import STANDARD_HANDLERS
from ..core.scheduler import LANES, Refusal, Scheduler
from ..settings import Settings

log = logging.getLogger("pfnode.front")


class Target(NamedTuple):
    """Where a co:broadcast step runs: a worker (its dispatcher view) or a reactor (its link)."""

    name: str
    kind: str  # "worker" or "reactor"
    handle: Any
    lane: str | None

AUTH_CLOSE_CODE = 4401  # a private-use close code: "unauthenticated"
MAX_HOSTED_RUNNING = 10_000  # node elements running at once; more wait in the hosted queue


class Node:
    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = Metrics(self.metrics_state, info={"version": __version__, "transport": settings.transport})
        self.scheduler = Scheduler(aging_ms=settings.aging_ms, max_queued=settings.max_queued,
                                   max_blocked=settings.max_blocked,
                                   max_blocked_per_client=settings.max_blocked_per_client,
                                   max_queued_bytes=settings.max_queued_bytes,
                                   max_queued_bytes_per_client=settings.max_queued_bytes_per_client,
                                   result_store_entries=settings.result_store_entries,
                                   result_store_age_ms=settings.result_store_age_ms,
                                   result_store_bytes=settings.result_store_bytes,
                                   lanes=(*LANES, HOSTED))
        self.pool = Pool(settings, self.scheduler, self.settle, clock=clock, metrics=self.metrics)
        self.hub = Hub(self, probe_ms=settings.probe_ms, reroute_grace_ms=settings.reroute_grace_ms,
                       clock=clock, may_run=self._may_run)
        self.tokens: TokenTable | None = None  # None: no authentication (loopback only)
        self.links: set[PeerLink] = set()
        self.uplink: Any = None  # pfnode/dialout.py's Uplink, for `pfnode connect`
        self.draining = False
        self.ready = False
        self.stopping = asyncio.Event()
        self.counters: collections.Counter[str] = collections.Counter()
        self.started_at = time.time()
        self._jobs: set[asyncio.Task] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._incidents = itertools.count(1)
        self._hosted: dict[Flight, asyncio.Task] = {}  # node elements running now
        self._hosted_scheduled = False
        self._turn_frames = 0  # frames handled in this turn of the event loop (take_frame)
        self._completions: dict[Any, list[asyncio.Future]] = {}  # (scope, id) -> cf:gate waiters
        self.elements = ElementState(self)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the workers and the node's own loops (heartbeats, autoscaling)."""
        self._loop = asyncio.get_running_loop()
        if self.settings.token_file:
            self.tokens = TokenTable.load(self.settings.token_file)
            log.info("front: %d tokens from %s", len(self.tokens), self.settings.token_file)
        elif self.settings.insecure_no_auth:
            log.warning("front: no authentication (--insecure-no-auth) on %s: anyone who can reach "
                        "the port can submit, answer forwarded packets and resize the node",
                        self.settings.host)
        await self.pool.start()
        self.ready = True
        standard = NODE_ELEMENTS.keys() | (STANDARD_HANDLERS.keys() if self.settings.data_elements else set())
        replaced = sorted(key for key in standard & self.pool.handler_keys
                          if not self.pool.handlers[key].get("standard"))
        if replaced:
            log.info("front: handlers %s replace the standard elements of the same keys", ", ".join(replaced))
        self._background(self._heartbeat_loop())
        self._background(self._paused_links_loop())
        if self.settings.autoscale:
            self._background(self._autoscale_loop())

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight packets finish for shutdown_grace_ms, answer the
        rest PF503, close every link, stop the workers."""
        if self.draining:
            return
        self.draining = True
        self.ready = False
        grace = self.settings.shutdown_grace_ms / 1000
        log.info("front: draining %d in-flight packets (grace %.1f s)", len(self.scheduler.inflight), grace)
        if self.uplink is not None:  # our hub: send us nothing more
            self.uplink.link.send(self.announcement())
        deadline = time.monotonic() + grace
        while self.scheduler.inflight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for job in [*self._jobs, *self._hosted.values()]:
            job.cancel()
        for flight in sorted(self.scheduler.inflight.values(), key=lambda f: f.order):
            self.settle(flight, failure(ErrorCode.UNAVAILABLE, "node is shutting down"))
        if self._timer is not None:
            self._timer.cancel()
        self.elements.close()
        await self.pool.close(grace_s=min(2.0, grace))
        for link in list(self.links):
            await link.flush(1.0)
            link.close(1001, "node shutting down")
        deadline = time.monotonic() + 2.0
        while self.links and time.monotonic() < deadline:  # let the close handshakes finish
            await asyncio.sleep(0.01)
        for link in list(self.links):  # peers that do not answer a close (not reading at all)
            link.abort()
        log.info("front: stopped (%s)", {**self.pool.counters, **self.counters})

    def _background(self, coro) -> asyncio.Task:
        return keep(self._jobs, coro)

    # ------------------------------------------------------------------ HTTP
    def health(self) -> dict[str, Any]:
        state = "draining" if self.draining else ("ready" if self.ready else "starting")
        s = self.scheduler
        pool = self.pool.stats()
        return {"status": state, "endpoint": self.settings.path, "connections": len(self.links),
                "uptime_s": round(time.time() - self.started_at, 3),
                "handlers": self.keys(), **pool,
                "queued": s.queued, "blocked": s.blocked, "inflight": len(s.inflight),
                "results_stored": len(s.results), "hub": self.hub.stats(s.forwarded),
                "elements": self.elements.stats(), "counters": {**pool["counters"], **self.counters}}

    def metrics_state(self) -> NodeState:
        """The gauges of /metrics, read at each scrape."""
        s = self.scheduler
        lanes = {}
        for lane in self.pool.lanes:
            stats = self.pool.dispatcher.lane_stats(lane)
            lanes[lane] = {"workers": stats["workers"], "busy": stats["busy"], "held": stats["running"],
                           "target": self.pool.targets[lane], "queued": s.depth(lane)}
        return {"ready": self.ready, "draining": self.draining, "connections": len(self.links),
                "inflight": len(s.inflight), "blocked": s.blocked, "forwarded": s.forwarded,
                "parked": len(self.hub.parked), "results_stored": len(s.results),
                "reactors": self.hub.stats(s.forwarded)["reactors"], "lanes": lanes,
                "elements": self.elements.gauges()}

    def keys(self) -> list[str]:
        """Every key this node answers itself: its handlers and its node elements."""
        return sorted(self.pool.handler_keys | NODE_ELEMENTS.keys())

    def heartbeat_payload(self) -> dict[str, Any]:
        s = self.scheduler
        return {"timestamp": int(time.time() * 1000),
                "node": {"status": "draining" if self.draining else "ready",
                         "workers": sum(self.pool.lane_sizes().values()), "queued": s.queued,
                         "inflight": len(s.inflight)}}

    def announcement(self, seq: int = 0) -> bytes:
        """A heartbeat that tells a hub what this node runs (the capabilities extension):
        nothing once draining. The built-ins answer for the node itself: never offered."""
        # its handlers, not the standard elements: the hub has its own, which only a user's replaces
        keys = [] if self.draining else sorted(key for key in self.pool.handler_keys
                                               if not self.pool.handlers[key].get("standard"))
        return protocol.encode_heartbeat(seq, {**self.heartbeat_payload(), "capabilities": keys})

    def http_route(self, path: str, upgrade: bool = True, headers: Any = None,
                   peer: str | None = None) -> HttpReply | None:
        """What a transport answers an HTTP request for `path` with, or None to go on
        with the WebSocket upgrade (`upgrade`: the request asked for one)."""
        full_path, path = path, path.partition("?")[0]
        if path == "/metrics":  # Prometheus: admins only when there are tokens
            refusal = self._http_refusal(full_path, headers, "admin")
            if refusal is not None:
                return refusal
            body, content_type = self.metrics.render(headers.get("Accept") if headers is not None else None)
            return HttpReply(200, "OK", content_type, body)
        if path == "/healthz":  # readiness, for load balancers and systemd: nothing more
            state = "draining" if self.draining else ("ready" if self.ready else "starting")
            body = orjson.dumps({"status": state}) + b"\n"
            dask = self.pool.dask
            if self.ready and dask is not None and dask.problem:  # the Dask cluster unreachable
                body = orjson.dumps({"status": "degraded", "dask": dask.problem}) + b"\n"
            elif self.ready:
                return HttpReply(200, "OK", "application/json", body)
            return HttpReply(503, "Service Unavailable", "application/json", body)
        if path == "/status":  # the node's detail (workers, pids, counters): admins only
            refusal = self._http_refusal(full_path, headers, "admin")
            if refusal is not None:
                return refusal
            body = orjson.dumps(self.health(), option=orjson.OPT_INDENT_2) + b"\n"
            return HttpReply(200, "OK", "application/json", body)
        if path != self.settings.path:
            return HttpReply(404, "Not Found", "text/plain; charset=utf-8",
                             f"Not found. The PacketFlow endpoint is {self.settings.path}\n".encode())
        if self.draining:
            if upgrade:
                self.metrics.connection_refused("draining")
                logs.connection_refused(log, peer=peer, reason="draining", detail="node shutting down")
            return HttpReply(503, "Service Unavailable", "text/plain; charset=utf-8", b"Node shutting down\n")
        if upgrade and len(self.links) >= self.settings.max_connections:
            self.counters["connections_refused"] += 1
            self.metrics.connection_refused("max_connections")
            logs.connection_refused(log, peer=peer, reason="max_connections",
                                    detail=f"{len(self.links)} connections already (--max-connections)")
            return HttpReply(503, "Service Unavailable", "text/plain; charset=utf-8",
                             b"Too many connections; retry later\n", (("Retry-After", "1"),))
        if not upgrade:
            return HttpReply(426, "Upgrade Required", "text/plain; charset=utf-8",
                             b"This is a PacketFlow WebSocket endpoint; connect with a WebSocket client.\n")
        return None

    def _http_refusal(self, path: str, headers: Any, role: str) -> HttpReply | None:
        """None when the request may see a page that needs `role`, else the HTTP answer."""
        if self.tokens is None:
            return None
        identity = self.tokens.lookup(token_of(path, headers))
        if identity is None:
            self.counters["auth_failures"] += 1
            self.metrics.auth_failure("bad_token" if token_of(path, headers) else "missing_token")
            return HttpReply(401, "Unauthorized", "text/plain; charset=utf-8",
                             b"A token is needed: 'Authorization: Bearer <token>'\n",
                             (("WWW-Authenticate", 'Bearer realm="pfnode"'),))
        if not identity.may(role):
            self.counters["forbidden"] += 1
            self.metrics.auth_failure("forbidden")
            return HttpReply(403, "Forbidden", "text/plain; charset=utf-8",
                             f"{identity.name} does not have the {role} role\n".encode())
        return None

    # ------------------------------------------------------------------ links
    def is_uplink(self, link: PeerLink) -> bool:
        return self.uplink is not None and link is self.uplink.link

    def on_open(self, link: PeerLink) -> None:
        self.links.add(link)
        self.counters["connections"] += 1
        self.metrics.connection_opened()
        if self.tokens is not None and not self.is_uplink(link):
            token = token_of(link.request_path, link.request_headers)
            identity = self.tokens.lookup(token)
            if identity is None:
                self.counters["auth_failures"] += 1
                reason = "bad_token" if token else "missing_token"
                self.metrics.auth_failure(reason)
                self.metrics.connection_refused("unauthenticated")
                logs.connection_refused(log, peer=link.peer, reason="unauthenticated",
                                        detail="an unknown token" if token else "no token")
                link.send(protocol.encode_error(0, ErrorCode.UNAUTHENTICATED,
                                                "unknown token" if token else
                                                "authentication required: present a token as "
                                                "'Authorization: Bearer <token>' or '?token=<token>'"))
                link.close(AUTH_CLOSE_CODE, "unauthenticated")
                return
            link.identity = identity
            link.credential = token_hash(token)
        log.debug("front: %s connected%s", link.peer, f" as {link.identity}" if link.identity else "")
        if self.settings.hub_routing and not self.is_uplink(link):
            self.hub.add_link(link)

    def request_reload(self) -> None:
        """SIGHUP: read the token file again and roll the workers onto fresh handler code
        (one at a time, in the background: a signal handler only enqueues)."""
        self._background(self._reload())

    async def _reload(self) -> None:
        log.info("front: SIGHUP: reloading the token file and rolling the workers")
        self.reload_tokens()
        try:
            await self.pool.roll()
        except Exception as exc:
            log.error("front: rolling the workers failed: %s", exc)

    def reload_tokens(self) -> None:
        """Read the token file again (SIGHUP). Links whose token is gone are closed (PF401);
        the others take their token's roles as the file now says. A file with problems
        keeps the previous table (logged)."""
        if not self.settings.token_file:
            return
        try:
            tokens = TokenTable.load(self.settings.token_file)
        except Exception as exc:
            log.error("front: token file not reloaded, the previous one stays in force: %s", exc)
            return
        self.tokens = tokens
        closed = 0
        for link in list(self.links):
            if link.identity is None or self.is_uplink(link):
                continue
            identity = tokens.by_hash(link.credential)
            if identity is None:
                closed += 1
                link.send(protocol.encode_error(0, ErrorCode.UNAUTHENTICATED, "token revoked"))
                link.close(AUTH_CLOSE_CODE, "token revoked")
            else:
                link.identity = identity
        log.info("front: %d tokens from %s; %d connections closed (their token is gone)",
                 len(tokens), self.settings.token_file, closed)

    def _may(self, link: PeerLink, role: str) -> bool:
        """Whether `link` may act in `role` (always, without authentication)."""
        return self.tokens is None or (link.identity is not None and link.identity.may(role))

    def _may_run(self, link: PeerLink, flight: Flight, unproven: bool) -> bool:
        """Whether the hub may send `flight` to `link` to run: a peer with the reactor role;
        without authentication, a peer that announced or has answered before (not
        `unproven`), or the submitter itself for its own packets (the spec's usage example)."""
        if self.tokens is not None:
            return link.identity is not None and link.identity.may("reactor")
        return not unproven or link is flight.origin

    def _forbid(self, link: PeerLink, seq: int, what: str, packet_id: str | None = None,
                submit: bool = False) -> None:
        self.counters["forbidden"] += 1
        self.metrics.auth_failure("forbidden")
        log.info("front: %s (%s) may not %s", link.peer, link.identity, what)
        message = f"{link.identity} may not {what}"
        if submit:
            link.send(protocol.encode_failure(seq, packet_id, ErrorCode.FORBIDDEN, message))
        else:
            link.send(protocol.encode_error(seq, ErrorCode.FORBIDDEN, message, packet_id))

    def on_close(self, link: PeerLink, code: int | None) -> None:
        if link.closed:
            return
        link.closed = True
        self.links.discard(link)
        self.metrics.connection_closed(code)
        dropped = self.scheduler.of_origin(link)
        for flight in dropped:
            self._abandon(flight)
        self.hub.remove_link(link)
        scope = self._scope(link)
        if not isinstance(scope, str) or not any(other.identity is not None and other.identity.name == scope
                                                 for other in self.links):
            self.elements.release(scope)  # what only it held: its subscriptions, buffers, leases, cache
        log.log(logging.INFO if dropped else logging.DEBUG, "front: %s disconnected (%s)%s",
                link.peer, code, f"; dropped {len(dropped)} in-flight packets" if dropped else "")

    def _abandon(self, flight: Flight) -> None:
        """Its submitter left: it will not run if it has not started, and its answer is
        dropped if it has (a running packet keeps its worker and its deadline, so a hung
        handler is still killed when nobody waits for its answer)."""
        self.counters["cancelled"] += 1
        state = flight.state
        if state is not DISPATCHED:  # a dispatched one is still settled (and counted) when it ends
            self.metrics.packet_ended(flight.packet.group, "cancelled")
        if state is FORWARDED:
            self.hub.abandon(flight)
            self.scheduler.forget(flight)
        elif state is DISPATCHED and flight.lane == HOSTED:
            self.scheduler.forget(flight)  # nobody waits: its element stops, and its steps with it
            task = self._hosted.pop(flight, None)
            if task is not None:
                task.cancel()
        elif state is DISPATCHED:
            self.scheduler.orphan(flight)
            self.pool.cancel(flight)
        elif state is QUEUED or state is BLOCKED:
            self.scheduler.forget(flight)
            self._pump()

    # ------------------------------------------------------------------ frames
    def take_frame(self) -> bool:
        """Whether a link may hand over one more frame in this turn of the event loop: at
        most `frames_per_turn` frames are handled between two polls of the sockets and the
        workers' pipes, so that no peer's flood holds up another's frames, or the workers'
        answers, for longer than that."""
        count = self._turn_frames
        if not count:
            if self._loop is None:
                return True  # not started: no loop turns to count
            self._loop.call_soon(self._new_turn)  # runs before the next poll
        self._turn_frames = count + 1
        return count < self.settings.frames_per_turn

    def _new_turn(self) -> None:
        self._turn_frames = 0

    def on_message(self, link: PeerLink, frame: bytes | str) -> None:
        """One frame from a link. Whatever goes wrong in here, the frame is answered: an
        exception becomes a PF500 naming an incident id that is also in the log."""
        s = self.settings
        link.last_seen = time.monotonic()
        self.metrics.frame_in(len(frame))
        msg = None
        try:
            msg = protocol.decode(frame, max_frame_bytes=s.max_frame_bytes, max_timeout_ms=s.max_timeout_ms,
                                  raw_data=True)
            self._handle(link, msg)
        except Exception:
            self._internal_error(link, msg)

    def _internal_error(self, link: PeerLink, msg: Any) -> None:
        incident = f"E{next(self._incidents):06d}-{os.urandom(3).hex()}"
        log.exception("front: internal error %s handling a frame from %s (%s)", incident, link.peer,
                      getattr(msg, "type", "undecoded"),
                      extra={"event": "internal_error", "incident": incident, "peer": link.peer})
        self.metrics.internal_error()
        self.counters["internal_errors"] += 1
        text = f"internal error {incident}; the node's log has the details"
        try:
            if isinstance(msg, protocol.Message) and msg.type == "submit":
                packet = msg.payload
                flight = self.scheduler.inflight.get((self._scope(link), packet.id))
                if flight is not None and flight.origin is link and flight.seq == msg.seq:
                    self.settle(flight, failure(ErrorCode.HANDLER_FAILED, text))
                else:
                    link.send(protocol.encode_failure(msg.seq, packet.id, ErrorCode.HANDLER_FAILED, text))
            elif not (isinstance(msg, protocol.Message) and msg.type in ("result", "error")):
                link.send(protocol.encode_error(getattr(msg, "seq", 0), ErrorCode.HANDLER_FAILED, text))
        except Exception:
            log.exception("front: could not answer after internal error %s", incident)

    @staticmethod
    def _scope(link: PeerLink) -> Any:
        """Whose ids and results a link's packets are among (see Flight.scope): its token's
        identity, or without authentication the connection itself. So one client can
        neither take another's ids (PF409) nor read or feed another's results."""
        return link.identity.name if link.identity is not None else link

    def _handle(self, link: PeerLink, msg: Any) -> None:
        if isinstance(msg, protocol.Rejected):
            self.counters[f"rejected_{msg.code}"] += 1
            self.metrics.frame_rejected(msg.code)
            log.debug("front: %s rejected %s: %s", link.peer, msg.code, msg.message)
            if msg.type == "result" and self._may(link, "reactor"):
                self.hub.on_invalid_result(link, msg.packet_id, msg.message)  # cannot be relayed
            link.send(msg.reply)
        elif msg.type == "submit":
            self._submit(link, msg.seq, msg.payload)
        elif msg.type == "heartbeat":
            self._heartbeat(link, msg)
        elif msg.type == "result":  # a reactor answers a packet the hub forwarded to it
            if self._may(link, "reactor"):
                self.hub.on_result(link, msg.payload)
            else:
                self._forbid(link, msg.seq, "answer packets (the reactor role)", msg.payload.packet_id)
        elif self._may(link, "reactor"):
            self.hub.on_error_frame(link, msg.seq, msg.payload)

    def _heartbeat(self, link: PeerLink, msg: protocol.Message) -> None:
        if self.is_uplink(link):
            # our hub's heartbeat: as a reactor we only note it, as the spec's reactors do;
            # answering would start an endless exchange between two pfnode nodes
            return
        capabilities = msg.payload.get("capabilities")
        if capabilities is not None and not self._may(link, "reactor"):
            self._forbid(link, msg.seq, "announce capabilities (the reactor role)")
            return
        link.send(protocol.encode_heartbeat(msg.seq, self.heartbeat_payload()))
        if capabilities is not None:
            if isinstance(capabilities, list) and all(isinstance(c, str) for c in capabilities):
                node = msg.payload.get("node")
                stopping = isinstance(node, dict) and node.get("status") == "draining"
                self.hub.on_announce(link, capabilities, stopping)
            else:
                log.warning("front: %s announced capabilities that are not a list of strings; "
                            "ignored", link.peer)

    def _submit(self, link: PeerLink, seq: int, packet: protocol.Packet) -> None:
        pid = packet.id
        uplink = self.uplink if self.is_uplink(link) else None
        if uplink is not None and uplink.replay(pid, seq):
            return  # the hub sent it again after a reconnect: it runs (or ran) once
        if not self.ready:
            self.metrics.packet_ended(packet.group, ErrorCode.UNAVAILABLE.value)
            link.send(protocol.encode_failure(seq, pid, ErrorCode.UNAVAILABLE, "node is shutting down"
                                              if self.draining else "node is starting; retry shortly"))
            return
        admitted = self._admit(packet, origin=link, seq=seq, scope=self._scope(link),
                               identity=link.identity, from_uplink=uplink is not None)
        if not isinstance(admitted, Flight):
            if admitted.code is ErrorCode.FORBIDDEN:
                self._forbid(link, seq, admitted.message, pid, submit=True)
                return
            self.counters[f"refused_{admitted.code.value}"] += 1
            self.metrics.packet_ended(packet.group, admitted.code.value)
            link.send(protocol.encode_failure(seq, pid, admitted.code, admitted.message))
            return
        limit = self.settings.max_inflight_per_connection
        if admitted.state is not DONE and self.scheduler.count_of(link) >= limit and self._awaiting(link) >= limit:
            # Backpressure: stop reading this peer until an answer frees a slot;
            # TCP flow control then slows the sender.
            link.pause_reading("inflight")

    def _admit(self, packet: protocol.Packet, *, origin: Any, seq: int, scope: Any, identity: Any,
               from_uplink: bool = False) -> Flight | Refusal:
        """Admit a packet from a link or from a node element (a step): to a worker lane
        (a handler here; a user's replaces a standard element), to the node's own elements
        (run here, "hosted"), or to the hub (a connected reactor). Returns its Flight, or
        why it was refused."""
        key = packet.key
        options = self.pool.handlers.get(key)
        users = options is not None and not options.get("standard")
        element = None if users else NODE_ELEMENTS.get(key)
        if element is not None:
            options = None  # a standard worker element never shadows a node element
        if not users and (options is not None or element is not None) and self.hub.runs_elsewhere(key):
            options = element = None  # a connected reactor's own handler replaces the standard element
        role = "admin" if packet.group == "mc" else (element.role if element is not None and options is None
                                                      else "submit")
        if not from_uplink and not self._identity_may(identity, role):
            return Refusal(ErrorCode.FORBIDDEN, f"submit {key} (the {role} role)")
        if options is not None and self.hub.preferences and key in self.hub.preferences \
                and self.settings.hub_routing and not from_uplink and self.migrated_link(key) is not None:
            options = element = None  # mc:migrate moved it to a connected reactor: the hub sends it there
        now = self.clock()
        metadata = packet.metadata
        plan = None
        if metadata is not None and ("lock" in metadata or "cache" in metadata):
            try:  # rm:lock and rm:cache's hooks (pfnode/elements/resources.py)
                plan = self.elements.admission(packet, scope, options is not None or element is not None)
            except (ElementError, ElementFailed) as exc:
                code = ErrorCode.INVALID_PACKET if isinstance(exc, ElementError) else ErrorCode(exc.code)
                return Refusal(code, str(exc) if isinstance(exc, ElementError) else exc.message)
            if plan.cached is not None:
                return self._from_cache(packet, plan.cached, origin=origin, seq=seq, scope=scope, identity=identity)
        hold = plan.hold if plan is not None else None
        if options is not None:
            if packet.metadata is not None and not pipe.passable(packet.metadata):
                return Refusal(ErrorCode.INVALID_PACKET, "metadata holds a value a worker cannot be given "
                                                         "(an integer beyond 64 bits?)")
            timeout_ms = resolve_timeout_ms(packet.timeout_ms, options.get("timeout_ms"),
                                            self.settings.default_timeout_ms)
            flight = Flight(packet, scope=scope, origin=origin, seq=seq, lane=self.pool.lane_of(key, packet.group),
                            priority=packet.priority, deadline=now + timeout_ms / 1000,
                            timeout_ms=timeout_ms, dependencies=packet.dependencies or (),
                            memory_limit_mb=options.get("memory_limit_mb"), size=len(packet.data))
            refusal = self.scheduler.admit(flight, now, hold)
        elif element is not None:
            timeout_ms = resolve_timeout_ms(packet.timeout_ms, None, self.settings.default_timeout_ms)
            flight = Flight(packet, scope=scope, origin=origin, seq=seq, lane=HOSTED, priority=packet.priority,
                            deadline=now + timeout_ms / 1000, timeout_ms=timeout_ms,
                            dependencies=packet.dependencies or (), size=len(packet.data))
            refusal = self.scheduler.admit(flight, now, hold)
        elif self.settings.hub_routing and not from_uplink:
            timeout_ms = resolve_timeout_ms(packet.timeout_ms, None, self.settings.default_timeout_ms)
            flight = Flight(packet, scope=scope, origin=origin, seq=seq, lane=None, priority=packet.priority,
                            deadline=now + timeout_ms / 1000, timeout_ms=timeout_ms, size=len(packet.data))
            refusal = self.scheduler.admit_forwarded(flight, now)
        else:
            return Refusal(ErrorCode.NO_HANDLER, f"No handler for {key}")
        if refusal is not None:
            if plan is not None and plan.lock is not None:
                self.elements.locks.unused(plan.lock)  # it will not take its turn
            return refusal
        flight.identity = identity
        if plan is not None and plan.lock is not None:
            self.elements.locks.admitted(flight, plan.lock, waits=hold is not None)
        if flight.state is FORWARDED:
            self.hub.route(flight)
        else:
            self._pump()
        self._arm(flight.alarm)
        self.counters["submitted"] += 1
        return flight

    def _identity_may(self, identity: Any, role: str) -> bool:
        return self.tokens is None or (identity is not None and identity.may(role))

    may = _identity_may  # for the elements: whether a submitter has a role (always, without tokens)

    def _from_cache(self, packet: protocol.Packet, data_json: bytes, *, origin: Any, seq: int, scope: Any,
                    identity: Any) -> Flight | Refusal:
        """A memoised packet (`metadata.cache`) whose result is in the cache: admitted (its id
        taken, as any packet's) and answered at once with it, without running."""
        now = self.clock()
        timeout_ms = resolve_timeout_ms(packet.timeout_ms, None, self.settings.default_timeout_ms)
        flight = Flight(packet, scope=scope, origin=origin, seq=seq, lane=HOSTED, priority=packet.priority,
                        deadline=now + timeout_ms / 1000, timeout_ms=timeout_ms, size=len(packet.data))
        refusal = self.scheduler.admit(flight, now)
        if refusal is not None:
            return refusal
        flight.identity = identity
        self.counters["submitted"] += 1
        self.counters["answered_from_cache"] += 1
        self.settle(flight, success(data_json))
        return flight

    def migrated_link(self, key: str) -> PeerLink | None:
        """The connected reactor mc:migrate moved `key` to, when it may be sent packets."""
        return self.hub.preferred_link(key, lambda link: self._may_run_reactor(link) and (
            self.tokens is not None or not self.hub.profile(link).unproven))

    # ------------------------------------------------------------------ node elements (hosted)
    def submit_internal(self, packet: protocol.Packet, parent: Flight, origin: Any, identity: Any,
                        target: Any = None) -> Flight | Refusal:
        """A step of a node element: admitted like any packet, in its parent's scope and
        with its parent's submitter's roles; on `target` (a broadcast) when given."""
        if self.draining:
            return Refusal(ErrorCode.UNAVAILABLE, "node is shutting down")
        if target is None:
            return self._admit(packet, origin=origin, seq=0, scope=parent.scope, identity=identity)
        if not self._identity_may(identity, "admin" if packet.group == "mc" else "submit"):
            return Refusal(ErrorCode.FORBIDDEN, f"submit {packet.key}")
        now = self.clock()
        timeout_ms = resolve_timeout_ms(packet.timeout_ms, None, self.settings.default_timeout_ms)
        flight = Flight(packet, scope=parent.scope, origin=origin, seq=0, priority=packet.priority,
                        deadline=now + timeout_ms / 1000, timeout_ms=timeout_ms, size=len(packet.data),
                        lane=target.lane)
        flight.identity = identity
        if target.kind == "worker":
            refusal = self.scheduler.admit_pinned(flight, now)
            if refusal is None:
                self.pool.run_on(target.handle, flight)
        else:
            refusal = self.scheduler.admit_forwarded(flight, now)
            if refusal is None:
                self.hub.route_to(flight, target.handle)
        if refusal is not None:
            return refusal
        self._arm(flight.alarm)
        return flight

    def broadcast_targets(self, key: str, kind: str) -> list:
        """Where a co:broadcast of `key` runs: every ready worker of the key's lane
        ("workers"), every connected reactor known to run it ("reactors"), or both."""
        targets = []
        if kind in ("workers", "all") and key in self.pool.handlers:
            lane = self.pool.lane_of(key, key.partition(":")[0])
            for view in self.pool.dispatcher.workers.values():
                if view.lane == lane and view.ready:
                    targets.append(Target(f"worker:{view.handle.pid}", "worker", view, lane))
        if kind in ("reactors", "all"):
            for r in self.hub.routes.values():
                if not r.link.closed and r.profile.verdict(key) is True and self._may_run_reactor(r.link):
                    targets.append(Target(f"reactor:{r.link.peer}", "reactor", r.link, None))
        return targets

    def _may_run_reactor(self, link: PeerLink) -> bool:
        return self.tokens is None or (link.identity is not None and link.identity.may("reactor"))

    def parallelism(self, key: str) -> int:
        """How many steps of `key` a df:consume keeps in flight: enough to keep its lane busy."""
        if key in self.pool.handlers:
            workers = self.pool.lane_size(self.pool.lane_of(key, key.partition(":")[0]))
            return max(8, min(4096, workers * self.settings.worker_window * 2))
        return 64

    def completion(self, scope: Any, packet_id: str) -> asyncio.Future:
        """A future of how packet `packet_id` of `scope` ended (a StoredResult): at once if
        it is in the result store, else when it completes (cf:gate)."""
        future = (self._loop or asyncio.get_running_loop()).create_future()
        stored = self.scheduler.results.get((scope, packet_id), self.clock())
        if stored is not None:
            future.set_result(stored)
        else:
            self._completions.setdefault((scope, packet_id), []).append(future)
        return future

    def _completed(self, key: Any) -> None:
        waiters = self._completions.pop(key, None)
        if waiters:
            stored = self.scheduler.results.get(key, self.clock())
            for future in waiters:
                if not future.done() and stored is not None:
                    future.set_result(stored)

    def drop_internal(self, flight: Flight) -> None:
        """A step whose parent has ended: cancelled like the packet of a client that left."""
        self._abandon(flight)

    def _pump(self) -> None:
        """Hand queued packets out at the end of this loop turn: to workers, and the
        hosted ones to their node elements."""
        self.pool.pump()
        if not self._hosted_scheduled and self._loop is not None and self.scheduler.lanes[HOSTED].live:
            self._hosted_scheduled = True
            self._loop.call_soon(self._start_hosted)

    def _start_hosted(self) -> None:
        self._hosted_scheduled = False
        now = self.clock()
        while len(self._hosted) < MAX_HOSTED_RUNNING:
            flight = self.scheduler.dispatch(HOSTED, now)
            if flight is None:
                break
            self._hosted[flight] = asyncio.ensure_future(self._run_hosted(flight))

    async def _run_hosted(self, flight: Flight) -> None:
        element = NODE_ELEMENTS[flight.packet.key]
        ctx = ElementContext(self, flight, flight.identity)
        started = time.perf_counter()
        try:
            value = await element.run(ctx, orjson.loads(memoryview(flight.packet.data)))
            outcome = success(protocol.encode_json(value), (time.perf_counter() - started) * 1000)
        except asyncio.CancelledError:
            return  # answered already (its deadline) or nobody waits (its submitter left)
        except ElementError as exc:
            outcome = failure(ErrorCode.INVALID_PACKET, str(exc), (time.perf_counter() - started) * 1000)
        except (ElementFailed, HandlerError) as exc:
            outcome = failure(exc.code, exc.message, (time.perf_counter() - started) * 1000)
        except Exception as exc:
            incident = f"E{next(self._incidents):06d}-{os.urandom(3).hex()}"
            log.exception("front: internal error %s running %s for packet %s", incident, flight.packet.key, flight.id)
            outcome = failure(ErrorCode.HANDLER_FAILED, f"{flight.packet.key} failed ({type(exc).__name__}); "
                                                        f"internal error {incident}, in the node's log")
        finally:
            ctx.cancel_children()
            self._hosted.pop(flight, None)
            self._pump()
        self.settle(flight, outcome)

    def _awaiting(self, link: PeerLink) -> int:
        """A link's packets that count against its in-flight limit: not those it runs
        itself (the hub sent them back to it), whose answers can only come if we read on."""
        return self.scheduler.count_of(link) - self.hub.own_held(link)

    # ------------------------------------------------------------------ the answer path
    def settle(self, flight: Flight, outcome: Outcome) -> None:
        """The one way a packet is answered: record its end with the scheduler (which
        releases or fails its dependents) and send its one reply to its origin."""
        if flight.state is DONE:
            return  # answered already (its deadline passed, say); a late outcome is dropped
        now = self.clock()
        metadata = flight.packet.metadata
        if metadata is not None and outcome.ok and metadata.get("cache") is True:
            self.elements.answered(flight, outcome.data_json)  # rm:cache's memoisation
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
            self._pump()  # dependents became ready (or a lock it held passed on)

    def _answer(self, flight: Flight, outcome: Outcome, now: float) -> None:
        self.metrics.packet_done(flight.packet.group, flight.lane, outcome.code, now - flight.arrived,
                                 outcome.duration_ms)
        try:
            self._deliver(flight, outcome)
        except Exception:  # the reply must still go: a plain PF500 with an incident id
            incident = f"E{next(self._incidents):06d}-{os.urandom(3).hex()}"
            log.exception("front: internal error %s answering packet %s", incident, flight.id)
            if flight.origin is not None:
                flight.origin.send(protocol.encode_failure(
                    flight.seq, flight.id, ErrorCode.HANDLER_FAILED,
                    f"internal error {incident}; the node's log has the details"))

    def _deliver(self, flight: Flight, outcome: Outcome) -> None:
        origin = flight.origin
        if origin is None:
            return  # its submitter left
        if outcome.ok:
            self.counters["completed"] += 1
        else:
            self.counters["failed"] += 1
            self.counters[f"failed_{outcome.code}"] += 1
        if not isinstance(origin, PeerLink):  # a node element's step: its element waits for it
            origin.resolve(flight, outcome)
            return
        if outcome.ok:
            frame = protocol.encode_success_raw(flight.seq, flight.id, outcome.data_json, outcome.duration_ms)
        else:
            frame = protocol.encode_failure(flight.seq, flight.id, outcome.code, outcome.message,
                                            outcome.duration_ms)
        origin.send(frame)
        if self.uplink is not None and origin is self.uplink.link:
            self.uplink.remember(flight.id, frame)
        if origin.reading_paused and self._awaiting(origin) < self.settings.max_inflight_per_connection:
            origin.resume_reading("inflight")

    # ------------------------------------------------------------------ the hub's effects
    def offer(self, link: PeerLink, seq: int, flight: Flight, remaining_ms: int) -> None:
        link.send(protocol.encode_submit_raw(seq, flight.packet, remaining_ms))

    def set_alarm(self, flight: Flight, when: float) -> None:
        self.scheduler.set_alarm(flight, when)
        self._arm(flight.alarm)

    def links_may_come(self) -> bool:
        return not self.draining

    # ------------------------------------------------------------------ time
    def _arm(self, when: float | None) -> None:
        if when is None or (self._timer_at is not None and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = self._loop or asyncio.get_running_loop()
        self._timer_at = when
        self._timer = loop.call_later(max(0.0, when - self.clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        now = self.clock()
        for flight in self.scheduler.tick(now):
            if flight.state is DONE:
                continue
            try:
                if now >= flight.deadline:
                    self._expire(flight)
                else:
                    self.hub.on_alarm(flight)
            except Exception:  # answer it rather than lose it, and keep the timer going
                log.exception("front: handling the alarm of packet %s failed", flight.id)
                self.settle(flight, failure(ErrorCode.HANDLER_FAILED, "internal error handling its deadline"))
        self._arm(self.scheduler.next_alarm())

    def _expire(self, flight: Flight) -> None:
        state, limit = flight.state, flight.timeout_ms
        if state is QUEUED:
            self.settle(flight, failure(ErrorCode.DEADLINE_EXCEEDED, f"deadline of {limit} ms passed while queued"))
        elif state is BLOCKED:
            waiting = ", ".join(sorted(flight.waiting_on))
            self.settle(flight, failure(ErrorCode.DEADLINE_EXCEEDED,
                                        f"deadline of {limit} ms passed while waiting for "
                                        f"{'' if flight.hold is not None else 'dependencies: '}{waiting}"))
        elif state is DISPATCHED and flight.lane == HOSTED:
            self.settle(flight, failure(ErrorCode.DEADLINE_EXCEEDED, f"deadline of {limit} ms passed while "
                                                                     f"{flight.packet.key} ran"))
            task = self._hosted.pop(flight, None)
            if task is not None:
                task.cancel()  # its steps still in flight are cancelled with it
        elif state is DISPATCHED and flight.lane == DASK:  # on the Dask cluster: pfnode/dasklane.py
            self.pool.dask.expire(flight)
        elif state is DISPATCHED:
            running = self.pool.dispatcher.is_running(flight)
            self.settle(flight, failure(
                ErrorCode.DEADLINE_EXCEEDED,
                f"deadline of {limit} ms passed while running; worker killed" if running
                else f"deadline of {limit} ms passed while queued at a worker"))
            if running:
                self.pool.kill_running(flight, "deadline")
        elif state is FORWARDED:
            self.hub.deadline_passed(flight)

    # ------------------------------------------------------------------ loops
    async def _heartbeat_loop(self) -> None:
        s = self.settings
        interval = s.heartbeat_interval_ms / 1000
        silent_limit = interval * s.heartbeat_missed_limit
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for link in list(self.links):
                if link.closed:
                    continue
                uplink = self.is_uplink(link)
                if not link.connected or link.reading_paused:
                    # an uplink between connections has nobody to hear or miss; a link whose
                    # reads we paused has frames waiting unread, so its silence is ours
                    link.last_seen = now
                elif now - link.last_seen > silent_limit:
                    log.warning("front: %s silent for %.0f s; closing", link.peer, silent_limit)
                    link.close(HEARTBEAT_TIMEOUT_CLOSE_CODE, "heartbeat timeout")
                    link.last_seen = now  # an uplink dials again: judge the next connection
                    continue
                link.heartbeat_seq += 1
                if uplink:  # a hub learns again what we run, should it have restarted
                    link.send(self.announcement(link.heartbeat_seq))
                else:
                    link.send(protocol.encode_heartbeat(link.heartbeat_seq, self.heartbeat_payload()))
                link.ping()

    async def _paused_links_loop(self) -> None:
        """Every second, look at the links whose reading is paused: a paused transport does
        not notice its peer hanging up, and the peer's packets should not wait for its
        reading to resume to be dropped. And let the elements' resources whose ttl or
        lease has passed go."""
        while True:
            await asyncio.sleep(1.0)
            logs.log_suppressed(log, self.pool.handler_errors, "handler errors")
            try:
                self.elements.sweep(self.clock())
            except Exception:
                log.exception("front: sweeping the elements' expired resources failed")
            for link in [link for link in self.links if link.reading_paused and not link.closed]:
                if not self.is_uplink(link) and link.peer_gone():
                    log.debug("front: %s hung up while its reading was paused", link.peer)
                    link.abort()
                    self.on_close(link, None)

    async def _autoscale_loop(self) -> None:
        """Grow the df lane while work queues behind busy workers; shrink it when idle."""
        s = self.settings
        idle_since = time.monotonic()
        while not self.draining:
            await asyncio.sleep(s.autoscale_interval_ms / 1000)
            stats = self.pool.stats()["lanes"]["df"]
            queued = self.scheduler.depth("df")
            if stats["running"] or queued:
                idle_since = time.monotonic()
            cap = read_capacity(self.pool.worker_pids())
            advice = recommend(cap, rm_memory_limit_mb=s.rm_memory_limit_mb,
                               current=self.pool.lane_sizes(), df_max_workers=s.df_max_workers)
            busy = stats["busy"]
            size = self.pool.lane_size("df")
            step = autoscale_step(size=size, queued=queued, busy=busy,
                                  idle_s=time.monotonic() - idle_since, prefetch=1,
                                  min_size=s.df_min_workers, max_size=s.df_max_workers,
                                  recommended=advice["df"])
            if step:
                log.info("front: autoscale df %d -> %d (queued %d, busy %d)", size, size + step, queued, busy)
                try:
                    await self.pool.resize("df", size + step)
                except Exception as exc:
                    log.error("front: autoscale failed: %s", exc)

