"""Background tasks, held by their owner: the event loop keeps only weak references to
tasks, so an owner that starts one keeps it in a set of its own until it ends (and can
cancel what is left when it closes)."""
from __future__ import annotations

import asyncio
from typing import Any, Coroutine


def keep(jobs: set[asyncio.Task], coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
    """Run `coro` as a task held in `jobs` until it ends."""
    job = asyncio.ensure_future(coro)
    jobs.add(job)
    job.add_done_callback(jobs.discard)
    return job
