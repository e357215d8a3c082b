"""Dial-out mode: `pfnode connect URL` makes a node a reactor of a pfnode hub.

Real processes on real sockets: a hub (`pfnode serve`, with none of the handlers the
packets ask for), a dial-out node (`pfnode connect`, running tests.handlers_remote),
and between them, where a test cuts the link, a TCP proxy whose connections can be
dropped mid-run.
"""
from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from pfnode.client import Reactor
from pfnode.app.dialout import reconnect_delay_s

from .conftest import ROOT, RunningNode, start_node
from .e2e_util import packet, run, submit_frame, wait_until

HUB_HANDLERS = "tests.handlers_testing"  # none of the keys below
REMOTE_HANDLERS = "tests.handlers_remote"


def start_connector(log_dir: Path, url: str, *args: str, workers: int = 2) -> RunningNode:
    """Run `pfnode connect url` (fast reconnects for the tests); returns once it runs."""
    log_path = log_dir / f"connector-{time.monotonic_ns()}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pfnode", "connect", url, "--workers", str(workers),
             "--handlers", REMOTE_HANDLERS, "--reconnect-min-ms", "50", "--reconnect-max-ms", "400",
             *args], cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    node = RunningNode(proc, url, log_path)
    wait_until(lambda: "started without a listening endpoint" in node.log() or proc.poll() is not None,
               timeout_s=60, what="the dial-out node's workers")
    assert proc.poll() is None, node.log()
    return node


def connected_count(node: RunningNode) -> int:
    return node.log().count("dial-out: connected to")


