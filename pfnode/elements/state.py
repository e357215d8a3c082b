"""The node-held state of the standard elements, one object the node owns
(`node.elements`): co:sync's barriers, ed's topics and subscriptions, rm's buffers, locks
and cache. Each part is bounded in count and bytes, expires by its ttl or lease, and is
released when the peer that alone held it disconnects."""
from __future__ import annotations

from .collective import Barriers


class ElementState:
    def __init__(self) -> None:
        self.barriers = Barriers()

    def stats(self) -> dict:
        return {"barriers": len(self.barriers.open)}

    def release(self, owner) -> None:
        """A peer disconnected: what only it held goes."""
