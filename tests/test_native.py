"""The compiled hot path (pfnode/native.py, setup.py; docs/ARCHITECTURE.md): where a C compiler
and Cython are at hand the listed modules run compiled, PFNODE_PURE=1 runs their .py instead, a
stale build is never used, and the compiled modules decide exactly what the .py ones decide.

`make test` runs the whole suite on whatever the build left (compiled where it could), then the
pure rules' suites (NATIVE_PURE_TESTS in the Makefile) once more under PFNODE_PURE=1.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from hypothesis import given

from pfnode import native
from pfnode.core import protocol
from tests.conftest import ROOT
from tests.native_trace import canon, trace
from tests.test_protocol_properties import frames, node_recursion_limit

SEEDS = (1, 2)


def can_compile() -> str | None:
    """Why this machine cannot build the compiled modules, or None if it can."""
    if importlib.util.find_spec("Cython") is None:
        return "Cython is not installed"
    compiler = os.environ.get("CC", "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler})"
    return None


def run_python(code: str, pure: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


REPORT = "import json; from pfnode import native; print(json.dumps(native.report()))"


def test_every_listed_module_runs_compiled_where_it_can_be_built():
    why_not = can_compile()
    if why_not:
        pytest.skip(f"{why_not}: the pure-Python modules run (as they must)")
    if native.pure_forced():
        pytest.skip("PFNODE_PURE=1 in this run")
    got = json.loads(run_python(REPORT, pure=False))
    missing = sorted(set(native.COMPILED) - set(got["compiled"]))
    assert got["mode"] == "compiled" and not got["stale"], (
        f"not compiled: {missing}, stale: {got['stale']} (run `make native`)")


def test_pfnode_pure_runs_every_listed_module_from_its_source():
    got = json.loads(run_python(REPORT, pure=True))
    assert got == {"mode": "pure", "compiled": [], "of": len(native.COMPILED), "pure_forced": True,
                   "stale": []}


def test_the_workers_inherit_the_switch():
    """A worker process imports pfnode like the front: under PFNODE_PURE=1 its modules are pure too."""
    code = ("import multiprocessing as mp, json\n"
            "def probe(_):\n"
            "    from pfnode import native; import pfnode.pool.worker as w\n"
            "    return native.is_compiled(w)\n"
            "if __name__ == '__main__':\n"
            "    with mp.get_context('forkserver').Pool(1) as pool: print(json.dumps(pool.map(probe, [0])))\n")
    path = ROOT / "tests" / "_native_probe.py"
    path.write_text(code)
    try:
        env = {**os.environ, native.PURE_ENV: "1"}
        done = subprocess.run([sys.executable, str(path)], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
    finally:
        path.unlink()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [False]


def _fake_build(tmp_path, source_age_s: float, built_age_s: float) -> None:
    now = time.time()
    source = tmp_path / "hot.py"
    source.write_text("WHERE = 'source'\n")
    os.utime(source, (now - source_age_s, now - source_age_s))
    built = tmp_path / f"hot{importlib.machinery.EXTENSION_SUFFIXES[0]}"
    built.write_bytes(b"")
    os.utime(built, (now - built_age_s, now - built_age_s))


def test_a_compiled_module_older_than_its_source_is_not_used_and_is_named(tmp_path):
    finder = native.SourceFinder(names=("pkg.hot",))
    _fake_build(tmp_path, source_age_s=10, built_age_s=60)  # edited after the build
    spec = finder.find_spec("pkg.hot", [str(tmp_path)])
    assert spec is not None and spec.origin == str(tmp_path / "hot.py")
    assert finder.stale == ["pkg.hot"]


def test_a_fresh_compiled_module_is_left_to_pythons_own_finders(tmp_path):
    finder = native.SourceFinder(names=("pkg.hot",))
    _fake_build(tmp_path, source_age_s=60, built_age_s=10)
    assert finder.find_spec("pkg.hot", [str(tmp_path)]) is None
    assert finder.find_spec("pkg.other", [str(tmp_path)]) is None  # not a listed module
    assert finder.stale == []
    forced = native.SourceFinder(names=("pkg.hot",), forced=True)
    assert forced.find_spec("pkg.hot", [str(tmp_path)]).origin == str(tmp_path / "hot.py")


@pytest.mark.parametrize("seed", SEEDS)
def test_the_compiled_and_the_pure_modules_decide_the_same(seed):
    """decode, the answer frames, the scheduler's and the dispatcher's decisions over random event
    sequences, the pipe messages: this process (compiled where built) against a PFNODE_PURE=1 one."""
    pure = json.loads(run_python(f"from tests.native_trace import *; import json, sys; "
                                 f"from pfnode import native; "
                                 f"print(json.dumps({{'mode': native.report()['mode'], 'trace': trace({seed})}}))",
                                 pure=True))
    assert pure["mode"] == "pure"
    here = trace(seed)
    assert here.keys() == pure["trace"].keys()
    for section, lines in here.items():
        theirs = pure["trace"][section]
        first = next((i for i, (a, b) in enumerate(zip(lines, theirs)) if a != b), None)
        assert first is None and len(lines) == len(theirs), (
            f"{section} differs at line {first}: here {lines[first] if first is not None else len(lines)!r}, "
            f"pure {theirs[first] if first is not None else len(theirs)!r}")


def _pure_protocol():
    """protocol.py's source, loaded beside the (possibly compiled) module under another name."""
    spec = importlib.util.spec_from_file_location("pfnode.core._protocol_source",
                                                  ROOT / "pfnode" / "core" / "protocol.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE_PROTOCOL = _pure_protocol()


@given(frames())  # the profile test_protocol_properties loads: `pfnode`, or `fuzz` under make fuzz
def test_decode_compiled_and_from_source_agree_on_any_frame(case):
    for raw_data in (False, True):
        kwargs = dict(max_frame_bytes=case.max_frame_bytes, max_timeout_ms=case.max_timeout_ms, raw_data=raw_data)
        with node_recursion_limit():
            here, source = protocol.decode(case.frame, **kwargs), SOURCE_PROTOCOL.decode(case.frame, **kwargs)
        assert type(here).__name__ == type(source).__name__
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 10_000))  # repr of data nested 1 024 levels deep
        try:
            assert canon(here) == canon(source)
        finally:
            sys.setrecursionlimit(limit)


