"""The hub's rules (pfnode/core/hub.py) on a fake clock: no sockets, no sleeps.

The hub is driven as the node drives it: links come and go, results arrive, and its
alarms live in a real scheduler's time table that the test ticks by hand (the node's
one timer does the same). `Effects` records what the node would send.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from pfnode.core.flight import DONE, Flight
from pfnode.core.hub import Hub
from pfnode.core.protocol import RawJSON, Result
from pfnode.core.scheduler import Scheduler

PROBE_MS, GRACE_MS = 500, 3000
KEY = "df:job"


@dataclasses.dataclass(eq=False)
class Link:
    peer: str
    closed: bool = False


class Harness:
    """The hub with the node's side of things: a time table, and a record of effects."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.scheduler = Scheduler()
        self.hub = Hub(self, probe_ms=PROBE_MS, reroute_grace_ms=GRACE_MS, clock=clock)
        self.offers: list[tuple[Link, int, str]] = []  # (link, seq, packet id)
        self.answers: dict[str, tuple] = {}
        self.draining = False

    # -- HubEffects
    def offer(self, link, seq, flight, remaining_ms):
        self.offers.append((link, seq, flight.id))

    def settle(self, flight, outcome):
        assert flight.id not in self.answers, f"{flight.id} answered twice"
        self.answers[flight.id] = (outcome.code or "ok", outcome.message or outcome.data_json)
        self.scheduler.complete(flight, self.clock(), ok=outcome.ok, data_json=outcome.data_json,
                                code=outcome.code)

    def set_alarm(self, flight, when):
        self.scheduler.set_alarm(flight, when)

    def links_may_come(self):
        return not self.draining

    # -- the node's side
    def link(self, name: str) -> Link:
        link = Link(name)
        self.hub.add_link(link)
        return link

    def drop(self, link: Link) -> None:
        link.closed = True
        self.hub.remove_link(link)

    def submit(self, pid: str, origin: Link, timeout_s: float = 10.0, key: str = KEY) -> Flight:
        now = self.clock()
        packet = SimpleNamespace(key=key, id=pid)
        flight = Flight(packet, origin=origin, lane=None, deadline=now + timeout_s,
                        timeout_ms=int(timeout_s * 1000))
        assert self.scheduler.admit_forwarded(flight, now) is None
        self.hub.route(flight)
        return flight

    def advance(self, seconds: float) -> None:
        """Move time on, firing alarms as the node's timer would."""
        target = self.clock.now + seconds
        while True:
            when = self.scheduler.next_alarm()
            if when is None or when > target:
                break
            self.clock.advance(max(0.0, when - self.clock.now))
            for flight in self.scheduler.tick(self.clock.now):
                if flight.state is DONE:
                    continue
                if self.clock.now >= flight.deadline:
                    self.hub.deadline_passed(flight)
                else:
                    self.hub.on_alarm(flight)
        self.clock.advance(target - self.clock.now)

    def result(self, link: Link, pid: str, *, code: str | None = None, data: bytes = b'"done"') -> None:
        if code is None:
            self.hub.on_result(link, Result(pid, "success", data=RawJSON(data)))
        else:
            self.hub.on_result(link, Result(pid, "error", error={"code": code, "message": "x"}))

    def offered_to(self, pid: str) -> list[str]:
        return [link.peer for link, _, p in self.offers if p == pid]


@pytest.fixture
def h(clock):
    return Harness(clock)


def test_a_plain_client_offered_its_own_packet_gets_pf001_when_the_probe_window_ends(h):
    client = h.link("client")
    h.submit("p1", client, timeout_s=30)
    assert h.offered_to("p1") == ["client"]  # the spec's usage example needs this offer
    h.advance(0.49)
    assert "p1" not in h.answers
    h.advance(0.02)
    code, message = h.answers["p1"]
    assert code == "PF001" and KEY in message and "did not answer within 500 ms" in message
    # silent now: the next one is PF001 at once, nobody asked
    h.submit("p2", client, timeout_s=30)
    assert h.offered_to("p2") == [] and h.answers["p2"][0] == "PF001"


