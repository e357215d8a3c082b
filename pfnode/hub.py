"""Hub routing: a packet with no local handler runs on a connected reactor.

The spec's reactors both submit packets and run them, over the same link, and say
nothing about what they can run. So the node learns: it forwards a packet to the
links that may run it, one at a time, and remembers each link's answers per
`group:element` (PF001: it cannot; anything else: it can). A reactor may also say what
it runs up front, in a heartbeat payload's `capabilities` list (our extension; see
docs/PROTOCOL.md, "Hub routing"); such a list is taken as the whole truth about it.

Replies come back as `result` frames that spec reactors send with `seq: 0`, so a
reply is matched by its `packet_id`; packet ids are unique among forwarded packets
(PF409 otherwise). A forwarded packet keeps its deadline: the remote gets the time
that is left, and when it passes the submitter gets PF504. A reactor that goes away
while holding a packet hands it to the next one that may run it; when none is
connected, the packet waits up to `reroute_grace_ms` for one (a reconnecting node
announces itself at once), then fails with PF003.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Callable, Iterable

from . import protocol
from .errors import ErrorCode
from .protocol import Packet, Result

if TYPE_CHECKING:
    from .front import Node, PeerLink

log = logging.getLogger("pfnode.hub")

# Answers by which a reactor says the packet did not run there: the next one is asked.
PASS_ON = {ErrorCode.NO_HANDLER.value: "has no handler",
           ErrorCode.OVERLOADED.value: "is overloaded (PF004)",
           ErrorCode.UNAVAILABLE.value: "is unavailable (PF503)"}


@dataclasses.dataclass
class ReactorProfile:
    """What the node has learnt about one link as a reactor."""

    announced: frozenset[str] | None = None  # the capabilities extension
    can: set[str] = dataclasses.field(default_factory=set)  # answered something other than PF001
    cannot: set[str] = dataclasses.field(default_factory=set)  # answered PF001
    answered: int = 0  # replies to forwarded packets, of any kind
    silent: bool = False  # let a forwarded packet time out without ever having answered one
    # packets that timed out here, id -> key: a late answer still shows the link is alive
    timed_out: dict[str, str] = dataclasses.field(default_factory=dict)

    def verdict(self, key: str) -> bool | None:
        """True: it runs `key`; False: it does not; None: not known yet (worth asking).
        What it answered last wins: a PF001 outweighs an earlier announcement, a later
        announcement a PF001; a link that never answered and let a packet time out is not
        asked until it answers something."""
        if self.silent or key in self.cannot:
            return False
        if self.announced is not None:
            return key in self.announced
        return True if key in self.can else None

    def announce(self, capabilities: list[str]) -> None:
        self.announced = frozenset(capabilities)
        self.cannot -= self.announced

    def learn(self, key: str, can: bool) -> None:
        self.answered += 1
        self.silent = False
        (self.can if can else self.cannot).add(key)
        (self.cannot if can else self.can).discard(key)

    def timed_out_here(self, packet_id: str, key: str) -> None:
        if not self.answered:
            self.silent = True  # not a reactor, or a hung one: ask it no more, unless it answers
        self.timed_out[packet_id] = key
        if len(self.timed_out) > 1024:
            del self.timed_out[next(iter(self.timed_out))]

    def late_answer(self, packet_id: str, code: str | None) -> bool:
        """A result for a packet that timed out here: learn from it all the same."""
        key = self.timed_out.pop(packet_id, None)
        if key is not None:
            self.learn(key, can=code != ErrorCode.NO_HANDLER.value)
        return key is not None


def rank_targets(links: Iterable["PeerLink"], key: str, origin: "PeerLink",
                 tried: set["PeerLink"]) -> list["PeerLink"]:
    """The links to ask, best first: those known to run `key` (least loaded first), then
    those not known either way, the submitter's own link last among them. Links that
    cannot run it, were tried already, or are this node's own uplinks are left out."""
    known: list[PeerLink] = []
    unknown: list[PeerLink] = []
    for link in links:
        if link in tried or link.closed or link.uplink:
            continue
        verdict = link.reactor.verdict(key)
        if verdict is True:
            known.append(link)
        elif verdict is None:
            unknown.append(link)
    known.sort(key=lambda link: len(link.forwarded))
    unknown.sort(key=lambda link: (link is origin, len(link.forwarded)))
    return known + unknown


@dataclasses.dataclass(eq=False)
class Forward:
    """A packet of `origin`'s that runs (or waits to run) on another link."""

    packet: Packet
    origin: "PeerLink"
    origin_seq: int
    deadline: float  # time.monotonic()
    tried: set["PeerLink"] = dataclasses.field(default_factory=set)
    target: "PeerLink | None" = None
    target_seq: int = 0
    refusals: list[str] = dataclasses.field(default_factory=list)  # why earlier links did not run it
    lost: list[str] = dataclasses.field(default_factory=list)  # links that went away holding it
    busy_code: str | None = None  # PF004 or PF503, when a reactor that may run it said so
    timer: asyncio.TimerHandle | None = None

    @property
    def id(self) -> str:
        return self.packet.id


