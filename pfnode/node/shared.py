"""What the node's parts share, as each part sees it: the node's state and its parts. The
node (node/node.py) is the one implementation; the parts name this protocol instead of the
node, so that no part imports the module that imports it."""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Protocol

from ..core.flight import Flight, Outcome
from ..core.hub import Hub
from ..core.scheduler import Scheduler
from ..elements.hosted.state import ElementState
from ..ops.logs import RateLimiter
from ..ops.metrics import Metrics
from ..pool.pool import Pool
from ..settings import Settings
from .auth import Access
from .backoff import AuthBackoff


class NodeShared(Protocol):
    settings: Settings
    clock: Callable[[], float]
    loop: asyncio.AbstractEventLoop | None
    ready: bool
    draining: bool
    stopping: asyncio.Event
    started_at: float
    hot_path: dict[str, Any]  # pfnode/native.py report(): which per-packet modules run compiled
    uplink: Any  # app/dialout.Uplink while dialled out
    metrics: Metrics
    access: Access
    auth_backoff: AuthBackoff
    refusals: RateLimiter  # the refused connections' log lines, per reason
    scheduler: Scheduler
    pool: Pool
    hub: Hub
    elements: ElementState
    # the parts (node/timer, answers, links, control, intake, hosted, http, loops)
    timer: Any
    answers: Any
    links: Any
    control: Any
    intake: Any
    hosted: Any
    admission_view: Any

    @property
    def state(self) -> str: ...

    def settle(self, flight: Flight, outcome: Outcome) -> None: ...

    def pump(self) -> None: ...

    def on_close(self, link: Any, code: int | None) -> None: ...

    def background(self, coro) -> asyncio.Task: ...

    def keys(self) -> list[str]: ...

    def status(self) -> dict[str, Any]: ...

    def heartbeat_payload(self) -> dict[str, Any]: ...

    def announcement(self, seq: int = 0) -> bytes: ...
