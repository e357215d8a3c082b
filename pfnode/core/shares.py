"""A bound shared fairly between its owners, pure (O(1) a question or a change).

Every node-wide bound of a resource (node elements running, watchers, barriers, lock names,
buffers and their bytes, blocked packets, connections of a principal...) is one `Shares`:

- An owner is who a resource counts against: the principal with tokens, the connection
  without (`Flight.tenant`, a link's scope).
- The reserve (`bound // 10`, at least 1) is for newcomers only: an owner that holds some
  may not take the node past bound - reserve, so a client holding nothing yet always finds
  room, however many owners took their shares before it. Resources are not taken back: an owner over its share
  keeps what it holds, but takes no more until what it holds ends and it is within its
  share again, so the bound goes round between the owners as their resources end.
- With n owners holding some (the asking owner counted, newcomer or not), an owner may hold
  at most (bound - reserve) / n. So the first client to fill the node no longer refuses
  everyone else: it is refused past its share, they are not.
- The bound itself stays as the last line.

`refusal(owner, amount)` says why not (naming the bound, the owner's usage and its share),
or None; `add` and `remove` keep the counts. No operation looks at more than one owner.
"""
from __future__ import annotations

from typing import Any, Hashable


class Shares:
    __slots__ = ("bound", "what", "unit", "reserve", "total", "_by")

    def __init__(self, bound: int, what: str, unit: str = "") -> None:
        self.bound = bound
        self.what = what  # "node elements running", "watchers", ...: for messages
        self.unit = unit  # " bytes", or "" for counts
        self.reserve = max(1, bound // 10) if bound > 1 else 0
        self.total = 0
        self._by: dict[Hashable, int] = {}

    def __len__(self) -> int:
        """Owners holding some."""
        return len(self._by)

    def of(self, owner: Hashable) -> int:
        return self._by.get(owner, 0)

    def share(self, owner: Hashable) -> int:
        """The most `owner` may hold now."""
        active = len(self._by) + (owner not in self._by)
        return max(1, (self.bound - self.reserve) // active)

    def refusal(self, owner: Hashable, amount: int = 1) -> str | None:
        """Why `owner` may not take `amount` more, or None."""
        if self.total + amount > self.bound:
            return (f"node overloaded: {self.what} at the node's bound of {self.bound}{self.unit} "
                    f"({self.total}{self.unit} held); retry later")
        held = self._by.get(owner, 0)
        share = self.share(owner)
        if held + amount > share:
            return (f"{self.what}: you hold {held}{self.unit}, your share is {share}{self.unit} of the node's "
                    f"{self.bound}{self.unit} while {len(self._by) + (owner not in self._by)} clients hold some; "
                    "retry once yours end")
        if held and self.total + amount > self.bound - self.reserve:
            return (f"{self.what}: you hold {held}{self.unit}; the rest of the node's {self.bound}{self.unit} "
                    "is kept for clients holding none yet; retry once yours end")
        return None

    def add(self, owner: Hashable, amount: int = 1) -> None:
        self._by[owner] = self._by.get(owner, 0) + amount
        self.total += amount

    def remove(self, owner: Hashable, amount: int = 1) -> None:
        held = self._by.get(owner, 0) - amount
        if held > 0:
            self._by[owner] = held
        else:
            self._by.pop(owner, None)
        self.total -= amount

    def stats(self) -> dict[str, Any]:
        return {"bound": self.bound, "held": self.total, "owners": len(self._by),
                "most": max(self._by.values(), default=0)}
