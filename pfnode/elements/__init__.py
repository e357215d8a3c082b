"""The spec's 24 standard elements (section 4), built in: see docs/ELEMENTS.md.

`NODE_ELEMENTS` are the ones the node runs itself (pfnode/elements/base.py says which and
why); the worker elements (`df:produce`, `df:transform`, `df:reduce`) are in
`pfnode.elements.data`, a handler module every node loads.
"""
from __future__ import annotations

from . import collective, control, events, flow, meta, resources  # noqa: F401 (they register)
from .base import NODE_ELEMENTS, ElementError, ElementFailed, NodeElement

__all__ = ["NODE_ELEMENTS", "ElementError", "ElementFailed", "NodeElement"]