class CuttableProxy:
    """A TCP proxy to 127.0.0.1:target_port whose open connections `cut()` drops at once
    (as a failed router or a restarted load balancer would); new ones are accepted."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.pairs.append((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> int:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        return len(pairs)

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture
def connectors(tmp_path):
    started: list[RunningNode] = []

    def make(url: str, *args: str, **kwargs) -> RunningNode:
        node = start_connector(tmp_path, url, *args, **kwargs)
        started.append(node)
        return node

    yield make
    for node in started:
        node.stop()


def test_reconnect_delay_doubles_from_the_minimum_with_jitter_up_to_the_maximum():
    rand = random.Random(7)
    for attempt, ceiling_ms in [(1, 250), (2, 500), (3, 1000), (6, 8000), (7, 15000), (60, 15000)]:
        delays = [reconnect_delay_s(attempt, 250, 15000, rand) for _ in range(200)]
        assert all(ceiling_ms / 2000 <= d <= ceiling_ms / 1000 for d in delays), (attempt, min(delays), max(delays))
        assert len(set(delays)) > 100  # jittered: nodes cut off together come back spread out


def test_connect_refuses_a_url_that_is_not_a_websocket_url():
    done = subprocess.run([sys.executable, "-m", "pfnode", "connect", "http://hub:8443/packetflow/v1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "not a WebSocket URL" in done.stderr


def test_the_hub_routes_packets_to_a_dial_out_node(fresh_node, connectors):
    hub = fresh_node("--workers", "1", handlers=HUB_HANDLERS)
    connector = connectors(hub.endpoint)
    wait_until(lambda: "df:remote_record, df:remote_upper" in hub.log(), what="the announcement")

    async def go():
        async with Reactor(hub.endpoint) as client:
            upper = await client.submit("df", "remote_upper", "hello world")
            assert (upper.status, upper.data) == ("success", "HELLO WORLD"), upper
            many = await asyncio.gather(*(client.submit("df", "remote_upper", f"p{i}") for i in range(50)))
            assert [r.data for r in many] == [f"P{i}" for i in range(50)]
            # frame lengths in every header form (7-bit, 16-bit, 64-bit), masked on the uplink
            for size in (125, 126, 65535, 65536, 300_000):
                text = "ab" * (size // 2) + "c" * (size % 2)
                big = await client.submit("df", "remote_upper", text)
                assert big.data == text.upper(), size
            # the dial-out node announced what it runs: for anything else the hub needs not ask
            missing = await client.submit("df", "nowhere", 1)
            assert missing.error_code == "PF001", missing
            # the hub's own handlers still run at the hub
            pid = await client.submit("df", "pid", None)
            assert pid.ok
    run(go())
    assert connector.proc.poll() is None
    assert connected_count(connector) == 1
    hub_stats = hub.health()["hub"]
    assert hub_stats["relayed"] == 56 and hub_stats["no_reactor"] == 1, hub_stats
    assert hub_stats["forwarding"] == 0 and hub_stats["reactors"] == 1, hub_stats


def test_a_dial_out_node_keeps_dialling_until_the_hub_is_up(tmp_path, connectors):
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # free now, and nothing listens there until the hub starts
    url = f"ws://127.0.0.1:{port}/packetflow/v1"
    connector = connectors(url)
    wait_until(lambda: connector.log().count("cannot reach") >= 3, what="three failed tries")
    hub = start_node(tmp_path, "--port", str(port), workers=1, handlers=HUB_HANDLERS)
    try:
        wait_until(lambda: connected_count(connector) == 1, what="the connection once the hub is up")

        async def go():
            async with Reactor(hub.endpoint) as client:
                return await client.submit("df", "remote_upper", "late")
        assert run(go()).data == "LATE"
    finally:
        hub.stop()


def test_link_cut_mid_run_every_packet_answered_and_run_exactly_once(tmp_path, fresh_node, connectors):
    hub = fresh_node("--workers", "1", "--reroute-grace-ms", "20000", handlers=HUB_HANDLERS)
    hub_port = int(hub.endpoint.split(":")[2].split("/")[0])
    proxy = CuttableProxy(hub_port)
    record = tmp_path / "runs.txt"
    count = 24
    try:
        connector = connectors(f"ws://127.0.0.1:{proxy.port}/packetflow/v1", workers=2)
        wait_until(lambda: "runs df:remote_record" in hub.log(), what="the announcement")

        async def go():
            async with Reactor(hub.endpoint) as client:
                jobs = [asyncio.ensure_future(client.submit(
                    "df", "remote_record", {"s": 0.15, "file": str(record)}, timeout_ms=60_000))
                    for _ in range(count)]
                for cut in range(2):  # twice: mid-run, while packets run and answers flow
                    await asyncio.sleep(0.6)
                    assert proxy.cut() == 1
                    await asyncio.to_thread(wait_until, lambda: connected_count(connector) == cut + 2,
                                            20, 0.05, "the reconnection")
                return await asyncio.gather(*jobs)

        results = run(go(), timeout_s=90)
    finally:
        proxy.close()
    assert [r.status for r in results] == ["success"] * count, [r.error for r in results if not r.ok]
    ids = [r.packet_id for r in results]
    assert [r.data["id"] for r in results] == ids
    runs = record.read_text().split()
    # every packet ran, and none ran twice, though the hub sent the ones held by the cut link again
    assert sorted(runs) == sorted(ids), (len(runs), len(set(runs)))
    log = connector.log()
    assert log.count("link to") >= 2 and "lost" in log
    assert "sent" in log and "again" in log  # the hub did re-send, and the node did not re-run


def test_sigterm_drains_a_dial_out_node_its_running_packets_are_still_answered(tmp_path, fresh_node, connectors):
    hub = fresh_node("--workers", "1", handlers=HUB_HANDLERS)
    connector = connectors(hub.endpoint, workers=1)
    wait_until(lambda: "runs df:remote_record" in hub.log(), what="the announcement")
    record = tmp_path / "runs.txt"

    async def go():
        async with Reactor(hub.endpoint, retry=None) as client:  # the hub's own answers: PF003 not retried
            jobs = [asyncio.ensure_future(client.submit("df", "remote_record", {"s": 0.4, "file": str(record)}))
                    for _ in range(3)]
            await asyncio.sleep(0.5)  # the first one runs, two wait in the node's queue
            connector.proc.terminate()
            # draining, it tells the hub it runs nothing more: a new packet is not sent to it
            await asyncio.to_thread(wait_until, lambda: "draining" in connector.log(), 10)
            await asyncio.sleep(0.2)
            late = await client.submit("df", "remote_record", {"s": 0, "file": str(record)})
            return await asyncio.gather(*jobs), late

    results, late = run(go())
    assert late.error_code == "PF003", late
    assert [r.status for r in results] == ["success"] * 3, [r.error for r in results]
    assert connector.proc.wait(20) == 0
    assert "front: stopped" in connector.log()
    assert len(record.read_text().split()) == 3


def test_a_dial_out_node_speaks_as_a_reactor_to_any_endpoint(connectors):
    """Against a bare endpoint (a websockets server in this test): the node announces what it
    runs, heartbeats with its capabilities, answers submits with their seq, answers PF001 for
    what it cannot run, and does not answer the endpoint's heartbeats (as the spec's reactors
    don't: between two pfnodes, answering would never end)."""
    from websockets.asyncio.server import serve

    frames: list[dict] = []

    async def go():
        finished = asyncio.Event()

        async def hub(ws):
            async def read():
                async for text in ws:
                    frames.append(orjson.loads(text))
            reader = asyncio.ensure_future(read())
            await wait_for_frames(lambda f: f["type"] == "heartbeat" and "capabilities" in f["payload"])
            for seq in range(1000, 1005):
                await ws.send(orjson.dumps({"type": "heartbeat", "seq": seq, "payload": {"timestamp": 1}}).decode())
            await ws.send(submit_frame(7, packet("remote_upper", "abc", id="p-upper")))
            await ws.send(submit_frame(8, packet("not_here", 1, id="p-missing")))
            await wait_for_frames(lambda f: f["type"] == "result" and f["payload"]["packet_id"] == "p-missing")
            await wait_for_frames(lambda f: f["type"] == "heartbeat" and f["seq"] >= 3)  # 3 of its own
            reader.cancel()
            finished.set()

        async def wait_for_frames(pred, timeout_s: float = 15.0):
            deadline = time.monotonic() + timeout_s
            while not any(pred(f) for f in frames):
                assert time.monotonic() < deadline, frames
                await asyncio.sleep(0.02)

        async with serve(hub, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            await asyncio.to_thread(connectors, f"ws://127.0.0.1:{port}/packetflow/v1",
                                    "--heartbeat-interval-ms", "200")
            await asyncio.wait_for(finished.wait(), 30)

    run(go(), timeout_s=60)
    announcement = frames[0]
    assert announcement["type"] == "heartbeat"
    assert announcement["payload"]["capabilities"] == ["df:remote_record", "df:remote_upper"]
    results = {f["payload"]["packet_id"]: f for f in frames if f["type"] == "result"}
    assert results["p-upper"]["seq"] == 7 and results["p-upper"]["payload"]["data"] == "ABC"
    assert results["p-missing"]["seq"] == 8
    assert results["p-missing"]["payload"]["error"]["code"] == "PF001"  # so a hub asks elsewhere
    heartbeats = [f for f in frames if f["type"] == "heartbeat"]
    assert not [f for f in heartbeats if f["seq"] >= 1000], "answered the endpoint's heartbeats"
    assert all(f["payload"]["capabilities"] == ["df:remote_record", "df:remote_upper"] for f in heartbeats)


def test_a_packet_here_may_depend_on_one_a_reactor_ran(fresh_node, connectors):
    """Dependencies name packets that completed through this node, also those its hub
    routed to a reactor: their results reach the dependent's ctx.dependencies."""
    hub = fresh_node("--workers", "1", handlers="tests.handlers_lanes")
    connectors(hub.endpoint, workers=1)
    wait_until(lambda: "df:remote_record, df:remote_upper" in hub.log(), what="the announcement")

    async def go():
        async with Reactor(hub.endpoint) as client:
            # the dependent first: it waits for a packet the node has not seen yet
            dependent = asyncio.ensure_future(client.submit("df", "deps", "local", dependencies=["up-1"]))
            await asyncio.sleep(0.2)
            upper = await client.submit("df", "remote_upper", "hello", packet_id="up-1")
            assert upper.data == "HELLO"
            done = await dependent
            assert done.ok, done
            assert done.data == {"dependencies": {"up-1": "HELLO"}, "data": "local"}
            # a dependency that failed on the reactor fails the dependent here
            failed = await client.submit("df", "remote_record", {"no file": 1}, packet_id="bad-1")
            assert failed.error_code == "PF500", failed
            after = await client.submit("df", "deps", "x", dependencies=["bad-1"])
            assert after.error_code == "PF006" and "bad-1" in after.error["message"], after
    run(go())


def test_a_silent_hub_is_dropped_and_dialled_again_every_time(connectors):
    """An endpoint that accepts the connection but never sends a PacketFlow frame is judged
    silent after 3 heartbeat intervals; the node dials again, and judges each new connection
    the same way (its heartbeat loop lives as long as the node, not the connection)."""
    from websockets.asyncio.server import serve

    announcements: list[int] = []

    async def go():
        async def mute_hub(ws):
            async for text in ws:  # read, never answer
                msg = orjson.loads(text)
                if msg["type"] == "heartbeat" and msg["seq"] == 0:
                    announcements.append(len(announcements))

        async with serve(mute_hub, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            node = await asyncio.to_thread(connectors, f"ws://127.0.0.1:{port}/packetflow/v1",
                                           "--heartbeat-interval-ms", "150")
            await asyncio.to_thread(wait_until, lambda: connected_count(node) >= 3, 15, 0.05,
                                    "a third connection after two silent ones")
            return node

    node = run(go(), timeout_s=40)
    log = node.log()
    assert log.count("silent for") >= 2, log
    assert len(announcements) >= 3  # each connection opens with the node's announcement
    assert node.proc.poll() is None
