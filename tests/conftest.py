"""Shared fixtures: real nodes in real processes on real sockets."""
from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
TEST_HANDLERS = "pfnode.handlers.examples,pfnode.handlers.numeric,tests.handlers_testing"
_SERVING = re.compile(r"front: serving (ws://\S+)")


@dataclasses.dataclass
class RunningNode:
    proc: subprocess.Popen
    endpoint: str
    log_path: Path

    @property
    def http(self) -> str:
        return self.endpoint.split("/packetflow")[0].replace("ws://", "http://", 1)

    def health(self) -> dict:
        with urllib.request.urlopen(self.http + "/healthz", timeout=5) as response:
            return orjson.loads(response.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_node(log_dir: Path, *args: str, workers: int = 2, handlers: str = TEST_HANDLERS,
               timeout_s: float = 60.0, cwd: Path = ROOT, command: list[str] | None = None,
               env: dict[str, str] | None = None) -> RunningNode:
    """Run `pfnode serve` on a free port (in `cwd`: the repository root unless told) and
    wait until it says where it listens. `command` runs instead, as given (it must log the
    same `front: serving` line; `args` follow it); `env` replaces the environment."""
    log_path = log_dir / f"node-{time.monotonic_ns()}.log"
    log_file = open(log_path, "wb")
    if command is None:
        command = [sys.executable, "-m", "pfnode", "serve", "--port", "0", "--workers", str(workers),
                   "--handlers", handlers]
    proc = subprocess.Popen([*command, *args], cwd=cwd, env=env, stdout=log_file,
                            stderr=subprocess.STDOUT)
    log_file.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = _SERVING.search(log_path.read_text(errors="replace"))
        if match:
            return RunningNode(proc, match.group(1), log_path)
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode}:\n{log_path.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"node did not start within {timeout_s} s:\n{log_path.read_text()}")


@pytest.fixture
def clock():
    """A fake monotonic clock (pfnode.clock.FakeClock): time moves only when a test says so."""
    from pfnode.clock import FakeClock

    return FakeClock()


@pytest.fixture(scope="session")
def node(tmp_path_factory) -> RunningNode:
    """One node shared by tests that leave it healthy (2 workers, test handlers)."""
    running = start_node(tmp_path_factory.mktemp("node"))
    yield running
    running.stop()


@pytest.fixture
def fresh_node(tmp_path):
    """A node of one's own, with extra `pfnode serve` arguments: fresh_node('--workers', '1')."""
    started: list[RunningNode] = []

    def make(*args: str, **kwargs) -> RunningNode:
        running = start_node(tmp_path, *args, **kwargs)
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()


def pytest_report_header(config) -> str:
    from pfnode.settings import Settings

    return f"pfnode transport under test: {os.environ.get('PFNODE_TRANSPORT') or Settings().transport}"
