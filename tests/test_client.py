"""The Python clients against real nodes: `pfnode.Client` (synchronous: submit, map, gather,
as_completed, progress bars, use inside a running event loop) and what it shares with
`pfnode.client.Reactor`: tokens and PF401/PF403 as `RemoteError`, busy answers (PF003, PF004,
PF503) retried, a dropped link dialled again without running a packet twice.

Where a test must choose what the node answers (busy codes, the order of answers, how many
packets are in flight), the packets go to a key no node here runs, and a `Raw` peer that
announced it runs them by hand (hub routing: the node forwards them to it). A link is dropped
by cutting the TCP proxy between the client and the node (tests/test_dialout.py's).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import time
import uuid

import orjson
import pytest
from websockets.asyncio.server import serve

import pfnode
import pfnode.client
from pfnode import Client, ConnectionLost, RemoteError
from pfnode.client import Reactor, Retry
from tests.conftest import TEST_TOKENS, start_node
from tests.e2e_util import Raw, run, wait_until
from tests.test_dialout import CuttableProxy
from tests.test_hub import announce, offered, result_frame, silence

pytestmark = pytest.mark.timeout(60)

FAST = Retry(first_s=0.01, max_s=0.05)  # the back-off of these tests: milliseconds, not seconds


def new_key() -> str:
    """An element no node runs: its packets go to the peer that announces it."""
    return f"client_{uuid.uuid4().hex[:10]}"


def runs_in(record) -> dict[str, list[str]]:
    """df:logged_run's file: the packet ids that started, and those that ended, in order."""
    lines = [line.split() for line in record.read_text().splitlines()] if record.exists() else []
    return {mark: [pid for m, pid in lines if m == mark] for mark in ("start", "end")}


def port_of(node) -> int:
    return int(node.endpoint.split(":")[2].split("/")[0])


def answer(sub: dict, **how) -> str:
    """The peer's answer to the node's submit frame `sub` (result_frame's options)."""
    return result_frame(sub["payload"]["id"], sub["seq"], **how)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    running = start_node(tmp_path_factory.mktemp("client-secured"), workers=1, tokens=True)
    yield running
    running.stop()


@pytest.fixture
def no_env_token(monkeypatch):
    monkeypatch.delenv("PFNODE_TOKEN", raising=False)


# ---------------------------------------------------------------------------- submit, map, gather, as_completed

def test_submit_gives_a_future_of_the_data_or_of_a_remote_error(node):
    with Client(node.endpoint) as client:
        future = client.submit("df", "transform", "hello world")
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(30) == "HELLO WORLD"
        with pytest.raises(RemoteError) as info:
            client.submit("df", "boom", 1, id="my-boom").result(30)
        assert (info.value.code, info.value.packet_id) == ("PF500", "my-boom")
        assert "ValueError: boom: 1" in info.value.message
        unanswered = client.submit("df", "inc", 1, dependencies=[f"never-{uuid.uuid4()}"])  # held by the node
    assert "closed" in repr(client)
    with pytest.raises(ConnectionLost):  # closing failed it
        unanswered.result(30)
    with pytest.raises(ConnectionLost):
        client.submit("df", "transform", "x")


def test_map_keeps_at_most_window_packets_in_flight_and_returns_results_in_order(node):
    key, window, count = new_key(), 4, 12

    async def go():
        async with Raw(node.endpoint) as peer:
            await announce(peer, [f"df:{key}"])
            with Client(node.endpoint) as client:
                mapped = asyncio.ensure_future(asyncio.to_thread(client.map, "df", key, list(range(count)),
                                                                 window=window))
                answered = 0
                while answered < count:
                    held = [await offered(peer) for _ in range(window)]
                    await silence(peer)  # the window is full: nothing more comes until an answer
                    for sub in reversed(held):  # the last sent is answered first
                        await peer.send(answer(sub, data=sub["payload"]["data"] * 10))
                    answered += window
                return await mapped

    assert run(go()) == [i * 10 for i in range(count)]


def test_as_completed_yields_futures_as_they_end_and_gather_keeps_their_order(node):
    key = new_key()

    async def go():
        async with Raw(node.endpoint) as peer:
            await announce(peer, [f"df:{key}"])
            with Client(node.endpoint) as client:
                futures = [client.submit("df", key, name) for name in "abc"]
                subs = {}
                for _ in futures:
                    sub = await offered(peer)
                    subs[sub["payload"]["data"]] = sub
                completed = client.as_completed(futures)
                order = []
                for name in "cab":
                    await peer.send(answer(subs[name], data=name.upper()))
                    order.append((await asyncio.to_thread(next, completed)).result())
                return order, client.gather(futures)

    assert run(go()) == (["C", "A", "B"], ["A", "B", "C"])


