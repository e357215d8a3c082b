"""Collective (co): fan-out, fan-in, consensus and barriers.

- `co:gather`    {"steps": [step…], "input"?, "min"?: k} -> every step's output, in step
                 order; with `min`, the outputs of the first k steps to succeed (in step
                 order), the rest cancelled. A step failing fails the gather (without `min`),
                 or when fewer than k can still succeed.
- `co:vote`      {"step", "replicas": n, "quorum"?: k, "input"?} -> {"value", "votes",
                 "replicas", "tally"}: n runs of the step on different workers of its lane
                 and reactors that run it (in turn, when there are fewer than n), the output
                 most of them gave when at least k (default: a majority, n // 2 + 1) agree;
                 else PF007 (no quorum).
- `co:broadcast` {"step", "targets": "workers" | "reactors" | "all", "input"?} -> one entry
                 per target, {"target", "ok", "value" | "error"}: the step run once on every
                 worker of its lane (e.g. to warm a cache), and/or once by every connected
                 reactor that runs its key.
- `co:sync`      {"barrier", "parties": n, "data"} -> when n packets have reached the barrier
                 (its name is its submitter's, or a namespace's its token holds:
                 pfnode/core/names.py), every party gets the list of all parties' data in
                 arrival order. A party whose deadline passes first breaks the barrier:
                 every party waiting fails PF408. Bounded output: the list (every party's
                 answer) at most `max_frame_bytes` / 2, and what the barrier delivers in all
                 (parties x the list) at most 4 x `max_frame_bytes` (64 MiB at the default
                 16 MiB); an arrival whose data would pass either is refused at once, PF004
                 naming `data` (PF002 when its data alone could never fit), and nothing is
                 delivered to anyone until every party is there.
"""
from __future__ import annotations

import asyncio
import collections
from typing import Any

import orjson

from ...errors import ErrorCode
from ...core.protocol import encode_json
from ..base import (ElementError, ElementFailed, Encoded, check_keys, need_dict, need_int, need_str, node_element,
                    optional_int)
from ...core.names import qualify, shown
from ...core.shares import Shares
from .engine import parse_step, parse_steps

MAX_REPLICAS = 101
MAX_PARTIES = 1024
MAX_BARRIERS = 4096
MAX_BARRIER_BYTES = 64 << 20
NO_QUORUM = ErrorCode.NO_QUORUM


@node_element("co:gather")
async def gather(ctx, data: Any) -> Any:
    """Run steps at once; every output in order, or the first k successes."""
    data = need_dict(data, "data")
    check_keys(data, "", {"steps", "input", "min"})
    steps = parse_steps(data)
    k = optional_int(data, "min", "min", low=1, high=len(steps))
    value = data.get("input")
    if k is None:
        return list(await asyncio.gather(*(ctx.run(step, value, f"steps[{i}]") for i, step in enumerate(steps))))
    tasks = {asyncio.ensure_future(ctx.outcome(step, value, f"steps[{i}]")): i for i, step in enumerate(steps)}
    won: dict[int, Any] = {}
    failed: list[tuple[int, Any]] = []
    try:
        pending = set(tasks)
        while pending and len(won) < k:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                outcome = task.result()
                if outcome.ok:
                    won[tasks[task]] = orjson.loads(outcome.data_json)
                else:
                    failed.append((tasks[task], outcome))
            if len(steps) - len(failed) < k:
                index, first = min(failed, key=lambda f: f[0])
                raise ElementFailed(first.code, f"only {len(steps) - len(failed)} of {len(steps)} steps can "
                                                f"still succeed, min {k}: steps[{index}]: {first.code} {first.message}")
    finally:
        for task in tasks:
            task.cancel()  # the rest are cancelled (their sub-packets dropped)
    return [won[i] for i in sorted(won)[:k]]


@node_element("co:vote")
async def vote(ctx, data: Any) -> Any:
    """Run a step n times; the output a quorum of them agree on."""
    data = need_dict(data, "data")
    check_keys(data, "", {"step", "replicas", "quorum", "input"})
    step = parse_step(data.get("step"), "step")
    n = need_int(data.get("replicas"), "replicas", low=1, high=MAX_REPLICAS)
    quorum = optional_int(data, "quorum", "quorum", low=1, high=n) or n // 2 + 1
    value = data.get("input")
    # on different workers or reactors: each replica pinned to the next target in turn
    targets = ctx.node.broadcast_targets(step.key, "all", ctx.identity)
    if targets:
        runs = (ctx.run_on(targets[i % len(targets)], step, value, f"replicas[{i}]") for i in range(n))
    else:
        runs = (ctx.outcome(step, value, f"replicas[{i}]") for i in range(n))
    outcomes = await asyncio.gather(*runs)
    tally: collections.Counter[bytes] = collections.Counter()
    for outcome in outcomes:
        if outcome.ok:  # equal outputs: equal JSON once keys are sorted
            tally[orjson.dumps(orjson.loads(outcome.data_json), option=orjson.OPT_SORT_KEYS)] += 1
    errors = collections.Counter(o.code for o in outcomes if not o.ok)
    if tally:
        best, votes = tally.most_common(1)[0]
        if votes >= quorum:
            return {"value": orjson.loads(best), "votes": votes, "replicas": n, "tally": len(tally)}
    else:
        votes = 0
    raise ElementFailed(NO_QUORUM, f"no quorum: the most replicas that agreed were {votes} of {n}, "
                                   f"quorum {quorum}" + (f"; errors: {dict(errors)}" if errors else ""))


