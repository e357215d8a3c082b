"""Running under systemd: the readiness protocol (pfnode/ops/sdnotify.py) against real datagram
sockets, a real node telling a socket when it serves and when it drains, and the shipped
units in systemd/ as systemd-analyze judges them."""
from __future__ import annotations

import asyncio
import ipaddress
import re
import shutil
import socket
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pfnode.app import config
from pfnode.ops import sdnotify
from tests.conftest import ROOT, start_node

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def listener(tmp_path, monkeypatch):
    """A datagram socket bound where $NOTIFY_SOCKET says, as systemd's is."""
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_without_notify_socket_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


def test_a_message_goes_to_the_socket_path(listener):
    assert sdnotify.notify("READY=1", "STATUS=serving ws://x") is True
    assert listener.recv(4096) == b"READY=1\nSTATUS=serving ws://x"


def test_an_at_sign_names_an_abstract_socket(monkeypatch):
    name = f"pfnode-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("STOPPING=1") is True
        assert sock.recv(4096) == b"STOPPING=1"


@pytest.mark.parametrize("address", ["/nonexistent/pfnode-notify", "vsock:2:1234"])
def test_a_socket_that_cannot_be_reached_is_logged_not_raised(monkeypatch, caplog, address):
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert sdnotify.notify("READY=1") is False
    assert "sdnotify" in caplog.text


def test_ready_until_says_ready_then_stopping_when_the_event_is_set(listener):
    async def go():
        stopping = asyncio.Event()
        task = asyncio.ensure_future(sdnotify.ready_until(stopping, "serving here"))
        await asyncio.sleep(0.05)
        assert listener.recv(4096) == b"READY=1\nSTATUS=serving here"
        stopping.set()
        await task

    asyncio.run(go())
    assert listener.recv(4096) == b"STOPPING=1\nSTATUS=draining"


def receive_with_sender(sock: socket.socket) -> tuple[bytes, int]:
    """A message and the pid of its sender (SCM_CREDENTIALS, as systemd reads it)."""
    message, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return message, struct.unpack("3i", data[:12])[0]
    raise AssertionError("no credentials came with the message")


def test_a_node_says_ready_once_it_serves_and_stopping_when_it_drains(listener, tmp_path):
    """What Type=notify relies on: READY=1 comes after the port is open and the workers are
    up (a health check answers ready at once), STOPPING=1 when SIGTERM starts the drain;
    both from the process systemd started (NotifyAccess=main, the default, suffices)."""
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    node = start_node(tmp_path, workers=1, handlers="pfnode.handlers.examples")
    try:
        ready, sender = receive_with_sender(listener)
        assert ready.decode().splitlines() == ["READY=1", f"STATUS=serving {node.endpoint}"]
        assert sender == node.proc.pid
        assert node.health()["status"] == "ready"
    finally:
        assert node.stop() == 0, node.log()
    assert receive_with_sender(listener) == (b"STOPPING=1\nSTATUS=draining", node.proc.pid)


# --- the units ----------------------------------------------------------------------------------

SYSTEMD = ROOT / "systemd"
UNITS = ["pfnode.service", "pfnode-connect.service"]
EXAMPLE_CONFIG = SYSTEMD / "pfnode.toml"
SHIPPED_COMMAND = "ExecStart=/opt/pfnode/venv/bin/pfnode "
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed "
                                   "(Debian package systemd; .ci/run installs it)")


