"""Hub routing: a packet with no local handler runs on a connected reactor.

The spec's reactors both submit packets and run them, over the same link, and say
nothing about what they can run. So the hub learns: it offers a packet to the links
that may run it, one at a time, and remembers each link's answers per
`group:element` (PF001: it cannot; anything else: it can). A reactor may also say what
it runs up front, in a heartbeat payload's `capabilities` list (our extension; see
docs/PROTOCOL.md, "Hub routing"); such a list is taken as the whole truth about it.

The hub decides and keeps its own table, one `LinkRoutes` per link (what it learnt of
the link, the packets the link runs for others now); the node carries its decisions
out through `HubEffects` (send the submit frame, answer the submitter, set an alarm in
the node's one time table). Time comes in as `now`: every rule here runs on a fake clock
in the tests.

Rules
- Who: every link the node's policy (`may_run`) allows: with tokens, the reactor role; without,
  every link. Never the node's own uplink: the node does not register it here, so packets
  cannot bounce between two nodes.
- Order (`rank_targets`), one link at a time: (1) links known to run the key (they answered
  a packet of it, or announced it), least loaded first; (2) links that have answered
  forwarded packets, but none of this key yet, least loaded first; (3) unproven links
  (never announced, never answered: a spec reactor that has not been asked yet, or a plain
  client), oldest connection first; the submitter's own link last of (2) and (3) (the
  spec's usage example: a reactor running its own packet). So a spec reactor that never
  announces serves the other peers' packets: it is asked as soon as no link known to run
  the key could take it.
- Probe window: a link that has never answered a forwarded packet and has not announced
  capabilities is given at most `probe_ms` to answer before the hub moves on (and counts
  it silent: not asked again until it answers something). So a plain client that submits
  a key nobody runs gets PF001 once each unproven link connected has answered (a spec
  reactor without the handler answers PF001 at once) or let its window pass, while a spec
  reactor that runs the packet answers in time. A packet stays forwarded to every link
  that was sent it until that link answers, refuses it or leaves: a slow reactor whose
  probe window passed may still answer it while it is in flight (the first answer wins).
- Answers: PF001 sends the packet to the next link; PF004 and PF503 too (the link is
  busy or stopping, and no wiser about what it runs). An `error` frame answering our
  submit also sends it on. Anything else is relayed to the submitter, and only from the
  link the packet is forwarded to, while it is.
- Endings: nobody runs the key: PF001 (the message says who was asked). Reactors that run
  it exist but none could take it (all went away, or refused with PF004 / PF503 / an
  error frame, drain, or went silent): that code, or PF003 (retry later). The deadline passes while a reactor holds it: PF504;
  before any reactor could be asked: PF408.
- A reactor that goes away while holding a packet hands it to the next link that may
  run it; when none is connected, the packet waits up to `reroute_grace_ms` for one (a
  reconnecting dial-out node announces itself at once), then fails with PF003.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Iterable, Protocol

from ..errors import ErrorCode
from .flight import FORWARDED, Flight, Outcome, failure, success
from .protocol import RawJSON, Result, encode_json

log = logging.getLogger("pfnode.hub")

# Answers by which a reactor says the packet did not run there: the next one is asked.
PASS_ON = {ErrorCode.NO_HANDLER.value: "has no handler",
           ErrorCode.OVERLOADED.value: "is overloaded (PF004)",
           ErrorCode.UNAVAILABLE.value: "is unavailable (PF503)"}


@dataclasses.dataclass
class ReactorProfile:
    """What the hub has learnt about one link as a reactor."""

    announced: frozenset[str] | None = None  # the capabilities extension
    can: set[str] = dataclasses.field(default_factory=set)  # answered something other than PF001
    cannot: set[str] = dataclasses.field(default_factory=set)  # answered PF001
    answered: int = 0  # replies to forwarded packets, of any kind
    silent: bool = False  # let a forwarded packet time out without ever having answered one
    # packets that timed out here, id -> key: a late answer still shows the link is alive
    timed_out: dict[str, str] = dataclasses.field(default_factory=dict)
    stopping: frozenset[str] = frozenset()  # keys it ran before it said it drains

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

    @property
    def unproven(self) -> bool:
        """Never answered a forwarded packet and never said what it runs: maybe not a reactor."""
        return self.answered == 0 and self.announced is None

    def announce(self, capabilities: list[str], stopping: bool = False) -> None:
        new = frozenset(capabilities)
        # a draining node announces nothing: what it ran is "busy", not "not run here"
        self.stopping = ((self.announced or frozenset()) | self.can) - new if stopping else frozenset()
        self.announced = new
        self.cannot -= self.announced

    def learn(self, key: str, can: bool) -> None:
        self.answered += 1
        self.silent = False
        (self.can if can else self.cannot).add(key)
        (self.cannot if can else self.can).discard(key)

    def alive(self) -> None:
        """It answered (busy, stopping, refused our frame): alive, no wiser about what it runs."""
        self.answered += 1
        self.silent = False

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


class LinkRoutes:
    """The hub's table for one link: what it runs, and what it runs for others now."""

    __slots__ = ("link", "profile", "held", "seqs", "out_seq", "own_held", "joined")

    def __init__(self, link: Any, joined: int = 0) -> None:
        self.link = link
        self.joined = joined  # when it connected, in the hub's order (older: smaller)
        self.profile = ReactorProfile()
        self.held: dict[str, Flight] = {}  # packet id -> flight forwarded to it, not answered
        self.seqs: dict[int, str] = {}  # seq of our submit frame -> packet id
        self.out_seq = 0
        self.own_held = 0  # its own packets it runs (the spec's usage example)

    @property
    def load(self) -> int:
        return len(self.held)

    def __repr__(self) -> str:
        return f"<LinkRoutes {getattr(self.link, 'peer', self.link)}>"