def test_the_spec_usage_example_a_reactor_running_its_own_packet_in_time(h):
    reactor = h.link("reactor")
    h.submit("hello", reactor)
    h.advance(0.1)
    h.result(reactor, "hello", data=b'"HELLO WORLD"')
    assert h.answers["hello"] == ("ok", b'"HELLO WORLD"')
    assert h.hub.own_held(reactor) == 0


def test_an_announced_reactor_gets_the_whole_deadline_then_pf504_and_is_skipped_until_it_answers(h):
    client, reactor = h.link("client"), h.link("reactor")
    h.hub.on_announce(client, [])
    h.hub.on_announce(reactor, [KEY])
    h.submit("slow", client, timeout_s=2)
    assert h.offered_to("slow") == ["reactor"]
    h.advance(1.9)
    assert "slow" not in h.answers  # no probe window for an announced reactor
    h.advance(0.2)
    code, message = h.answers["slow"]
    assert code == "PF504" and "reactor" in message and "2000 ms" in message
    h.submit("next", client)
    code, message = h.answers["next"]
    assert code == "PF003" and "did not answer its last packet" in message
    h.result(reactor, "slow")  # late: goes nowhere, but it is alive and runs KEY
    h.submit("third", client)
    assert h.offered_to("third") == ["reactor"]


def test_pf001_moves_on_and_nobody_running_the_key_is_pf001_naming_who_was_asked(h):
    client, a, b = h.link("client"), h.link("a"), h.link("b")
    links = {"a": a, "b": b}
    h.submit("x", client)
    first = h.offered_to("x")[0]
    h.result(links[first], "x", code="PF001")
    second = h.offered_to("x")[1]
    assert {first, second} == {"a", "b"}
    h.result(links[second], "x", code="PF001")
    assert h.offered_to("x")[2] == "client"  # the submitter's own link last
    h.result(client, "x", code="PF001")
    code, message = h.answers["x"]
    assert code == "PF001" and message.count("has no handler") == 3


def test_a_reactor_going_away_hands_the_packet_on_or_parks_it_for_the_grace(h):
    client, r1 = h.link("client"), h.link("r1")
    h.hub.on_announce(client, [])
    h.hub.on_announce(r1, [KEY])
    h.submit("p", client, timeout_s=20)
    h.drop(r1)
    assert "p" not in h.answers and h.hub.parked  # waits for a reactor
    h.advance(1.0)
    r2 = h.link("r2")  # a new link takes it (on probation: it never answered)
    assert h.offered_to("p") == ["r1", "r2"]
    h.result(r2, "p", data=b"2")
    assert h.answers["p"] == ("ok", b"2") and not h.hub.parked
    # parked until the grace ends: PF003, long before the deadline
    h.drop(r2)
    r3 = h.link("r3")
    h.hub.on_announce(r3, [KEY])
    h.submit("q", client, timeout_s=20)
    h.drop(r3)
    h.advance(GRACE_MS / 1000 - 0.01)
    assert "q" not in h.answers
    h.advance(0.02)
    code, message = h.answers["q"]
    assert code == "PF003" and "r3 disconnected" in message


def test_a_slow_reactor_past_its_probe_window_may_still_answer_while_the_packet_is_in_flight(h):
    """Two spec reactors that never announce; the first one asked is killed; the second one
    takes longer than the probe window: its answer still counts (it was sent the packet)."""
    client, r1, r2, forger = h.link("client"), h.link("r1"), h.link("r2"), h.link("forger")
    h.hub.on_announce(client, [])
    h.hub.on_announce(forger, [])  # runs nothing: never sent the packet
    h.submit("p", client, timeout_s=20)
    first = h.offered_to("p")[0]
    h.drop({"r1": r1, "r2": r2}[first])
    survivor = r2 if first == "r1" else r1
    assert h.offered_to("p")[-1] == survivor.peer
    h.advance(0.6)  # past the survivor's probe window: nobody else, so the packet is parked
    assert "p" not in h.answers
    h.result(forger, "p", data=b'"forged"')  # never sent it: ignored
    assert "p" not in h.answers
    h.result(survivor, "p", data=b'"slept"')
    assert h.answers["p"] == ("ok", b'"slept"')


