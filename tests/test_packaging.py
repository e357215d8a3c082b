"""The package as it is installed: the wheel's contents, and the bundled handlers under a name
that a user's own `handlers/` package cannot shadow."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import orjson
import pytest

from tests.conftest import ROOT, start_node
from tests.test_readme import named_in_readme

pytestmark = pytest.mark.timeout(120)


def source_copy(tmp_path_factory) -> Path:
    """The files a source distribution is built from (setuptools builds in the tree it is
    given, so not in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, src)
    for name in ("pfnode", "handlers", "docs", "systemd", "bench", "tests"):
        shutil.copytree(ROOT / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "results", "node_modules"))
    return src


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built as `pip wheel .` would, but offline: with the venv's setuptools (the
    test extra installs it) instead of an isolated build environment, from a copy of the
    sources. Returns (names, METADATA, the log)."""
    src, out = source_copy(tmp_path_factory), tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-v", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=110)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [path] = out.glob("pfnode-*.whl")
    with zipfile.ZipFile(path) as archive:
        metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA")))
        return archive.namelist(), metadata.decode(), built.stdout + built.stderr


def test_the_wheel_carries_the_license_and_says_it_in_spdx(wheel):
    names, metadata, _ = wheel
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()


def test_building_prints_no_deprecation_warning(wheel):
    log = wheel[2]
    assert "Deprecat" not in log and "deprecated" not in log, [
        line for line in log.splitlines() if "eprecat" in line]


def test_the_bundled_handlers_install_inside_pfnode_and_nothing_else_at_the_top(wheel):
    names = wheel[0]
    for module in ("__init__", "examples", "numeric"):
        assert f"pfnode/handlers/{module}.py" in names
    assert {n.split("/")[0] for n in names if "/" in n and ".dist-info/" not in n} == {"pfnode"}


def test_the_source_distribution_carries_the_files_the_readme_names(tmp_path_factory):
    src, out = source_copy(tmp_path_factory), tmp_path_factory.mktemp("sdist")
    built = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; "
         "print(build_meta.build_sdist(sys.argv[1]))", str(out)],
        cwd=src, capture_output=True, text=True, timeout=110)
    assert built.returncode == 0, built.stderr[-3000:]
    with tarfile.open(out / built.stdout.split()[-1]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    named = {"LICENSE", "systemd/pfnode.sysusers", "systemd/pfnode.toml"} | named_in_readme()
    assert named <= names, named - names


def test_a_users_own_handlers_package_does_not_shadow_the_bundled_ones(tmp_path):
    """A `handlers/` package in the working directory used to replace the bundled `handlers`
    (and the node could not start); now both load, each under its own name."""
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "__init__.py").write_text("")
    (tmp_path / "handlers" / "mine.py").write_text(
        "from pfnode import handler\n\n"
        "@handler('df', 'mine')\n"
        "def mine(data):\n"
        "    return ['mine', data]\n")
    node = start_node(tmp_path, workers=1, handlers="pfnode.handlers.examples,handlers.mine",
                      cwd=tmp_path)
    try:
        for element, expected in (("mine", ["mine", "x"]), ("transform", "X")):
            done = subprocess.run(
                [sys.executable, "-m", "pfnode", "submit", "df", element, '"x"', "--endpoint",
                 node.endpoint], cwd=tmp_path, capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stdout + done.stderr
            assert orjson.loads(done.stdout)["data"] == expected
    finally:
        assert node.stop() == 0, node.log()
