"""`--dask-upload`: the node's handler modules as files to ship to the Dask workers (the
cluster registers them as pfnode/dask/worker.py's `UploadedModules` plugin, before the plugin
that imports them). A top-level module travels as its .py; a module of a package as the whole
package in a .zip (named with its hash, so a changed package never meets a stale zip cache on a
worker). Only Python source travels: native modules cannot be imported from a .zip, and the
modules' own dependencies (and pfnode itself) must be installed on the workers. docs/DASK.md.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import zipfile
from pathlib import Path

from ..errors import ConfigError

log = logging.getLogger("pfnode.dask")

NATIVE_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")  # cannot be imported from a .zip


def handler_files(modules: tuple[str, ...] | list[str]) -> dict[str, bytes]:
    """`--dask-upload`: {file name: bytes} for the handler modules (not pfnode's own, which
    every worker has): a top-level module's .py, a package zipped whole. ConfigError: one that
    cannot be shipped (not found, or not Python source)."""
    files: dict[str, bytes] = {}
    for name in modules:
        top = name.partition(".")[0]
        if top == "pfnode":
            continue
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"dask_upload: cannot find handler module {name!r}: {exc}") from exc
        if spec is None:
            raise ConfigError(f"dask_upload: cannot find handler module {name!r}")
        if spec.submodule_search_locations:
            data = zip_package(Path(list(spec.submodule_search_locations)[0]), top)
            files[f"{top}-{hashlib.sha256(data).hexdigest()[:10]}.zip"] = data
        elif spec.origin and spec.origin.endswith(".py"):
            files[f"{top}.py"] = Path(spec.origin).read_bytes()
        else:
            raise ConfigError(f"dask_upload: handler module {name!r} is not Python source ({spec.origin}); "
                              "install it on the Dask workers instead")
    return files


def zip_package(root: Path, top: str) -> bytes:
    """The package at `root` as a .zip whose entries start with `top/` (no caches); the same
    bytes for the same files (fixed times), so a name with its hash changes only with them."""
    buf = io.BytesIO()
    native = []
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            if path.suffix in NATIVE_SUFFIXES:
                native.append(path.name)
            info = zipfile.ZipInfo(f"{top}/{path.relative_to(root).as_posix()}", date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    if native:
        log.warning("dask: dask_upload ships package %s as a .zip, from which its native modules (%s) cannot be "
                    "imported: install it on the workers instead", top, ", ".join(native[:5]))
    return buf.getvalue()
