"""Dial-out: the node as a reactor of another PacketFlow endpoint (`pfnode connect URL`).

The node keeps one link to the hub and answers the hub's `submit` frames with its
local pool, exactly as it answers a connected peer's. The link is one `PeerLink`
for the node's whole life, whatever happens to the connection under it: when the
connection drops, packets keep running, their answers wait in the outbox, and a new
connection is dialled after a growing, jittered delay. On each new connection the
node announces what it runs (a heartbeat with `capabilities`), then sends the
answers that waited.

A hub whose reactor went away sends the packets it held again, to whichever reactor
takes them. When that is this node again, a packet still running is not started a
second time (its one answer follows), and one that finished is answered from the
last `replay_entries` answers: no packet runs twice because of a reconnect.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import random
import time

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidURI
from websockets.uri import parse_uri

from .errors import ConfigError
from .front import Node
from .ws_websockets import WebsocketsLink, connection_options

log = logging.getLogger("pfnode.dialout")

OPEN_TIMEOUT_S = 10.0


def reconnect_delay_s(attempt: int, min_ms: int, max_ms: int, rand: random.Random | None = None) -> float:
    """Delay before try number `attempt` (1, 2, ...): doubling from min_ms up to max_ms,
    then a random 50-100 % of it, so that nodes cut off together do not all come back at
    the same instant."""
    ceiling = min(max_ms, min_ms * 2 ** min(attempt - 1, 30))
    return ceiling * (rand or random).uniform(0.5, 1.0) / 1000


def check_url(url: str) -> str:
    try:
        parse_uri(url)
    except InvalidURI as exc:
        raise ConfigError(f"not a WebSocket URL: {url!r} ({exc}); e.g. ws://hub:8443/packetflow/v1") from None
    return url


class UplinkRules:
    """What makes a link an uplink, whatever carries it: the at-most-once rule, and the
    difference between a close for good and a dropped connection. Mixed into a transport's
    link class below; `connect` opens one connection, `run_connection` serves it to its end."""

    uplink = True
    final = False  # closed by us for good (shutdown): do not dial again
    resent_this_connection = 0

    def _init_uplink(self) -> None:
        self._answers: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    # -- the at-most-once rule (called by the node)
    def replay(self, packet_id: str, seq: int) -> bool:
        """True when the hub sent `packet_id` again: it is running (its answer will
        come) or it ran (its answer goes again). False: a new packet."""
        if packet_id in self.inflight:
            self._resent(packet_id, seq, "it is still running")
            return True
        frame = self._answers.get(packet_id)
        if frame is None:
            return False
        self._resent(packet_id, seq, "answering from the earlier run")
        self._write(frame)
        return True

    def _resent(self, packet_id: str, seq: int, what: str) -> None:
        # one line per connection at INFO: a hub re-sends everything it held at a cut
        self.resent_this_connection += 1
        log.log(logging.INFO if self.resent_this_connection == 1 else logging.DEBUG,
                "dial-out: hub sent %s again (seq %d); %s%s", packet_id, seq, what,
                " (further re-sends are logged at DEBUG)" if self.resent_this_connection == 1 else "")

    def remember(self, packet_id: str, frame: bytes) -> None:
        self._answers[packet_id] = frame
        self._answers.move_to_end(packet_id)
        while len(self._answers) > self.node.settings.replay_entries:
            self._answers.popitem(last=False)

    def _connection_opened(self, waiting: int) -> None:
        self.last_seen = time.monotonic()
        self.resent_this_connection = 0
        log.info("dial-out: connected to %s; %d packets running, %d answers waiting to be sent",
                 self.peer, len(self.inflight), waiting)

    def _closing(self, code: int) -> None:
        """A close for good (shutdown, 1001) ends the dialling; any other (the hub went
        silent) only drops this connection."""
        if code == 1001:
            self.final = True


class WebsocketsUplink(UplinkRules, WebsocketsLink):
    """The uplink on the websockets library: `ws` is the connection of the moment (None
    between two); frames wait in the outgoing queue until written to one."""

    def __init__(self, node: Node, url: str) -> None:
        WebsocketsLink.__init__(self, node, None, peer=url)
        self._init_uplink()
        self.url = url

    @property
    def connected(self) -> bool:
        return self.ws is not None

    def close(self, code: int, reason: str) -> None:
        self._closing(code)
        if self.ws is not None:
            asyncio.ensure_future(self.ws.close(code, reason))

    async def flush(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._outgoing and self.ws is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def connect(self) -> None:
        s = self.node.settings
        try:
            self._next = await connect(self.url, open_timeout=OPEN_TIMEOUT_S, **connection_options(s))
        except InvalidHandshake as exc:
            raise ConnectionError(str(exc)) from exc

    async def run_connection(self) -> int | None:
        """Serve the hub over the new connection until it closes; returns its close code."""
        ws = self.ws = self._next
        self._connection_opened(len(self._outgoing))
        self._outgoing.appendleft(self.node.announcement())
        self._wake.set()
        try:
            await self.converse(ws)
        finally:
            self.ws = None
        return ws.close_code


def uplink_for(node: Node, url: str) -> UplinkRules:
    """The uplink on the node's transport (`--transport`): picows, or websockets."""
    if node.settings.transport == "picows":
        from .ws_picows import PicowsUplink

        return PicowsUplink(node, url)
    return WebsocketsUplink(node, url)


async def dial(node: Node, url: str) -> None:
    """Keep `node` connected to the hub at `url` until the node stops."""
    s = node.settings
    link = uplink_for(node, url)
    node.on_open(link)
    attempt = 0
    try:
        while not link.final and not node.stopping.is_set():
            try:
                await link.connect()
            except (OSError, asyncio.TimeoutError) as exc:  # ConnectionError for a refused handshake
                attempt += 1
                delay = reconnect_delay_s(attempt, s.reconnect_min_ms, s.reconnect_max_ms)
                log.warning("dial-out: cannot reach %s (%s); try %d in %.2f s", url,
                            exc or type(exc).__name__, attempt + 1, delay)
                await _sleep_unless_stopping(node, delay)
                continue
            started = time.monotonic()
            code = await link.run_connection()
            if link.final or node.stopping.is_set():
                break
            # a connection that held for a while starts the backoff afresh
            attempt = 1 if time.monotonic() - started > s.reconnect_max_ms / 1000 else attempt + 1
            delay = reconnect_delay_s(attempt, s.reconnect_min_ms, s.reconnect_max_ms)
            log.warning("dial-out: link to %s lost (close code %s); %d packets still running; "
                        "reconnecting in %.2f s", url, code, len(link.inflight), delay)
            await _sleep_unless_stopping(node, delay)
    finally:
        node.on_close(link, None)


async def _sleep_unless_stopping(node: Node, delay_s: float) -> None:
    try:
        await asyncio.wait_for(node.stopping.wait(), delay_s)
    except asyncio.TimeoutError:
        pass