def test_busy_and_stopping_reactors_pass_it_on_and_alone_their_code_is_relayed(h):
    client, r1, r2 = h.link("client"), h.link("r1"), h.link("r2")
    for link in (client, r1, r2):
        h.hub.on_announce(link, [KEY] if link is not client else [])
    h.submit("p", client)
    for peer in h.offered_to("p")[:1]:
        h.result({"r1": r1, "r2": r2}[peer], "p", code="PF004")
    h.result({"r1": r1, "r2": r2}[h.offered_to("p")[1]], "p", code="PF503")
    code, message = h.answers["p"]
    assert code == "PF503" and "r1" in message and "r2" in message


def test_an_error_frame_refusing_our_submit_moves_on_then_pf003(h):
    client, r1 = h.link("client"), h.link("r1")
    h.hub.on_announce(client, [])
    h.hub.on_announce(r1, [KEY])
    h.submit("p", client)
    (_, seq, _), = h.offers
    h.hub.on_error_frame(r1, seq, {"code": "PF400", "message": "not today"})
    code, message = h.answers["p"]
    assert code == "PF003" and "PF400 not today" in message


def test_a_draining_reactor_is_busy_not_gone(h):
    client, r1 = h.link("client"), h.link("r1")
    h.hub.on_announce(client, [])
    h.hub.on_announce(r1, [KEY])
    h.hub.on_announce(r1, [], stopping=True)
    h.submit("p", client)
    code, message = h.answers["p"]
    assert code == "PF003" and "shutting down" in message
    h.hub.on_announce(r1, [])  # back and running nothing: nobody runs it
    h.submit("q", client)
    assert h.answers["q"][0] == "PF001"


def test_an_announcement_ends_a_probation(h):
    """A dial-out node reconnects: the hub offers it a parked packet before its announcement
    arrives; the announcement then gives the packet its whole deadline."""
    client, old = h.link("client"), h.link("node")
    h.hub.on_announce(client, [])
    h.hub.on_announce(old, [KEY])
    h.submit("p", client, timeout_s=20)
    h.drop(old)
    new = h.link("node-again")  # offered at once, on probation
    h.hub.on_announce(new, [KEY])
    h.advance(5.0)  # far past the probe window
    assert "p" not in h.answers
    h.result(new, "p")
    assert h.answers["p"][0] == "ok"


def test_the_submitter_leaving_drops_its_packets_and_their_late_answers(h):
    client, r1 = h.link("client"), h.link("r1")
    h.hub.on_announce(client, [])
    h.hub.on_announce(r1, [KEY])
    flight = h.submit("p", client)
    h.hub.abandon(flight)
    h.scheduler.forget(flight)
    h.result(r1, "p")
    assert "p" not in h.answers and h.hub.routes[r1].held == {}


def test_parking_ends_at_the_deadline_and_no_time_left_at_all_is_pf408(h):
    client, r1 = h.link("client"), h.link("r1")
    h.hub.on_announce(client, [])
    h.hub.on_announce(r1, [KEY])
    h.submit("p", client, timeout_s=1)
    h.drop(r1)
    h.advance(1.01)  # parked; the deadline comes before the grace
    assert h.answers["p"][0] == "PF003"
    h.submit("q", client, timeout_s=0.0005)  # under a millisecond left when it is routed
    assert h.answers["q"][0] == "PF408"


def hold(h: Harness, link: Link, count: int, key: str = "df:held") -> None:
    """Give `link` `count` packets of another submitter to hold (a load), unanswered."""
    for i in range(count):
        now = h.clock()
        flight = Flight(SimpleNamespace(key=key, id=f"{link.peer}-held-{i}"), origin=None, lane=None,
                        deadline=now + 60, timeout_ms=60_000)
        assert h.scheduler.admit_forwarded(flight, now) is None
        h.hub.route_to(flight, link)


