"""`NodeControl`: the node as the standard elements see it, and all they may see.

The node elements (pfnode/elements/hosted/) import the core, their own package and this
interface, nothing else of pfnode (tests/test_layout.py holds them to it). The node
implements it (pfnode/node/control.py). Every call that acts for someone names the
principal it acts for (`principal`: the submitter's identity, None without tokens), so
that roles, ownership and shares are enforced in one place; changes of the node's
configuration go through the owner's own checked method (`tune` through the dispatcher's
and the scheduler's setters), never by writing another part's fields.
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Mapping, NamedTuple, Protocol

from ..core.flight import Flight
from ..core.protocol import Packet
from ..core.scheduler import Refusal


class Target(NamedTuple):
    """Where a co:broadcast step runs: a worker (its dispatcher view) or a reactor (its link)."""

    name: str
    kind: str  # "worker" or "reactor"
    handle: Any
    lane: str | None


class LaneInfo(NamedTuple):
    """A lane as mc:scale, mc:spawn and mc:tune see it."""

    name: str
    size: int  # its configured size (cf: always 1)
    resizable: bool


class NodeControl(Protocol):
    """What a node element may ask of the node."""

    resources: Any  # the elements' own node-held state (hosted/state.ElementState), which the node keeps
    default_timeout_ms: int

    # -- time
    def now(self) -> float:
        """The node's clock (seconds, monotonic)."""

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        """Run `callback(*args)` at `when` on the node's clock."""

    # -- principals
    def may(self, principal: Any, role: str) -> bool:
        """Whether `principal` holds `role` (always, without tokens)."""

    # -- steps: sub-packets through the same lanes, priorities, deadlines and hub
    def submit(self, packet: Packet, parent: Flight, origin: Any, principal: Any,
               target: Target | None = None) -> Flight | Refusal:
        """Admit a step of `parent` (in its scope, with `principal`'s roles); on `target`
        (a broadcast) when given. Its Flight, or why not."""

    def drop(self, flight: Flight) -> None:
        """A step whose parent has ended: cancelled like the packet of a client that left."""

    def completion(self, scope: Any, packet_id: str) -> asyncio.Future:
        """A future of how packet `packet_id` of `scope` ended (cf:gate)."""

    def broadcast_targets(self, key: str, kind: str, principal: Any) -> list[Target]:
        """Where a co:broadcast of `key` may run for `principal`: "workers", "reactors" or "all"."""

    def parallelism(self, key: str) -> int:
        """How many steps of `key` a df:consume keeps in flight."""

    def unhold(self, flight: Flight, hold: Any) -> bool:
        """Release a packet held under `hold` (rm:lock's turn); True when it became ready."""

    def pump(self) -> None:
        """Hand out packets that became ready, at the end of this loop turn."""

    # -- handlers, lanes, placement (mc:*)
    def lanes(self) -> Mapping[str, LaneInfo]:
        """The node's lanes."""

    def lane_sizes(self) -> dict[str, int]:
        """Each lane's workers now."""

    def lane_targets(self) -> dict[str, int]:
        """Each lane's wanted size."""

    def user_handler(self, key: str) -> dict | None:
        """The options of a user's handler of `key` (not a standard element), or None."""

    def is_node_element(self, key: str) -> bool:
        """Whether the node runs `key` itself (a node element)."""

    def placement(self, key: str) -> dict[str, Any]:
        """Where packets of `key` run now: {"lane"}, {"reactor", "connected"}, {"hub"} or {"front"}."""

    def migrated_keys(self) -> set[str]:
        """The keys mc:migrate moved."""

    def migrate(self, principal: Any, key: str, *, lane: str | None = None, reactor: str | None = None) -> None:
        """Run `key`'s packets on `lane`, or prefer `reactor`; neither: undo both."""

    async def resize(self, principal: Any, plan: dict[str, int]) -> None:
        """Set lane sizes (one at a time; packets in flight are never lost)."""

    def tuning(self, lane: str) -> dict[str, Any]:
        """A lane's scheduling: window_ms, prefetch, aging_ms."""

    def tune(self, principal: Any, lane: str, *, window_ms: float | None = None, prefetch: int | None = None,
             aging_ms: int | None = None) -> None:
        """Set a lane's scheduling (checked by the dispatcher and the scheduler)."""

    def capacity(self) -> tuple[dict[str, Any], dict[str, int]]:
        """The machine's capacity and the recommended lane sizes."""

    def status(self) -> dict[str, Any]:
        """The node's status (as /status)."""

    @property
    def dask(self) -> Any:
        """The Dask lane (mc:scale of lane "dask"), or None."""

    def audit(self, principal: Any, action: str, outcome: str = "ok", **detail: Any) -> None:
        """Count and log an admin action: who, what, before and after."""
