"""The optional compiled hot path (docs/ARCHITECTURE.md, "The compiled hot path").

Everything else about the package is in pyproject.toml. This file only adds the extension
modules: Cython compiles the front's per-packet modules, unchanged, from their own .py source
(pfnode/native.py lists them). The build is optional on purpose: without Cython, without a C
compiler, or with PFNODE_BUILD_PURE=1 set, it installs the pure-Python package, which is the
reference and behaves the same; a failed compile is a warning, never a failed install.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "pfnode"))
from native import COMPILED, DIRECTIVES  # noqa: E402 - pfnode/native.py imports nothing of pfnode's

del sys.path[0]


def note(text: str) -> None:
    print(f"pfnode build: {text}", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """build_ext that warns and goes on where a module does not compile: its .py is used."""

    failed: list[str]

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:  # one compiler per core (the modules are independent)
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        self.failed = []
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - e.g. no compiler at all: the pure package
            note(f"no compiled hot path ({type(exc).__name__}: {exc}); the pure-Python modules are used")
        if self.failed:
            note(f"{len(self.failed)} of {len(self.extensions)} modules not compiled, their .py is used: "
                 f"{', '.join(self.failed)}")

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - this one module stays pure
            self.failed.append(ext.name)
            note(f"{ext.name} not compiled ({type(exc).__name__}: {str(exc)[:200]})")

    def copy_extensions_to_source(self) -> None:  # (in place) only those that compiled
        every = self.extensions
        self.extensions = [ext for ext in every if ext.name not in self.failed]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = every


def extensions() -> list:
    if os.environ.get("PFNODE_BUILD_PURE", "") not in ("", "0"):
        note("PFNODE_BUILD_PURE is set: the pure-Python package, nothing compiled")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        note("Cython is not installed: the pure-Python package, nothing compiled")
        return []
    from setuptools import Extension

    modules = [Extension(name, [name.replace(".", "/") + ".py"]) for name in COMPILED]
    return cythonize(modules, compiler_directives=DIRECTIVES, quiet=True,
                     nthreads=os.cpu_count() or 1)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
