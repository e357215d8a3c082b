"""Interop with the spec's TypeScript reactor (tests/interop/ts), over a real socket.

The TypeScript sources are compiled with the project-local `tsc` (node_modules/typescript) into
tests/interop/ts/dist whenever a source is newer than its output, then the driver
(dist/interop.js) runs the spec's examples against the session node and prints one JSON line
per check: {"name", "ok", "detail"}.

Needs Node.js on PATH and `npm install` in tests/interop/ts (`make test` runs it first).
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

TS_DIR = Path(__file__).resolve().parent / "interop" / "ts"
SOURCES = ("reactor.ts", "interop.ts")
DRIVER = TS_DIR / "dist" / "interop.js"
TSC = TS_DIR / "node_modules" / "typescript" / "bin" / "tsc"
DRIVER_TIMEOUT_S = 55  # the driver's own watchdog fires at 50 s

EXPECTED_CHECKS = [
    "connect",
    "transform",          # df:transform "hello world" -> "HELLO WORLD", packet_id = the id sent
    "uppercase",          # df:uppercase
    "process_data",       # df:process_data {items: [1..5]} priority 7 -> 30
    "validate_null",      # cf:validate null -> {valid: false}
    "validate_value",     # cf:validate "x" -> {valid: true}
    "unknown_element",    # result status error, PF001
    "concurrent_200",     # 200 in flight, each answer matched to its own submit by seq
    "invalid_priority",   # priority 11 -> error frame PF002, submit rejects
    "open_after_error",   # the connection survives the bad message
    "heartbeat_on_open",  # the reactor's heartbeat on open is echoed with its seq
    "heartbeat",          # a later heartbeat is echoed with its seq
]


def _node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js (`node`) is not on PATH; the TypeScript interop test needs it")
    if not (TS_DIR / "node_modules" / "ws").is_dir() or not TSC.is_file():
        pytest.skip(f"{TS_DIR / 'node_modules'} is missing: run `npm install` in {TS_DIR} "
                    "(`make test` does it)")
    return node


def _compile(node: str) -> None:
    """Run tsc when dist/ is missing or older than a source or the config."""
    inputs = [TS_DIR / name for name in (*SOURCES, "tsconfig.json", "package-lock.json")]
    outputs = [TS_DIR / "dist" / name.replace(".ts", ".js") for name in SOURCES]
    if all(out.exists() for out in outputs):
        newest_input = max(path.stat().st_mtime for path in inputs if path.exists())
        if min(out.stat().st_mtime for out in outputs) >= newest_input:
            return
    proc = subprocess.run([node, str(TSC), "-p", "tsconfig.json"], cwd=TS_DIR,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"tsc failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"


def test_typescript_reactor_runs_spec_examples(node):
    node_bin = _node_binary()
    _compile(node_bin)

    try:
        proc = subprocess.run([node_bin, str(DRIVER), node.endpoint], cwd=TS_DIR,
                              capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the TypeScript driver ran past {DRIVER_TIMEOUT_S} s\n"
                    f"--- stdout ---\n{exc.stdout}\n--- stderr ---\n{exc.stderr}")
    output = f"--- driver stdout ---\n{proc.stdout}\n--- driver stderr ---\n{proc.stderr}"

    checks: dict[str, dict] = {}
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            record = json.loads(line)
            checks[record["name"]] = record

    failed = [f"{name}: {json.dumps(checks[name].get('detail'))}"
              for name in EXPECTED_CHECKS if name in checks and checks[name].get("ok") is not True]
    missing = [name for name in EXPECTED_CHECKS if name not in checks]
    extra_failed = [name for name, record in checks.items()
                    if name not in EXPECTED_CHECKS and record.get("ok") is not True]
    assert not failed and not missing and not extra_failed, (
        f"failed checks: {failed}\nmissing checks: {missing}\nother failures: {extra_failed}\n{output}")
    assert proc.returncode == 0, f"driver exited {proc.returncode}\n{output}"