def test_the_order_known_then_answered_before_then_unproven_oldest_first_the_submitter_last(h):
    """For a key: links known to run it (least loaded first); then links that have answered
    forwarded packets, but not of this key (least loaded first); then links that never
    announced nor answered, oldest connection first whatever their load; the submitter last."""
    client, u_old, proven, u_new, known = (h.link(n) for n in ("client", "u_old", "proven", "u_new", "known"))
    h.hub.routes[known].profile.learn(KEY, True)
    h.hub.routes[proven].profile.learn("df:other", True)
    hold(h, u_old, 2)
    hold(h, proven, 3)
    hold(h, known, 5)
    h.submit("p", client)
    for link in (known, proven, u_old, u_new, client):
        assert h.offered_to("p")[-1] == link.peer, (link.peer, h.offered_to("p"))
        h.result(link, "p", code="PF001")
    code, message = h.answers["p"]
    assert code == "PF001"
    asked = [part.split(" ")[0] for part in message.split("asked: ", 1)[1].split("; ")]
    assert asked == ["known", "proven", "u_old", "u_new", "client"], message


def test_a_spec_reactor_that_never_announced_serves_another_peers_packet_within_its_probe_window(h):
    """Two spec peers that never announce: the submitter's packet goes to the other one first,
    which runs it; a mute link connected before them gets its probe window, is skipped from
    then on until it answers, and the submitter's own link is asked last."""
    mute, ts, elixir = h.link("mute"), h.link("ts"), h.link("elixir")
    hold(h, mute, 1, key="df:other")  # busier than the reactors: asked first all the same (oldest)
    h.submit("notify", elixir, key="ed:notify_users")
    assert h.offered_to("notify") == ["mute"]
    h.advance(PROBE_MS / 1000 + 0.01)  # mute lets its window pass: silent now
    assert h.offered_to("notify") == ["mute", "ts"]
    h.advance(0.1)
    h.result(ts, "notify", data=b'{"sent":true}')
    assert h.answers["notify"] == ("ok", b'{"sent":true}')
    # ts is known to run it now; the mute link is not asked again, for this key or another
    h.submit("again", elixir, key="ed:notify_users")
    assert h.offered_to("again") == ["ts"]
    h.result(ts, "again", data=b"1")
    h.submit("process", ts, key="df:process_data")  # the other way round: elixir runs it
    assert h.offered_to("process") == ["elixir"]
    h.result(elixir, "process", data=b"30")
    assert h.answers["process"] == ("ok", b"30")
    h.submit("nobody", ts, key="df:nobody")  # answered before, both: elixir, then ts itself
    h.result(elixir, "nobody", code="PF001")
    h.result(ts, "nobody", code="PF001")
    assert h.offered_to("nobody") == ["elixir", "ts"] and h.answers["nobody"][0] == "PF001"
    # a late answer from the mute link ends its silence: asked again (unproven no more)
    h.result(mute, "mute-held-0", data=b"1")
    h.submit("later", elixir, key="df:later")
    assert h.offered_to("later") == ["mute"]


def test_the_nodes_policy_leaves_out_a_link_it_may_not_send_packets_to(clock):
    """With tokens the node's `may_run` allows only the reactor role: a link without it is
    never offered a packet, however it ranks; without a policy every link may be asked."""
    h = Harness(clock)
    allowed = {"reactor"}
    h.hub.may_run = lambda link, flight: link.peer in allowed
    client, _, reactor = h.link("client"), h.link("submitter_only"), h.link("reactor")  # a link that runs nothing
    h.submit("p", client)
    assert h.offered_to("p") == ["reactor"]
    h.result(reactor, "p", code="PF001")
    code, message = h.answers["p"]
    assert code == "PF001" and "submitter_only" not in message and "client" not in message
    assert h.offered_to("p") == ["reactor"]
