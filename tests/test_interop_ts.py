"""Interop with the spec's TypeScript reactor (tests/interop/ts), over a real socket.

The TypeScript sources are compiled with the project-local `tsc` (node_modules/typescript) into
tests/interop/ts/dist whenever a source is newer than its output. Two programs come out:

- dist/interop.js, the driver: runs the spec's examples through the TS reactor against a node
  and prints one JSON line per check: {"name", "ok", "detail"}. With `--usage` it runs only the
  spec's usage example, df:transform registered on the TS reactor itself, against a node that has
  no df:transform: the node routes the packet back to the reactor (hub routing). With
  `--process-data` it runs only the client side of the spec's "TypeScript -> Elixir" example,
  for a node without df:process_data while the spec's Elixir reactor (tests/test_interop_elixir.py's
  serve mode) that runs it is connected: neither announces, the node asks the Elixir reactor.
- dist/serve.js, a handler peer: the TS reactor with ed:notify_users (the spec's
  "Elixir -> TypeScript" example), df:ts_double, df:ts_boom and df:ts_slow registered, connected
  to a node until it is killed or its stdin ends. Python clients submit those packets to the
  node, which has no handler for them and forwards them to the TS peer (three parties: Python
  client -> pfnode hub -> TS reactor), then relays the answer.

Needs Node.js on PATH and `npm install` in tests/interop/ts (`make test` runs it first).
"""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pfnode.client import Reactor
from tests.conftest import TEST_TOKENS, start_node
from tests.e2e_util import new_id, run, with_token
from tests.interop_util import PeerProcess, assert_checks, run_driver

pytestmark = pytest.mark.timeout(60)

TS_DIR = Path(__file__).resolve().parent / "interop" / "ts"
SOURCES = ("reactor.ts", "interop.ts", "serve.ts")
DRIVER = TS_DIR / "dist" / "interop.js"
SERVE = TS_DIR / "dist" / "serve.js"
TSC = TS_DIR / "node_modules" / "typescript" / "bin" / "tsc"
DRIVER_TIMEOUT_S = 55  # the driver's own watchdog fires at 50 s
# A node's handler modules without df:transform (nor any ts_* or ed:notify_users handler).
BARE_HANDLERS = "tests.handlers_testing"
BARE = "--no-data-elements"  # nor the standard df:transform: only the reactor runs it
TS_KEYS = ("ed:notify_users", "df:ts_double", "df:ts_boom", "df:ts_slow")
# How long the bare node keeps a packet whose reactor went away, waiting for another, before
# PF003 (`--reroute-grace-ms`, 10 s by default): short here so the disconnect test is quick.
REROUTE_GRACE_MS = 1000

EXPECTED_CHECKS = [
    "connect",
    "transform",          # df:transform "hello world" -> "HELLO WORLD", packet_id = the id sent
    "uppercase",          # df:uppercase
    "process_data",       # df:process_data {items: [1..5]} priority 7 -> 30
    "validate_null",      # cf:validate null -> {valid: false}
    "validate_value",     # cf:validate "x" -> {valid: true}
    "unknown_element",    # forwarded, no reactor can run it: result status error, PF001
    "concurrent_200",     # 200 in flight, each answer matched to its own submit by seq
    "invalid_priority",   # priority 11 -> error frame PF002, submit rejects
    "open_after_error",   # the connection survives the bad message
    "heartbeat_on_open",  # the reactor's heartbeat on open is echoed with its seq
    "heartbeat",          # a later heartbeat is echoed with its seq
]
USAGE_CHECKS = [
    "connect",
    "usage",  # df:transform registered on the TS reactor; the node has none: "HELLO WORLD", run once by the TS handler
]
TS_TO_ELIXIR_CHECKS = [
    "connect",
    "ts_to_elixir",  # df:process_data {items: [1..5]} priority 7 -> 30, run by the Elixir reactor
]


# ---------------------------------------------------------------------------- toolchain

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


@pytest.fixture(scope="module")
def node_bin() -> str:
    node = _node_binary()
    _compile(node)
    return node


# ---------------------------------------------------------------------------- the driver

def _run_driver(node_bin: str, endpoint: str, *args: str) -> tuple[dict[str, dict], subprocess.CompletedProcess, str]:
    return run_driver([node_bin, str(DRIVER), endpoint, *args], TS_DIR, DRIVER_TIMEOUT_S, "TypeScript driver")


def test_typescript_reactor_runs_spec_examples(node, node_bin):
    checks, proc, output = _run_driver(node_bin, node.endpoint)
    assert_checks(EXPECTED_CHECKS, checks, proc, output)