class Hub:
    def __init__(self, node: "Node", clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self.settings = node.settings
        self.clock = clock
        self.forwards: dict[str, Forward] = {}  # packet id -> forward, every state
        self.parked: dict[str, Forward] = {}  # waiting for a reactor after theirs went away

    def stats(self) -> dict:
        counters = self.node.counters
        return {"forwarding": len(self.forwards), "parked": len(self.parked),
                "reactors": sum(1 for link in self.node.links
                                if link.reactor.answered or link.reactor.announced),
                "relayed": counters["forward_relayed"], "no_reactor": counters["forward_no_reactor"],
                "timed_out": counters["forward_timed_out"]}

    # ------------------------------------------------------------------ from the node
    def route(self, origin: "PeerLink", seq: int, packet: Packet) -> None:
        """Find a reactor for a packet the node has no handler for."""
        if packet.id in self.forwards:
            origin.send(protocol.encode_failure(seq, packet.id, ErrorCode.DUPLICATE_ID,
                                                f"packet {packet.id} is already in flight"))
            return
        timeout_ms = packet.timeout_ms or self.settings.default_timeout_ms
        forward = Forward(packet, origin, seq, self.clock() + timeout_ms / 1000)
        self.forwards[packet.id] = forward
        origin.inflight[packet.id] = forward
        self._dispatch(forward)

    def on_result(self, link: "PeerLink", result: Result) -> None:
        forward = self._forward_answered_by(link, result.packet_id)
        if forward is None:
            late = link.reactor.late_answer(result.packet_id, result.error_code)
            log.debug("hub: %s sent a result for %s, which is not waiting on it%s", link.peer,
                      result.packet_id, " (any more: it timed out there)" if late else "")
            return
        key = forward.packet.key
        code = result.error_code
        if code in PASS_ON:
            if code == ErrorCode.NO_HANDLER.value:
                link.reactor.learn(key, can=False)
            else:  # busy or going away: alive, and no wiser about what it runs
                link.reactor.answered += 1
                link.reactor.silent = False
                forward.busy_code = code
            if forward.target is link:  # else a stale answer: the link now holding it goes on
                forward.refusals.append(f"{link.peer} {PASS_ON[code]}")
                self._detach(forward)
                self._dispatch(forward)
            return
        link.reactor.learn(key, can=True)
        self.node.counters["forward_relayed"] += 1
        if result.ok:
            data = result.data  # RawJSON as the front decodes it: passed on, not re-parsed
            data_json = bytes(data) if isinstance(data, protocol.RawJSON) else protocol.encode_json(data)
            self._finish(forward, data_json=data_json, duration_ms=result.duration_ms)
        else:
            assert result.error is not None
            self._finish(forward, result.error["code"], result.error["message"], duration_ms=result.duration_ms)

    def on_error_frame(self, link: "PeerLink", seq: int, payload: dict) -> None:
        """The reactor refused our submit frame itself (an `error` frame): ask the next one."""
        packet_id = link.forward_seqs.get(seq) or payload.get("packet_id")
        forward = self._forward_answered_by(link, packet_id) if isinstance(packet_id, str) else None
        if forward is None:
            log.debug("hub: %s sent an error frame (seq %d) that answers nothing of ours", link.peer, seq)
            return
        link.reactor.answered += 1
        if forward.target is link:
            forward.refusals.append(f"{link.peer} refused it: {payload.get('code')} {payload.get('message', '')}")
            self._detach(forward)
            self._dispatch(forward)

    def on_announce(self, link: "PeerLink", capabilities: list[str]) -> None:
        link.reactor.announce(capabilities)
        log.log(logging.INFO if capabilities else logging.DEBUG, "hub: %s runs %s", link.peer,
                ", ".join(sorted(capabilities)) or "nothing")
        self.retry_parked()

    def retry_parked(self) -> None:
        """A link came or announced itself: parked packets may have a reactor again."""
        for forward in list(self.parked.values()):
            self._dispatch(forward)

    def on_link_closed(self, link: "PeerLink") -> None:
        """`link` is gone: its own packets are dropped (by the node), and the packets it
        was running for others go to the next reactor, or wait for one."""
        for forward in list(link.forwarded.values()):
            forward.lost.append(link.peer)
            log.warning("hub: %s went away holding %s (%s); looking for another reactor",
                        link.peer, forward.id, forward.packet.key)
            self._detach(forward)
            self._dispatch(forward)

    def abandon(self, forward: Forward) -> None:
        """Its submitter went away: nobody is left to answer; a late result is dropped."""
        self._detach(forward)
        self._drop(forward)

    def fail_all(self, code: ErrorCode, message: str) -> None:
        for forward in list(self.forwards.values()):
            self._finish(forward, code.value, message)

    # ------------------------------------------------------------------ internals
    def _forward_answered_by(self, link: "PeerLink", packet_id: str) -> Forward | None:
        forward = self.forwards.get(packet_id)
        if forward is None:
            return None
        if forward.target is link:
            return forward
        # After its reactor went away, a packet may be answered over a new link by the same
        # reactor (a pfnode dial-out node keeps running across reconnects): accept it.
        return forward if forward.lost else None

    def _dispatch(self, forward: Forward) -> None:
        now = self.clock()
        remaining_ms = int((forward.deadline - now) * 1000)
        if remaining_ms <= 0:
            self._expire(forward)
            return
        targets = rank_targets(self.node.links, forward.packet.key, forward.origin, forward.tried)
        if targets:
            self._send_to(forward, targets[0], remaining_ms)
        elif forward.lost and self.node.links_may_come:
            if forward.id not in self.parked:
                self.parked[forward.id] = forward
                grace = min(forward.deadline, now + self.settings.reroute_grace_ms / 1000)
                self._arm(forward, grace)
        else:
            self.node.counters["forward_no_reactor"] += 1
            # a reactor that runs it but is busy or stopping: say that, so the client retries
            code = forward.busy_code or ErrorCode.NO_REACTOR.value
            self._finish(forward, code, self._no_reactor_message(forward))

    def _send_to(self, forward: Forward, link: "PeerLink", remaining_ms: int) -> None:
        self.parked.pop(forward.id, None)
        forward.target = link
        forward.tried.add(link)
        link.out_seq += 1
        forward.target_seq = link.out_seq
        link.forwarded[forward.id] = forward
        link.forward_seqs[link.out_seq] = forward.id
        if link is forward.origin:
            link.looped += 1
        log.debug("hub: %s (%s) -> %s", forward.id, forward.packet.key, link.peer)
        link.send(protocol.encode_submit_raw(link.out_seq, forward.packet, remaining_ms))
        self._arm(forward, forward.deadline)

    def _arm(self, forward: Forward, when: float) -> None:
        if forward.timer is not None:
            forward.timer.cancel()
        delay = max(0.0, when - self.clock())
        forward.timer = asyncio.get_running_loop().call_later(delay, self._expire, forward)

    def _expire(self, forward: Forward) -> None:
        if self.forwards.get(forward.id) is not forward:
            return
        if forward.target is not None:
            link = forward.target
            link.reactor.timed_out_here(forward.id, forward.packet.key)
            self.node.counters["forward_timed_out"] += 1
            timeout_ms = forward.packet.timeout_ms or self.settings.default_timeout_ms
            self._finish(forward, ErrorCode.REMOTE_TIMEOUT.value,
                         f"reactor {link.peer} did not answer {forward.packet.key} within its deadline "
                         f"({timeout_ms} ms)")
        elif forward.lost:
            self._finish(forward, ErrorCode.NO_REACTOR.value, self._no_reactor_message(forward))
        else:  # its deadline passed before any reactor could be asked
            self._finish(forward, ErrorCode.DEADLINE_EXCEEDED.value,
                         f"deadline passed before {forward.packet.key} could be forwarded")

    def _no_reactor_message(self, forward: Forward) -> str:
        key = forward.packet.key
        if forward.lost:
            return (f"reactor {forward.lost[-1]} disconnected while running {key}, and no other "
                    f"connected reactor took it")
        asked = f"; asked: {'; '.join(forward.refusals)}" if forward.refusals else ""
        if forward.busy_code:
            return f"No reactor could take {key} now{asked}"
        return f"No handler for {key} on this node, and no connected reactor runs it{asked}"

    def _detach(self, forward: Forward) -> None:
        """Forget the link that holds `forward` (it answered, refused or went away)."""
        link, forward.target = forward.target, None
        if link is not None:
            link.forwarded.pop(forward.id, None)
            link.forward_seqs.pop(forward.target_seq, None)
            if link is forward.origin:
                link.looped -= 1

    def _drop(self, forward: Forward) -> None:
        if forward.timer is not None:
            forward.timer.cancel()
        self.forwards.pop(forward.id, None)
        self.parked.pop(forward.id, None)

    def _finish(self, forward: Forward, code: str | None = None, message: str = "", *,
                data_json: bytes = b"null", duration_ms: float = 0) -> None:
        """Answer the submitter: success with `data_json` (code None), or failure `code`. The
        node's packets that depend on this one go on (or fail) as if it had run here."""
        self._detach(forward)
        self._drop(forward)
        if code is None:
            frame = protocol.encode_success_raw(forward.origin_seq, forward.id, data_json, duration_ms)
        else:
            frame = protocol.encode_failure(forward.origin_seq, forward.id, code, message, duration_ms)
        self.node.settle(forward.origin, forward.id, frame)
        self.node.pool.record_elsewhere(forward.id, code is None, data_json if code is None else None, code)
