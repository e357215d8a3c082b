"""The node's one time source, and a fake one for tests.

Everything that decides by time (the scheduler's deadlines and alarms, the hub's probe
windows and reroute grace, the supervisor's respawn back-off) takes a `clock`: a callable
returning seconds on the monotonic clock. The node passes `time.monotonic` (the clock the
workers also read deadlines from, across processes); tests pass a `FakeClock`, which only
moves when told to, so that a rule about ten seconds takes no time to test.
"""
from __future__ import annotations

import time
from typing import Callable

Clock = Callable[[], float]
monotonic: Clock = time.monotonic


class FakeClock:
    """A clock that stands still until `advance`d (like trio.testing.MockClock)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a monotonic clock does not go back")
        self.now += seconds
        return self.now