# ---------------------------------------------------------------------------- the TS peer

class TsPeer(PeerProcess):
    """dist/serve.js as a subprocess (tests/interop_util.PeerProcess)."""

    label = "TS peer"

    def __init__(self, node_bin: str, endpoint: str) -> None:
        self.endpoint = endpoint
        super().__init__([node_bin, str(SERVE), endpoint], TS_DIR)

    def wait_ran(self, key: str, data, timeout_s: float = 5.0) -> None:
        """Wait for the event line saying this peer's handler for `key` started on `data`
        (stdout is read by a thread: the line may come after the relayed result)."""
        self.wait_for(lambda e: e.get("event") == "start" and e.get("key") == key and e.get("data") == data,
                      timeout_s, f"start of {key} on {data!r}")



def start_peer(node_bin: str, endpoint: str) -> TsPeer:
    return TsPeer.start(node_bin, endpoint)


@pytest.fixture(scope="module")
def auth_node(tmp_path_factory):
    """A node of this module's own with tokens: the TS peer authenticates by its URL alone
    (`?token=`, all a spec reactor can choose) with the reactor role, which it needs to be sent
    other clients' packets; the Python clients have the submit role only."""
    running = start_node(tmp_path_factory.mktemp("ts-auth-node"), tokens=True)
    yield running
    running.stop()


def peer_url(endpoint: str) -> str:
    return with_token(endpoint, TEST_TOKENS["reactor"])


CLIENT = TEST_TOKENS["client"]


@pytest.fixture(scope="module")
def ts_peer(auth_node, node_bin):
    """A TS peer serving TS_KEYS on this module's node with tokens."""
    peer = start_peer(node_bin, peer_url(auth_node.endpoint))
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def bare_node(tmp_path_factory):
    """A node of this module's own whose handlers lack df:transform, and with no TS peer that
    outlives a test (the disconnect test needs to be sure no other reactor can take over)."""
    running = start_node(tmp_path_factory.mktemp("bare-node"), "--reroute-grace-ms", str(REROUTE_GRACE_MS),
                         BARE, handlers=BARE_HANDLERS, tokens=True)
    try:  # a failed check must not leave the node running
        handlers = running.health()["handlers"]
        assert "df:transform" not in handlers and not set(TS_KEYS) & set(handlers), handlers
        yield running
    finally:
        running.stop()


TIMEOUT_MS = 10_000  # every submit's own deadline: a lost answer fails the test, not the suite


async def within(awaitable, timeout_s: float, what: str):
    """Await with a time limit that fails the test saying what did not come."""
    try:
        return await asyncio.wait_for(awaitable, timeout_s)
    except asyncio.TimeoutError:
        raise AssertionError(f"no {what} within {timeout_s} s") from None


def test_python_client_gets_ts_notify_users_answer_through_the_node(auth_node, ts_peer):
    """The spec's Elixir -> TypeScript example, with a Python client in the Elixir client's place."""
    async def go():
        async with Reactor(auth_node.endpoint, token=CLIENT) as client:
            results = []
            for message in ("System maintenance in 10 minutes", "hi"):
                pid = new_id("notify")
                result = await client.submit("ed", "notify_users", {"message": message}, priority=9,
                                             timeout_ms=TIMEOUT_MS, packet_id=pid)
                results.append((pid, message, result))
            return results

    before_ms = time.time() * 1000
    results = run(go(), 20)
    after_ms = time.time() * 1000
    for pid, message, result in results:
        assert result.ok, (result, ts_peer.describe())
        assert result.packet_id == pid
        assert result.data["sent"] is True and result.data["message"] == message, result
        # Date.now() in the TS process while the packet was in flight
        assert before_ms - 1000 <= result.data["timestamp"] <= after_ms + 1000, result
        assert isinstance(result.duration_ms, (int, float)) and result.duration_ms >= 0
    for _, message, _ in results:
        ts_peer.wait_ran("ed:notify_users", {"message": message})


def test_ts_double_data_is_relayed(auth_node, ts_peer):
    async def go():
        async with Reactor(auth_node.endpoint, token=CLIENT) as client:
            return [await client.submit("df", "ts_double", {"items": items}, timeout_ms=TIMEOUT_MS)
                    for items in ([1, 2, 3, 4, 5], [], [0.5, -7, 1e6])]

    results = run(go(), 20)
    assert [r.status for r in results] == ["success"] * 3, results
    assert [r.data for r in results] == [[2, 4, 6, 8, 10], [], [1.0, -14, 2e6]]
    ts_peer.wait_ran("df:ts_double", {"items": [1, 2, 3, 4, 5]})