class Route:
    """A forwarded packet's routing state (`flight.route`)."""

    __slots__ = ("tried", "target", "holders", "refusals", "lost", "busy_code", "refused",
                 "probing", "parked", "pinned")

    def __init__(self) -> None:
        self.tried: set[LinkRoutes] = set()
        self.target: LinkRoutes | None = None  # the link whose answer the hub waits for now
        self.holders: dict[LinkRoutes, int] = {}  # links sent it, not answered: -> our seq
        self.refusals: list[str] = []  # why earlier links did not run it
        self.lost: list[str] = []  # links that went away holding it
        self.busy_code: str | None = None  # PF004 or PF503, when a reactor that may run it said so
        self.refused = False  # a link refused our submit frame with an error frame
        self.probing = False  # its target is on probation (see the module's rules)
        self.parked = False  # waiting for a reactor after its own went away
        self.pinned = False  # for this one link only (a co:broadcast step): never passed on


def stalled(routes: Iterable[LinkRoutes], key: str) -> list[str]:
    """Why links that run `key` cannot take it now: they drain, or went silent (a packet
    timed out there before they ever answered one)."""
    out = []
    for r in routes:
        p = r.profile
        if r.link.closed:
            continue
        if key in p.stopping:
            out.append(f"{r.link.peer} runs it but is shutting down")
        elif p.silent and (key in p.can or (p.announced is not None and key in p.announced)):
            out.append(f"{r.link.peer} runs it but did not answer its last packet in time "
                       f"(skipped until it answers)")
    return out


def no_reactor_message(flight: Flight, routes: Iterable[LinkRoutes]) -> str:
    """The PF003 message of a forwarded packet no reactor took: who left, who refused, who stalls."""
    route = flight.route
    key = flight.packet.key
    if route.lost:
        return (f"reactor {route.lost[-1]} disconnected while running {key}, and no other "
                f"connected reactor took it")
    asked = f"; asked: {'; '.join(route.refusals)}" if route.refusals else ""
    if route.busy_code or route.refused:
        return f"No reactor could take {key} now{asked}"
    why = stalled(routes, key)
    if why:
        return f"No reactor can take {key} now: {'; '.join(why)}{asked}; retry later"
    return f"No handler for {key} on this node, and no connected reactor runs it{asked}"


