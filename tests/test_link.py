"""PeerLink's flow control (pfnode/transports/base.py) and the supervisor's respawn rule, without
sockets or processes."""
from __future__ import annotations

import asyncio
import collections

from pfnode.transports.base import PeerLink
from pfnode.pool.supervisor import MAX_RESPAWN_DELAY_S, respawn_delay_s


class FakeNode:
    settings = None

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.inside: list[str] = []  # what was being handled when each message arrived

    def on_message(self, link, frame) -> None:
        self.seen.append(frame)
        if frame == "pause-me":
            link.pause_reading("inflight")


class Link(PeerLink):
    def __init__(self, node) -> None:
        super().__init__(node, "peer")
        self.events: list[str] = []

    def _write(self, frame) -> None:
        pass

    def _pause(self) -> None:
        self.events.append("pause")

    def _resume(self) -> None:
        self.events.append("resume")


def test_messages_read_while_paused_wait_in_order_and_are_handled_from_the_loop_not_the_caller():
    async def go():
        node = FakeNode()
        link = Link(node)
        link.deliver("pause-me")
        assert link.reading_paused and link.events == ["pause"]
        for frame in ("a", "b", "c"):
            link.deliver(frame)  # a transport that had read ahead
        assert node.seen == ["pause-me"] and link.backlog_bytes == 3
        link.resume_reading("inflight")
        # not re-entered from inside resume_reading (which an answer path may call)
        assert node.seen == ["pause-me"]
        link.deliver("d")  # arrives meanwhile: still behind the backlog
        await asyncio.sleep(0)
        assert node.seen == ["pause-me", "a", "b", "c", "d"]
        assert link.events == ["pause", "resume"] and not link.reading_paused
    asyncio.run(go())


def test_reading_resumes_only_when_every_reason_to_pause_is_gone():
    async def go():
        link = Link(FakeNode())
        link.pause_reading("inflight")
        link.pause_reading("writing")
        link.resume_reading("inflight")
        await asyncio.sleep(0)
        assert link.reading_paused and link.events == ["pause"]
        link.resume_reading("writing")
        await asyncio.sleep(0)
        assert not link.reading_paused and link.events == ["pause", "resume"]
    asyncio.run(go())


def test_a_worker_killed_by_a_packet_is_replaced_at_once_whatever_came_before():
    recent = collections.deque()
    assert [respawn_delay_s("packet", recent, t) for t in range(50)] == [0.0] * 50
    assert not recent  # packets' faults do not count as the lane's


def test_workers_dying_on_their_own_are_replaced_with_a_growing_delay_that_resets():
    recent = collections.deque()
    delays = [respawn_delay_s("start", recent, 100.0 + i * 0.1) for i in range(30)]
    assert delays[:2] == [0.0, 0.0] and delays[2] > 0
    assert all(a <= b for a, b in zip(delays, delays[1:])) and delays[-1] == MAX_RESPAWN_DELAY_S
    assert respawn_delay_s("idle", recent, 1000.0) == 0.0  # ten quiet seconds later: at once again


def test_a_hang_up_is_seen_without_reading_even_with_data_unread():
    import socket

    from pfnode.transports.base import peer_hung_up

    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    try:
        assert not peer_hung_up(accepted.fileno())
        client.sendall(b"unread frames")
        assert not peer_hung_up(accepted.fileno())  # data waiting is not a hang-up
        client.close()
        import time
        time.sleep(0.05)
        assert peer_hung_up(accepted.fileno())  # the FIN is seen behind the unread data
        assert accepted.recv(100) == b"unread frames"  # and nothing was consumed
        assert not peer_hung_up(None)
    finally:
        accepted.close()
        server.close()
