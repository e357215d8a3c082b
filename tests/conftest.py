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
_SERVING = re.compile(r"front: serving (wss?://\S+)")


@dataclasses.dataclass
class RunningNode:
    proc: subprocess.Popen
    endpoint: str
    log_path: Path
    tokens: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> token, with --token-file

    @property
    def http(self) -> str:
        return self.endpoint.split("/packetflow")[0].replace("ws://", "http://", 1)

    def health(self) -> dict:
        """The node's detail (its admin-only /status page)."""
        request = urllib.request.Request(self.http + "/status")
        if "admin" in self.tokens:
            request.add_header("Authorization", f"Bearer {self.tokens['admin']}")
        with urllib.request.urlopen(request, timeout=5) as response:
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


# The roles of the tokens a node started with `tokens=True` knows (their names are the keys).
TOKEN_ROLES = {"admin": ["admin", "submit", "reactor"], "client": ["submit"],
               "reactor": ["submit", "reactor"], "serve-only": ["reactor"]}


def _test_tokens() -> dict[str, str]:
    from pfnode.node.auth import new_token

    return {name: new_token() for name in TOKEN_ROLES}


TEST_TOKENS = _test_tokens()  # the same for every node of this test session


def write_token_file(directory: Path, roles: dict[str, list[str]] = TOKEN_ROLES,
                     tokens: dict[str, str] = TEST_TOKENS) -> tuple[Path, dict[str, str]]:
    from pfnode.node.auth import token_entry

    tokens = {name: tokens[name] for name in roles}
    path = directory / f"tokens-{time.monotonic_ns()}.toml"
    path.write_text("\n".join(token_entry(name, roles[name], tokens[name]) for name in roles))
    return path, tokens


def start_node(log_dir: Path, *args: str, workers: int = 2, handlers: str = TEST_HANDLERS,
               timeout_s: float = 60.0, tokens: bool = False, cwd: Path = ROOT,
               command: list[str] | None = None, env: dict[str, str] | None = None) -> RunningNode:
    """Run `pfnode serve` on a free port (in `cwd`: the repository root unless told) and
    wait until it says where it listens. With `tokens`, it runs with a token file of
    TOKEN_ROLES (the node's `tokens` say them). `command` runs instead, as given (it must
    log the same `front: serving` line; `args` follow it); `env` adds to the environment."""
    known: dict[str, str] = {}
    if tokens:
        token_path, known = write_token_file(log_dir)
        args = (*args, "--token-file", str(token_path))
    log_path = log_dir / f"node-{time.monotonic_ns()}.log"
    log_file = open(log_path, "wb")
    if command is None:
        command = [sys.executable, "-m", "pfnode", "serve", "--port", "0", "--workers", str(workers),
                   "--handlers", handlers]
    proc = subprocess.Popen([*command, *args], cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = _SERVING.search(log_path.read_text(errors="replace"))
        if match:
            return RunningNode(proc, match.group(1), log_path, known)
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode}:\n{log_path.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"node did not start within {timeout_s} s:\n{log_path.read_text()}")


@pytest.fixture
def clock():
    """A fake monotonic clock (pfnode.clock.FakeClock): time moves only when a test says so."""
    from pfnode.core.clock import FakeClock

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