class HubEffects(Protocol):
    """What the node does for the hub."""

    def offer(self, link: Any, seq: int, flight: Flight, remaining_ms: int) -> None:
        """Send `flight`'s packet to `link` as a submit frame with this seq and time left."""

    def settle(self, flight: Flight, outcome: Outcome) -> None:
        """Answer the submitter (the node's one answer path)."""

    def set_alarm(self, flight: Flight, when: float) -> None:
        """Hand `flight` back to `on_alarm` at `when` (or at its deadline, if earlier)."""

    def links_may_come(self) -> bool:
        """Whether a reactor may still connect (false while the node drains)."""


def link_name(link: Any) -> str:
    """How mc:migrate names a reactor: its token's name, else its peer address."""
    identity = getattr(link, "identity", None)
    return identity.name if identity is not None else str(getattr(link, "peer", link))


def rank_targets(routes: Iterable[LinkRoutes], key: str, origin: Any, tried: set[LinkRoutes],
                 may: Callable[[LinkRoutes], bool] | None = None,
                 prefer: str | None = None) -> list[LinkRoutes]:
    """The links to ask, best first: the reactor named `prefer` (mc:migrate) if it may run
    the key, then those known to run `key` (least loaded first), then those not known
    either way: the ones that have answered forwarded packets (least loaded first), then
    the unproven ones (oldest connection first), the submitter's own link last of these.
    Links that cannot run it, were tried already, are closed, or `may` not run it are left
    out."""
    known: list[LinkRoutes] = []
    unknown: list[LinkRoutes] = []
    for r in routes:
        if r in tried or r.link.closed or (may is not None and not may(r)):
            continue
        verdict = r.profile.verdict(key)
        if verdict is True:
            known.append(r)
        elif verdict is None:
            unknown.append(r)
    known.sort(key=lambda r: r.load)
    # answered before (by load), then unproven (by age), the submitter's own link last
    unknown.sort(key=lambda r: (r.link is origin, r.profile.unproven,
                                r.joined if r.profile.unproven else r.load))
    ranked = known + unknown
    if prefer is not None:
        ranked.sort(key=lambda r: link_name(r.link) != prefer)  # stable: the rest keep their order
    return ranked


