"""One record per packet in flight, and the one rule for its time limit.

A `Flight` is created when the node accepts a packet and lives until the packet is
answered. Every part of the node reads the same record: the scheduler (its lane,
priority, deadline, dependencies and state), the pool's dispatcher (the worker that
holds it and its task number on that worker's pipe), the hub (its routing state,
`route`, when a connected reactor runs it) and the answer path (`origin` and `seq`:
who gets the one reply, and under which seq). The scheduler owns the records: it
creates none, but it is the one table they are found in (by submitter and id, by
origin, and by time), so nothing else keeps a copy of "what is in flight".

States: BLOCKED (waiting for dependencies) -> QUEUED (in its lane's queue) ->
DISPATCHED (handed to a worker) -> DONE; or FORWARDED (a reactor runs it) -> DONE.
A dispatched packet whose worker died before starting it goes back to QUEUED.
"""
from __future__ import annotations

from typing import Any, Hashable, NamedTuple

from ..errors import ErrorCode

BLOCKED = "blocked"  # waiting for dependencies
QUEUED = "queued"  # ready, in its lane's queue
DISPATCHED = "dispatched"  # handed to a worker
FORWARDED = "forwarded"  # with the hub: a connected reactor runs it, or will
DONE = "done"

HOSTED = "hosted"  # the lane of the packets the node runs itself: its node elements (pfnode/elements)


def resolve_timeout_ms(packet_ms: int | None, handler_ms: int | None, default_ms: int) -> int:
    """A packet's time limit: its own `timeout_ms`, else its handler's declared default,
    else the node's. The one place this is decided, for local and forwarded packets alike."""
    return packet_ms or handler_ms or default_ms


class Outcome(NamedTuple):
    """How a packet ended: success with its data as JSON, or a PF code and message."""

    ok: bool
    data_json: bytes | None
    code: str | None
    message: str | None
    duration_ms: float


# What Outcome(...) does, minus the call of its generated __new__ (Python code even where this
# module is compiled): one per packet on the answer path.
_tuple_new = tuple.__new__


def success(data_json: bytes, duration_ms: float = 0.0) -> Outcome:
    return _tuple_new(Outcome, (True, data_json, None, None, duration_ms))


def failure(code: ErrorCode | str, message: str, duration_ms: float = 0.0) -> Outcome:
    return _tuple_new(Outcome, (False, None, code.value if isinstance(code, ErrorCode) else code, message,
                                duration_ms))


class Flight:
    """One accepted packet until its answer. Fields are grouped by the part that writes
    them; every part may read all of them."""

    __slots__ = (
        # the packet, and the answer path: who gets the one reply (None once they left)
        "packet", "id", "scope", "key", "origin", "seq", "tenant", "size", "identity",
        # the scheduler's (pfnode/core/scheduler.py)
        "lane", "priority", "deadline", "timeout_ms", "dependencies", "arrived", "order",
        "state", "waiting_on", "alarm",
        # the dispatcher's (pfnode/core/dispatch.py): task number on its worker's pipe, the worker
        # holding it, its estimated run time
        "no", "worker", "memory_limit_mb", "cost_ms",
        # the hub's (pfnode/core/hub.py): how it is being routed, while FORWARDED
        "route",
        # the rm:lock it holds or waits for (`metadata.lock`: pfnode/elements/hosted/resources.py)
        "hold",
    )

    def __init__(self, packet: Any, *, scope: Hashable = None, origin: Any = None, seq: int = 0,
                 lane: str | None = "df", priority: int = 5, deadline: float = 0.0,
                 timeout_ms: int = 0, dependencies: tuple[str, ...] = (),
                 memory_limit_mb: int | None = None, packet_id: str | None = None, size: int = 0) -> None:
        self.packet = packet
        self.id = packet_id if packet_id is not None else packet.id
        self.scope = scope
        self.key = (scope, self.id)  # ids are unique per submitter scope
        self.origin = origin
        self.seq = seq
        # who it counts against for fair shares: its submitter's scope, else its link
        self.tenant = scope if scope is not None else origin
        self.size = size  # bytes of its data the node holds until it is answered
        self.identity: Any = None  # who submitted it (pfnode.auth.Identity), for its steps' roles
        self.lane = lane
        self.priority = priority
        self.deadline = deadline
        self.timeout_ms = timeout_ms
        self.dependencies = dependencies
        self.arrived = 0.0
        self.order = 0  # arrival order: the FIFO tie-breaker
        self.state = QUEUED
        self.waiting_on: set[str] | None = None
        self.alarm: float | None = None  # when the node's timer looks at it next
        self.no = 0
        self.worker: Any = None
        self.cost_ms = 0.0
        self.memory_limit_mb = memory_limit_mb
        self.route: Any = None
        self.hold: str | None = None

    def __repr__(self) -> str:
        return f"<Flight {self.id!r} {self.state} lane={self.lane} prio={self.priority}>"