def directives(name: str) -> dict[str, list[str]]:
    """The unit's `Key=value` lines: key -> values, in order."""
    found: dict[str, list[str]] = {}
    for line in (SYSTEMD / name).read_text().splitlines():
        if re.match(r"^[A-Z][A-Za-z]*=", line):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def unit_with_real_command(name: str, tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart runs this checkout's pfnode (`python -m pfnode`):
    verify fails a unit whose command is not an executable file, and /opt/pfnode/venv is not
    there on a test machine. Only the command's path changes; the rest is the shipped file."""
    text = (SYSTEMD / name).read_text()
    assert text.count(SHIPPED_COMMAND) == 1, f"{name}: expected one {SHIPPED_COMMAND}..."
    copy = tmp_path / name
    copy.write_text(text.replace(SHIPPED_COMMAND, f"ExecStart={sys.executable} -m pfnode "))
    return copy


@needs_analyze
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_passes(name, tmp_path):
    """verify exits 0 even for unknown keys and unparsable values (it only warns): any line
    about the unit fails the test."""
    done = subprocess.run([ANALYZE, "verify", str(unit_with_real_command(name, tmp_path))],
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and name not in output, output


@needs_analyze
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_security_scores_3_or_lower(name):
    version = subprocess.run([ANALYZE, "--version"], capture_output=True, text=True).stdout
    if int(re.match(r"systemd (\d+)", version).group(1)) < 250:
        pytest.skip("systemd-analyze before 250 cannot judge a unit file offline (--offline)")
    done = subprocess.run([ANALYZE, "security", "--offline=yes", "--no-pager", str(SYSTEMD / name)],
                          capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert score, done.stdout + done.stderr
    exposed = [line for line in done.stdout.splitlines() if line.startswith("\u2717")]
    assert float(score.group(1)) <= 3.0, "\n".join(exposed)


def test_both_units_have_one_sandbox_and_the_same_limits():
    serve, connect = ((SYSTEMD / name).read_text() for name in UNITS)
    assert serve[serve.index("# Limits."):] == connect[connect.index("# Limits."):]


@pytest.mark.parametrize("name", UNITS)
def test_each_unit_runs_as_pfnode_from_the_config_in_etc_and_says_when_ready(name):
    unit = directives(name)
    assert unit["Type"] == ["notify"]
    assert unit["User"] == unit["Group"] == ["pfnode"]
    [command] = unit["ExecStart"]
    assert "--config /etc/pfnode/pfnode.toml" in command
    assert unit["RemoveIPC"] == ["yes"] and unit["OOMPolicy"] == ["continue"]
    assert {"MemoryMax", "TasksMax", "LimitNOFILE"} <= unit.keys()


def load_example(tmp_path: Path, text: str | None = None) -> config.Loaded:
    path = EXAMPLE_CONFIG
    if text is not None:
        path = tmp_path / "pfnode.toml"
        path.write_text(text)
    return config.load({}, path=str(path), environ={})


def test_the_example_config_loads_and_the_node_imports_its_handlers(tmp_path):
    settings = load_example(tmp_path).settings
    done = subprocess.run([sys.executable, "-c", "import " + ", ".join(settings.handler_modules)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_serve_unit_listens_on_loopback_only_as_shipped(tmp_path):
    """Safe by default: the shipped config binds loopback, and the unit's command line does not
    override the file's host (a 0.0.0.0 there would need a token file)."""
    assert ipaddress.ip_address(load_example(tmp_path).settings.host).is_loopback
    assert "--host" not in directives("pfnode.service")["ExecStart"][0]


@pytest.mark.parametrize("name", UNITS)
def test_the_open_files_limit_covers_max_connections(name, tmp_path):
    """front.py warns below max_connections + 256 open files: the unit's LimitNOFILE= must
    hold the example config's max_connections."""
    [limit] = directives(name)["LimitNOFILE"]
    assert int(limit) >= load_example(tmp_path).settings.max_connections + 256


def test_the_commented_security_settings_of_the_example_are_settings(tmp_path):
    """The example shows token_file and tls_* commented out; once the node has those settings,
    uncommented they must load (names only: the files do not exist here)."""
    if "token_file" not in config.options():
        pytest.skip("this pfnode has no token_file setting yet")
    text = EXAMPLE_CONFIG.read_text()
    shown = re.findall(r"^# ([a-z_]+) = ", text, re.M)
    assert {"token_file", "tls_cert", "tls_key", "tls_client_ca"} <= set(shown)
    assert set(shown) <= config.options().keys()


def test_the_sysusers_file_creates_the_user_the_units_run_as(tmp_path):
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers is not installed (Debian package systemd)")
    (tmp_path / "etc").mkdir()
    done = subprocess.run([sysusers, f"--root={tmp_path}", "-"], input=(SYSTEMD / "pfnode.sysusers").read_text(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0] for line in (tmp_path / "etc/group").read_text().splitlines()}
    assert "pfnode" in users and "pfnode" in groups
    assert users["pfnode"][6].endswith("nologin")


def test_the_connect_unit_hands_the_hub_token_over_as_a_credential_not_an_argument():
    """ps and `systemctl status` show the command line: the hub's token is a credential (a
    file only the service reads) whose path, not content, the command names; the URL holds
    no token, nor does any Environment= line."""
    unit = directives("pfnode-connect.service")
    [credential] = unit["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source.startswith("/etc/pfnode/")
    [command] = unit["ExecStart"]
    assert f"--hub-token-file %d/{name}" in command
    assert "token=" not in command and all("token" not in value.lower() for value in unit.get("Environment", []))
    assert "token=" not in (SYSTEMD / "pfnode-connect.service").read_text()
