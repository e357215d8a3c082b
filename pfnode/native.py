"""Which of pfnode's modules run compiled, and the switch back to pure Python.

The front's per-packet code (decode and checks, the packet's Flight record, the scheduler's
admit/pop/complete, the dispatcher, the pipe messages, the answer path, the transports' frame
callbacks, the counters) is compiled by Cython from its unchanged .py source when the package
is built (setup.py; docs/ARCHITECTURE.md, "The compiled hot path"). The .py files stay the
reference: Python imports a compiled module in place of its .py where the build left one, and
the .py wherever it did not (no Cython, no C compiler, PFNODE_BUILD_PURE=1 at build time).

`PFNODE_PURE=1` in the environment makes a process import the .py of every module listed here
even where the compiled one exists: `pfnode/__init__.py` calls `install()` before anything else
of pfnode's is imported, and the worker processes, which inherit the environment, do the same.
A compiled module older than its .py (the source was edited after the build) is never used: its
.py is, and `report()` names it stale (the node logs it at start; `make native` rebuilds).

This module imports nothing of pfnode's: setup.py reads COMPILED and DIRECTIVES from it before
the package is built.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys

PURE_ENV = "PFNODE_PURE"

# The modules Cython compiles: what every packet passes through, on the front and in the workers.
COMPILED: tuple[str, ...] = (
    "pfnode.core.protocol",
    "pfnode.core.flight",
    "pfnode.core.scheduler",
    "pfnode.core.timetable",
    "pfnode.core.loads",
    "pfnode.core.shares",
    "pfnode.core.dispatch",
    "pfnode.core.names",
    "pfnode.core.dependencies",
    "pfnode.node.node",
    "pfnode.node.admission",
    "pfnode.node.intake",
    "pfnode.node.answers",
    "pfnode.node.hosted",
    "pfnode.node.links",
    "pfnode.pool.pool",
    "pfnode.pool.workerproc",
    "pfnode.pool.burst",
    "pfnode.pool.pipe",
    "pfnode.transports.base",
    "pfnode.transports.picows",
    "pfnode.ops.metrics",
    "pfnode.pool.worker",
    "pfnode.client",
)

# Python's semantics, unchanged: annotations stay annotations (Cython would otherwise turn `x: float`
# into a C double and refuse None or an int subclass), functions keep their introspection, and
# module globals are looked up at call time, so what a test patches in a module is what runs.
DIRECTIVES: dict[str, object] = {
    "language_level": 3,
    "annotation_typing": False,
    "binding": True,
    "embedsignature": False,
}


def pure_forced() -> bool:
    return os.environ.get(PURE_ENV, "") not in ("", "0")


# A compiled module older than its .py by more than this is stale: its source was edited (or checked
# out) after the build. (An installed wheel writes both within a second.)
STALE_AFTER_S = 2.0


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds the .py of a COMPILED module wherever it must run as Python: every one of them under
    PFNODE_PURE=1, and otherwise one whose compiled module is stale (older than its .py, so built
    from other source). Anything else it leaves to Python's own finders, which take a compiled
    module before a .py."""

    def __init__(self, names: tuple[str, ...] = COMPILED, forced: bool = False) -> None:
        self.names = frozenset(names)
        self.forced = forced
        self.stale: list[str] = []  # modules found stale, in import order

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names:
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path or sys.path:
            source = os.path.join(entry, leaf + ".py")
            if not os.path.isfile(source):
                continue
            if self.forced:
                return importlib.util.spec_from_file_location(fullname, source)
            built = _built(entry, leaf)
            if built is not None and os.path.getmtime(built) + STALE_AFTER_S < os.path.getmtime(source):
                if fullname not in self.stale:  # (found again by report() before its import, say)
                    self.stale.append(fullname)
                return importlib.util.spec_from_file_location(fullname, source)
            return None
        return None


def _built(folder: str, leaf: str) -> str | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(folder, leaf + suffix)
        if os.path.isfile(path):
            return path
    return None


def finder() -> SourceFinder | None:
    return next((f for f in sys.meta_path if isinstance(f, SourceFinder)), None)


def install() -> SourceFinder:
    """Put a SourceFinder first on sys.meta_path (once per process), forced to pure Python if
    PFNODE_PURE asks for it."""
    found = finder()
    if found is None:
        found = SourceFinder(forced=pure_forced())
        sys.meta_path.insert(0, found)
    return found


def is_compiled(module) -> bool:
    """True if `module` was loaded from an extension module (a .so), not from its .py."""
    return isinstance(getattr(module, "__loader__", None), importlib.machinery.ExtensionFileLoader)


def runs_compiled(name: str) -> bool:
    """True if the module `name` was, or would be, loaded from its compiled module: its spec, as
    an import finds it (this module's SourceFinder first), without importing it."""
    spec = importlib.util.find_spec(name)
    return spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)


def report() -> dict[str, object]:
    """What runs here: "compiled" (every listed module), "partial" or "pure", and the names of
    those compiled. Imports none of them (a node has no use for the client, say)."""
    compiled = [name for name in COMPILED if runs_compiled(name)]
    mode = "compiled" if len(compiled) == len(COMPILED) else "partial" if compiled else "pure"
    found = finder()
    return {"mode": mode, "compiled": compiled, "of": len(COMPILED), "pure_forced": pure_forced(),
            "stale": list(found.stale) if found else []}
