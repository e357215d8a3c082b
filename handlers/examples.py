"""Every handler the PacketFlow v1.0 spec shows, as the spec's examples expect them to behave.

The spec's usage example, df:transform ("hello world" -> "HELLO WORLD"), is the standard
element (pfnode/elements/data.py), which upper-cases a string given as its whole data.
"""
from __future__ import annotations

from pfnode import handler


@handler("df", "uppercase")
def uppercase(data):
    if not isinstance(data, str):
        raise TypeError(f"df:uppercase expects a string, got {type(data).__name__}")
    return data.upper()


@handler("df", "process_data")
def process_data(data):
    """The interop example: {"items": [1, 2, 3, 4, 5]} -> 30 (the sum of the doubled items)."""
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise TypeError('df:process_data expects {"items": [numbers]}')
    return sum(item * 2 for item in data["items"])


@handler("cf", "validate")
def validate(data):
    """The Elixir quick-start's rule: valid unless data is null."""
    return {"valid": data is not None}


@handler("df", "noop")
def noop(data):
    """Returns its input unchanged; the benchmark's unit of work."""
    return data