@node_element("co:broadcast")
async def broadcast(ctx, data: Any) -> Any:
    """Run a step once on every worker of its lane, and/or on every reactor that runs it."""
    data = need_dict(data, "data")
    check_keys(data, "", {"step", "targets", "input"})
    step = parse_step(data.get("step"), "step")
    targets = data.get("targets", "workers")
    if targets not in ("workers", "reactors", "all"):
        raise ElementError("targets", f"must be workers, reactors or all, got {targets!r}"[:200])
    chosen = ctx.node.broadcast_targets(step.key, targets, ctx.identity)
    if not chosen:
        raise ElementFailed(ErrorCode.NO_HANDLER, f"no {targets} run {step.key}")
    value = data.get("input")
    outcomes = await asyncio.gather(*(ctx.run_on(target, step, value, f"targets[{i}]")
                                      for i, target in enumerate(chosen)))
    results = []
    for target, outcome in zip(chosen, outcomes):
        entry: dict[str, Any] = {"target": target.name, "ok": outcome.ok}
        if outcome.ok:
            entry["value"] = orjson.loads(outcome.data_json)
        else:
            entry["error"] = {"code": outcome.code, "message": outcome.message}
        results.append(entry)
    return results


class Barrier:
    """One co:sync barrier: the parties that have arrived, waiting for the rest."""

    def __init__(self, name: str, parties: int, owner: Any = None) -> None:
        self.name = name
        self.owner = owner  # who opened it: it counts against that owner's share of barriers
        self.parties = parties
        self.arrived: list[tuple[Any, asyncio.Future]] = []
        self.bytes = 0


class Barriers:
    """The node's co:sync barriers, bounded in count and bytes, and in what they deliver."""

    def __init__(self, max_frame_bytes: int = 16 << 20) -> None:
        self.open: dict[str, Barrier] = {}
        self.bytes = 0
        self.shares = Shares(MAX_BARRIERS, "open barriers")
        self.max_list_bytes = max_frame_bytes // 2  # one party's answer: the list of everyone's data
        self.max_delivered_bytes = 4 * max_frame_bytes  # parties x the list

    def _over_output(self, name: str, barrier: "Barrier | None", parties: int, size: int) -> None:
        """Refuse an arrival that would make the barrier's answers pass their bounds."""
        listed = (barrier.bytes if barrier is not None else 0) + size + parties + 1  # with brackets, commas
        if size + parties + 1 > self.max_list_bytes or parties * (size + parties + 1) > self.max_delivered_bytes:
            raise ElementError("data", f"{size} bytes from each of {parties} parties would deliver more than "
                                       f"{self.max_delivered_bytes} bytes (each party gets every party's data; "
                                       f"at most {self.max_list_bytes} bytes each)")
        if listed > self.max_list_bytes or parties * listed > self.max_delivered_bytes:
            raise ElementFailed(ErrorCode.OVERLOADED, f"data: barrier {shown(name)!r} would deliver "
                                                      f"{parties} x {listed} bytes, over its bound of "
                                                      f"{self.max_delivered_bytes} (at most {self.max_list_bytes} "
                                                      "per party); send less data per party")

    async def arrive(self, name: str, parties: int, value: Any, wait_s: float, owner: Any = None) -> "Encoded":
        barrier = self.open.get(name)
        if barrier is not None and barrier.parties != parties:
            raise ElementError("parties", f"barrier {shown(name)!r} is open for {barrier.parties} parties, not {parties}")
        size = len(encode_json(value))
        self._over_output(name, barrier, parties, size)  # before anything is held for it
        if self.bytes + size > MAX_BARRIER_BYTES:
            raise ElementFailed(ErrorCode.OVERLOADED, "the barriers' data is over its bound; retry later")
        if barrier is None:
            refusal = self.shares.refusal(owner)
            if refusal is not None:
                raise ElementFailed(ErrorCode.OVERLOADED, refusal)
            barrier = self.open[name] = Barrier(name, parties, owner)
            self.shares.add(owner)
        future = asyncio.get_running_loop().create_future()
        barrier.arrived.append((value, future))
        barrier.bytes += size
        self.bytes += size
        if len(barrier.arrived) == parties:
            self._close(barrier)
            everyone = Encoded(encode_json([v for v, _ in barrier.arrived]))  # encoded once for every party
            for _, f in barrier.arrived:
                if not f.done():
                    f.set_result(everyone)
            return everyone
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait_s)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._break(barrier, f"a party of barrier {shown(name)!r} reached its deadline with "
                                 f"{len(barrier.arrived)} of {parties} parties there")
            raise ElementFailed(ErrorCode.DEADLINE_EXCEEDED, f"barrier {shown(name)!r}: {len(barrier.arrived)} of "
                                                             f"{parties} parties arrived before the deadline")

    def _close(self, barrier: Barrier) -> None:
        if self.open.get(barrier.name) is barrier:
            del self.open[barrier.name]
            self.shares.remove(barrier.owner)
            self.bytes -= barrier.bytes

    def _break(self, barrier: Barrier, why: str) -> None:
        self._close(barrier)
        for _, f in barrier.arrived:
            if not f.done():
                f.set_exception(ElementFailed(ErrorCode.DEADLINE_EXCEEDED, f"barrier broken: {why}"))
                f.exception()  # a party whose own wait already ended never reads it: not an error to log


@node_element("co:sync")
async def sync(ctx, data: Any) -> Any:
    """Wait until n parties reach a barrier; each gets everyone's data."""
    data = need_dict(data, "data")
    check_keys(data, "", {"barrier", "parties", "data"})
    name = qualify(need_str(data.get("barrier"), "barrier"), ctx.identity)
    parties = need_int(data.get("parties"), "parties", low=1, high=MAX_PARTIES)
    margin = min(0.005, ctx.remaining_s() / 10)  # answer before the node's own deadline does
    return await ctx.node.resources.barriers.arrive(name, parties, data.get("data"),
                                                   max(0.0, ctx.remaining_s() - margin), ctx.scope)
