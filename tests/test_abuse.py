"""Hostile and careless clients: each numbered case of the "exactly one reply, whatever
arrives" issue, against real nodes over real sockets (and, where the rule is the node's
own, an in-process node). Every frame is answered once; nothing one client does closes
another's connection, loses another's packet or starves another's lane."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import orjson
import psutil
import pytest
from websockets.exceptions import InvalidStatus

from pfnode.core import protocol
from tests.conftest import ROOT
from tests.e2e_util import Raw, new_id, packet, run, wait_until
from tests.inproc import RecordingLink, started_node


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


# ---------------------------------------------------------------- 2: an exception at a callback boundary

def test_an_exception_inside_the_node_answers_the_frame_and_later_frames_are_still_read(monkeypatch):
    """A frame whose handling raises (here: the decoder, forced to) is answered PF500 with an
    incident id, also when it waited in a paused link's backlog; the frames after it are read."""
    real_decode = protocol.decode

    def flaky_decode(frame, **kwargs):
        if b"explode" in (frame if isinstance(frame, bytes) else frame.encode()):
            raise RuntimeError("a bug")
        return real_decode(frame, **kwargs)

    monkeypatch.setattr(protocol, "decode", flaky_decode)

    async def go():
        async with started_node(max_inflight_per_connection=1, handler_modules=(
                "pfnode.handlers.examples", "tests.handlers_testing")) as node:
            link = RecordingLink(node)
            node.on_open(link)
            link.submit(1, {"id": "slow", "group": "df", "element": "sleep", "data": 0.2})
            assert link.reading_paused  # at its limit: what follows waits in the backlog
            link.deliver(b'{"type":"submit","seq":2,"payload":"explode"}')
            link.submit(3, {"id": "after", "group": "df", "element": "transform", "data": "ok"})
            return [await link.reply(seq) for seq in (1, 0, 3)], dict(node.metrics.counts)

    (slow, boom, after), counters = asyncio.run(go())  # an undecoded frame's seq is unknown: 0
    assert slow["payload"]["status"] == "success"
    assert boom["type"] == "error" and boom["payload"]["code"] == "PF500", boom
    assert "internal error E" in boom["payload"]["message"]
    assert after["payload"]["data"] == "OK"
    assert counters["internal_errors"] == 1


def test_an_exception_after_admission_answers_the_packet_once(monkeypatch):
    async def go():
        async with started_node() as node:
            link = RecordingLink(node)
            node.on_open(link)

            def broken_pump():
                raise RuntimeError("pump bug")

            monkeypatch.setattr(node.pool, "pump", broken_pump)
            link.submit(1, {"id": "p", "group": "df", "element": "noop", "data": 1})
            reply = await link.reply(1)
            await asyncio.sleep(0.05)
            return reply, [f for f in link.frames if f.get("seq") == 1], len(node.scheduler.inflight)

    reply, answers, inflight = asyncio.run(go())
    assert reply["type"] == "result" and reply["payload"]["error"]["code"] == "PF500"
    assert len(answers) == 1 and inflight == 0


# ---------------------------------------------------------------- 3, 4: mc:scale

@pytest.mark.parametrize("data, field", [
    ({"lane": ["df"], "workers": 2}, "lane"),
    ({"lane": {"x": 1}, "workers": 2}, "lane"),
    ({"lane": "gpu", "workers": "auto"}, "lane"),
    ({"lane": "df", "workers": True}, "workers"),
    ({"lane": "df", "workers": [1]}, "workers"),
    ({"lane": "df", "workers": 2, "extra": 1}, "extra"),
    ("df", "expects"),
])
def test_bad_mc_scale_input_is_pf002_naming_the_field(node, data, field):
    async def go():
        async with Raw(node.endpoint) as raw:
            pkt = packet("scale", data, group="mc")
            await raw.submit(7, pkt)
            return await raw.recv(10)

    reply = run(go())
    assert reply["seq"] == 7 and reply["payload"]["error"]["code"] == "PF002", reply
    assert field in reply["payload"]["error"]["message"], reply


def test_pipelined_mc_scale_requests_do_not_add_up(fresh_node):
    n = fresh_node(workers=1)

    async def go():
        async with Raw(n.endpoint) as raw:
            for seq in range(10):
                await raw.submit(seq, packet("scale", {"lane": "df", "workers": 3}, group="mc"))
            return await raw.recv_n(10, 60)

    replies = run(go(), 90)
    assert all(r["payload"]["status"] == "success" for r in replies), replies
    assert {r["payload"]["data"]["after"]["df"] for r in replies} == {3}
    health = n.health()
    assert health["lanes"]["df"]["workers"] == 3 and health["lanes"]["df"]["target"] == 3
    assert len(health["worker_pids"]) == 6, health["worker_pids"]  # cf, 3 df, ed, rm