def test_ts_handler_exception_is_relayed_as_pf500_with_its_message(auth_node, ts_peer):
    async def go():
        async with Reactor(auth_node.endpoint, token=CLIENT) as client:
            pid = new_id("boom")
            result = await client.submit("df", "ts_boom", {"x": 1}, timeout_ms=TIMEOUT_MS, packet_id=pid)
            # the link is fine afterwards
            after = await client.submit("df", "ts_double", {"items": [21]}, timeout_ms=TIMEOUT_MS)
            return pid, result, after

    pid, result, after = run(go(), 20)
    assert result.status == "error" and result.packet_id == pid, result
    assert result.error_code == "PF500", result
    assert "ts boom" in result.error["message"], result
    assert after.ok and after.data == [42], after
    ts_peer.wait_ran("df:ts_boom", {"x": 1})


def test_concurrent_forwarded_and_local_submits_each_get_their_own_answer(auth_node, ts_peer):
    """Two Python clients, 30 packets each in flight at once: TS-served keys mixed with a
    local handler (df:transform) and a throwing TS handler; every answer matches its packet."""
    def plan(client_no: int) -> list[tuple]:
        work = []
        for i in range(30):
            tag = f"c{client_no}-{i}"
            kind = i % 4
            if kind == 0:
                work.append(("ed", "notify_users", {"message": tag}, ("notify", tag)))
            elif kind == 1:
                work.append(("df", "ts_double", {"items": [i, client_no]}, ("double", [2 * i, 2 * client_no])))
            elif kind == 2:
                work.append(("df", "transform", tag, ("local", tag.upper())))
            else:
                work.append(("df", "ts_boom", tag, ("boom", None)))
        return work

    async def one_client(client_no: int):
        work = plan(client_no)
        async with Reactor(auth_node.endpoint, token=CLIENT) as client:
            ids = [new_id(f"cc{client_no}") for _ in work]
            results = await asyncio.gather(*(
                client.submit(group, element, data, priority=1 + n % 10, timeout_ms=TIMEOUT_MS, packet_id=pid)
                for n, (pid, (group, element, data, _)) in enumerate(zip(ids, work))))
            return list(zip(ids, work, results))

    async def go():
        return await asyncio.gather(one_client(1), one_client(2))

    wrong = []
    total = 0
    for rows in run(go(), 25):
        for pid, (group, element, data, (kind, expected)), result in rows:
            total += 1
            if result.packet_id != pid:
                wrong.append((pid, result))
            elif kind == "notify":
                if not (result.ok and result.data.get("sent") is True and result.data.get("message") == expected):
                    wrong.append((pid, kind, result))
            elif kind == "boom":
                if not (result.error_code == "PF500" and "ts boom" in result.error["message"]):
                    wrong.append((pid, kind, result))
            elif not (result.ok and result.data == expected):
                wrong.append((pid, kind, expected, result))
    assert total == 60
    assert not wrong, f"{len(wrong)} wrong answers, first: {wrong[:3]}\n{ts_peer.describe()}"


def test_a_cf_seq_whose_middle_step_the_ts_reactor_runs_through_the_hub(auth_node, ts_peer):
    """A standard element's step is a real packet: with no handler for df:ts_double here, the
    hub forwards that step to the TypeScript reactor, and the sequence goes on with its output."""
    steps = [{"group": "df", "element": "noop", "data": {"items": [1, 2, 3]}},
             {"group": "df", "element": "ts_double"},
             {"group": "df", "element": "noop"}]

    async def go():
        async with Reactor(auth_node.endpoint, token=CLIENT) as client:
            return await client.submit("cf", "seq", {"input": None, "steps": steps, "collect": True})
    result = run(go())
    assert result.ok, (result, ts_peer.describe())
    assert result.data == [{"items": [1, 2, 3]}, [2, 4, 6], [2, 4, 6]], result
    ts_peer.wait_ran("df:ts_double", {"items": [1, 2, 3]})


def test_forwarded_packet_past_its_deadline_is_pf504(auth_node, ts_peer):
    async def go():
        async with Reactor(auth_node.endpoint, token=CLIENT) as client:
            pid = new_id("slow")
            start = time.monotonic()
            result = await client.submit("df", "ts_slow", 3000, timeout_ms=500, packet_id=pid)
            took = time.monotonic() - start
            after = await client.submit("df", "ts_double", {"items": [1]}, timeout_ms=TIMEOUT_MS)
            return pid, result, took, after

    pid, result, took, after = run(go(), 20)
    assert result.status == "error" and result.packet_id == pid, result
    assert result.error_code == "PF504", result
    assert took < 2.5, f"PF504 came {took:.2f} s after the submit, deadline 0.5 s"
    assert after.ok and after.data == [2], after
    ts_peer.wait_ran("df:ts_slow", 3000)  # it really was forwarded


