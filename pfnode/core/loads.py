"""Each tenant's load and the admission bounds over it, pure. A tenant is who a packet
counts against (its submitter's scope, else its connection: `Flight.tenant`).

A tenant's load is [packets in flight, of them blocked, bytes of their data]. The bounds
(PF004 past one, to that tenant only where the bound is its own):
- queued packets: at most `max_queued` node-wide; once half of that is taken, a tenant
  holding its fair share (`max_queued` over the tenants with packets in flight) or more is
  refused while the others, newcomers first, still get in;
- blocked packets (waiting on dependencies or a hold): `max_blocked` node-wide,
  `max_blocked_per_client` a tenant;
- the packets' data held: `max_queued_bytes` node-wide, `max_queued_bytes_per_client` a tenant;
- blocked packets are also shared fairly (core/shares.py): a tenant may hold at most its
  share of `max_blocked` (a lone tenant all but a reserve for newcomers), so one client's
  never-satisfied dependencies cannot make another's dependent packet PF004;
- a lane may have a bound of its own shared the same way (`lane_bounds`: the node elements
  running or waiting in the `hosted` lane), so one client's 10 000 long-running watches do
  not keep everyone else's node elements waiting.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import ErrorCode
from .flight import Flight
from .shares import Shares


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why a packet is not admitted: its PF code and a message for its submitter."""

    code: ErrorCode
    message: str


class Loads:
    def __init__(self, *, max_queued: int, max_blocked: int, max_blocked_per_client: int,
                 max_queued_bytes: int, max_queued_bytes_per_client: int,
                 lane_bounds: dict[str, int] | None = None) -> None:
        self.max_queued = max_queued
        self.max_blocked = max_blocked
        self.max_blocked_per_client = max_blocked_per_client
        self.max_queued_bytes = max_queued_bytes
        self.max_queued_bytes_per_client = max_queued_bytes_per_client
        self.bytes = 0  # data of every packet in flight
        self.blocked = 0
        self._by: dict[Any, list[int]] = {}  # tenant -> [in flight, blocked, bytes]
        self.blocked_shares = Shares(max_blocked, "packets waiting for dependencies")
        self.lane_shares = {lane: Shares(bound, f"{lane} packets in flight")
                            for lane, bound in (lane_bounds or {}).items()}

    def of(self, tenant: Any) -> tuple[int, int, int]:
        """A tenant's packets in flight, of them blocked, and the bytes of their data."""
        load = self._by.get(tenant)
        return tuple(load) if load is not None else (0, 0, 0)

    # -- the bounds
    def over_queued(self, flight: Flight, queued: int) -> Refusal | None:
        """Past the queue's bound (or the tenant's fair share of a half-full queue), its lane's
        share, or its bytes'."""
        shares = self.lane_shares.get(flight.lane) if self.lane_shares else None
        if shares is not None:
            refused = shares.refusal(flight.tenant)
            if refused is not None:
                return Refusal(ErrorCode.OVERLOADED, refused)
        if queued >= self.max_queued:
            return Refusal(ErrorCode.OVERLOADED,
                           f"node overloaded: {self.max_queued} packets already waiting; retry later")
        if queued * 2 >= self.max_queued:
            load = self._by.get(flight.tenant)
            share = self.max_queued // max(1, len(self._by))
            if load is not None and load[0] >= share:
                return Refusal(ErrorCode.OVERLOADED,
                               f"node busy: you hold {load[0]} of its {queued} waiting packets, over your "
                               f"fair share of {share}; retry later")
        return self.over_bytes(flight)

    def over_bytes(self, flight: Flight) -> Refusal | None:
        size = flight.size
        if not size:
            return None
        if self.bytes + size > self.max_queued_bytes:
            return Refusal(ErrorCode.OVERLOADED, f"node overloaded: {self.bytes} bytes of packet data "
                                                 f"already held (limit {self.max_queued_bytes}); retry later")
        load = self._by.get(flight.tenant)
        if load is not None and load[2] + size > self.max_queued_bytes_per_client:
            return Refusal(ErrorCode.OVERLOADED, f"your packets in flight already hold {load[2]} bytes of data "
                                                 f"(limit {self.max_queued_bytes_per_client}); retry later")
        return None

    def over_blocked(self, flight: Flight) -> Refusal | None:
        refused = self.blocked_shares.refusal(flight.tenant)
        if refused is not None:
            return Refusal(ErrorCode.OVERLOADED, refused)
        load = self._by.get(flight.tenant)
        if load is not None and load[1] >= self.max_blocked_per_client:
            return Refusal(ErrorCode.OVERLOADED, f"{self.max_blocked_per_client} of your packets already "
                                                 "wait for dependencies; retry once they ran")
        return None

    # -- the events
    def entered(self, flight: Flight) -> None:
        load = self._by.get(flight.tenant)
        if load is None:
            load = self._by[flight.tenant] = [0, 0, 0]
        load[0] += 1
        load[2] += flight.size
        self.bytes += flight.size
        if self.lane_shares and flight.lane in self.lane_shares:
            self.lane_shares[flight.lane].add(flight.tenant)

    def block(self, flight: Flight, count: int = 1) -> None:
        """`flight` became blocked (count 1) or stopped being blocked (count -1)."""
        self.blocked += count
        self._by[flight.tenant][1] += count
        if count > 0:
            self.blocked_shares.add(flight.tenant, count)
        else:
            self.blocked_shares.remove(flight.tenant, -count)

    def left(self, flight: Flight) -> None:
        load = self._by[flight.tenant]
        load[0] -= 1
        load[2] -= flight.size
        self.bytes -= flight.size
        if self.lane_shares and flight.lane in self.lane_shares:
            self.lane_shares[flight.lane].remove(flight.tenant)
        if not load[0]:
            del self._by[flight.tenant]
