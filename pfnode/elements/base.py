"""What every standard element shares: its registration, its errors, and the context it
runs in.

Two kinds of element:
- *worker elements* (`df:produce`, `df:transform`, `df:reduce`: pfnode/elements/data.py)
  are ordinary handlers that run in worker processes; they are registered as "standard",
  so a user handler for the same key replaces them;
- *node elements* (the composites and the stateful ones: `cf:*`, `co:*`, `df:consume`,
  `ed:*`, `mc:*`, `rm:*`) run in the node's front process as coroutines, because they
  orchestrate other packets or hold node state. A node element is a *hosted* packet: it
  has a Flight like any other (its deadline, its submitter's scope, its one answer), and
  the steps it runs are real sub-packets through the node (the same lanes, placement,
  priorities, deadlines never beyond the parent's, and hub routing, so a step may run on
  a connected TypeScript or Elixir reactor). A user handler registered for the same key
  (in a worker module) runs instead.

An element reads its input with `ElementContext` helpers that raise `ElementError(field,
message)` for bad input (answered PF002 naming the field); a step that fails fails its
parent with the step's code and a message saying which step (`steps[2]: PF500 ...`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Awaitable, Callable

from ..errors import ErrorCode
from ..core.protocol import json_type
from .errors import ElementError

__all__ = ["ElementError", "ElementFailed", "Encoded", "NodeElement", "NODE_ELEMENTS", "node_element"]


class Encoded(bytes):
    """An element's output already encoded as JSON (the runner sends it as it is): a result
    many packets share, encoded once (co:sync's list of every party's data)."""

    __slots__ = ()


class ElementFailed(Exception):
    """An element ends in an error of its own (a step's failure, no quorum, a timeout)."""

    def __init__(self, code: str | ErrorCode, message: str) -> None:
        self.code = code.value if isinstance(code, ErrorCode) else code
        self.message = message
        super().__init__(f"{self.code}: {message}")


@dataclasses.dataclass(frozen=True)
class NodeElement:
    key: str
    run: Callable[["Any", Any], Awaitable[Any]]  # (ElementContext, data) -> result
    role: str = "submit"  # the role its submitter needs (admin for mc:* and rm:alloc)
    summary: str = ""


NODE_ELEMENTS: dict[str, NodeElement] = {}


def node_element(key: str, role: str = "submit", summary: str = ""):
    """Register a node element: `@node_element("cf:seq")` on `async def run(ctx, data)`."""
    def register(fn):
        NODE_ELEMENTS[key] = NodeElement(key, fn, role, summary or (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return register


# ---------------------------------------------------------------------------- input checks

def need_dict(value: Any, field: str) -> dict:
    if not isinstance(value, dict):
        raise ElementError(field, f"must be an object, got {_kind(value)}")
    return value


def need_list(value: Any, field: str, *, max_items: int | None = None, min_items: int = 0) -> list:
    if not isinstance(value, list):
        raise ElementError(field, f"must be an array, got {_kind(value)}")
    if len(value) < min_items:
        raise ElementError(field, f"must have at least {min_items} item(s)")
    if max_items is not None and len(value) > max_items:
        raise ElementError(field, f"may have at most {max_items} items, got {len(value)}")
    return value


def need_int(value: Any, field: str, *, low: int | None = None, high: int | None = None) -> int:
    if type(value) is not int:
        raise ElementError(field, f"must be an integer, got {_kind(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
        raise ElementError(field, f"must be in {span}, got {value}")
    return value


def need_str(value: Any, field: str, *, max_chars: int = 256) -> str:
    if not isinstance(value, str) or not value:
        raise ElementError(field, f"must be a non-empty string, got {_kind(value)}")
    if len(value) > max_chars:
        raise ElementError(field, f"may have at most {max_chars} characters")
    return value


def optional_int(data: dict, key: str, field: str, **bounds) -> int | None:
    value = data.get(key)
    return None if value is None else need_int(value, field, **bounds)


def check_keys(data: dict, field: str, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        where = f"{field}." if field else ""
        raise ElementError(f"{where}{unknown[0]}", f"unknown field; expected {', '.join(sorted(allowed))}")


_WITH_ARTICLE = {"null": "null", "boolean": "a boolean", "number": "a number", "string": "a string",
                 "array": "an array", "object": "an object"}


def _kind(value: Any) -> str:
    """What JSON type `value` is, for a message: "a number", "an array", "null"."""
    return _WITH_ARTICLE[json_type(value)]


def answer_within_s(ctx) -> float:
    """How long an element that answers with what it has by the deadline (ed:watch, an
    open-ended ed:timer, rm:lock's wait) may wait: its packet's time left, less a margin (a
    tenth of it, at most 100 ms), so that the submitter gets the element's answer rather
    than the node's PF408."""
    remaining = ctx.remaining_s()
    return max(0.0, remaining - min(0.1, remaining / 10))


def optional_ttl_ms(data: dict, key: str, default: int, high: int) -> int:
    """A ttl or lease in ms: `data[key]` (1..high), or `default` when absent."""
    value = optional_int(data, key, key, low=1, high=high)
    return default if value is None else value


def owner_name(scope: Any) -> str:
    """A submitter scope as status shows it: a token's name, or a connection's peer address."""
    return scope if isinstance(scope, str) else str(getattr(scope, "peer", scope))