# ---------------------------------------------------------------- 5: connections

def test_past_max_connections_a_handshake_gets_503_and_the_others_carry_on(fresh_node):
    n = fresh_node("--max-connections", "3", workers=1)

    async def go():
        async with Raw(n.endpoint) as a, Raw(n.endpoint) as b, Raw(n.endpoint) as c:
            with pytest.raises(InvalidStatus) as refused:
                async with Raw(n.endpoint):
                    pass
            assert refused.value.response.status_code == 503
            for raw in (a, b, c):
                await raw.roundtrip()
            health = await asyncio.to_thread(n.health)
            assert health["status"] == "ready" and health["connections"] == 3
        await asyncio.sleep(0.2)
        async with Raw(n.endpoint) as d:  # a slot freed: let in again
            await d.roundtrip()

    run(go())
    assert "refused a connection" in n.log()


# ---------------------------------------------------------------- 7: blocked packets

def test_packets_blocked_on_unknown_dependencies_are_bounded_per_client_not_for_everyone(fresh_node):
    n = fresh_node(workers=1)

    async def go():
        async with Raw(n.endpoint) as waiter, Raw(n.endpoint) as other:
            for seq in range(1, 1101):  # never-arriving dependencies, long deadlines
                await waiter.submit(seq, packet("noop", seq, dependencies=[new_id("never")],
                                                timeout_ms=600_000))
            refused = await waiter.recv_n(100, 30)
            # the other client is not refused: its packets, blocked or not, are admitted
            await other.roundtrip("transform", "fine")
            dep = new_id("dep")
            await other.submit(5, packet("transform", "x", id=dep))
            await other.submit(6, packet("noop", "after", dependencies=[dep]))
            return refused, await other.recv_n(2)

    refused, others = run(go(), 60)
    assert len({r["seq"] for r in refused}) == 100
    assert all(r["payload"]["error"]["code"] == "PF004" and "wait for dependencies" in
               r["payload"]["error"]["message"] for r in refused), refused[:2]
    assert min(r["seq"] for r in refused) == 1001
    assert sorted((r["seq"], r["payload"]["status"]) for r in others) == [(5, "success"), (6, "success")]


# ---------------------------------------------------------------- 8: faults do not stall the others

def test_workers_killed_by_packets_are_replaced_at_once_by_the_fork_server(fresh_node):
    n = fresh_node(workers=2)

    async def go():
        async with Raw(n.endpoint) as bad, Raw(n.endpoint) as good:
            for seq in range(1, 11):
                await bad.submit(seq, packet("exit", 3))
            healthy = []
            for seq in range(100, 140):
                healthy.append(await good.roundtrip("transform", f"h{seq}", seq=seq))
            return await bad.recv_n(10, 30), healthy

    crashes, healthy = run(go(), 60)
    assert sorted(r["seq"] for r in crashes) == list(range(1, 11))
    assert all(r["payload"]["error"]["code"] == "PF502" for r in crashes), crashes
    assert all(r["payload"]["status"] == "success" for r in healthy)
    health = wait_until(lambda: (h := n.health())["lanes"]["df"]["workers"] == 2 and h, what="2 df workers")
    counters = health["counters"]
    # every death was made good at once: by a replacement, or by a burst worker the healthy
    # client got while the crashing one's packets held the lane (pfnode/pool/burst.py)
    assert counters["worker_deaths"] == 10
    assert counters["workers_replaced"] + counters.get("burst_workers", 0) >= 10, counters
    assert "retrying" not in n.log()  # no back-off: the packets were to blame, not the lane
    forkserver = [p for p in psutil.Process(n.proc.pid).children() if "pfnode.pool.forkserver" in " ".join(p.cmdline())]
    assert len(forkserver) == 1
    assert set(health["worker_pids"]) <= {p.pid for p in forkserver[0].children()}


def test_a_killed_fork_server_costs_its_workers_packets_only_and_is_replaced(fresh_node):
    n = fresh_node(workers=2)
    (forkserver,) = [p for p in psutil.Process(n.proc.pid).children()
                     if "pfnode.pool.forkserver" in " ".join(p.cmdline())]
    forkserver.kill()

    def recovered():
        health = n.health()
        return health["workers"] == 5 and health
    wait_until(recovered, timeout_s=20, what="the lanes refilled")

    async def go():
        async with Raw(n.endpoint) as raw:
            return [await raw.roundtrip("transform", f"x{i}", seq=i) for i in range(20)]
    assert all(r["payload"]["data"].startswith("X") for r in run(go()))


