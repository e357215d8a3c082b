"""Frames in: decode, the role of every message, and admission carried out.

    link.deliver -> Intake.on_message -> protocol.decode (a Rejected carries its reply)
        submit    -> admit: admission.decide (pure) -> the scheduler admits the Flight
                     (queued or blocked in a lane, hosted, or forwarded) -> pump / hub.route
        result    -> the hub (reactor role): a forwarded packet's answer
        error     -> the hub (reactor role): a reactor refusing a forwarded packet
        heartbeat -> answered; `capabilities` (reactor role) go to the hub

Whatever goes wrong in here, the frame is answered: an exception becomes a PF500 naming an
incident id that is also in the log. At most `frames_per_turn` frames are handled in one
turn of the event loop (`take_frame`), so no peer's flood holds up another's frames.
"""
from __future__ import annotations

import logging
from typing import Any

from ..core import protocol
from ..core.flight import DONE, FORWARDED, HOSTED, Flight, failure, success
from ..core.scheduler import Refusal
from ..elements.base import ElementError, ElementFailed
from ..errors import ErrorCode
from ..pool import pipe
from ..transports.base import PeerLink
from . import admission
from .answers import incident_id
from .links import scope_of
from .shared import NodeShared


log = logging.getLogger("pfnode.front")


class Intake:
    def __init__(self, node: NodeShared) -> None:
        self.node = node
        self._turn_frames = 0  # frames handled in this turn of the event loop

    # -- the frame budget
    def take_frame(self) -> bool:
        """Whether a link may hand over one more frame in this turn of the event loop: at
        most `frames_per_turn` frames between two polls of the sockets and the pipes."""
        count = self._turn_frames
        if not count:
            if self.node.loop is None:
                return True  # not started: no loop turns to count
            self.node.loop.call_soon(self._new_turn)  # runs before the next poll
        self._turn_frames = count + 1
        return count < self.node.settings.frames_per_turn

    def _new_turn(self) -> None:
        self._turn_frames = 0

    # -- frames
    def on_message(self, link: PeerLink, frame: bytes | str) -> None:
        if link.refused:
            return  # refused and closing: what it sent meanwhile is not answered (its PF401 was)
        node = self.node
        s = node.settings
        link.last_seen = node.clock()
        node.metrics.frame_in(len(frame))
        msg = None
        try:
            msg = protocol.decode(frame, max_frame_bytes=s.max_frame_bytes, max_timeout_ms=s.max_timeout_ms,
                                  raw_data=True)
            self._handle(link, msg)
        except Exception:
            self._internal_error(link, msg)

    def _internal_error(self, link: PeerLink, msg: Any) -> None:
        node = self.node
        incident = incident_id()
        log.exception("front: internal error %s handling a frame from %s (%s)", incident, link.peer,
                      getattr(msg, "type", "undecoded"),
                      extra={"event": "internal_error", "incident": incident, "peer": link.peer})
        node.metrics.internal_error()
        text = f"internal error {incident}; the node's log has the details"
        try:
            if isinstance(msg, protocol.Message) and msg.type == "submit":
                packet = msg.payload
                flight = node.scheduler.inflight.get((scope_of(link), packet.id))
                if flight is not None and flight.origin is link and flight.seq == msg.seq:
                    node.settle(flight, failure(ErrorCode.HANDLER_FAILED, text))
                else:
                    link.send(protocol.encode_failure(msg.seq, packet.id, ErrorCode.HANDLER_FAILED, text))
            elif not (isinstance(msg, protocol.Message) and msg.type in ("result", "error")):
                link.send(protocol.encode_error(getattr(msg, "seq", 0), ErrorCode.HANDLER_FAILED, text))
        except Exception:
            log.exception("front: could not answer after internal error %s", incident)

    def _handle(self, link: PeerLink, msg: Any) -> None:
        node = self.node
        may = node.access.may
        if isinstance(msg, protocol.Rejected):
            node.metrics.frame_rejected(msg.code)
            log.debug("front: %s rejected %s: %s", link.peer, msg.code, msg.message)
            if msg.type == "result" and may(link.identity, "reactor"):
                node.hub.on_invalid_result(link, msg.packet_id, msg.message)  # cannot be relayed
            link.send(msg.reply)
            if msg.type == "submit" and msg.packet_id is not None:
                self._refused(link, msg.packet_id, msg.code, msg.message)
        elif msg.type == "submit":
            link.active = True
            self._submit(link, msg.seq, msg.payload)
        elif msg.type == "heartbeat":
            self._heartbeat(link, msg)
        elif msg.type == "result":  # a reactor answers a packet the hub forwarded to it
            if may(link.identity, "reactor"):
                link.active = True
                node.hub.on_result(link, msg.payload)
            else:
                self.forbid(link, msg.seq, "answer packets (the reactor role)", msg.payload.packet_id)
        elif may(link.identity, "reactor"):
            node.hub.on_error_frame(link, msg.seq, msg.payload)

    def forbid(self, link: PeerLink, seq: int, what: str, packet_id: str | None = None,
               submit: bool = False) -> None:
        self.node.metrics.auth_failure("forbidden")
        log.info("front: %s (%s) may not %s", link.peer, link.identity, what)
        message = f"{link.identity} may not {what}"
        if submit:
            link.send(protocol.encode_failure(seq, packet_id, ErrorCode.FORBIDDEN, message))
        else:
            link.send(protocol.encode_error(seq, ErrorCode.FORBIDDEN, message, packet_id))

    def _heartbeat(self, link: PeerLink, msg: protocol.Message) -> None:
        node = self.node
        if node.links.is_uplink(link):
            # our hub's heartbeat: as a reactor we only note it, as the spec's reactors do;
            # answering would start an endless exchange between two pfnode nodes
            return
        capabilities = msg.payload.get("capabilities")
        if capabilities is not None and not node.access.may(link.identity, "reactor"):
            self.forbid(link, msg.seq, "announce capabilities (the reactor role)")
            return
        link.send(protocol.encode_heartbeat(msg.seq, node.heartbeat_payload()))
        if capabilities is not None:
            if isinstance(capabilities, list) and all(isinstance(c, str) for c in capabilities):
                status = msg.payload.get("node")
                stopping = isinstance(status, dict) and status.get("status") == "draining"
                node.hub.on_announce(link, capabilities, stopping)
            else:
                log.warning("front: %s announced capabilities that are not a list of strings; ignored", link.peer)

    def _submit(self, link: PeerLink, seq: int, packet: protocol.Packet) -> None:
        node = self.node
        pid = packet.id
        uplink = node.uplink if node.links.is_uplink(link) else None
        if uplink is not None and uplink.replay(pid, seq):
            return  # the hub sent it again after a reconnect: it runs (or ran) once
        if not node.ready:
            node.metrics.packet_refused(packet.group, ErrorCode.UNAVAILABLE.value)
            link.send(protocol.encode_failure(seq, pid, ErrorCode.UNAVAILABLE, "node is shutting down"
                                              if node.draining else "node is starting; retry shortly"))
            self._refused(link, pid, ErrorCode.UNAVAILABLE.value, "")
            return
        admitted = self.admit(packet, origin=link, seq=seq, scope=scope_of(link), identity=link.identity,
                              from_uplink=uplink is not None)
        if not isinstance(admitted, Flight):
            if admitted.code is ErrorCode.FORBIDDEN:
                self.forbid(link, seq, admitted.message, pid, submit=True)
            else:
                node.metrics.packet_refused(packet.group, admitted.code.value)
                link.send(protocol.encode_failure(seq, pid, admitted.code, admitted.message))
            self._refused(link, pid, admitted.code.value, admitted.message)
            return
        limit = node.settings.max_inflight_per_connection
        if admitted.state is not DONE and node.scheduler.count_of(link) >= limit \
                and node.links.awaiting(link) >= limit:
            # Backpressure: stop reading this peer until an answer frees a slot;
            # TCP flow control then slows the sender.
            link.pause_reading("inflight")

    def _refused(self, link: PeerLink, packet_id: str, code: str, message: str) -> None:
        """A submit was refused (answered already): its id is a refused id of its submitter's
        scope, and the packets waiting for it there fail PF006 now, through the one answer
        path (a cycle's other packets among them; core/scheduler.py, "Refused ids")."""
        node = self.node
        for failed in node.scheduler.refuse(scope_of(link), packet_id, code, node.clock(), message):
            node.settle(failed.flight, failure(failed.code, failed.message))

    # -- admission carried out
    def admit(self, packet: protocol.Packet, *, origin: Any, seq: int, scope: Any, identity: Any,
              from_uplink: bool = False) -> Flight | Refusal:
        """Admit a packet from a link or from a node element (a step) the way
        `admission.decide` says; its Flight, or why it was refused."""
        node = self.node
        route = admission.decide(packet, identity, node.admission_view, from_uplink=from_uplink)
        if isinstance(route, Refusal):
            return route
        now = node.clock()
        plan = None
        metadata = packet.metadata
        if metadata is not None and ("lock" in metadata or "cache" in metadata):
            try:  # rm:lock and rm:cache's hooks (pfnode/elements/hosted/resources.py)
                plan = node.elements.admission(packet, scope, route.way != admission.FORWARD, identity)
            except (ElementError, ElementFailed) as exc:
                code = ErrorCode.INVALID_PACKET if isinstance(exc, ElementError) else ErrorCode(exc.code)
                return Refusal(code, str(exc) if isinstance(exc, ElementError) else exc.message)
            if plan.cached is not None:
                return self._from_cache(packet, plan.cached, origin=origin, seq=seq, scope=scope, identity=identity)
        if route.way == admission.LOCAL and metadata is not None and not pipe.passable(metadata):
            return Refusal(ErrorCode.INVALID_PACKET, "metadata holds a value a worker cannot be given "
                                                     "(an integer beyond 64 bits?)")
        flight = admission.flight_of_route(packet, route, scope=scope, origin=origin, seq=seq, identity=identity,
                                           now=now, default_timeout_ms=node.settings.default_timeout_ms)
        hold = plan.hold if plan is not None else None
        if route.way == admission.FORWARD:
            refusal = node.scheduler.admit_forwarded(flight, now)
        else:
            refusal = node.scheduler.admit(flight, now, hold)
        if refusal is not None:
            if plan is not None and plan.lock is not None:
                node.elements.locks.unused(plan.lock)  # it will not take its turn
            return refusal
        if plan is not None and plan.lock is not None:
            node.elements.locks.admitted(flight, plan.lock, waits=hold is not None)
        if flight.state is FORWARDED:
            node.hub.route(flight)
        else:
            node.pump()
        node.timer.arm(flight.alarm)
        node.metrics.packet_submitted()
        return flight

    def _from_cache(self, packet: protocol.Packet, data_json: bytes, *, origin: Any, seq: int, scope: Any,
                    identity: Any) -> Flight | Refusal:
        """A memoised packet (`metadata.cache`) whose result is in the cache: admitted (its id
        taken, as any packet's) and answered at once with it, without running."""
        node = self.node
        now = node.clock()
        flight = admission.flight_for(packet, HOSTED, scope=scope, origin=origin, seq=seq, identity=identity,
                                      now=now, default_timeout_ms=node.settings.default_timeout_ms, waits=False)
        refusal = node.scheduler.admit(flight, now)
        if refusal is not None:
            return refusal
        node.metrics.packet_submitted(from_cache=True)
        node.settle(flight, success(data_json))
        return flight

