"""The package as it is installed: the wheel's contents, and the bundled handlers under a name
that a user's own `handlers/` package cannot shadow."""
from __future__ import annotations

import os
import re
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


def source_files() -> list[str]:
    """The files of the source tree: those git tracks, or (in an unpacked source distribution,
    which has no .git) every file but what a build or a run leaves behind."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode == 0 and listed.stdout:
        return [name for name in listed.stdout.split("\0") if name and (ROOT / name).is_file()]
    skipped = {".git", ".venv", "__pycache__", "node_modules", "results", "build", "dist", ".pytest_cache"}
    return [str(path.relative_to(ROOT)) for path in ROOT.rglob("*") if path.is_file()
            and not skipped & set(path.relative_to(ROOT).parts) and ".egg-info" not in str(path)]


def source_copy(tmp_path_factory) -> Path:
    """The files a source distribution is built from (setuptools builds in the tree it is
    given, so not in the checkout): the source tree's, as a fresh clone has them."""
    src = tmp_path_factory.mktemp("src")
    for name in source_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    return src


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel, built as `pip wheel .` would, but offline: with the venv's setuptools (the
    test extra installs it) instead of an isolated build environment, from a copy of the
    sources. Returns (names, METADATA, the log). PFNODE_BUILD_PURE=1: the pure-Python wheel (the
    compiled one takes a minute of C compiling; `make native` builds the same modules in place)."""
    src, out = source_copy(tmp_path_factory), tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-v", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=110, env={**os.environ, "PFNODE_BUILD_PURE": "1"})
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


def test_a_pure_build_says_so_and_carries_every_module_as_python(wheel):
    names, _, log = wheel
    assert "PFNODE_BUILD_PURE is set: the pure-Python package, nothing compiled" in log
    assert not [n for n in names if n.endswith((".so", ".c"))]
    from pfnode.native import COMPILED

    assert {f"{name.replace('.', '/')}.py" for name in COMPILED} <= set(names)


def test_the_wheel_carries_py_typed_and_the_dashboards_files(wheel):
    names = wheel[0]
    for name in ("pfnode/py.typed", "pfnode/node/static/dashboard.html", "pfnode/node/static/dashboard.js",
                 "pfnode/node/static/dashboard.css"):
        assert name in names, name


def test_the_metadata_has_classifiers_and_no_invented_urls(wheel):
    metadata = wheel[1].splitlines()
    classifiers = {line.removeprefix("Classifier: ") for line in metadata if line.startswith("Classifier: ")}
    assert {"Typing :: Typed", "Programming Language :: Python :: 3 :: Only",
            "Topic :: System :: Distributed Computing", "Operating System :: POSIX :: Linux"} <= classifiers
    assert not [c for c in classifiers if c.startswith("License ::")]  # the SPDX expression says it
    assert "Programming Language :: Python :: 3.11" in classifiers  # requires-python's lowest
    assert not [line for line in metadata if line.startswith(("Project-URL:", "Home-page:"))], (
        "no repository or documentation site of the project's is known: name none")


def test_the_bundled_handlers_install_inside_pfnode_and_nothing_else_at_the_top(wheel):
    names = wheel[0]
    for module in ("__init__", "examples", "numeric"):
        assert f"pfnode/handlers/{module}.py" in names
    assert {n.split("/")[0] for n in names if "/" in n and ".dist-info/" not in n} == {"pfnode"}


@pytest.fixture(scope="module")
def sdist(tmp_path_factory) -> tarfile.TarFile:
    src, out = source_copy(tmp_path_factory), tmp_path_factory.mktemp("sdist")
    built = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta; "
         "print(build_meta.build_sdist(sys.argv[1]))", str(out)],
        cwd=src, capture_output=True, text=True, timeout=110)
    assert built.returncode == 0, built.stderr[-3000:]
    with tarfile.open(out / built.stdout.split()[-1]) as archive:
        yield archive


def sdist_names(sdist: tarfile.TarFile) -> set[str]:
    return {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}


def test_the_source_distribution_carries_the_files_the_readme_names(sdist):
    named = {"LICENSE", "systemd/pfnode.sysusers", "systemd/pfnode.toml"} | named_in_readme()
    assert named <= sdist_names(sdist), named - sdist_names(sdist)


def test_the_source_distribution_carries_the_whole_source_tree(sdist):
    """What `make run`, `make test`, `make bench` and `.ci/run` need: the Makefile, bench/,
    .ci/, the tests and the interop peers' sources, as the repository has them."""
    names = sdist_names(sdist)
    missing = sorted(set(source_files()) - names - {".gitignore"})
    assert not missing, missing
    for name in ("Makefile", ".ci/run", "bench/run.py", "bench/test_micro.py", "tests/interop/ts/package.json",
                 "pfnode/py.typed", "pfnode/node/static/dashboard.js", "docs/dashboard.png"):
        assert name in names, name
    [ci] = [m for m in sdist.getmembers() if m.name.endswith("/.ci/run")]
    assert ci.mode & 0o111, oct(ci.mode)  # still a program
    assert not [n for n in names if "__pycache__" in n or n.startswith(("bench/results", ".venv"))]


def test_the_readmes_make_targets_find_their_files_in_the_source_distribution(sdist, tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    sdist.extractall(tmp_path, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    [top] = list(tmp_path.iterdir())
    done = subprocess.run(["make", "-n", "run", "test", "bench", "fuzz"], cwd=top, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    paths = set(re.findall(r"\b((?:tests|bench)/[\w./-]+\.(?:py|json))\b", done.stdout))
    assert {"tests/test_e2e.py", "bench/run.py", "bench/test_micro.py"} <= paths
    assert not [p for p in paths if not (top / p).exists() and not p.startswith("bench/results/")]


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
