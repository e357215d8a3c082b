"""The node elements' catalogue: importing this module registers every one of them in
`NODE_ELEMENTS` (pfnode/elements/base.py says what a node element is)."""
from __future__ import annotations

from .base import NODE_ELEMENTS, ElementError, ElementFailed, NodeElement
from .hosted import collective, control, events, flow, meta, resources  # noqa: F401 (they register)

__all__ = ["NODE_ELEMENTS", "ElementError", "ElementFailed", "NodeElement"]
