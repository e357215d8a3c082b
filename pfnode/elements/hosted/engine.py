"""How a node element runs: its context, and the sub-packets it sends through the node.

`ElementContext.run(step, input, field)` turns a step (`{"group", "element", "data"?,
"priority"?, "timeout_ms"?, "metadata"?, "input_as"?}`) into a real packet: its data is the
step's `data`, or else the value flowing in (with `input_as`, the value flowing in becomes
that field of the step's `data`: `{"element": "consume", "data": {"step": ...}, "input_as":
"items"}` maps a step over what the previous step produced); its priority the step's, else the parent's; its
deadline the step's `timeout_ms` from now, never beyond the parent's; its submitter scope
the parent's (so dependencies and fair shares are the parent's submitter's), and its
roles too (a composite cannot do what its submitter may not). It is admitted, scheduled,
placed and answered like any packet (a local handler, another node element, or a
connected reactor through the hub), and its one answer comes back to the element through
a `Waiter` instead of a link. When the parent ends (answered, past its deadline, or its
submitter gone), every step it still has in flight is cancelled.

The engine reaches the node only through `NodeControl` (pfnode/elements/host.py).
"""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson

from ...errors import ErrorCode
from ...core.flight import DONE, Flight, Outcome
from ...core.protocol import _ELEMENT_RE, GROUPS, MAX_ID_CHARS, Packet, RawJSON, encode_json
from ..host import NodeControl
from ..base import ElementError, ElementFailed, check_keys, need_dict, need_list

STEP_FIELDS = {"group", "element", "data", "priority", "timeout_ms", "metadata", "input_as"}
MAX_STEPS = 1000  # steps in one composite's list
_MISSING = object()


class Waiter:
    """The origin of a sub-packet: its one answer resolves a future instead of going out
    on a link."""

    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()

    def resolve(self, flight: Flight, outcome: Outcome) -> None:
        if not self.future.done():
            self.future.set_result(outcome)


class Step:
    __slots__ = ("group", "element", "data", "priority", "timeout_ms", "metadata", "input_as")

    def __init__(self, group, element, data, priority, timeout_ms, metadata, input_as=None) -> None:
        self.group, self.element, self.data = group, element, data
        self.priority, self.timeout_ms, self.metadata = priority, timeout_ms, metadata
        self.input_as = input_as  # the field of `data` the value flowing in goes to (None: the whole data)

    def data_for(self, value: Any) -> Any:
        """The step's data with `value` flowing in: the step's own `data` if it has one;
        with `input_as`, its data (an object) with `value` as that field; else `value`."""
        if self.input_as is not None:
            return {**(self.data if self.data is not _MISSING else {}), self.input_as: value}
        return self.data if self.data is not _MISSING else value

    @property
    def key(self) -> str:
        return f"{self.group}:{self.element}"


def parse_step(value: Any, field: str) -> Step:
    """A step template, checked; ElementError naming the bad field."""
    step = need_dict(value, field)
    check_keys(step, field, STEP_FIELDS)
    group, element = step.get("group"), step.get("element")
    if not isinstance(group, str) or group not in GROUPS:
        raise ElementError(f"{field}.group", f"must be one of {', '.join(sorted(GROUPS))}, got {group!r}"[:200])
    if not isinstance(element, str) or not _ELEMENT_RE.fullmatch(element):
        raise ElementError(f"{field}.element", "must be 1-64 characters of A-Z a-z 0-9 _ . -")
    priority = step.get("priority")
    if priority is not None and (type(priority) is not int or not 1 <= priority <= 10):
        raise ElementError(f"{field}.priority", f"must be an integer 1..10, got {priority!r}"[:200])
    timeout_ms = step.get("timeout_ms")
    if timeout_ms is not None and (type(timeout_ms) is not int or timeout_ms <= 0):
        raise ElementError(f"{field}.timeout_ms", f"must be a positive integer, got {timeout_ms!r}"[:200])
    metadata = step.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ElementError(f"{field}.metadata", "must be an object")
    input_as = step.get("input_as")
    if input_as is not None:
        if not isinstance(input_as, str) or not 0 < len(input_as) <= 64:
            raise ElementError(f"{field}.input_as", "must be a field name (a string of 1-64 characters)")
        if "data" in step and not isinstance(step["data"], dict):
            raise ElementError(f"{field}.data", "must be an object with input_as (the value flowing in "
                                                "becomes its field)")
    return Step(group, element, step["data"] if "data" in step else _MISSING, priority, timeout_ms, metadata,
                input_as)


