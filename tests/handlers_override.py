"""A handler module that registers the spec's usage example its own way: a user's
df:transform, which replaces the standard element (tests/test_elements.py)."""
from __future__ import annotations

from pfnode import handler


@handler("df", "transform")
def reverse(data):
    """Not the standard df:transform: reverses a string."""
    return data[::-1]
