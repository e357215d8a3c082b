"""Secrets never in logs or argv: `pfnode connect` takes the hub's token from $PFNODE_TOKEN or
--hub-token-file and sends it as a header; a URL with ?token= still works, and every line
that shows it shows it redacted. Real `pfnode serve` and `pfnode connect` processes, both
logging at DEBUG, their every line searched for the token."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pfnode.app.dialout import hub_token
from pfnode.client import Reactor
from pfnode.errors import ConfigError
from tests.conftest import ROOT, TEST_TOKENS, RunningNode, start_node
from tests.e2e_util import run, wait_until
from tests.test_dialout import REMOTE_HANDLERS

pytestmark = pytest.mark.timeout(120)


def start_connect(log_dir: Path, url: str, *args: str, env: dict[str, str] | None = None) -> RunningNode:
    log_path = log_dir / f"connect-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pfnode", "connect", url, "--workers", "1", "--handlers", REMOTE_HANDLERS,
             "--reconnect-min-ms", "50", "--reconnect-max-ms", "200", "--log-level", "DEBUG", *args],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log_file, stderr=subprocess.STDOUT)
    return RunningNode(proc, url, log_path)


def serves_for_the_hub(hub: RunningNode, connector: RunningNode) -> str:
    """A packet only the dial-out node runs, submitted to the hub: proves the link is up and
    authenticated with the reactor role."""
    def announced() -> bool:
        assert connector.proc.poll() is None, connector.log()
        return "df:remote_upper" in hub.log()
    wait_until(announced, timeout_s=60, what="the dial-out node's announcement")

    async def go():
        async with Reactor(hub.endpoint, token=hub.tokens["client"]) as client:
            return (await client.submit("df", "remote_upper", "through the hub")).data
    return run(go())


def assert_no_secret(token: str, *nodes: RunningNode) -> None:
    for node in nodes:
        log = node.log()
        assert log.strip(), "no log to search"
        assert token not in log, [line for line in log.splitlines() if token in line]


def in_process_tree(pid: int, token: str) -> list[str]:
    """Where the process `pid` and its children (the workers) show the token: their command
    lines, and the environment each was started with."""
    found = []
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        if token in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode(errors="replace"):
            found.append(f"cmdline of {proc.pid}")
        if proc.pid != pid and token in Path(f"/proc/{proc.pid}/environ").read_bytes().decode(errors="replace"):
            found.append(f"environment of {proc.pid}")
    return found


@pytest.mark.parametrize("source", ["environment", "file"])
def test_connect_presents_its_token_in_a_header_and_no_line_or_argument_shows_it(tmp_path, source):
    hub = start_node(tmp_path, "--log-level", "DEBUG", tokens=True, workers=1, handlers="tests.handlers_testing")
    token = hub.tokens["serve-only"]  # the reactor role: may run packets, not submit
    connect_args, env = (), {}
    if source == "file":
        path = tmp_path / "hub.token"
        path.write_text(token + "\n")
        connect_args = ("--hub-token-file", str(path))
    else:
        env = {"PFNODE_TOKEN": token}
    connector = start_connect(tmp_path, hub.endpoint, *connect_args, env=env)
    try:
        assert serves_for_the_hub(hub, connector) == "THROUGH THE HUB"
        assert in_process_tree(connector.proc.pid, token) == []
    finally:
        connector.stop()
        hub.stop()
    assert_no_secret(token, hub, connector)


def test_a_url_with_a_token_still_works_and_every_line_shows_it_redacted(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on yet: the first dials fail
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = TEST_TOKENS["serve-only"]
    url = f"ws://127.0.0.1:{port}/packetflow/v1?token={token}"
    connector = start_connect(tmp_path, url)
    hub = None
    try:
        wait_until(lambda: "cannot reach" in connector.log(), timeout_s=60, what="a failed dial")
        hub = start_node(tmp_path, "--port", str(port), "--log-level", "DEBUG", tokens=True, workers=1,
                         handlers="tests.handlers_testing")
        assert serves_for_the_hub(hub, connector) == "THROUGH THE HUB"
    finally:
        connector.stop()
        if hub is not None:
            hub.stop()
    log = connector.log()
    assert "?token=***" in log and "dial-out: connected to" in log
    assert "give it in --hub-token-file or $PFNODE_TOKEN instead" in log
    assert_no_secret(token, connector, hub)


# ---------------------------------------------------------------- where the token comes from

def test_the_token_file_wins_over_the_environment_which_is_emptied_either_way(tmp_path):
    path = tmp_path / "hub.token"
    path.write_text("  from-file  \nsecond line ignored\n")
    environ = {"PFNODE_TOKEN": "from-env", "OTHER": "kept"}
    assert hub_token(str(path), environ) == "from-file"
    assert environ == {"OTHER": "kept"}  # the workers inherit the environment: not the token
    environ = {"PFNODE_TOKEN": " from-env\n"}
    assert hub_token(None, environ) == "from-env" and environ == {}
    assert hub_token(None, {}) is None


@pytest.mark.parametrize("content, problem", [(None, "cannot read"), ("\n", "is empty")])
def test_a_token_file_that_cannot_be_read_or_is_empty_is_an_error(tmp_path, content, problem):
    path = tmp_path / "hub.token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=problem):
        hub_token(str(path), {})
    done = subprocess.run([sys.executable, "-m", "pfnode", "connect", "ws://127.0.0.1:1/packetflow/v1",
                           "--hub-token-file", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and problem in done.stderr, done.stderr