def parse_steps(data: dict, field: str = "steps") -> list[Step]:
    """`data[field]`: a list of 1 to MAX_STEPS steps, each checked (`steps[2].group: ...`)."""
    return [parse_step(step, f"{field}[{i}]")
            for i, step in enumerate(need_list(data.get(field), field, max_items=MAX_STEPS, min_items=1))]


class StepFailed(ElementFailed):
    """A step ended in an error; its parent fails with the step's code, saying which step."""

    def __init__(self, field: str, outcome: Outcome) -> None:
        super().__init__(outcome.code, f"{field}: {outcome.code} {outcome.message}")
        self.field = field
        self.outcome = outcome


class ElementContext:
    """What a running node element sees: its packet, its submitter, and `run`."""

    _ids = itertools.count(1)

    def __init__(self, node: NodeControl, flight: Flight, identity: Any) -> None:
        self.node = node
        self.flight = flight
        self.identity = identity
        self.started = time.perf_counter()
        self._children: dict[Flight, None] = {}

    # -- the packet
    @property
    def packet_id(self) -> str:
        return self.flight.id

    @property
    def priority(self) -> int:
        return self.flight.priority

    @property
    def scope(self) -> Any:
        return self.flight.scope

    @property
    def metadata(self) -> dict | None:
        return self.flight.packet.metadata

    def remaining_s(self) -> float:
        return max(0.0, self.flight.deadline - self.node.now())

    # -- steps
    async def run(self, step: Any, value: Any, field: str) -> Any:
        """Run one step with `value` flowing in; its output, or StepFailed."""
        outcome = await self.outcome(step, value, field)
        if not outcome.ok:
            raise StepFailed(field, outcome)
        return orjson.loads(outcome.data_json)

    async def outcome(self, step: Any, value: Any, field: str) -> Outcome:
        """Run one step; its Outcome, success or not (bad step input is ElementError)."""
        parsed = step if isinstance(step, Step) else parse_step(step, field)
        return await self._answer_of(*self.send(parsed, value, field))

    async def run_on(self, target: Any, step: Step, value: Any, field: str) -> Outcome:
        """Run a step on one chosen target (a worker, or a reactor: `NodeControl.broadcast_targets`);
        its Outcome. A target that refuses it does not pass it on."""
        return await self._answer_of(*self.send(step, value, field, target))

    async def _answer_of(self, waiter: Any, flight: Flight | None) -> Outcome:
        """What `send` returned, awaited: the step's Outcome (a refusal already is one); a
        step still in flight when this is cancelled is dropped."""
        if flight is None:
            return waiter  # a refusal, as an Outcome
        try:
            return await waiter.future
        finally:
            self._children.pop(flight, None)
            if flight.state is not DONE:
                self.node.drop(flight)

    def send(self, step: Step, value: Any, field: str, target: Any = None) -> tuple[Any, Flight | None]:
        """Admit a step now; (its Waiter, its Flight), or (a failure Outcome, None)."""
        from ...core.flight import failure

        data = step.data_for(value)
        try:
            data_json = encode_json(data)
        except TypeError as exc:
            raise ElementError(field, f"a value that is not JSON: {exc}") from None
        now = self.node.now()
        remaining_ms = int((self.flight.deadline - now) * 1000)
        if remaining_ms <= 0:
            return failure(ErrorCode.DEADLINE_EXCEEDED, f"{field}: no time left in the parent's deadline"), None
        timeout_ms = min(step.timeout_ms or remaining_ms, remaining_ms)
        parent_id = self.flight.id[:MAX_ID_CHARS - 40]
        packet = Packet(id=f"{parent_id}/{field}#{next(self._ids)}"[:MAX_ID_CHARS], group=step.group,
                        element=step.element, data=RawJSON(data_json),
                        priority=step.priority or self.flight.priority, timeout_ms=timeout_ms,
                        metadata=step.metadata)
        waiter = Waiter()
        admitted = self.node.submit(packet, self.flight, waiter, self.identity, target)
        if not isinstance(admitted, Flight):
            code = admitted.code.value if isinstance(admitted.code, ErrorCode) else admitted.code
            return failure(code, admitted.message), None
        self._children[admitted] = None
        return waiter, admitted

    def cancel_children(self) -> None:
        """The parent has ended: its steps still in flight are dropped."""
        children, self._children = self._children, {}
        for child in children:
            if child.state is not DONE:
                self.node.drop(child)

    # -- helpers for elements
    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000
