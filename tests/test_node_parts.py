"""The node's parts on their own, on a fake clock: admission as a pure decision, rm:lock's
leases, the heartbeat rule, and mc:tune's checks by the owners of what it changes."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from pfnode.core.clock import FakeClock
from pfnode.core.dispatch import Dispatcher
from pfnode.core.flight import HOSTED
from pfnode.core.protocol import Packet, RawJSON
from pfnode.core.scheduler import Refusal, Scheduler
from pfnode.elements.base import ElementFailed
from pfnode.elements.hosted.resources import Locks
from pfnode.errors import ErrorCode
from pfnode.node import admission
from pfnode.node.loops import Loops
from pfnode.transports.base import HEARTBEAT_TIMEOUT_CLOSE_CODE


def packet(key: str = "df:noop", pid: str = "p1", **fields) -> Packet:
    group, _, element = key.partition(":")
    return Packet(id=pid, group=group, element=element, data=RawJSON(b"1"), **fields)


class View:
    """A node as admission sees it: handlers, node elements, the hub, roles."""

    def __init__(self, handlers=None, elements=None, announced=(), migrated=(), roles=None, hub_routing=True):
        self.handlers = handlers or {}
        self.elements = elements or {}
        self.announced = set(announced)
        self.migrated_keys = set(migrated)
        self.roles = roles  # None: no authentication
        self.hub_routing = hub_routing

    def runs_elsewhere(self, key):
        return key in self.announced

    def migrated(self, key):
        return key in self.migrated_keys

    def lane_of(self, key, group):
        return self.handlers[key].get("lane", group)

    def may(self, identity, role):
        return self.roles is None or role in self.roles.get(identity, ())


ELEMENT = SimpleNamespace(role="submit")
ADMIN_ELEMENT = SimpleNamespace(role="admin")


# ---------------------------------------------------------------- admission.decide
def test_a_users_handler_runs_in_its_lane_with_its_own_time_limit():
    view = View(handlers={"df:noop": {"lane": "df", "timeout_ms": 250, "memory_limit_mb": 64}})
    route = admission.decide(packet(), None, view)
    assert route == admission.Route(admission.LOCAL, "df", 250, 64)


def test_a_node_element_runs_hosted_and_a_standard_worker_element_never_shadows_it():
    view = View(handlers={"cf:seq": {"standard": True}}, elements={"cf:seq": ELEMENT})
    assert admission.decide(packet("cf:seq"), None, view) == admission.Route(admission.ELEMENT, HOSTED)


def test_a_users_handler_replaces_a_node_element_and_an_announcing_reactor_replaces_a_standard_one():
    users = View(handlers={"cf:seq": {"lane": "cf"}}, elements={"cf:seq": ELEMENT})
    assert admission.decide(packet("cf:seq"), None, users).way == admission.LOCAL
    announced = View(handlers={"df:produce": {"standard": True}}, announced={"df:produce"})
    assert admission.decide(packet("df:produce"), None, announced).way == admission.FORWARD
    mine = View(handlers={"df:noop": {"lane": "df"}}, announced={"df:noop"})
    assert admission.decide(packet(), None, mine).way == admission.LOCAL  # a user's handler stays here


def test_a_migrated_key_goes_to_the_hub_but_never_back_up_the_uplink():
    view = View(handlers={"df:noop": {"lane": "df"}}, migrated={"df:noop"})
    assert admission.decide(packet(), None, view).way == admission.FORWARD
    assert admission.decide(packet(), None, view, from_uplink=True).way == admission.LOCAL


def test_without_a_handler_the_hub_forwards_else_PF001():
    assert admission.decide(packet("df:nope"), None, View()).way == admission.FORWARD
    refusal = admission.decide(packet("df:nope"), None, View(hub_routing=False))
    assert isinstance(refusal, Refusal) and refusal.code is ErrorCode.NO_HANDLER
    assert isinstance(admission.decide(packet("df:nope"), None, View(), from_uplink=True), Refusal)


def test_the_role_a_packet_needs_is_checked_for_the_identity_that_sent_it():
    view = View(handlers={"df:noop": {}, "mc:mine": {}}, elements={"rm:alloc": ADMIN_ELEMENT},
                roles={"alice": {"submit"}, "root": {"submit", "admin"}})
    assert admission.decide(packet(), "alice", view).way == admission.LOCAL
    for key in ("mc:mine", "rm:alloc"):
        refused = admission.decide(packet(key), "alice", view)
        assert refused.code is ErrorCode.FORBIDDEN and "admin role" in refused.message, key
        assert not isinstance(admission.decide(packet(key), "root", view), Refusal), key
    assert admission.decide(packet(), "nobody", view).code is ErrorCode.FORBIDDEN
    assert not isinstance(admission.decide(packet("mc:mine"), "alice", view, from_uplink=True), Refusal)


def test_the_one_flight_factory_resolves_the_time_limit_and_what_is_waited_for():
    clock = FakeClock(100.0)
    p = packet(dependencies=("a",), timeout_ms=None)
    local = admission.flight_of_route(p, admission.Route(admission.LOCAL, "df", 300), scope="s", origin="o",
                                      seq=7, identity="alice", now=clock(), default_timeout_ms=30_000)
    assert (local.timeout_ms, local.deadline, local.dependencies, local.identity) == (300, 100.3, ("a",), "alice")
    forwarded = admission.flight_of_route(p, admission.Route(admission.FORWARD, None), scope="s", origin="o",
                                          seq=7, identity=None, now=clock(), default_timeout_ms=30_000)
    assert (forwarded.lane, forwarded.timeout_ms, forwarded.dependencies) == (None, 30_000, ())
    own = admission.flight_for(packet(timeout_ms=50), "df", scope="s", origin=None, seq=0, identity=None,
                               now=clock(), default_timeout_ms=30_000, handler_timeout_ms=300)
    assert own.timeout_ms == 50  # the packet's own limit first


# ---------------------------------------------------------------- rm:lock leases on the node's clock
class Control:
    """What Locks asks of the node: the timer on its clock, holds, the pump."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.alarms: list[tuple[float, object, tuple]] = []
        self.pumped = 0

    def call_at(self, when, callback, *args):
        entry = (when, callback, args)
        self.alarms.append(entry)
        return SimpleNamespace(cancel=lambda: self.alarms.remove(entry) if entry in self.alarms else None)

    def fire_due(self) -> None:
        for entry in sorted(self.alarms, key=lambda e: e[0]):
            if entry[0] <= self.clock():
                self.alarms.remove(entry)
                entry[1](*entry[2])

    def unhold(self, flight, hold):
        return True

    def pump(self):
        self.pumped += 1