# ---------------------------------------------------------------- 10: shared memory

def _segments_of(pid: int) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"pfnode-{pid}-")]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
@pytest.mark.parametrize("handlers", ["pfnode.handlers.examples,no_such_module_xyz", "tests.handlers_broken_worker"])
def test_a_node_that_fails_to_start_leaves_no_shared_memory(handlers):
    proc = subprocess.Popen([sys.executable, "-m", "pfnode", "serve", "--port", "0", "--workers", "1",
                             "--handlers", handlers], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert _segments_of(proc.pid) == []


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm")
def test_the_segments_of_a_sigkilled_node_are_removed_at_the_next_start(fresh_node):
    victim = fresh_node(workers=2)
    pid = victim.proc.pid
    assert _segments_of(pid), "a node with shared memory has segments"
    for child in _children(pid):
        child.kill()
    os.kill(pid, signal.SIGKILL)
    victim.proc.wait(10)
    # SIGKILL runs no cleanup: the segments stay until a node starts (this one, or any other
    # node starting on this machine meanwhile: each removes those of the dead)
    fresh_node(workers=1)
    assert _segments_of(pid) == []


# ---------------------------------------------------------------- 6: a client that never reads

class DeafClient:
    """A WebSocket client on a bare socket with a tiny receive buffer that sends frames and
    never reads: the node's results pile up on its side of the connection."""

    def __init__(self, endpoint: str) -> None:
        import base64
        import socket
        import urllib.parse

        url = urllib.parse.urlsplit(endpoint)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect((url.hostname, url.port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {url.path} HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)
        assert b" 101 " in response.split(b"\r\n", 1)[0], response

    def send_text(self, payload: bytes) -> bool:
        """One masked text frame; False once the node has closed the connection."""
        mask = os.urandom(4)
        size = len(payload)
        header = bytes([0x81]) + (bytes([0x80 | size]) if size < 126 else
                                  bytes([0x80 | 126]) + size.to_bytes(2, "big") if size < 65536 else
                                  bytes([0x80 | 127]) + size.to_bytes(8, "big"))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        try:
            self.sock.sendall(header + mask + masked)
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.sock.close()


def test_a_client_that_never_reads_is_paused_then_closed_and_costs_the_others_nothing(fresh_node):
    n = fresh_node("--max-write-buffer-bytes", str(4 << 20), "--write-buffer-high-bytes", str(256 << 10),
                   "--max-inflight-per-connection", "4096", workers=1)
    rss_before = psutil.Process(n.proc.pid).memory_info().rss
    blob = "x" * 20_000
    deaf = DeafClient(n.endpoint)
    sent = 0
    try:
        for seq in range(1, 1001):  # 20 MB of results if the node kept them all
            frame = orjson.dumps({"type": "submit", "seq": seq, "payload": packet("noop", blob)})
            deaf.sock.settimeout(1.0)
            if not deaf.send_text(frame):
                break
            sent += 1
    except TimeoutError:
        pass  # the node stopped reading it: its send buffer is full too

    async def others():
        async with Raw(n.endpoint) as fine:
            return [await fine.roundtrip("transform", f"ok{i}", seq=i) for i in range(20)]
    assert all(r["payload"]["status"] == "success" for r in run(others()))
    rss_after = psutil.Process(n.proc.pid).memory_info().rss
    deaf.close()
    assert rss_after - rss_before < 48 << 20, (rss_before, rss_after, sent)
    # the node stopped taking its frames (paused: its sends stalled) or closed it (1008)
    assert sent < 1000 or "not reading its results" in n.log(), sent


def test_a_client_that_leaves_while_its_reading_is_paused_is_forgotten_at_once(fresh_node):
    n = fresh_node("--max-inflight-per-connection", "2", workers=1)

    async def go():
        raw = await Raw(n.endpoint).__aenter__()
        for seq in range(1, 6):
            await raw.submit(seq, packet("sleep", 5))
        await asyncio.sleep(0.3)  # two admitted, reading paused, three waiting unread
        raw.ws.transport.abort()  # the client process dies: no close frame, the socket just goes
        left_at = time.monotonic()
        while (await asyncio.to_thread(n.health))["connections"]:
            assert time.monotonic() - left_at < 2.0, "the paused link was not closed"
            await asyncio.sleep(0.05)
    run(go())
    assert "dropped 2 in-flight packets" in n.log()
