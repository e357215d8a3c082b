"""`ElementError`: bad input to a standard element, naming the field at fault.

Pure and numpy-free, so that the front process (which evaluates cf:branch's predicates)
and the workers can import it without pulling numpy in. `pfnode.elements.worker.data` and
`pfnode.elements.predicates` re-export it; it is one class.
"""
from __future__ import annotations

from typing import Any


class ElementError(ValueError):
    """Bad input to a standard element: meant to be answered PF002.

    `field` is the path of the field at fault, written as in the packet's data:
    `ops[2].op`, `random.shape[1]`, `test.all[0].value`; `data` for the data itself.
    `message` says what is wrong; `str(error)` is `"field: message"`.
    """

    def __init__(self, field: str, message: str) -> None:
        field = field or "data"
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):  # pickles (e.g. across processes) with both arguments
        return type(self), (self.field, self.message)


def child(parent: str, key: str | int) -> str:
    """The path of `key` under `parent`: `ops` + 2 -> `ops[2]`, `ops[2]` + `op` -> `ops[2].op`;
    under the data itself (`""`) a key is its own path."""
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


def one_of(names) -> str:
    """`a, b, c` for messages that list the accepted names."""
    return ", ".join(names)


def describe(value: Any, limit: int = 40) -> str:
    """A short description of a value as JSON sees it, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        text = repr(value)
        kind = "a string" if isinstance(value, str) else "the number"
        return f"{kind} {text if len(text) <= limit else text[:limit] + '...'}"
    if isinstance(value, (list, tuple)):
        return f"an array of {len(value)}"
    if isinstance(value, dict):
        return "an object"
    if hasattr(value, "dtype") and hasattr(value, "shape"):  # an ndarray (numpy payloads)
        return f"an ndarray of dtype {value.dtype} and shape {list(value.shape)}"
    return f"a value of type {type(value).__name__}"