def test_map_raises_the_first_failure_or_returns_it_in_its_place(node):
    with Client(node.endpoint) as client:
        with pytest.raises(RemoteError) as info:
            client.map("df", "inc", [1, "x", 3])
        assert info.value.code == "PF500" and "TypeError" in info.value.message
        results = client.map("df", "inc", [1, "x", 3], return_exceptions=True)
        assert results[0] == 2 and results[2] == 4
        assert isinstance(results[1], RemoteError) and results[1].code == "PF500"


def test_map_with_chunk_sends_the_items_in_lists_through_df_consume(node):
    with Client(node.endpoint) as client:
        # df:inc_all takes a list and answers a list: only a chunked map can use it
        assert client.map("df", "inc_all", range(1000), chunk=10) == list(range(1, 1001))
        with pytest.raises(RemoteError) as info:  # and a step that takes one item gets a list
            client.map("df", "inc", range(30), chunk=10)
        assert info.value.code == "PF500"


def test_the_client_works_inside_a_running_event_loop(node):
    """As in a notebook: the caller's thread runs an event loop; the client's loop is its own."""
    async def main():
        with Client(node.endpoint) as client:
            return client.map("df", "inc", [1, 2, 3]), client.submit("df", "transform", "x").result(30)

    assert asyncio.run(main()) == ([2, 3, 4], "X")


# ---------------------------------------------------------------------------- the progress bar

def test_map_draws_a_progress_bar_when_asked_also_to_a_file(node, capsys):
    pytest.importorskip("tqdm", reason="the progress extra (pip install 'pfnode[progress]') is not installed")
    with Client(node.endpoint) as client:
        assert client.map("df", "inc", range(50), progress=True) == list(range(1, 51))
    err = capsys.readouterr().err
    assert "df:inc" in err and "50/50" in err


def test_the_bar_counts_every_item_while_the_clients_loop_adds_to_it(node, monkeypatch):
    """The caller's thread draws what the client's loop thread counts: each item once, however
    the two interleave (a bar that takes its time to draw lets the loop count on meanwhile)."""
    class SlowBar:
        n = 0

        def update(self, k):
            self.n += k
            time.sleep(0.002)

    monkeypatch.setattr(pfnode.client, "PROGRESS_INTERVAL_S", 0.001)
    with Client(node.endpoint) as client:
        bar = SlowBar()
        assert client.map("df", "inc", range(3000), progress=bar) == list(range(1, 3001))
    assert bar.n == 3000


def test_the_bar_shows_by_itself_for_hundreds_of_items_in_a_terminal_with_tqdm(node, capsys, monkeypatch):
    pytest.importorskip("tqdm", reason="the progress extra (pip install 'pfnode[progress]') is not installed")

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    with Client(node.endpoint) as client:
        client.map("df", "inc", range(600))
        assert capsys.readouterr().err == ""  # stderr is not a terminal here
        monkeypatch.setattr(pfnode.client, "_stderr_is_terminal", lambda: True)
        client.map("df", "inc", range(100))
        assert capsys.readouterr().err == ""  # too few items to bother
        client.map("df", "inc", range(600))
        assert "600/600" in capsys.readouterr().err
        mine = Bar()
        client.map("df", "inc", range(30), progress=mine)  # a bar of the caller's
        assert mine.n == 30
        monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm not installed
        monkeypatch.setitem(sys.modules, "tqdm.auto", None)
        assert client.map("df", "inc", range(600)) == list(range(1, 601))
        assert capsys.readouterr().err == ""
        with pytest.raises(ImportError, match=r"pfnode\[progress\]"):
            client.map("df", "inc", range(3), progress=True)


# ---------------------------------------------------------------------------- tokens: PF401, PF403

def test_a_client_with_no_token_or_a_bad_one_gets_pf401_and_the_nodes_message(secured, no_env_token):
    with pytest.raises(RemoteError) as info:
        Client(secured.endpoint)
    assert info.value.code == "PF401" and "authentication required" in info.value.message
    with pytest.raises(RemoteError) as info:
        Client(secured.endpoint, token="pft_unknown")
    assert info.value.code == "PF401" and "unknown token" in info.value.message


