"""Dial-out: the node as a reactor of another PacketFlow endpoint (`pfnode connect URL`).

The node keeps one link to the hub and answers the hub's `submit` frames with its
local pool, exactly as it answers a connected peer's. The link is one `PeerLink` for
the node's whole life, whatever happens to the connection under it (the transport's
uplink link: its transport's `UplinkLink`, pfnode/transports/):
when the connection drops, packets keep running, their answers wait in its outbox,
and a new connection is dialled after a growing, jittered delay. On each new
connection the node announces what it runs (a heartbeat with `capabilities`), then
sends the answers that waited.

A hub whose reactor went away sends the packets it held again, to whichever reactor
takes them. When that is this node again, a packet still running is not started a
second time (its one answer follows), and one that finished is answered from the
last `replay_entries` answers: no packet runs twice because of a reconnect. That rule
is the `Uplink` object's, which the node holds (`node.uplink`).

The hub's token comes from `--hub-token-file` or `$PFNODE_TOKEN` (`hub_token`), never the
command line, and goes in an `Authorization: Bearer` header. A URL with `?token=` still
works, but every line that shows the URL shows it redacted (ops/logs.redact_url).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
from typing import Any, MutableMapping

from websockets.exceptions import InvalidURI
from websockets.uri import parse_uri

from .. import transports
from ..errors import ConfigError
from ..ops.logs import redact_text, redact_url

log = logging.getLogger("pfnode.dialout")
TOKEN_ENV = "PFNODE_TOKEN"


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
        raise ConfigError(f"not a WebSocket URL: {redact_url(url)!r} ({redact_text(str(exc))}); "
                          "e.g. ws://hub:8443/packetflow/v1") from None
    return url


def hub_token(token_file: str | None, environ: MutableMapping[str, str] | None = None) -> str | None:
    """The token `pfnode connect` presents to its hub: the first line of `token_file` (a
    systemd credential, a file only its user reads), else `$PFNODE_TOKEN`, else None. The
    variable is taken out of `environ` (os.environ) either way, so that the workers and
    their handlers, which inherit the environment, never see it."""
    environ = os.environ if environ is None else environ
    from_env = environ.pop(TOKEN_ENV, None)
    if token_file is None:
        return (from_env or "").strip() or None
    try:
        with open(token_file, encoding="utf-8") as file:
            token = file.readline().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the hub token file {token_file}: {exc.strerror or exc}") from None
    if not token:
        raise ConfigError(f"the hub token file {token_file} is empty")
    return token


class Uplink:
    """The node's link to its hub, and the at-most-once rule across reconnects."""

    def __init__(self, node: Any, url: str, token: str | None = None) -> None:
        self.node = node
        self.url = url
        self.shown = redact_url(url)  # the URL as the logs show it
        self.link = _uplink_link(node, url, self._greeting, token)
        self._answers: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._resent = 0  # re-sends seen on this connection

    def _greeting(self) -> bytes:
        """The first frame of each connection: what the node runs. Also logs the connection."""
        self._resent = 0
        log.info("dial-out: connected to %s; %d packets running, %d answers waiting to be sent",
                 self.shown, self.node.scheduler.count_of(self.link), self.link.waiting)
        self.link.last_seen = self.node.clock()
        return self.node.announcement()

    def replay(self, packet_id: str, seq: int) -> bool:
        """True when the hub sent `packet_id` again: it is running (its answer will come)
        or it ran (its answer goes again). False: a new packet."""
        flight = self.node.scheduler.inflight.get((self.node.scope_of(self.link), packet_id))
        if flight is not None and flight.origin is self.link:
            self._note_resent(packet_id, seq, "it is still running")
            return True
        frame = self._answers.get(packet_id)
        if frame is None:
            return False
        self._note_resent(packet_id, seq, "answering from the earlier run")
        self.link.send(frame)
        return True

    def _note_resent(self, packet_id: str, seq: int, what: str) -> None:
        # one line per connection at INFO: a hub re-sends everything it held at a cut
        self._resent += 1
        first = self._resent == 1
        log.log(logging.INFO if first else logging.DEBUG, "dial-out: hub sent %s again (seq %d); %s%s",
                packet_id, seq, what, " (further re-sends are logged at DEBUG)" if first else "")

    def remember(self, packet_id: str, frame: bytes) -> None:
        self._answers[packet_id] = frame
        self._answers.move_to_end(packet_id)
        while len(self._answers) > self.node.settings.replay_entries:
            self._answers.popitem(last=False)


def _uplink_link(node: Any, url: str, greeting, token: str | None):
    """The uplink's link on the node's transport (`--transport`), from the transports' registry."""
    return transports.load(node.settings.transport).UplinkLink(node, url, greeting, token=token)


async def dial(node: Any, url: str, token: str | None = None) -> None:
    """Keep `node` connected to the hub at `url` until the node stops, presenting `token`
    (if any) as `Authorization: Bearer`."""
    s = node.settings
    uplink = node.uplink = Uplink(node, url, token)
    link = uplink.link
    shown = uplink.shown
    node.on_open(link)
    attempt = 0
    try:
        while not link.final and not node.stopping.is_set():
            try:
                await link.connect()
            except (OSError, asyncio.TimeoutError) as exc:  # ConnectionError for a refused handshake
                attempt += 1
                delay = reconnect_delay_s(attempt, s.reconnect_min_ms, s.reconnect_max_ms)
                log.warning("dial-out: cannot reach %s (%s); try %d in %.2f s", shown,
                            redact_text(str(exc)) or type(exc).__name__, attempt + 1, delay)
                await _sleep_unless_stopping(node, delay)
                continue
            started = node.clock()
            code = await link.run_connection()
            if link.final or node.stopping.is_set():
                break
            # a connection that held for a while starts the backoff afresh
            attempt = 1 if node.clock() - started > s.reconnect_max_ms / 1000 else attempt + 1
            delay = reconnect_delay_s(attempt, s.reconnect_min_ms, s.reconnect_max_ms)
            log.warning("dial-out: link to %s lost (close code %s); %d packets still running; "
                        "reconnecting in %.2f s", shown, code, node.scheduler.count_of(link), delay)
            await _sleep_unless_stopping(node, delay)
    finally:
        node.on_close(link, None)


async def _sleep_unless_stopping(node: Any, delay_s: float) -> None:
    try:
        await asyncio.wait_for(node.stopping.wait(), delay_s)
    except asyncio.TimeoutError:
        pass
