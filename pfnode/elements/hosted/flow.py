"""`df:consume`: a parallel map of a step over items, through the node's lanes.

    {"items": [...], "step": step, "chunk"?: n, "parallel"?: n} -> [step(item) for item in items]

Each item (or, with `chunk`, each run of `chunk` items, given to the step as one list whose
step must answer a list of as many outputs) is a sub-packet of the step's key, so the items
spread over the df lane's workers (or a connected reactor) like any packets, at most
`parallel` in flight at once (default: enough to keep every worker of the lane busy), and
the outputs come back in item order. The first step that fails fails the consume with its
code, saying which item; the others still in flight are cancelled.
"""
from __future__ import annotations

import asyncio
from typing import Any

from ...errors import ErrorCode
from ..base import ElementFailed, check_keys, need_dict, need_list, node_element, optional_int
from .engine import parse_step

MAX_ITEMS = 1_000_000
MAX_PARALLEL = 4096


@node_element("df:consume")
async def consume(ctx, data: Any) -> Any:
    """A parallel map of a step over items, in item order."""
    data = need_dict(data, "data")
    check_keys(data, "", {"items", "step", "chunk", "parallel"})
    items = need_list(data.get("items"), "items", max_items=MAX_ITEMS)
    step = parse_step(data.get("step"), "step")
    chunk = optional_int(data, "chunk", "chunk", low=1, high=MAX_ITEMS)
    parallel = optional_int(data, "parallel", "parallel", low=1, high=MAX_PARALLEL)
    if parallel is None:
        parallel = ctx.node.parallelism(step.key)
    size = chunk or 1
    runs = [(start, items[start:start + size] if chunk else items[start]) for start in range(0, len(items), size)]
    outputs: list[Any] = [None] * len(items)
    pending = iter(runs)  # shared by the runners: each takes the next run when it is free

    async def runner() -> None:
        for start, value in pending:
            field = f"items[{start}:{start + size}]" if chunk else f"items[{start}]"
            result = await ctx.run(step, value, field)
            if not chunk:
                outputs[start] = result
            elif isinstance(result, list) and len(result) == len(value):
                outputs[start:start + len(value)] = result
            else:
                raise ElementFailed(ErrorCode.HANDLER_FAILED,
                                    f"{field}: with chunk, {step.key} must answer a list of {len(value)} "
                                    f"outputs, got {type(result).__name__}")

    runners = [asyncio.ensure_future(runner()) for _ in range(min(parallel, len(runs)))]
    try:
        await asyncio.gather(*runners)
    finally:
        for task in runners:
            task.cancel()
    return outputs