@pytest.mark.parametrize("pure", [False, True], ids=["as-built", "PFNODE_PURE=1"])
def test_workers_started_as_new_interpreters_run_packets(tmp_path, pure):
    """--worker-start spawn starts each worker as `python -c` (a compiled pfnode.pool.worker
    cannot be run with `python -m`): its workers answer, compiled or not."""
    import asyncio

    from tests.conftest import start_node
    from tests.e2e_util import Raw

    node = start_node(tmp_path, "--worker-start", "spawn", workers=1, env={native.PURE_ENV: "1" if pure else "0"})

    async def run() -> list[dict]:
        async with Raw(node.endpoint) as raw:
            return [await raw.roundtrip("noop", [i], seq=i) for i in range(3)]

    try:
        replies = asyncio.run(run())
        assert [(r["payload"]["status"], r["payload"].get("data")) for r in replies] == [
            ("success", [i]) for i in range(3)], replies
        assert "before it was ready" not in node.log()
    finally:
        node.stop()


@pytest.mark.parametrize("pure", [False, True], ids=["as-built", "PFNODE_PURE=1"])
def test_the_node_says_which_hot_path_it_runs(tmp_path, pure):
    """In its log at start, in /status and in /metrics' pfnode_info: an operator can tell."""
    from tests.conftest import start_node
    from tests.e2e_util import http_get

    built = {"mode": "pure", "compiled": []} if pure else json.loads(run_python(REPORT, pure=False))
    expected = built["mode"]
    node = start_node(tmp_path, workers=1, env={native.PURE_ENV: "1" if pure else "0"})
    try:
        hot = node.health()["hot_path"]
        assert hot["mode"] == expected and hot["of"] == len(native.COMPILED) and hot["stale"] == []
        assert hot["compiled"] == len(built["compiled"])
        _, _, body = http_get(node.http, "/metrics")
        assert f'hot_path="{expected}"' in body.decode()
        assert f"front: hot path {expected} ({hot['compiled']} of {len(native.COMPILED)} modules compiled" \
            + ("; PFNODE_PURE=1)" if pure else ")") in node.log()
    finally:
        node.stop()