def test_the_token_comes_from_pfnode_token_and_pf403_is_a_remote_error(secured, monkeypatch):
    monkeypatch.setenv("PFNODE_TOKEN", TEST_TOKENS["client"])
    with Client(secured.endpoint) as client:
        assert client.submit("df", "transform", "a").result(30) == "A"
        with pytest.raises(RemoteError) as info:
            client.submit("mc", "status").result(30)  # the admin role's
        assert info.value.code == "PF403"


def test_a_reactor_without_a_token_gets_pf401_as_a_remote_error(secured, no_env_token):
    """The node answers PF401 (an error frame, seq 0) and closes the link with 4401: the
    reactor says so when it starts."""
    async def go():
        with pytest.raises(RemoteError) as info:
            async with Reactor(secured.endpoint):
                pass
        assert info.value.code == "PF401" and "authentication required" in info.value.message
        reactor = Reactor(secured.endpoint, token="pft_unknown")
        with pytest.raises(RemoteError) as info:
            await reactor.start()
        assert info.value.code == "PF401" and "unknown token" in info.value.message
    run(go())


def test_a_reactor_whose_token_lacks_the_reactor_role_learns_it_when_it_announces(secured):
    async def go():
        async with Reactor(secured.endpoint, token=TEST_TOKENS["client"]) as reactor:
            reactor.registry.register("df", "mine", str.upper)
            with pytest.raises(RemoteError) as info:
                await reactor.announce_capabilities()
            assert info.value.code == "PF403" and "reactor role" in info.value.message
            assert (await reactor.submit("df", "transform", "a")).data == "A"  # submitting is its role
    run(go())


# ---------------------------------------------------------------------------- busy answers retried

@pytest.mark.parametrize("busy, api", [("PF004", "client"), ("PF503", "client"), ("PF503", "reactor"),
                                       ("PF003", "reactor")])
def test_a_busy_answer_is_retried_until_the_packet_runs(node, busy, api):
    key = new_key()

    async def go():
        async with Raw(node.endpoint) as peer:
            await announce(peer, [f"df:{key}"])
            if api == "client":
                with Client(node.endpoint, retry=FAST) as client:
                    future = asyncio.wrap_future(client.submit("df", key, 7))
                    first = await offered(peer)
                    await peer.send(answer(first, status="error", code=busy, message="busy"))
                    second = await offered(peer)  # sent again
                    await peer.send(answer(second, data=8))
                    return first, second, await future
            async with Reactor(node.endpoint, retry=FAST) as reactor:
                job = asyncio.ensure_future(reactor.submit("df", key, 7))
                first = await offered(peer)
                await peer.send(answer(first, status="error", code=busy, message="busy"))
                second = await offered(peer)
                await peer.send(answer(second, data=8))
                return first, second, (await job).data

    first, second, data = run(go())
    assert data == 8
    assert first["payload"]["id"] == second["payload"]["id"]  # the same packet


def test_busy_answers_past_the_attempts_stand_and_other_errors_are_not_retried(node):
    key = new_key()

    async def go():
        async with Raw(node.endpoint) as peer:
            await announce(peer, [f"df:{key}"])
            with Client(node.endpoint, retry=Retry(attempts=2, first_s=0.01, max_s=0.05)) as client:
                future = asyncio.wrap_future(client.submit("df", key, 1))
                for _ in range(3):  # sent, then sent again twice
                    await peer.send(answer(await offered(peer), status="error", code="PF004", message="full"))
                with pytest.raises(RemoteError) as info:
                    await future
                assert info.value.code == "PF004" and "overloaded" in info.value.message  # (the hub's words)
                future = asyncio.wrap_future(client.submit("df", key, 2))
                await peer.send(answer(await offered(peer), status="error", code="PF500", message="no"))
                with pytest.raises(RemoteError) as info:
                    await future
                assert info.value.code == "PF500"
                await silence(peer)  # not sent again
    run(go())


# ---------------------------------------------------------------------------- a dropped link