def locks_on_a_fake_clock() -> tuple[FakeClock, Control, Locks]:
    clock = FakeClock()
    control = Control(clock)
    return clock, control, Locks(clock, control)


def test_a_lease_lapses_on_the_nodes_clock_and_the_lock_is_free_again():
    async def go():
        clock, control, locks = locks_on_a_fake_clock()
        lock = await locks.acquire("ledger", "alice", lease_s=10.0, wait_s=0)
        assert control.alarms[0][0] == clock() + 10.0  # the lapse is set on the node's clock
        clock.advance(9.9)
        control.fire_due()
        assert locks.holding("ledger", lock.token) is lock
        with pytest.raises(ElementFailed) as busy:
            await locks.acquire("ledger", "bob", lease_s=1.0, wait_s=0)
        assert busy.value.code == ErrorCode.LOCK_BUSY.value and "lease for 100 ms more" in busy.value.message
        clock.advance(0.2)
        control.fire_due()
        assert locks.holding("ledger", lock.token) is None and locks.counters["leases_expired"] == 1
        assert (await locks.acquire("ledger", "bob", lease_s=1.0, wait_s=0)).owner == "bob"
    asyncio.run(go())


def test_a_lease_past_its_time_is_not_honoured_even_before_its_timer_fires():
    async def go():
        clock, _, locks = locks_on_a_fake_clock()
        lock = await locks.acquire("ledger", "alice", lease_s=1.0, wait_s=0)
        clock.advance(1.5)  # the timer has not run yet (a busy loop): the clock decides
        assert locks.holding("ledger", lock.token) is None
        lock = await locks.acquire("ledger", "bob", lease_s=1.0, wait_s=0)
        clock.advance(2.0)
        locks.sweep(clock())  # the node's housekeeping, every second
        assert "ledger" not in locks.named
    asyncio.run(go())


