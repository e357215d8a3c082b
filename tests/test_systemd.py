"""Running under systemd: the readiness protocol (pfnode/sdnotify.py) against real datagram
sockets, a real node telling a socket when it serves and when it drains, and the shipped
units in systemd/ as systemd-analyze judges them."""
from __future__ import annotations

import asyncio
import socket
import struct
import uuid

import pytest

from pfnode import sdnotify
from tests.conftest import start_node

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
