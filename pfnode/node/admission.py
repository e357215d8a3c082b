"""Admission as a pure decision: which way a packet goes, with which role, and its one
record. No I/O, no clock of its own (`now` is passed in), no asyncio.

The rules, in order (`decide`):

1. A **user's handler** of the key runs it in a worker lane. A standard worker element
   (`df:produce`, `df:transform`, `df:reduce`) is a handler too, but never shadows a node
   element of the same key, and any user's handler replaces it.
2. Else a **node element** of the key runs it in the front ("hosted").
3. A connected reactor that announced the key replaces the standard element (a standard
   handler or a node element): its handler is a user's. `mc:migrate` to a connected
   reactor moves a local handler's key to the hub the same way (not for the uplink's
   packets: a hub's packet is never sent back).
4. Else the **hub** forwards it to a connected reactor (when hub routing is on and it did
   not come from our own hub), else PF001.

The role a packet needs: `admin` for the mc group, a node element's own role, else
`submit`. The uplink's packets (our hub's) are not checked: the hub checked them.

`flight_for` is the one Flight factory: every packet in flight, from a link or a node
element's step, gets its record here with its time limit resolved in one place
(`resolve_timeout_ms`: the packet's own, else its handler's, else the node's).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol

from ..core.flight import HOSTED, Flight, resolve_timeout_ms
from ..core.protocol import Packet
from ..core.scheduler import Refusal
from ..errors import ErrorCode

LOCAL, ELEMENT, FORWARD = "local", "element", "forward"


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Route:
    """Where an admitted packet goes: `way` (LOCAL: a worker lane, ELEMENT: a node element in
    the front, FORWARD: the hub), the lane (None when forwarded), and the handler's time
    limit (None: the node's default)."""

    way: str
    lane: str | None
    handler_timeout_ms: int | None = None
    memory_limit_mb: int | None = None

    # its own __init__, not the generated one: compiled with this module (see protocol.Packet)
    def __init__(self, way: str, lane: str | None, handler_timeout_ms: int | None = None,
                 memory_limit_mb: int | None = None) -> None:
        _set(self, "way", way)
        _set(self, "lane", lane)
        _set(self, "handler_timeout_ms", handler_timeout_ms)
        _set(self, "memory_limit_mb", memory_limit_mb)


_set = object.__setattr__


class AdmissionView(Protocol):
    """What admission reads of the node: facts at the moment of the decision."""

    handlers: Mapping[str, dict]  # key -> the handler's options ("standard": a standard worker element)
    elements: Mapping[str, Any]  # key -> node element (its `role`)
    hub_routing: bool

    def runs_elsewhere(self, key: str) -> bool:
        """A connected reactor announced `key` (its handler replaces a standard element)."""

    def migrated(self, key: str) -> bool:
        """mc:migrate moved `key` to a connected reactor that may be sent packets now."""

    def lane_of(self, key: str, group: str) -> str:
        """The lane a local handler's packets run in."""

    def may(self, identity: Any, role: str) -> bool:
        """Whether `identity` holds `role`."""


def decide(packet: Packet, identity: Any, view: AdmissionView, *, from_uplink: bool = False) -> Route | Refusal:
    """The way `packet` goes, or why it is refused (PF403, PF001). See the module's rules."""
    key = packet.key
    options = view.handlers.get(key)
    users = options is not None and not options.get("standard")
    element = None if users else view.elements.get(key)
    if element is not None:
        options = None  # a standard worker element never shadows a node element
    if not users and (options is not None or element is not None) and view.runs_elsewhere(key):
        options = element = None  # a connected reactor's own handler replaces the standard element
    role = role_of(packet.group, element if options is None else None)
    if not from_uplink and not view.may(identity, role):
        return Refusal(ErrorCode.FORBIDDEN, f"submit {key} (the {role} role)")
    if options is not None and view.hub_routing and not from_uplink and view.migrated(key):
        options = element = None  # mc:migrate moved it to a connected reactor: the hub sends it there
    if options is not None:
        return Route(LOCAL, view.lane_of(key, packet.group), options.get("timeout_ms"), options.get("memory_limit_mb"))
    if element is not None:
        return Route(ELEMENT, HOSTED)
    if view.hub_routing and not from_uplink:
        return Route(FORWARD, None)
    return Refusal(ErrorCode.NO_HANDLER, f"No handler for {key}")


def role_of(group: str, element: Any = None) -> str:
    """The role a packet of `group` needs (run by node element `element`, if any)."""
    if group == "mc":
        return "admin"
    return element.role if element is not None else "submit"


def flight_for(packet: Packet, lane: str | None, *, scope: Any, origin: Any, seq: int, identity: Any,
               now: float, default_timeout_ms: int, handler_timeout_ms: int | None = None,
               memory_limit_mb: int | None = None, waits: bool = True) -> Flight:
    """The packet's one record. `waits`: its dependencies are waited for here (not for a
    forwarded packet, whose dependencies travel with it, nor a step pinned to a target)."""
    timeout_ms = resolve_timeout_ms(packet.timeout_ms, handler_timeout_ms, default_timeout_ms)
    flight = Flight(packet, scope=scope, origin=origin, seq=seq, lane=lane, priority=packet.priority,
                    deadline=now + timeout_ms / 1000, timeout_ms=timeout_ms,
                    dependencies=(packet.dependencies or ()) if waits else (),
                    memory_limit_mb=memory_limit_mb, size=len(packet.data))
    flight.identity = identity
    return flight


def flight_of_route(packet: Packet, route: Route, *, scope: Any, origin: Any, seq: int, identity: Any,
                    now: float, default_timeout_ms: int) -> Flight:
    """`flight_for` a decided route."""
    return flight_for(packet, route.lane, scope=scope, origin=origin, seq=seq, identity=identity, now=now,
                      default_timeout_ms=default_timeout_ms, handler_timeout_ms=route.handler_timeout_ms,
                      memory_limit_mb=route.memory_limit_mb, waits=route.way != FORWARD)


RouteOrRefusal = Route | Refusal
Decider = Callable[[Packet, Any, AdmissionView], RouteOrRefusal]