# ---------------------------------------------------------------- heartbeats on the node's clock
class FakeLink:
    def __init__(self, peer: str, last_seen: float, connected=True, paused=False) -> None:
        self.peer, self.last_seen, self.connected, self.reading_paused = peer, last_seen, connected, paused
        self.closed = False
        self.heartbeat_seq = 0
        self.sent: list[bytes] = []
        self.closed_with: int | None = None
        self.pings = 0

    def send(self, frame):
        self.sent.append(frame)

    def close(self, code, reason):
        self.closed_with = code

    def ping(self):
        self.pings += 1


class Links(list):
    def is_uplink(self, link):
        return False


def heartbeat_node(clock, links):
    settings = SimpleNamespace(heartbeat_interval_ms=1000, heartbeat_missed_limit=3)
    return SimpleNamespace(settings=settings, links=Links(links), clock=clock,
                           heartbeat_payload=lambda: {"timestamp": 0})


def test_a_link_silent_past_the_limit_is_closed_and_the_others_get_a_heartbeat():
    clock = FakeClock(100.0)
    talking, silent = FakeLink("a", 99.0), FakeLink("b", 96.9)
    Loops(heartbeat_node(clock, [talking, silent])).heartbeat_tick(clock())
    assert silent.closed_with == HEARTBEAT_TIMEOUT_CLOSE_CODE and not silent.sent
    assert talking.closed_with is None and talking.heartbeat_seq == 1 and talking.pings == 1
    assert b'"type":"heartbeat"' in talking.sent[0]


def test_a_link_whose_reading_is_paused_or_that_is_not_connected_is_not_judged():
    clock = FakeClock(100.0)
    paused, between = FakeLink("p", 0.0, paused=True), FakeLink("u", 0.0, connected=False)
    loops = Loops(heartbeat_node(clock, [paused, between]))
    loops.heartbeat_tick(clock())
    assert paused.closed_with is None and between.closed_with is None
    assert paused.last_seen == between.last_seen == 100.0  # judged from now on, when it reads again
    paused.reading_paused = False
    clock.advance(3.5)
    loops.heartbeat_tick(clock())
    assert paused.closed_with == HEARTBEAT_TIMEOUT_CLOSE_CODE


# ---------------------------------------------------------------- mc:tune through the owners' setters
def test_the_dispatcher_and_the_scheduler_check_what_mc_tune_sets():
    dispatcher = Dispatcher({"cf": 1, "df": 4}, prefetch_ms=1.0)
    dispatcher.tune("df", prefetch_ms=20, window=8)
    assert dispatcher.tuning("df") == (20.0, 8)
    for bad in ({"window": 0}, {"prefetch_ms": -1}, {"window": 2.5}):
        with pytest.raises(ValueError):
            dispatcher.tune("df", **bad)
    with pytest.raises(ValueError):
        dispatcher.tune("nope", window=2)
    assert dispatcher.tuning("df") == (20.0, 8)  # a refused change changes nothing
    scheduler = Scheduler()
    scheduler.set_aging("df", 250)
    assert scheduler.aging_ms("df") == 250
    for lane, value in (("df", -1), ("nope", 5), ("df", 1.5)):
        with pytest.raises(ValueError):
            scheduler.set_aging(lane, value)
