"""What the interop suites share (tests/test_interop_ts.py, tests/test_interop_elixir.py).

A driver in the other runtime prints one JSON line per check, {"name", "ok", "detail"};
`run_driver` runs it to the end and `assert_checks` wants every expected check present and
passed. A serving peer (`PeerProcess`) stays up while a test sends it work through the
node; it prints JSON event lines, which a thread collects and `wait_for` waits on.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import pytest


def run_driver(command: list[str], cwd: Path, timeout_s: float, what: str
               ) -> tuple[dict[str, dict], subprocess.CompletedProcess, str]:
    """Run a driver to its end; its checks by name, the process, and its output for messages."""
    try:
        proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the {what} ran past {timeout_s} s\n"
                    f"--- stdout ---\n{exc.stdout}\n--- stderr ---\n{exc.stderr}")
    output = f"--- driver stdout ---\n{proc.stdout}\n--- driver stderr ---\n{proc.stderr}"
    checks: dict[str, dict] = {}
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            record = json.loads(line)
            if "name" in record:
                checks[record["name"]] = record
    return checks, proc, output


def assert_checks(expected: list[str], checks: dict[str, dict], proc: subprocess.CompletedProcess,
                  output: str) -> None:
    failed = [f"{name}: {json.dumps(checks[name].get('detail'))}"
              for name in expected if name in checks and checks[name].get("ok") is not True]
    missing = [name for name in expected if name not in checks]
    extra_failed = [name for name, record in checks.items()
                    if name not in expected and record.get("ok") is not True]
    assert not failed and not missing and not extra_failed, (
        f"failed checks: {failed}\nmissing checks: {missing}\nother failures: {extra_failed}\n{output}")
    assert proc.returncode == 0, f"driver exited {proc.returncode}\n{output}"


class PeerProcess:
    """A serving peer as a subprocess in its own process group (a kill takes all of it):
    its stdout JSON event lines and its stderr collected by threads; it stops when its
    stdin ends."""

    label = "peer"

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(command, cwd=cwd, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.events: list[dict] = []
        self.stderr: list[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self._threads = [threading.Thread(target=self._pump, args=(self.proc.stdout, True), daemon=True),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, False), daemon=True)]
        for thread in self._threads:
            thread.start()

    @classmethod
    def start(cls, *args, ready_timeout_s: float = 20.0, **kwargs):
        """Start one and wait for its `{"ready": true}` line."""
        peer = cls(*args, **kwargs)
        try:
            ready = peer.wait_for(lambda e: "ready" in e, ready_timeout_s, "ready line")
            assert ready["ready"] is True, peer.describe()
        except BaseException:
            peer.stop()
            raise
        return peer

    def _pump(self, stream, is_stdout: bool) -> None:
        for line in stream:
            with self._cond:
                if not is_stdout:
                    self.stderr.append(line.rstrip("\n"))
                    continue
                try:
                    self.events.append(json.loads(line))
                except ValueError:
                    self.events.append({"text": line.rstrip("\n")})
                self._cond.notify_all()
        if is_stdout:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def describe(self) -> str:
        with self._cond:
            return (f"{self.label} (exit {self.proc.poll()}) events: {json.dumps(self.events)}\n"
                    f"stderr: {chr(10).join(self.stderr)}")

    def wait_for(self, pred: Callable[[dict], bool], timeout_s: float, what: str) -> dict:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for event in self.events:
                    if pred(event):
                        return event
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._cond.wait(remaining)
        raise AssertionError(f"{self.label}: no {what} within {timeout_s} s\n{self.describe()}")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # serving peers stop when their stdin ends
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        for thread in self._threads:
            thread.join(5)
