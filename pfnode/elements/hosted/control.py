"""Control flow (cf): sequences, branches, loops and gates of steps.

- `cf:seq`    {"input", "steps": [step…], "collect"?: bool} -> the last output (every output
              when `collect`). Each step's input is the previous step's output.
- `cf:branch` {"input", "test": step | predicate, "then": step, "else"?: step} -> the chosen
              step's output; with no `else` and a false test, `input`. A step as the test is
              true when its output is truthy (JSON: not null, false, 0, "", [] or {}).
- `cf:loop`   {"input", "body": step, "times"?: n, "until"?: step | predicate,
              "max_iterations"?: n} -> {"value", "iterations"}: the body runs on the value,
              its output the next value, `times` times, or until `until` holds of the value
              (checked before each run); `max_iterations` is required with `until`, and a
              loop that reaches it without `until` holding fails PF008.
- `cf:gate`   {"wait": [packet ids], "timeout_ms"?} -> {id: result} once every named packet
              of the same submitter has completed; one that failed fails the gate (PF006);
              `timeout_ms` (or the packet's deadline) passing first: PF408.

Predicates are `{"path", "op", "value"}` and their combinators (pfnode/elements/predicates.py).
"""
from __future__ import annotations

import asyncio
from typing import Any

import orjson

from ...errors import ErrorCode
from ..base import (ElementError, ElementFailed, check_keys, need_dict, need_int, need_list, node_element,
                    optional_int)
from .engine import parse_step, parse_steps
from ..predicates import compile_predicate

MAX_ITERATIONS = 100_000
MAX_GATE_IDS = 1024
LOOP_EXHAUSTED = ErrorCode.LOOP_EXHAUSTED


def truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {})


def _is_step(value: Any) -> bool:
    return isinstance(value, dict) and ("group" in value or "element" in value)


def _condition(value: Any, field: str):
    """A test: ("step", parsed step) or ("predicate", predicate), checked up front."""
    if _is_step(value):
        return "step", parse_step(value, field)
    need_dict(value, field)
    return "predicate", compile_predicate(value, field)


async def _holds(ctx, condition, value: Any, field: str) -> bool:
    kind, test = condition
    if kind == "predicate":
        return test(value)
    return truthy(await ctx.run(test, value, field))


@node_element("cf:seq")
async def seq(ctx, data: Any) -> Any:
    """Run steps one after another, each on the previous one's output."""
    data = need_dict(data, "data")
    check_keys(data, "", {"input", "steps", "collect"})
    steps = parse_steps(data)
    collect = data.get("collect", False)
    if not isinstance(collect, bool):
        raise ElementError("collect", "must be true or false")
    value, outputs = data.get("input"), []
    for i, step in enumerate(steps):
        value = await ctx.run(step, value, f"steps[{i}]")
        outputs.append(value)
    return outputs if collect else value


@node_element("cf:branch")
async def branch(ctx, data: Any) -> Any:
    """Run `then` or `else` as a test on the input says."""
    data = need_dict(data, "data")
    check_keys(data, "", {"input", "test", "then", "else"})
    if "test" not in data or "then" not in data:
        raise ElementError("test" if "test" not in data else "then", "is required")
    test = _condition(data["test"], "test")
    then = parse_step(data["then"], "then")
    otherwise = parse_step(data["else"], "else") if data.get("else") is not None else None
    value = data.get("input")
    if await _holds(ctx, test, value, "test"):
        return await ctx.run(then, value, "then")
    return await ctx.run(otherwise, value, "else") if otherwise is not None else value


@node_element("cf:loop")
async def loop(ctx, data: Any) -> Any:
    """Run a body step on a value, a number of times or until a test holds."""
    data = need_dict(data, "data")
    check_keys(data, "", {"input", "body", "times", "until", "max_iterations"})
    body = parse_step(data.get("body"), "body")
    times = optional_int(data, "times", "times", low=0, high=MAX_ITERATIONS)
    until = _condition(data["until"], "until") if data.get("until") is not None else None
    limit = optional_int(data, "max_iterations", "max_iterations", low=1, high=MAX_ITERATIONS)
    if until is not None and limit is None:
        raise ElementError("max_iterations", "is required with until")
    if until is None and times is None:
        raise ElementError("times", "give times, or until with max_iterations")
    value, done = data.get("input"), 0
    while True:
        if times is not None and done >= times:
            break
        if until is not None and await _holds(ctx, until, value, f"until[{done}]"):
            break
        if limit is not None and done >= limit:
            if until is not None:
                raise ElementFailed(LOOP_EXHAUSTED, f"until did not hold after max_iterations ({limit}) runs")
            break
        value = await ctx.run(body, value, f"body[{done}]")
        done += 1
    return {"value": value, "iterations": done}


@node_element("cf:gate")
async def gate(ctx, data: Any) -> Any:
    """Wait until every named packet (of the same submitter) has completed."""
    data = need_dict(data, "data")
    check_keys(data, "", {"wait", "timeout_ms"})
    ids = need_list(data.get("wait"), "wait", max_items=MAX_GATE_IDS)
    for i, pid in enumerate(ids):
        if not isinstance(pid, str) or not pid:
            raise ElementError(f"wait[{i}]", "must be a packet id (a non-empty string)")
    timeout_ms = optional_int(data, "timeout_ms", "timeout_ms", low=1)
    if timeout_ms is not None:
        need_int(timeout_ms, "timeout_ms", low=1)
    waits = {pid: ctx.node.completion(ctx.scope, pid) for pid in dict.fromkeys(ids)}
    limit = min(ctx.remaining_s(), timeout_ms / 1000 if timeout_ms else float("inf"))
    pending = [w for w in waits.values() if not w.done()]
    if pending:
        _, late = await asyncio.wait(pending, timeout=limit)
        if late:
            missing = [pid for pid, w in waits.items() if not w.done()]
            for w in late:
                w.cancel()
            raise ElementFailed(ErrorCode.DEADLINE_EXCEEDED, f"still waiting for {', '.join(missing[:10])}"
                                + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    results = {}
    for pid, wait in waits.items():
        stored = wait.result()
        if not stored.ok:
            raise ElementFailed(ErrorCode.DEPENDENCY_FAILED, f"wait: packet {pid!r} failed ({stored.code})")
        results[pid] = orjson.loads(stored.data_json) if stored.data_json is not None else None
    return results