class Hub:
    def __init__(self, effects: HubEffects, *, probe_ms: int, reroute_grace_ms: int,
                 clock: Callable[[], float],
                 may_run: Callable[[Any, Flight], bool] | None = None) -> None:
        self.effects = effects
        # whether a link may be sent a packet to run (with tokens, its role): the node's policy
        self.may_run = may_run
        self._joined = 0  # links added, ever: their order of connection
        self.probe_s = probe_ms / 1000
        self.grace_s = reroute_grace_ms / 1000
        self.clock = clock
        self.routes: dict[Any, LinkRoutes] = {}  # link -> its table
        self.parked: dict[Flight, None] = {}  # waiting for a reactor after theirs went away
        self.preferences: dict[str, str] = {}  # key -> the reactor (link_name) to ask first: mc:migrate
        self.counters = {"relayed": 0, "no_reactor": 0, "timed_out": 0, "probes_expired": 0,
                         "invalid_results": 0}

    def stats(self, forwarding: int) -> dict:
        return {"forwarding": forwarding, "parked": len(self.parked),
                "reactors": sum(1 for r in self.routes.values() if not r.profile.unproven),
                "relayed": self.counters["relayed"], "no_reactor": self.counters["no_reactor"],
                "timed_out": self.counters["timed_out"], "probes_expired": self.counters["probes_expired"]}

    def runs_elsewhere(self, key: str) -> bool:
        """Whether a connected link has said it runs `key` (announced it, or answered a
        forwarded packet of it): its handler then replaces the node's standard element."""
        return any(not r.link.closed and r.profile.verdict(key) is True for r in self.routes.values())

    def preferred_link(self, key: str, may: Callable[[Any], bool]) -> Any:
        """The connected link mc:migrate moved `key` to, if it `may` run packets and has not
        said it does not run the key; else None."""
        name = self.preferences.get(key)
        if name is None:
            return None
        for r in self.routes.values():
            if not r.link.closed and link_name(r.link) == name and r.profile.verdict(key) is not False \
                    and may(r.link):
                return r.link
        return None

    def own_held(self, link: Any) -> int:
        r = self.routes.get(link)
        return r.own_held if r is not None else 0

    def profile(self, link: Any) -> ReactorProfile | None:
        r = self.routes.get(link)
        return r.profile if r is not None else None

    # ------------------------------------------------------------------ links
    def add_link(self, link: Any) -> None:
        self._joined += 1
        self.routes[link] = LinkRoutes(link, self._joined)
        self.retry_parked()

    def remove_link(self, link: Any) -> None:
        """`link` is gone: the packets it ran for others go to the next reactor, or wait."""
        r = self.routes.pop(link, None)
        if r is None:
            return
        for flight in list(r.held.values()):
            waited_for = flight.route.target is r
            self._release(flight, r)
            if not waited_for:
                continue  # it had moved on from this link already
            flight.route.lost.append(link.peer)
            log.warning("hub: %s went away holding %s (%s); looking for another reactor",
                        link.peer, flight.id, flight.packet.key)
            self._dispatch(flight)

    def on_announce(self, link: Any, capabilities: list[str], stopping: bool = False) -> None:
        """`link` says what it runs (the capabilities extension); `stopping`: it drains
        (a pfnode node says so in its heartbeat), so what it ran before is not gone for good."""
        r = self.routes.get(link)
        if r is None:
            return
        r.profile.announce(capabilities, stopping=stopping)
        log.log(logging.INFO if capabilities else logging.DEBUG, "hub: %s runs %s", link.peer,
                ", ".join(sorted(capabilities)) or "nothing")
        # an announcement ends the probation of the packets it holds: it has its deadline
        # for those it runs, and those it does not run go on at once
        for flight in [f for f in r.held.values() if f.route.target is r and f.route.probing]:
            flight.route.probing = False
            if flight.packet.key in r.profile.announced:
                self.effects.set_alarm(flight, flight.deadline)
            else:
                flight.route.refusals.append(f"{link.peer} announced it does not run it")
                self._release(flight, r)
                self._dispatch(flight)
        self.retry_parked()

    def retry_parked(self) -> None:
        """A link came or announced itself: parked packets may have a reactor again."""
        for flight in list(self.parked):
            self._dispatch(flight)

    # ------------------------------------------------------------------ packets
    def route(self, flight: Flight) -> None:
        """Find a reactor for a packet the node has no handler for (admitted FORWARDED)."""
        flight.route = Route()
        self._dispatch(flight)

    def route_to(self, flight: Flight, link: Any) -> None:
        """Send a packet to one chosen link (a co:broadcast step): whatever it answers is
        its answer; a refusal or a disconnect is not passed on to another link."""
        flight.route = Route()
        flight.route.pinned = True
        r = self.routes.get(link)
        if r is None or link.closed:
            self._settle(flight, failure(ErrorCode.NO_REACTOR, f"reactor {getattr(link, 'peer', link)} is gone"))
            return
        now = self.clock()
        self._send_to(flight, r, now, max(1, int((flight.deadline - now) * 1000)))
        flight.route.probing = False
        self.effects.set_alarm(flight, flight.deadline)

    def on_result(self, link: Any, result: Result) -> None:
        r = self.routes.get(link)
        flight = r.held.get(result.packet_id) if r is not None else None
        if flight is None:
            late = r is not None and r.profile.late_answer(result.packet_id, result.error_code)
            log.debug("hub: %s sent a result for %s, which is not forwarded to it%s", link.peer,
                      result.packet_id, " (any more: it timed out there)" if late else "")
            return
        key = flight.packet.key
        code = result.error_code
        route = flight.route
        waited_for = route.target is r
        self._release(flight, r)
        if code in PASS_ON:
            if code == ErrorCode.NO_HANDLER.value:
                r.profile.learn(key, can=False)
            else:  # busy or going away
                r.profile.alive()
                route.busy_code = code
            route.refusals.append(f"{link.peer} {PASS_ON[code]}")
            if waited_for:
                self._dispatch(flight)
            return
        r.profile.learn(key, can=True)
        self.counters["relayed"] += 1
        if result.ok:
            data = result.data  # the front's RawJSON: passed on as it came, not re-parsed
            self._settle(flight, success(_as_json(data), result.duration_ms))
        else:
            assert result.error is not None
            self._settle(flight, failure(result.error["code"], result.error["message"], result.duration_ms))

    def on_invalid_result(self, link: Any, packet_id: str | None, message: str) -> None:
        """`link` answered a packet with a result frame we cannot relay (not valid UTF-8
        JSON, say): the packet fails PF502 naming the reactor, not the submitter's link."""
        r = self.routes.get(link)
        flight = r.held.get(packet_id) if (r is not None and packet_id is not None) else None
        if flight is None:
            return
        self.counters["invalid_results"] += 1
        r.profile.alive()
        self._settle(flight, failure(ErrorCode.WORKER_DIED,
                                     f"reactor {link.peer} answered {flight.packet.key} with a result "
                                     f"that cannot be relayed: {message}"))

    def on_error_frame(self, link: Any, seq: int, payload: dict) -> None:
        """The reactor refused our submit frame itself (an `error` frame): ask the next one."""
        r = self.routes.get(link)
        if r is None:
            return
        packet_id = r.seqs.get(seq) or payload.get("packet_id")
        flight = r.held.get(packet_id) if isinstance(packet_id, str) else None
        if flight is None:
            log.debug("hub: %s sent an error frame (seq %d) that answers nothing of ours", link.peer, seq)
            return
        r.profile.alive()
        route = flight.route
        route.refused = True
        route.refusals.append(f"{link.peer} refused it: {payload.get('code')} {payload.get('message', '')}")
        waited_for = route.target is r
        self._release(flight, r)
        if waited_for:
            self._dispatch(flight)

    def on_alarm(self, flight: Flight) -> None:
        """An alarm before the deadline: a probe window or a reroute grace has ended."""
        route = flight.route
        if flight.state is not FORWARDED or route is None:
            return
        target = route.target
        if target is not None and route.probing:
            self.counters["probes_expired"] += 1
            target.profile.timed_out_here(flight.id, flight.packet.key)
            route.refusals.append(f"{target.link.peer} did not answer within {self.probe_s * 1000:.0f} ms")
            route.target = None  # it stays a holder: it may still answer, while the next is asked
            route.probing = False
            self._dispatch(flight)
        elif route.parked:
            self._settle(flight, failure(ErrorCode.NO_REACTOR, no_reactor_message(flight, self.routes.values())))

    def deadline_passed(self, flight: Flight) -> None:
        route = flight.route
        target = route.target or next(iter(route.holders), None)
        if target is not None:
            target.profile.timed_out_here(flight.id, flight.packet.key)
            self.counters["timed_out"] += 1
            self._settle(flight, failure(
                ErrorCode.REMOTE_TIMEOUT, f"reactor {target.link.peer} did not answer {flight.packet.key} "
                                          f"within its deadline ({flight.timeout_ms} ms)"))
        elif route.lost:
            self._settle(flight, failure(ErrorCode.NO_REACTOR, no_reactor_message(flight, self.routes.values())))
        else:
            self._settle(flight, failure(ErrorCode.DEADLINE_EXCEEDED,
                                         f"deadline passed before {flight.packet.key} could be forwarded"))

    def abandon(self, flight: Flight) -> None:
        """Its submitter went away: nobody is left to answer; a late result is dropped."""
        self._release_all(flight)
        self.parked.pop(flight, None)

    # ------------------------------------------------------------------ internals
    def _dispatch(self, flight: Flight) -> None:
        now = self.clock()
        remaining_ms = int((flight.deadline - now) * 1000)
        route = flight.route
        if route.pinned:  # its one link refused it, went away or did not answer: that is its answer
            code = route.busy_code or (ErrorCode.NO_REACTOR.value if (route.lost or route.refused)
                                       else ErrorCode.NO_HANDLER.value)
            self._settle(flight, failure(code, no_reactor_message(flight, self.routes.values())))
            return
        if remaining_ms <= 0:
            self.deadline_passed(flight)
            return
        def may(r: LinkRoutes) -> bool:
            if flight.id in r.held:  # it holds another submitter's packet of this id
                return False
            return self.may_run is None or self.may_run(r.link, flight)
        key = flight.packet.key
        prefer = self.preferences.get(key) if self.preferences else None
        targets = rank_targets(self.routes.values(), key, flight.origin, route.tried, may, prefer)
        if targets:
            self._send_to(flight, targets[0], now, remaining_ms)
        elif route.lost and self.effects.links_may_come():
            if not route.parked:
                route.parked = True
                self.parked[flight] = None
                self.effects.set_alarm(flight, now + self.grace_s)
        else:
            self.counters["no_reactor"] += 1
            if route.busy_code:  # a reactor that runs it is busy or stopping: retry later
                code = route.busy_code
            elif route.lost or route.refused or stalled(self.routes.values(), flight.packet.key):
                code = ErrorCode.NO_REACTOR.value
            else:
                code = ErrorCode.NO_HANDLER.value
            self._settle(flight, failure(code, no_reactor_message(flight, self.routes.values())))

    def _send_to(self, flight: Flight, r: LinkRoutes, now: float, remaining_ms: int) -> None:
        route = flight.route
        if route.parked:
            route.parked = False
            self.parked.pop(flight, None)
        route.target = r
        route.tried.add(r)
        r.out_seq += 1
        route.holders[r] = r.out_seq
        r.held[flight.id] = flight
        r.seqs[r.out_seq] = flight.id
        if r.link is flight.origin:
            r.own_held += 1
        route.probing = r.profile.unproven
        log.debug("hub: %s (%s) -> %s%s", flight.id, flight.packet.key, r.link.peer,
                  " (probe)" if route.probing else "")
        self.effects.set_alarm(flight, now + self.probe_s if route.probing else flight.deadline)
        self.effects.offer(r.link, r.out_seq, flight, remaining_ms)

    def _release(self, flight: Flight, r: LinkRoutes) -> None:
        """`r` holds `flight` no more (it answered, refused, or went away)."""
        route = flight.route
        seq = route.holders.pop(r, None)
        if seq is None:
            return
        if route.target is r:
            route.target = None
            route.probing = False
        r.held.pop(flight.id, None)
        r.seqs.pop(seq, None)
        if r.link is flight.origin:
            r.own_held -= 1

    def _release_all(self, flight: Flight) -> None:
        for r in list(flight.route.holders):
            self._release(flight, r)

    def _settle(self, flight: Flight, outcome: Outcome) -> None:
        self._release_all(flight)
        self.parked.pop(flight, None)
        self.effects.settle(flight, outcome)


def _as_json(data: Any) -> bytes:
    """A relayed result's data as JSON bytes: the front's RawJSON as it came."""
    return bytes(data) if isinstance(data, RawJSON) else encode_json(data)
