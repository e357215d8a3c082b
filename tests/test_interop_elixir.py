"""Interop with the spec's Elixir reactor (tests/interop/elixir), over real sockets.

tests/interop/elixir/packetflow.ex is the spec's "Elixir Implementation" (the Packet, Message
and Result structs and the `PacketFlow.Reactor` GenServer) on OTP alone: `:gen_tcp` and cowlib's
`:cow_ws` in place of `:gun`, `:jiffy` in place of `Jason` (Debian: elixir, erlang-cowlib,
erlang-jiffy; no hex packages). It is compiled with `elixirc` into tests/interop/elixir/build
(git-ignored) whenever the source is newer than the build. The driver, interop.exs, runs it in
one of five modes and prints one JSON line per check, {"name", "ok", "detail"}:

- client: the spec's examples, submitted by Elixir to the session node;
- serve:  a handler peer (ed:notify_users, df:process_data, df:elixir_sum, df:elixir_boom,
          df:elixir_slow) that a Python or TypeScript client reaches through the node (three
          parties: client -> pfnode hub -> Elixir reactor), until its stdin closes or it is killed;
- usage:  the spec's usage example, df:transform registered on the Elixir reactor itself,
          against a node without df:transform: the node routes the packet back to the reactor;
- notify: the client side of the spec's "Elixir -> TypeScript" example (ed:notify_users), for a
          node without it while the spec's TypeScript reactor (tests/test_interop_ts.py's serve.js)
          that runs it is connected: neither announces, the node asks the TypeScript reactor;
- wire:   against ScriptedServer below, a WebSocket server that sends what pfnode never sends
          (fragmented messages with a ping between the fragments, a UTF-8 character split
          across fragments, frames dribbled over TCP a few bytes at a time, 16- and 64-bit
          frame lengths, submits for the reactor, the close handshake) and checks the client's
          frames byte by byte (masking, JSON nulls for nil fields, seq 0 results).

Skipped when `elixir` (or cowlib/jiffy) is missing, except under CI (env CI set), where it fails:
CI must run it (.ci/run installs the packages).
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pfnode.client import Reactor
from tests.conftest import TEST_TOKENS, start_node
from tests.e2e_util import new_id, run, with_token
from tests.interop_util import PeerProcess, assert_checks, run_driver

pytestmark = pytest.mark.timeout(60)

ELIXIR_DIR = Path(__file__).resolve().parent / "interop" / "elixir"
SOURCE = ELIXIR_DIR / "packetflow.ex"
DRIVER = ELIXIR_DIR / "interop.exs"
BUILD = ELIXIR_DIR / "build"  # git-ignored (build/ in .gitignore)
BUILD_MARKER = BUILD / "Elixir.PacketFlow.Reactor.beam"
DRIVER_TIMEOUT_S = 55  # the driver's own watchdog fires at 50 s
# handler modules without df:transform, ed:notify_users or any elixir_* handler
BARE_HANDLERS = "tests.handlers_testing"
BARE = "--no-data-elements"  # nor the standard df:transform: only the reactor runs it
ELIXIR_KEYS = ("ed:notify_users", "df:elixir_sum", "df:elixir_boom", "df:elixir_slow")
TIMEOUT_MS = 10_000  # every Python submit's own deadline: a lost answer fails the test, not the suite

CLIENT_CHECKS = [
    "connect",
    "transform",            # df:transform "hello world" -> "HELLO WORLD", packet_id = the id sent
    "process_data",         # df:process_data {items: [1..5]} priority 7 -> 30
    "validate_null",        # cf:validate nil (null on the wire) -> %{"valid" => false}
    "validate_value",       # cf:validate "x" -> %{"valid" => true}
    "nil_optional_fields",  # timeout_ms/dependencies/metadata nil: null in the frame sent; accepted
    "extended_packet",      # the spec's extended packet: timeout_ms, dependencies, metadata
    "unicode",              # UTF-8 both ways
    "large_frame",          # 300 kB each way (64-bit frame lengths, many TCP segments)
    "handler_error",        # df:boom raises in the node's worker: result status error, PF500
    "unknown_element",      # df:no_such_element: no reactor runs it: result status error, PF001
    "forwarded_to_self",    # ... after the node asked this reactor (submit in, PF001 result out, seq 0)
    "co_gather",            # a standard element: co:gather's steps run as the node's packets, outputs in order
    "concurrent_50",        # 50 in flight, each answer matched to its own submit by seq
    "invalid_priority",     # priority 11 -> error frame PF002: {:error, payload}
    "open_after_error",     # the link survives the bad message
    "heartbeat",            # a heartbeat is echoed with its seq
    "close",                # Reactor.stop: close handshake, the GenServer ends normally
]
USAGE_CHECKS = [
    "connect",
    "usage_transform",      # the spec's usage example: %Result{status: :success, data: "HELLO WORLD"}
    "usage_served_here",    # the node sent the packet to this reactor, which answered with seq 0
    "heartbeat_liveness",   # heartbeats both ways and ping -> pong with the node for 1.5 s
]
ELIXIR_TO_TS_CHECKS = [
    "connect",
    "elixir_to_ts",  # ed:notify_users {message} priority 9 -> {sent: true, ...}, run by the TS reactor
]
WIRE_CHECKS = [
    "connect",
    "wire_fragmented_result",  # a result in 3 fragments with a ping between them
    "wire_ping_answered",      # pings counted, fragments reassembled, frames after the 101 read
    "wire_large_result",       # a 70 000-byte result (64-bit length)
    "wire_closed_by_server",   # the server's close frame: the reactor answers it and stops
]
SERVER_CHECKS = [
    "handshake",             # GET /packetflow/v1, Upgrade, Sec-WebSocket-Key/Version
    "submit_masked_nulls",   # masked text frame; nil optional fields as JSON null
    "pong_p1",               # ping "p1" between fragments -> masked pong "p1"
    "pong_empty",            # empty ping -> empty pong
    "served_echo",           # submit to the reactor -> result seq 0, "error": null
    "served_boom",           # raising handler -> PF500 with Exception.message, "data": null
    "served_missing",        # no handler -> PF001 "No handler for df:wire_missing"
    "close_echoed",          # close 1000 -> masked close 1000 back
    "tcp_closed_by_client",  # then the client closes the connection
]


# ---------------------------------------------------------------------------- toolchain

def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Elixir interop tests, but {reason} (.ci/run installs "
                    "elixir erlang-cowlib erlang-jiffy)")
    pytest.skip(f"{reason}; the Elixir interop tests need elixir, erlang-cowlib and erlang-jiffy "
                "(Debian packages)")


def _elixir_binary() -> str:
    elixir = shutil.which("elixir")
    if elixir is None or shutil.which("elixirc") is None or shutil.which("erl") is None:
        _missing("`elixir` (with elixirc and erl) is not on PATH")
    # cowlib and jiffy load, and jiffy writes nil as null
    probe = ('io:format("~s", [jiffy:encode(#{<<"k">> => nil}, [use_nil])]), '
             'io:format(" ~s", [cow_ws:encode_key(<<"dGhlIHNhbXBsZSBub25jZQ==">>)]), halt().')
    try:
        proc = subprocess.run(["erl", "-noshell", "-eval", probe], capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        _missing("`erl -eval` probing for cowlib and jiffy did not finish in 30 s")
    if proc.stdout.strip() != '{"k":null} s3pPLMBiTxaQ9kYGzzhZRbK+xOo=':
        _missing(f"cowlib or jiffy cannot be loaded by erl: {proc.stdout.strip()!r} {proc.stderr.strip()!r}")
    return elixir


def _compile() -> None:
    """elixirc packetflow.ex into build/ when the build is missing or older than the source."""
    if BUILD_MARKER.exists() and BUILD_MARKER.stat().st_mtime >= SOURCE.stat().st_mtime:
        return
    BUILD.mkdir(exist_ok=True)
    proc = subprocess.run(["elixirc", "-o", str(BUILD), str(SOURCE)],
                          cwd=ELIXIR_DIR, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"elixirc failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    BUILD_MARKER.touch()


@pytest.fixture(scope="module")
def elixir_bin() -> str:
    elixir = _elixir_binary()
    _compile()
    return elixir


def _command(elixir: str, mode: str, endpoint: str) -> list[str]:
    return [elixir, "-pa", str(BUILD), str(DRIVER), mode, endpoint]


# ---------------------------------------------------------------------------- the driver

def _run_driver(elixir: str, mode: str, endpoint: str) -> tuple[dict[str, dict], subprocess.CompletedProcess, str]:
    return run_driver(_command(elixir, mode, endpoint), ELIXIR_DIR, DRIVER_TIMEOUT_S, f"Elixir driver ({mode})")


def test_elixir_reactor_runs_spec_examples(elixir_bin, node):
    checks, proc, output = _run_driver(elixir_bin, "client", node.endpoint)
    assert_checks(CLIENT_CHECKS, checks, proc, output)


def test_spec_usage_example_is_routed_back_to_the_elixir_reactor(elixir_bin, fresh_node):
    """The spec's usage example as written: the Elixir reactor registers df:transform and
    submits df:transform to a node that has none; the node asks its connected reactors, the
    submitter's own link included, and relays the Elixir handler's answer."""
    bare = fresh_node("--heartbeat-interval-ms", "300", BARE, handlers=BARE_HANDLERS)
    assert "df:transform" not in bare.health()["handlers"]
    checks, proc, output = _run_driver(elixir_bin, "usage", bare.endpoint)
    assert_checks(USAGE_CHECKS, checks, proc, output)


def test_spec_elixir_to_ts_example_through_the_node_as_hub(elixir_bin, fresh_node):
    """The spec's "Elixir -> TypeScript" example with the spec's own reactors and a node between
    them as hub (no tokens): the TypeScript reactor registers ed:notify_users and says nothing
    about it (spec reactors never announce), the Elixir reactor submits ed:notify_users to a
    node that has no handler for it; the node asks the TypeScript reactor and relays its answer."""
    from tests.test_interop_ts import TsPeer, _compile, _node_binary

    node_bin = _node_binary()
    _compile(node_bin)
    bare = fresh_node(BARE, handlers=BARE_HANDLERS)
    assert "ed:notify_users" not in bare.health()["handlers"]
    peer = TsPeer.start(node_bin, bare.endpoint)
    try:
        checks, proc, output = _run_driver(elixir_bin, "notify", bare.endpoint)
        assert_checks(ELIXIR_TO_TS_CHECKS, checks, proc, output + "\n" + peer.describe())
        peer.wait_ran("ed:notify_users", {"message": "System maintenance in 10 minutes"})
    finally:
        peer.stop()


# ---------------------------------------------------------------------------- the wire

OP_CONT, OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x8, 0x9, 0xA
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A server frame (unmasked)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


@dataclasses.dataclass
class Frame:
    opcode: int
    fin: bool
    masked: bool
    payload: bytes

    def json(self) -> dict:
        return json.loads(self.payload)


class FrameReader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the client closed the connection")
        self.buf += data

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._fill()
        end = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:end], self.buf[end:]
        return out

    def read_frame(self) -> Frame:
        b0, b1 = self.read_exact(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self.read_exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self.read_exact(8))
        mask = self.read_exact(4) if b1 & 0x80 else None
        payload = self.read_exact(n)
        if mask is not None:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return Frame(b0 & 0x0F, bool(b0 & 0x80), mask is not None, payload)


class ScriptedServer(threading.Thread):
    """One WebSocket connection, scripted: what the Elixir driver's wire mode expects, and
    checks on every frame the client sends (recorded in `observations`)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.endpoint = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/packetflow/v1"
        self.observations: dict[str, tuple[bool, Any]] = {}
        self.failure: str | None = None

    def observe(self, name: str, ok: bool, detail: Any) -> None:
        self.observations[name] = (bool(ok), detail)

    def run(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(10)
                self._script(conn, FrameReader(conn))
        except Exception as exc:  # reported by the test
            self.failure = f"{type(exc).__name__}: {exc}"
        finally:
            self.listener.close()

    def _script(self, conn: socket.socket, reader: FrameReader) -> None:
        # the handshake; a heartbeat frame in the same TCP write as the 101 response
        request = reader.read_until(b"\r\n\r\n").decode("latin-1")
        request_line, *header_lines = request.split("\r\n")
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (line.partition(":") for line in header_lines if line)}
        key = headers.get("sec-websocket-key", "")
        self.observe("handshake",
                     request_line == "GET /packetflow/v1 HTTP/1.1"
                     and headers.get("upgrade", "").lower() == "websocket"
                     and "upgrade" in headers.get("connection", "").lower()
                     and headers.get("sec-websocket-version") == "13"
                     and len(base64.b64decode(key)) == 16
                     and headers.get("host", "").startswith("127.0.0.1:"),
                     request)
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        heartbeat = json.dumps({"type": "heartbeat", "seq": 1, "payload": {"timestamp": int(time.time() * 1000)}})
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode() + ws_frame(OP_TEXT, heartbeat.encode()))

        # submit 1 (df:transform): masked, nil fields as null; answered in three fragments
        # with a ping between them, a 2-byte character split across fragments, the bytes
        # dribbled 5 at a time
        first = reader.read_frame()
        msg = first.json()
        packet = msg.get("payload") or {}
        self.observe("submit_masked_nulls",
                     first.masked and first.fin and first.opcode == OP_TEXT
                     and msg.get("type") == "submit" and isinstance(msg.get("seq"), int)
                     and packet.get("version") == "1.0" and packet.get("priority") == 5
                     and all(k in packet and packet[k] is None for k in ("timeout_ms", "dependencies", "metadata")),
                     first.payload.decode())
        result = json.dumps({"type": "result", "seq": msg["seq"],
                             "payload": {"packet_id": packet["id"], "status": "success",
                                         "data": packet["data"].upper(), "duration_ms": 1.5}},
                            ensure_ascii=False).encode()
        split = result.index("É".encode()) + 1  # inside the character
        raw = (ws_frame(OP_TEXT, result[:10], fin=False) + ws_frame(OP_PING, b"p1")
               + ws_frame(OP_CONT, result[10:split], fin=False) + ws_frame(OP_CONT, result[split:]))
        for i in range(0, len(raw), 5):
            conn.sendall(raw[i:i + 5])
            time.sleep(0.0005)
        pong = reader.read_frame()
        self.observe("pong_p1", pong.opcode == OP_PONG and pong.masked and pong.payload == b"p1",
                     dataclasses.asdict(pong))

        # submit 2 (df:large, data N): a heartbeat with a 16-bit length, an empty ping, then a
        # result of N bytes (64-bit length) in one write
        second = reader.read_frame().json()
        size = second["payload"]["data"]
        padded = json.dumps({"type": "heartbeat", "seq": 2, "payload": {"timestamp": 1, "pad": "y" * 300}})
        big = json.dumps({"type": "result", "seq": second["seq"],
                          "payload": {"packet_id": second["payload"]["id"], "status": "success",
                                      "data": "x" * size, "duration_ms": 2}})
        conn.sendall(ws_frame(OP_TEXT, padded.encode()) + ws_frame(OP_PING, b"") + ws_frame(OP_TEXT, big.encode()))
        pong = reader.read_frame()
        self.observe("pong_empty", pong.opcode == OP_PONG and pong.masked and pong.payload == b"",
                     dataclasses.asdict(pong))

        # submits to the reactor: its handler, its raising handler, no handler
        ids = {name: new_id(name) for name in ("echo", "boom", "missing")}
        data = {"a": [1, None, "ü"]}
        for seq, (name, element, payload) in enumerate((("echo", "wire_echo", data), ("boom", "wire_boom", 1),
                                                         ("missing", "wire_missing", None)), start=5):
            submit = {"type": "submit", "seq": seq,
                      "payload": {"version": "1.0", "id": ids[name], "group": "df", "element": element,
                                  "data": payload, "priority": 5, "timeout_ms": 5000}}
            conn.sendall(ws_frame(OP_TEXT, json.dumps(submit).encode()))
        answers: dict[str, dict] = {}
        while len(answers) < 3:
            frame = reader.read_frame()
            if frame.opcode == OP_TEXT and frame.json().get("type") == "result":
                answers[frame.json()["payload"]["packet_id"]] = frame.json()
        echo, boom, missing = (answers.get(ids[name], {}) for name in ("echo", "boom", "missing"))
        self.observe("served_echo",
                     echo.get("seq") == 0 and echo["payload"].get("status") == "success"
                     and echo["payload"].get("data") == {"echo": data}
                     and "error" in echo["payload"] and echo["payload"]["error"] is None,
                     echo)
        self.observe("served_boom",
                     boom.get("seq") == 0 and boom["payload"].get("status") == "error"
                     and boom["payload"].get("error") == {"code": "PF500", "message": "wire boom"}
                     and "data" in boom["payload"] and boom["payload"]["data"] is None,
                     boom)
        self.observe("served_missing",
                     missing.get("seq") == 0 and missing["payload"].get("status") == "error"
                     and missing["payload"].get("error") == {"code": "PF001",
                                                             "message": "No handler for df:wire_missing"}
                     and missing["payload"].get("data", "absent") is None
                     and missing["payload"].get("duration_ms") == 0,
                     missing)

        # the close handshake, started by the server
        conn.sendall(ws_frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye"))
        close = reader.read_frame()
        self.observe("close_echoed",
                     close.opcode == OP_CLOSE and close.masked and close.payload[:2] == struct.pack("!H", 1000),
                     dataclasses.asdict(close))
        try:
            reader.read_exact(1)
            self.observe("tcp_closed_by_client", False, "bytes after the close frame")
        except EOFError:
            self.observe("tcp_closed_by_client", True, None)


def test_elixir_websocket_client_handles_fragments_pings_close(elixir_bin):
    server = ScriptedServer()
    server.start()
    checks, proc, output = _run_driver(elixir_bin, "wire", server.endpoint)
    server.join(15)
    observed = {name: ok for name, (ok, _) in server.observations.items()}
    server_report = "\n".join(f"server {name}: {ok} {detail!r}"[:2000]
                              for name, (ok, detail) in server.observations.items())
    assert server.failure is None, f"scripted server: {server.failure}\n{server_report}\n{output}"
    assert observed == {name: True for name in SERVER_CHECKS}, f"{server_report}\n{output}"
    assert_checks(WIRE_CHECKS, checks, proc, output)


# ---------------------------------------------------------------------------- the Elixir peer

class ElixirPeer(PeerProcess):
    """interop.exs serve as a subprocess (tests/interop_util.PeerProcess)."""

    label = "Elixir peer"

    def __init__(self, elixir: str, endpoint: str) -> None:
        self.endpoint = endpoint
        super().__init__(_command(elixir, "serve", endpoint), ELIXIR_DIR)

    def event(self, kind: str, packet_id: str) -> dict | None:
        with self._cond:
            return next((e for e in self.events if e.get("event") == kind and e.get("packet_id") == packet_id), None)


def peer_url(endpoint: str) -> str:
    return with_token(endpoint, TEST_TOKENS["reactor"])


CLIENT = TEST_TOKENS["client"]


def start_peer(elixir: str, endpoint: str) -> ElixirPeer:
    return ElixirPeer.start(elixir, endpoint)


@pytest.fixture(scope="module")
def hub_node(tmp_path_factory):
    """A node of this module's own, with no handler for what the Elixir peer serves."""
    running = start_node(tmp_path_factory.mktemp("elixir-hub"), BARE, handlers=BARE_HANDLERS, tokens=True)
    try:  # a failed check must not leave the node running
        handlers = running.health()["handlers"]
        assert not set(ELIXIR_KEYS) & set(handlers), handlers
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def elixir_peer(elixir_bin, hub_node):
    """The Elixir reactor, authenticated by its URL alone (`?token=`) with the reactor role."""
    peer = start_peer(elixir_bin, peer_url(hub_node.endpoint))
    yield peer
    peer.stop()


async def within(awaitable, timeout_s: float, what: str):
    """Await with a time limit that fails the test saying what did not come."""
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except asyncio.TimeoutError:
        raise AssertionError(f"no {what} within {timeout_s} s") from None


def _assert_forwarded(peer: ElixirPeer, pid: str, key: str) -> None:
    """The node sent the Python client's packet itself (same id, the time left as its
    timeout_ms) and the Elixir reactor answered it with seq 0."""
    submitted = peer.wait_for(lambda e: e.get("event") == "submit_in" and e.get("packet_id") == pid,
                              5, f"submit_in of {pid}")
    assert submitted["key"] == key, submitted
    assert isinstance(submitted["timeout_ms"], int) and 0 < submitted["timeout_ms"] <= TIMEOUT_MS, submitted
    answered = peer.wait_for(lambda e: e.get("event") == "result_out" and e.get("packet_id") == pid,
                             5, f"result_out of {pid}")
    assert answered["seq"] == 0, answered


def test_python_client_gets_elixir_notify_users_answer_through_the_node(hub_node, elixir_peer):
    """The spec's Elixir -> TypeScript example with the roles moved: a Python client submits
    ed:notify_users, the Elixir reactor runs it, the node relays the answer."""
    async def go():
        async with Reactor(hub_node.endpoint, token=CLIENT) as client:
            out = []
            for message in ("System maintenance in 10 minutes", "hi"):
                pid = new_id("notify")
                result = await within(client.submit("ed", "notify_users", {"message": message}, priority=9,
                                                    timeout_ms=TIMEOUT_MS, packet_id=pid),
                                      12, f"result of ed:notify_users {message!r}")
                out.append((pid, message, result))
            pid = new_id("sum")
            out.append((pid, None, await within(
                client.submit("df", "elixir_sum", {"items": [1, 2, 3, 4, 5]}, timeout_ms=TIMEOUT_MS, packet_id=pid),
                12, "result of df:elixir_sum")))
            return out

    *notified, (sum_pid, _, summed) = run(go(), 30)
    for pid, message, result in notified:
        assert result.ok and result.packet_id == pid, (result, elixir_peer.describe())
        assert result.data == {"sent": True, "message": message}, result
        assert isinstance(result.duration_ms, (int, float)) and result.duration_ms >= 0, result
        _assert_forwarded(elixir_peer, pid, "ed:notify_users")
    assert summed.ok and summed.packet_id == sum_pid and summed.data == 15, summed
    _assert_forwarded(elixir_peer, sum_pid, "df:elixir_sum")


def test_elixir_handler_exception_is_relayed_as_pf500(hub_node, elixir_peer):
    async def go():
        async with Reactor(hub_node.endpoint, token=CLIENT) as client:
            pid = new_id("boom")
            result = await within(client.submit("df", "elixir_boom", {"x": 1}, timeout_ms=TIMEOUT_MS,
                                                packet_id=pid), 12, "result of df:elixir_boom")
            after = await within(client.submit("df", "elixir_sum", {"items": [20, 22]}, timeout_ms=TIMEOUT_MS),
                                 12, "result of df:elixir_sum after the exception")
            return pid, result, after

    pid, result, after = run(go(), 30)
    assert result.status == "error" and result.packet_id == pid, (result, elixir_peer.describe())
    assert result.error_code == "PF500", result
    # Exception.message of the RuntimeError the handler raised
    assert result.error["message"] == 'elixir boom: %{"x" => 1}', result
    assert after.ok and after.data == 42, after


def test_concurrent_python_submits_each_get_their_elixir_answer(hub_node, elixir_peer):
    async def go():
        async with Reactor(hub_node.endpoint, token=CLIENT) as client:
            work = [(new_id("csum"), list(range(i + 1))) for i in range(40)]
            results = await within(asyncio.gather(*(
                client.submit("df", "elixir_sum", {"items": items}, priority=1 + i % 10,
                              timeout_ms=TIMEOUT_MS, packet_id=pid)
                for i, (pid, items) in enumerate(work))), 15, "40 concurrent df:elixir_sum results")
            return work, results

    work, results = run(go(), 30)
    wrong = [(pid, sum(items), result) for (pid, items), result in zip(work, results)
             if not (result.ok and result.packet_id == pid and result.data == sum(items))]
    assert not wrong, f"{len(wrong)} wrong answers, first: {wrong[:3]}\n{elixir_peer.describe()}"


REROUTE_GRACE_MS = 1000  # how long the node waits for another reactor after one went away


def test_elixir_reactor_killed_mid_packet_gives_pf003_not_a_timeout(elixir_bin, fresh_node):
    """The only reactor that runs df:elixir_slow is killed (SIGKILL: no close frame) while it
    runs one: once --reroute-grace-ms has passed with no other reactor, the Python client gets
    a PF003 result that says the reactor disconnected, long before the packet's deadline."""
    bare = fresh_node("--reroute-grace-ms", str(REROUTE_GRACE_MS), BARE, handlers=BARE_HANDLERS, tokens=True)
    peer = start_peer(elixir_bin, peer_url(bare.endpoint))
    try:
        async def go():
            async with Reactor(bare.endpoint, token=CLIENT, retry=None) as client:  # the node's own answer
                pid = new_id("killed")
                task = asyncio.ensure_future(
                    client.submit("df", "elixir_slow", 10_000, timeout_ms=20_000, packet_id=pid))
                started = await asyncio.to_thread(
                    peer.wait_for, lambda e: e.get("event") == "started" and e.get("key") == "df:elixir_slow",
                    10, "start of df:elixir_slow")
                assert started["data"] == 10_000
                await asyncio.to_thread(peer.kill)
                killed_at = time.monotonic()
                result = await within(task, 8, "result for the packet whose Elixir reactor was killed")
                return pid, result, time.monotonic() - killed_at

        pid, result, took = run(go(), 25)
    finally:
        peer.stop()
    assert result.status == "error" and result.packet_id == pid, (result, peer.describe())
    assert result.error_code == "PF003", result
    assert "disconnect" in result.error["message"].lower(), result
    assert took < REROUTE_GRACE_MS / 1000 + 3, f"the PF003 came {took:.2f} s after the Elixir reactor died"
    assert bare.proc.poll() is None, bare.log()


def test_packet_of_a_killed_elixir_reactor_is_retried_on_another(elixir_bin, fresh_node):
    """Two Elixir reactors run df:elixir_slow; the one running the packet is killed: the node
    hands the packet (same id) to the other, and the Python client gets its answer."""
    bare = fresh_node(BARE, handlers=BARE_HANDLERS, tokens=True)
    peers = [start_peer(elixir_bin, peer_url(bare.endpoint)) for _ in range(2)]
    try:
        async def go():
            async with Reactor(bare.endpoint, token=CLIENT) as client:
                pid = new_id("retried")
                task = asyncio.ensure_future(
                    client.submit("df", "elixir_slow", 1500, timeout_ms=TIMEOUT_MS, packet_id=pid))

                def first_to_start() -> ElixirPeer:
                    deadline = time.monotonic() + 10
                    while time.monotonic() < deadline:
                        for peer in peers:
                            if peer.event("submit_in", pid) and any(
                                    e.get("event") == "started" for e in list(peer.events)):
                                return peer
                        time.sleep(0.02)
                    raise AssertionError("neither Elixir peer started df:elixir_slow within 10 s\n"
                                         + "\n".join(p.describe() for p in peers))

                victim = await asyncio.to_thread(first_to_start)
                await asyncio.to_thread(victim.kill)
                result = await within(task, 8, "result for the packet retried on the other reactor")
                return pid, victim, result

        pid, victim, result = run(go(), 25)
        survivor = next(peer for peer in peers if peer is not victim)
        assert result.ok and result.packet_id == pid and result.data == "slept", (
            result, survivor.describe(), victim.describe())
        _assert_forwarded(survivor, pid, "df:elixir_slow")
        assert survivor.event("submit_in", pid)["timeout_ms"] < TIMEOUT_MS  # the time it had left
    finally:
        for peer in peers:
            peer.stop()
    assert bare.proc.poll() is None, bare.log()