def test_ts_reactor_killed_mid_packet_gives_pf003_not_a_timeout(bare_node, node_bin):
    peer = start_peer(node_bin, peer_url(bare_node.endpoint))
    try:
        async def go():
            async with Reactor(bare_node.endpoint, token=CLIENT, retry=None) as client:  # the node's own answer
                pid = new_id("killed")
                task = asyncio.ensure_future(
                    client.submit("df", "ts_slow", 10_000, timeout_ms=20_000, packet_id=pid))
                started = await asyncio.to_thread(
                    peer.wait_for, lambda e: e.get("event") == "start" and e.get("key") == "df:ts_slow",
                    10, "start of df:ts_slow")
                assert started["data"] == 10_000
                await asyncio.to_thread(peer.kill)  # SIGKILL: no close frame, the socket just drops
                killed_at = time.monotonic()
                result = await within(task, 8, "result for the packet whose TS reactor was killed")
                took = time.monotonic() - killed_at
                # the hub never learnt that the dead reactor ran df:ts_double (it announced nothing
                # and answered nothing): nobody runs it, PF001 at once
                later = await within(client.submit("df", "ts_double", {"items": [1]}, timeout_ms=TIMEOUT_MS),
                                     8, "result for a packet sent after the only capable reactor died")
                return pid, result, took, later

        pid, result, took, later = run(go(), 25)
    finally:
        peer.stop()
    assert result.status == "error" and result.packet_id == pid, result
    assert result.error_code == "PF003", result
    assert "disconnect" in result.error["message"].lower(), result
    # parked for the reroute grace (no other reactor runs df:ts_slow), then PF003: long before
    # the packet's own 20 s deadline
    assert took < REROUTE_GRACE_MS / 1000 + 3, f"the PF003 came {took:.2f} s after the TS reactor died"
    assert later.error_code == "PF001", later
    assert bare_node.proc.poll() is None, bare_node.log()


def test_ts_reactor_stop_closes_the_link_cleanly(node, node_bin):
    """The spec's stop() is ws.close() with no status code; the node's answering close frame
    must be one the ws library accepts (no socket error on the TS side)."""
    peer = start_peer(node_bin, node.endpoint)
    peer.stop()  # stdin ends: serve.js calls reactor.stop() and exits 0
    assert peer.proc.returncode == 0, peer.describe()
    assert not any("socket error" in line for line in peer.stderr), peer.describe()


def test_spec_usage_example_handler_on_the_ts_reactor(bare_node, node_bin):
    """The spec's usage example against a node without df:transform: only the TS reactor that
    submits the packet has the handler, so the node must route it back to that reactor."""
    checks, proc, output = _run_driver(node_bin, peer_url(bare_node.endpoint), "--usage")
    assert_checks(USAGE_CHECKS, checks, proc, output)


def test_spec_ts_to_elixir_example_through_the_node_as_hub(node_bin, fresh_node):
    """The spec's "TypeScript -> Elixir" example with the spec's own reactors and a node between
    them as hub (no tokens): the Elixir reactor registers df:process_data and says nothing about
    it (spec reactors never announce), the TypeScript reactor submits df:process_data to a node
    that has no handler for it; the node asks the Elixir reactor and relays its 30."""
    from tests.test_interop_elixir import ElixirPeer, _compile, _elixir_binary

    elixir = _elixir_binary()
    _compile()
    bare = fresh_node(BARE, handlers=BARE_HANDLERS)
    assert "df:process_data" not in bare.health()["handlers"]
    peer = ElixirPeer.start(elixir, bare.endpoint)
    try:
        checks, proc, output = _run_driver(node_bin, bare.endpoint, "--process-data")
        assert_checks(TS_TO_ELIXIR_CHECKS, checks, proc, output + "\n" + peer.describe())
        pid = checks["ts_to_elixir"]["detail"]["expected"]["packet_id"]
        submitted = peer.wait_for(lambda e: e.get("event") == "submit_in" and e.get("packet_id") == pid,
                                  5, f"submit_in of {pid}")
        assert submitted["key"] == "df:process_data" and submitted["data"] == {"items": [1, 2, 3, 4, 5]}, submitted
        answered = peer.wait_for(lambda e: e.get("event") == "result_out" and e.get("packet_id") == pid,
                                 5, f"result_out of {pid}")
        assert (answered["seq"], answered["status"], answered["data"]) == (0, "success", 30), answered
    finally:
        peer.stop()
