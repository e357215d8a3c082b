"""What a transport and the node share: one connected peer (`PeerLink`), the node's
interface as a transport sees it (`NodeInterface`), and a plain HTTP answer.

A transport (pfnode/transports/picows.py, pfnode/transports/websockets.py) depends on this module only:
it starts listening, asks `node.http_route` what to answer a plain HTTP request with,
creates one `PeerLink` per connection, hands it each complete message (`deliver`) and
implements `_write`, `_pause`/`_resume` (reading), `close`, `flush` and `ping`. Every
protocol rule lives in the node, so the transports behave identically.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
import socket
import time
from typing import Any, Protocol

from ..ops.metrics import Metrics

OPEN_TIMEOUT_S = 10.0  # a dial-out connection's handshake
HEARTBEAT_TIMEOUT_CLOSE_CODE = 4408  # a private-use close code: "peer silent too long"
_UNCOUNTED = Metrics(process=False)  # the frames of a link whose node keeps no metrics (tests' fakes)


def _any_frame() -> bool:
    return True


def hard_frame_limit(max_frame_bytes: int) -> int:
    """Frames up to this size are read and, past max_frame_bytes, answered PF413; larger
    ones cannot be read without unbounded memory, so the connection closes with 1009."""
    return max(2 * max_frame_bytes, max_frame_bytes + (1 << 20))


@dataclasses.dataclass(frozen=True)
class HttpReply:
    """A plain HTTP answer instead of a WebSocket upgrade."""

    status: int
    reason: str
    content_type: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


class NodeInterface(Protocol):
    """The node, as a transport sees it."""

    settings: Any

    def http_route(self, path: str, upgrade: bool = True, headers: Any = None,
                   peer: str | None = None, pending: int = 0) -> HttpReply | None:
        """What to answer an HTTP request with (None: go on with the upgrade). `peer`: who
        asks ("host:port"); `pending`: the other connections the transport accepted that are
        not links yet (a TLS handshake or an upgrade under way), which count toward
        max_connections."""
        ...

    def on_open(self, link: "PeerLink") -> None: ...

    def on_message(self, link: "PeerLink", frame: bytes | str) -> None: ...

    def on_close(self, link: "PeerLink", code: int | None) -> None: ...

    def take_frame(self) -> bool:
        """Whether one more frame may be handled in this turn of the event loop (see
        `PeerLink.deliver`)."""
        ...


class PeerLink:
    """One connected peer, as the node sees it: a way to send frames, to stop and resume
    reading, and its liveness. A transport subclasses it."""

    refused = False  # the node refused it (PF401, over a share) and is closing it: its frames are not read

    def __init__(self, node: NodeInterface, peer: str) -> None:
        self.node = node
        self.peer = peer
        # when it was last heard from, on the node's clock (a test's fake node may have none)
        self.clock = getattr(node, "clock", None) or time.monotonic
        self.last_seen = self.clock()
        self.heartbeat_seq = 0
        self.opened_at = self.last_seen
        self.active = False  # it has submitted or answered a packet (an idle link may be closed)
        self.closed = False
        self.identity: Any = None  # who it authenticated as (pfnode.auth.Identity; None: no authentication)
        self.credential: str | None = None  # the hash of the token it presented
        self.request_path = "/"  # the handshake's path and query, and its headers (for the token)
        self.request_headers: Any = None
        # "inflight" (its limit), "writing" (a slow reader), "turn" (this loop turn's frames are spent)
        self._pause_reasons: set[str] = set()
        self._backlog: collections.deque[bytes | str] = collections.deque()
        self._draining = False
        self.metrics = getattr(node, "metrics", None) or _UNCOUNTED
        # the node's frame budget per loop turn (a test's fake node may have none)
        self._take = getattr(node, "take_frame", None) or _any_frame

    @property
    def connected(self) -> bool:
        """Whether frames sent now go out (an uplink between connections holds them)."""
        return not self.closed

    # -- called by the node
    def send(self, frame: bytes) -> None:
        if not self.closed:
            self._write(frame)
            self.metrics.frame_out(len(frame))

    @property
    def reading_paused(self) -> bool:
        return bool(self._pause_reasons)

    def pause_reading(self, reason: str = "inflight") -> None:
        if not self._pause_reasons:
            self._pause()
        self._pause_reasons.add(reason)

    def resume_reading(self, reason: str = "inflight") -> None:
        """Read again once no reason to pause is left. Messages that arrived while paused
        are handled first, in order, from the event loop (never from inside the caller,
        which may be in the middle of answering another packet)."""
        if reason not in self._pause_reasons:
            return
        self._pause_reasons.discard(reason)
        if self._pause_reasons:
            return
        if self._backlog:
            if not self._draining:
                self._draining = True
                asyncio.get_running_loop().call_soon(self._drain_backlog)
        else:
            self._resume()

    def _drain_backlog(self) -> None:
        self._draining = False
        backlog = self._backlog
        take = self._take
        while backlog and not self._pause_reasons and not self.closed:
            if not take():
                self._next_turn()
                return
            self.node.on_message(self, backlog.popleft())
        if not self._pause_reasons and not self.closed:
            self._resume()

    def _next_turn(self) -> None:
        """This loop turn's frames are spent: read on in the next, after the event loop has
        polled every socket and pipe once (so one busy peer's frames delay another's by at
        most one turn's worth, and an ed packet never waits behind a whole flood)."""
        self.pause_reading("turn")
        asyncio.get_running_loop().call_soon(self._turn_over)

    def _turn_over(self) -> None:
        self._pause_reasons.discard("turn")
        if self._pause_reasons or self.closed:
            return
        if self._backlog:
            self._drain_backlog()  # at the start of the turn: before the poll, not after it
        else:
            self._resume()

    # -- called by the transport
    def deliver(self, message: bytes | str) -> None:
        """One complete message from the peer. A transport that reads ahead while paused
        keeps order through the backlog, so the in-flight limit holds exactly. Past the
        node's frames for this loop turn (`take_frame`), it waits for the next turn."""
        if self._pause_reasons or self._backlog:
            self._backlog.append(message)
        elif self._take():
            self.node.on_message(self, message)
        else:
            self._backlog.append(message)
            self._next_turn()

    @property
    def backlog_bytes(self) -> int:
        return sum(len(m) for m in self._backlog)

    # -- transport specifics
    def _write(self, frame: bytes) -> None:
        raise NotImplementedError

    def _pause(self) -> None:
        raise NotImplementedError

    def _resume(self) -> None:
        raise NotImplementedError

    def ping(self) -> None:
        """A WebSocket ping with each heartbeat, where the library does not ping by itself."""

    def close(self, code: int, reason: str) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        """Drop the connection now, without a closing handshake (a peer that does not
        answer one must not hold up the node's shutdown)."""

    def peer_gone(self) -> bool:
        """Whether the peer has hung up, looked at without reading: a link whose reading
        is paused does not notice its peer leaving by itself."""
        return peer_hung_up(self.socket_fileno())

    def socket_fileno(self) -> int | None:
        return None


def server_tls_options(settings: Any, ssl_context: Any) -> dict[str, Any]:
    """The listening server's TLS arguments (asyncio's `create_server`'s): the context, and
    how long a client may take over its handshake before it is dropped."""
    if ssl_context is None:
        return {}
    return {"ssl": ssl_context, "ssl_handshake_timeout": settings.tls_handshake_timeout_ms / 1000}


def bearer(token: str | None) -> dict[str, str] | None:
    """The header a dial-out link presents its token in (None: no token)."""
    return {"Authorization": f"Bearer {token}"} if token else None


def uplink_ssl(settings: Any, url: str):
    """The TLS context a dial-out link uses for a wss:// hub (None for ws://)."""
    if not url.startswith("wss:"):
        return None
    from .tls import client_context

    return client_context(settings.ca_file, settings.client_cert, settings.client_key)


_TCP_CLOSED_STATES = {7, 8, 9}  # Linux tcp_states.h: TCP_CLOSE, TCP_CLOSE_WAIT, TCP_LAST_ACK


def peer_hung_up(fileno: int | None) -> bool:
    """True when the TCP peer has closed its side, even with unread data waiting (which a
    peek would return first): the socket's TCP state, from TCP_INFO (Linux; elsewhere a
    non-blocking peek, which sees a hang-up once nothing is left unread)."""
    if fileno is None or fileno < 0:
        return False
    probe = socket.socket(fileno=os.dup(fileno))
    try:
        if hasattr(socket, "TCP_INFO") and probe.family in (socket.AF_INET, socket.AF_INET6):
            return probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] in _TCP_CLOSED_STATES
        return probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True
    finally:
        probe.close()
