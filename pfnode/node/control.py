"""The node's side of `NodeControl` (pfnode/elements/host.py): what the node elements may
ask of the node, each call naming the principal it acts for. Steps are admitted like any
packet (pfnode/node/intake.py), in their parent's scope and with the principal's roles;
configuration changes go through their owner's checked setters (the dispatcher's and the
scheduler's `tune`/`set_aging`, the pool's `resize`), and every admin action is counted
and logged in one place (`audit`).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Mapping

from ..core.flight import Flight
from ..core.protocol import Packet
from ..core.scheduler import Refusal
from ..elements.catalog import NODE_ELEMENTS
from ..elements.host import LaneInfo, Target
from ..errors import ErrorCode
from ..ops import logs
from ..pool.capacity import read_capacity, recommend
from ..transports.base import PeerLink
from . import admission
from .shared import NodeShared


log = logging.getLogger("pfnode.front")


class Control:
    """`NodeControl`, implemented on the node's parts."""

    def __init__(self, node: NodeShared) -> None:
        self._node = node
        self.default_timeout_ms = node.settings.default_timeout_ms

    @property
    def resources(self) -> Any:
        return self._node.elements

    # -- time
    def now(self) -> float:
        return self._node.clock()

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        return self._node.timer.call_at(when, callback, *args)

    # -- principals
    def may(self, principal: Any, role: str) -> bool:
        return self._node.access.may(principal, role)

    # -- steps
    def submit(self, packet: Packet, parent: Flight, origin: Any, principal: Any,
               target: Target | None = None) -> Flight | Refusal:
        node = self._node
        if node.draining:
            return Refusal(ErrorCode.UNAVAILABLE, "node is shutting down")
        if target is None:
            return node.intake.admit(packet, origin=origin, seq=0, scope=parent.scope, identity=principal)
        role = admission.role_of(packet.group)
        if not self.may(principal, role):
            return Refusal(ErrorCode.FORBIDDEN, f"submit {packet.key} (the {role} role)")
        now = node.clock()
        flight = admission.flight_for(packet, target.lane, scope=parent.scope, origin=origin, seq=0,
                                      identity=principal, now=now, default_timeout_ms=self.default_timeout_ms,
                                      waits=False)
        if target.kind == "worker":
            refusal = node.scheduler.admit_pinned(flight, now)
            if refusal is None:
                node.pool.run_on(target.handle, flight)
        else:
            refusal = node.scheduler.admit_forwarded(flight, now)
            if refusal is None:
                node.hub.route_to(flight, target.handle)
        if refusal is not None:
            return refusal
        node.timer.arm(flight.alarm)
        return flight

    def drop(self, flight: Flight) -> None:
        self._node.links.abandon(flight)

    def completion(self, scope: Any, packet_id: str) -> asyncio.Future:
        return self._node.answers.completion(scope, packet_id)

    def broadcast_targets(self, key: str, kind: str, principal: Any) -> list[Target]:
        node = self._node
        pool = node.pool
        targets = []
        if kind in ("workers", "all") and key in pool.handlers:
            lane = pool.lane_of(key, key.partition(":")[0])
            for view in pool.dispatcher.workers.values():
                if view.lane == lane and view.ready:
                    targets.append(Target(f"worker:{view.handle.pid}", "worker", view, lane))
        if kind in ("reactors", "all"):
            for r in node.hub.routes.values():
                if not r.link.closed and r.profile.verdict(key) is True and self.may_run(r.link):
                    targets.append(Target(f"reactor:{r.link.peer}", "reactor", r.link, None))
        return targets

    def may_run(self, link: PeerLink) -> bool:
        """Whether a reactor's link may be sent packets to run (the reactor role)."""
        return self.may(link.identity, "reactor")

    def parallelism(self, key: str) -> int:
        pool = self._node.pool
        if key in pool.handlers:
            workers = pool.lane_size(pool.lane_of(key, key.partition(":")[0]))
            return max(8, min(4096, workers * self._node.settings.worker_window * 2))
        return 64

    def unhold(self, flight: Flight, hold: Any) -> bool:
        return self._node.scheduler.unhold(flight, hold)

    def pump(self) -> None:
        self._node.pump()

    # -- handlers, lanes, placement
    def lanes(self) -> Mapping[str, LaneInfo]:
        return {name: LaneInfo(name, spec.size, spec.resizable) for name, spec in self._node.pool.lanes.items()}

    def lane_sizes(self) -> dict[str, int]:
        return self._node.pool.lane_sizes()

    def lane_targets(self) -> dict[str, int]:
        return dict(self._node.pool.targets)

    def user_handler(self, key: str) -> dict | None:
        options = self._node.pool.handlers.get(key)
        return None if options is None or options.get("standard") else options

    def is_node_element(self, key: str) -> bool:
        return key in NODE_ELEMENTS

    def migrated_link(self, key: str) -> PeerLink | None:
        """The connected reactor mc:migrate moved `key` to, when it may be sent packets."""
        node = self._node
        return node.hub.preferred_link(key, lambda link: self.may_run(link) and (
            node.access.enabled or not node.hub.profile(link).unproven))

    def placement(self, key: str) -> dict[str, Any]:
        node = self._node
        out: dict[str, Any] = {}
        if self.user_handler(key) is not None:
            out["lane"] = node.pool.lane_of(key, key.partition(":")[0])
        name = node.hub.preferences.get(key)
        if name is not None:
            out["reactor"] = name
            out["connected"] = self.migrated_link(key) is not None
        if not out:
            out["hub" if key not in NODE_ELEMENTS else "front"] = True
        return out

    def migrated_keys(self) -> set[str]:
        node = self._node
        return set(node.pool.lane_overrides) | set(node.hub.preferences)

    def migrate(self, principal: Any, key: str, *, lane: str | None = None, reactor: str | None = None) -> None:
        node = self._node
        node.pool.lane_overrides.pop(key, None)
        node.hub.preferences.pop(key, None)
        if lane is not None:
            node.pool.lane_overrides[key] = lane
        elif reactor is not None:
            node.hub.preferences[key] = reactor

    async def resize(self, principal: Any, plan: dict[str, int]) -> None:
        for name, size in plan.items():
            try:
                await self._node.pool.resize(name, size)
            except Exception as exc:
                exc.lane = name  # which lane of the plan failed, for the answer
                raise

    def tuning(self, lane: str) -> dict[str, Any]:
        node = self._node
        prefetch_ms, window = node.pool.dispatcher.tuning(lane)
        return {"window_ms": prefetch_ms, "prefetch": window, "aging_ms": node.scheduler.aging_ms(lane)}

    def tune(self, principal: Any, lane: str, *, window_ms: float | None = None, prefetch: int | None = None,
             aging_ms: int | None = None) -> None:
        node = self._node
        if prefetch is not None and prefetch != 1 and not node.pool.lanes[lane].resizable:
            raise ValueError(f"the {lane} lane takes one packet at a time (it runs them in priority order)")
        node.pool.dispatcher.tune(lane, prefetch_ms=window_ms, window=prefetch)
        if aging_ms is not None:
            node.scheduler.set_aging(lane, aging_ms)
        node.elements.tuned[lane] = self.tuning(lane)
        node.pool.pump()  # a wider window may take queued packets now

    def capacity(self) -> tuple[dict[str, Any], dict[str, int]]:
        pool = self._node.pool
        settings = self._node.settings
        cap = read_capacity(pool.worker_pids())
        advice = recommend(cap, rm_memory_limit_mb=settings.rm_memory_limit_mb, current=pool.lane_sizes(),
                           df_max_workers=settings.df_max_workers)
        return cap.to_dict(), advice

    def status(self) -> dict[str, Any]:
        return self._node.status()

    @property
    def dask(self) -> Any:
        return self._node.pool.dask

    def audit(self, principal: Any, action: str, outcome: str = "ok", **detail: Any) -> None:
        self._node.metrics.admin_action(action, outcome)
        if outcome != "invalid" or detail:
            logs.admin_action(log, who=str(principal or "local"), action=action, outcome=outcome, **detail)

