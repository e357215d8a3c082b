"""The `--dask` settings, read and checked (pfnode/dask/lane.py uses them; pfnode/settings.py
adds their problems to its own). Apart from the lane so that the settings import nothing of
the lane or of Dask, and this imports nothing of the settings: it is given them."""
from __future__ import annotations

from typing import Any

from ..core.scheduler import LANES

LOCAL = "local:"  # --dask local:N


def parse_target(text: str) -> tuple[str | None, int | None]:
    """`--dask`'s value: (scheduler address, None) or (None, N) for local:N. ValueError says why not."""
    if text.startswith(LOCAL):
        count = text[len(LOCAL):]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"dask: local:N needs a number of workers N >= 1, got {text!r}")
        return None, int(count)
    rest = text.partition("://")[2] if "://" in text else text
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"dask: expected a scheduler address (tcp://host:8786) or local:N, got {text!r}")
    return text, None


def settings_problems(settings: Any) -> list[str]:
    """The problems of a Settings' dask_* fields (Settings.__post_init__ adds them to its own)."""
    problems = []
    try:
        parse_target(settings.dask)
    except ValueError as exc:
        problems.append(str(exc))
    for name in settings.dask_lanes:
        group, colon, element = name.partition(":")
        if not (name in LANES or (colon and group and element)):
            problems.append(f"dask_lanes: {name!r} is neither a lane ({', '.join(LANES)}) nor a "
                            "handler key (group:element)")
    if not settings.dask_lanes:
        problems.append("dask_lanes: name at least one lane or handler key to run on Dask")
    if settings.dask_window is not None and settings.dask_window < 1:
        problems.append(f"dask_window must be >= 1, got {settings.dask_window}")
    for name in ("dask_connect_timeout_ms", "dask_kept_results", "dask_reclaim_grace_ms"):
        if getattr(settings, name) <= 0:
            problems.append(f"{name} must be > 0, got {getattr(settings, name)}")
    return problems