def test_a_dropped_link_is_dialled_again_and_no_packet_runs_twice(fresh_node, tmp_path):
    """A map through a proxy whose connection is cut mid-run: the packets whose answers were
    lost fail with ConnectionLost (they may have run: not sent again), the rest go on the new
    link; every packet ran at most once."""
    node = fresh_node("--workers", "2")
    record = tmp_path / "runs.txt"
    proxy = CuttableProxy(port_of(node))
    try:
        with Client(f"ws://127.0.0.1:{proxy.port}/packetflow/v1", retry=FAST) as client, \
                concurrent.futures.ThreadPoolExecutor(1) as pool:
            items = [{"s": 0.05, "file": str(record)}] * 40
            mapped = pool.submit(client.map, "df", "logged_run", items, window=4, return_exceptions=True)
            wait_until(lambda: len(runs_in(record)["end"]) >= 6, what="some packets run")
            assert proxy.cut() == 1
            results = mapped.result(60)
            after = client.submit("df", "logged_run", {"s": 0, "file": str(record)}).result(30)
    finally:
        proxy.close()
    lost = [r for r in results if isinstance(r, ConnectionLost)]
    ran = [r["id"] for r in results if isinstance(r, dict)]
    assert lost and len(lost) + len(ran) == len(items), results
    assert all("may have run" in str(e) for e in lost)
    wait_until(lambda: node.health()["lanes"]["df"]["running"] == 0, what="the df lane idle")
    started = runs_in(record)["start"]
    assert len(started) == len(set(started)), "a packet ran twice"
    assert set(ran) | {after["id"]} <= set(runs_in(record)["end"])


def test_a_packet_lost_with_its_link_is_sent_again_only_if_retries_allow(fresh_node, tmp_path):
    node = fresh_node("--workers", "2")
    record = tmp_path / "runs.txt"
    proxy = CuttableProxy(port_of(node))
    slow = {"s": 0.5, "file": str(record)}

    async def go():
        async with Reactor(f"ws://127.0.0.1:{proxy.port}/packetflow/v1", retry=FAST) as reactor:
            once = asyncio.ensure_future(reactor.submit("df", "logged_run", slow, packet_id="once"))
            again = asyncio.ensure_future(reactor.submit("df", "logged_run", slow, packet_id="again",
                                                         retries=1))
            await asyncio.to_thread(wait_until, lambda: sorted(runs_in(record)["start"]) == ["again", "once"],
                                    20, 0.02, "both started")
            assert proxy.cut() == 1
            with pytest.raises(ConnectionLost) as info:
                await once
            assert "may have run" in str(info.value) and "retries=0" in str(info.value)
            return await again

    try:
        result = run(go())
    finally:
        proxy.close()
    assert result.ok and result.data["id"] == "again"
    wait_until(lambda: len(runs_in(record)["end"]) >= 3, what="the three runs' ends")
    wait_until(lambda: node.health()["lanes"]["df"]["running"] == 0, what="the df lane idle")
    started = runs_in(record)["start"]
    assert started.count("once") == 1, started  # its answer was lost, and it was not sent again
    assert started.count("again") == 2, started  # sent again, as the caller allowed: it ran twice


def test_a_link_closed_before_the_node_said_a_word_is_dialled_again_at_start():
    """A refusal's PF401 can be lost to a TCP reset (docs/PROTOCOL.md, "Authentication"): a
    link that closes before answering the first heartbeat is dialled again, and nothing but
    that heartbeat went on it. Here an endpoint closes its first connection at once."""
    seen: list[list[dict]] = []

    async def endpoint(ws):
        frames: list[dict] = []
        seen.append(frames)
        if len(seen) == 1:
            frames.append(orjson.loads(await ws.recv()))
            await ws.close(1011, "not now")
            return
        async for text in ws:
            msg = orjson.loads(text)
            frames.append(msg)
            if msg["type"] == "heartbeat":
                await ws.send(orjson.dumps({"type": "heartbeat", "seq": msg["seq"], "payload": {}}).decode())
            elif msg["type"] == "submit":
                await ws.send(orjson.dumps({"type": "result", "seq": msg["seq"], "payload": {
                    "packet_id": msg["payload"]["id"], "status": "success", "data": msg["payload"]["data"]}}).decode())

    async def go():
        async with serve(endpoint, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with Reactor(f"ws://127.0.0.1:{port}/", retry=FAST, announce=False) as reactor:
                assert (await reactor.submit("df", "echo", 5)).data == 5

    run(go())
    assert len(seen) == 2
    assert [m["type"] for m in seen[0]] == ["heartbeat"]  # the first link: the heartbeat alone
    assert [m["type"] for m in seen[1]] == ["heartbeat", "submit"]
