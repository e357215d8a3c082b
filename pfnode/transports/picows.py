"""The WebSocket layer on picows (a Cython WebSocket implementation).

picows calls back per frame, in the event loop's data_received, without a task per
connection or per message; sends are plain transport writes. Complete messages are
handed to the node through `PeerLink.deliver`, which keeps the in-flight limit exact
although picows may parse several frames from one read.
"""
from __future__ import annotations

import asyncio
import collections
import collections.abc
import logging
import os
import time
from typing import Any, Callable

from picows import (WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport,
                    WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener, ws_connect,
                    ws_create_server)
from websockets.frames import apply_mask  # C speedup where built, as in websockets' own frames

from ..ops.logs import redact_url
from .base import OPEN_TIMEOUT_S, NodeInterface, PeerLink, bearer, hard_frame_limit, server_tls_options, uplink_ssl

_TEXT, _BINARY, _CONTINUATION = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION
log = logging.getLogger("pfnode.front")


def text_header(size: int, masked: bool = False) -> bytes:
    """The header of one unfragmented WebSocket text frame of `size` payload bytes (RFC 6455
    section 5.2): a server's (unmasked; the payload follows as it is) or, with `masked`, a
    client's (the masking key and the masked payload follow)."""
    mask_bit = 0x80 if masked else 0
    if size < 126:
        return bytes((0x81, mask_bit | size))
    if size < 65536:
        return bytes((0x81, mask_bit | 126)) + size.to_bytes(2, "big")
    return bytes((0x81, mask_bit | 127)) + size.to_bytes(8, "big")


ABNORMAL_CLOSURE = 1006  # RFC 6455 7.1.5: the connection closed without a close frame


def close_code_of(transport: WSTransport) -> int:
    """A closed connection's close code as the websockets transport reports it, so that both
    count the same close alike: the code of the peer's close frame (1005: one without a code),
    else the code of ours (we closed, and did not wait for the peer's echo of it), else 1006
    (dropped without a close frame)."""
    handshake = getattr(transport, "close_handshake", None)
    if handshake is not None:
        for info in (handshake.recv, handshake.sent):
            if info is not None:
                return int(info.code)
    return ABNORMAL_CLOSURE


class PicowsLink(PeerLink, WSListener):
    def __init__(self, node: NodeInterface, server_links: set | None = None) -> None:
        PeerLink.__init__(self, node, "?")
        self._server_links = server_links  # its server's open links (_Accepted counts the others)
        self.transport: WSTransport | None = None
        self._parts: list[bytes] | None = None  # a fragmented message being assembled
        self._parts_size = 0
        self._limit = hard_frame_limit(node.settings.max_frame_bytes)
        self._pending: list[bytes] = []  # frames to send at the end of this loop turn

    # -- picows callbacks
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        address = transport.underlying_transport.get_extra_info("peername")
        self.peer = "%s:%s" % address[:2] if address else "?"
        transport.underlying_transport.set_write_buffer_limits(high=self.node.settings.write_buffer_high_bytes)
        if self._server_links is not None:
            self._server_links.add(self)
        self.node.on_open(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is _TEXT or kind is _BINARY:
            if frame.fin:
                self.deliver(frame.get_payload_as_bytes())
            else:
                self._parts = [frame.get_payload_as_bytes()]
                self._parts_size = len(self._parts[0])
        elif kind is _CONTINUATION and self._parts is not None:
            self._parts.append(frame.get_payload_as_bytes())
            self._parts_size += len(self._parts[-1])
            if self._parts_size > self._limit:
                self._parts = None
                self.close(WSCloseCode.MESSAGE_TOO_BIG, "message too big")
            elif frame.fin:
                message, self._parts = b"".join(self._parts), None
                self.deliver(message)
        elif kind is WSMsgType.CLOSE:
            code = frame.get_close_code()
            if code == WSCloseCode.NO_INFO:
                # a close frame without a code is answered with one without a code: picows
                # would write code 0, which peers reject (RFC 6455 7.4.1)
                transport.send(WSMsgType.CLOSE, b"")
            else:
                transport.send_close(code)
            transport.disconnect()
        # PING is answered by picows itself (enable_auto_pong). A PONG does not count as
        # hearing from the peer: as with the websockets transport, liveness is judged on
        # PacketFlow frames, and a peer's library answers pings on its own.

    def pause_writing(self) -> None:
        # The peer reads our results slower than they come: take no new work from it
        # until its socket drains (picows calls this past the write buffer's high mark).
        self.pause_reading("writing")

    def resume_writing(self) -> None:
        self.resume_reading("writing")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self._server_links is not None:
            self._server_links.discard(self)
        self.node.on_close(self, close_code_of(transport))

    # -- PeerLink
    def _write(self, frame: bytes) -> None:
        # Frames written in one turn of the event loop leave in one socket write.
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush_pending)
        self._pending.append(frame)

    def _flush_pending(self) -> None:
        frames, self._pending = self._pending, []
        transport = self.transport
        if transport is None or transport.is_disconnected or transport.is_close_frame_sent:
            return  # nothing may follow a close frame
        # Server frames are not masked, so a text frame is a 2-10 byte header and the
        # payload as it is: framing them here lets one vectored write carry them all,
        # without copying a payload into a joined buffer first.
        parts = []
        for frame in frames:
            parts.append(text_header(len(frame)))
            parts.append(frame)
        underlying = transport.underlying_transport
        underlying.writelines(parts)
        # past the high mark picows calls pause_writing (reading pauses); past the hard
        # bound the client is not reading at all: it is closed, and only it
        if underlying.get_write_buffer_size() > self.node.settings.max_write_buffer_bytes:
            self.close(1008, "not reading its results")

    def _pause(self) -> None:
        self.transport.underlying_transport.pause_reading()

    def _resume(self) -> None:
        self.transport.underlying_transport.resume_reading()

    def ping(self) -> None:
        self.transport.send_ping()

    def close(self, code: int, reason: str) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            if self._pending:
                self._flush_pending()  # what was sent before the close goes before it
            self.transport.send_close(WSCloseCode(code), reason.encode())
            self.transport.disconnect(graceful=True)

    def abort(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.underlying_transport.abort()

    def socket_fileno(self) -> int | None:
        if self.transport is None or self.transport.is_disconnected:
            return None
        sock = self.transport.underlying_transport.get_extra_info("socket")
        return sock.fileno() if sock is not None else None

    async def flush(self, timeout_s: float) -> None:
        self._flush_pending()
        deadline = time.monotonic() + timeout_s
        underlying = self.transport.underlying_transport
        while underlying.get_write_buffer_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


class _Accepted:
    """The server's connections that are not links yet (a TLS handshake or an upgrade under
    way), and who asks for an upgrade: picows tells neither. Its server (aiofastnet's, which
    picows requires) keeps its open connections in `_clients`, each removed as it closes,
    however its handshake ended; each one's protocol holds the request it is answering."""

    def __init__(self) -> None:
        self.server: Any = None
        self.links: set[PicowsLink] = set()  # the server's connections that are links

    def watch(self, server: Any) -> None:
        self.server = server
        if not isinstance(getattr(server, "_clients", None), collections.abc.Collection):
            log.warning("front: this picows server does not show its connections: TLS handshakes "
                        "under way do not count toward max_connections, and the back-off after "
                        "failed authentications applies only once connected")

    def asking(self, request: WSUpgradeRequest) -> str | None:
        """The peer ("host:port") whose request this is; None when unknown."""
        for connection in getattr(self.server, "_clients", ()):
            transport = getattr(connection.get_protocol(), "transport", None)
            if transport is not None and transport.request is request:
                address = connection.get_extra_info("peername")
                return "%s:%s" % address[:2] if address else None
        return None

    def pending(self) -> int:
        """The connections besides the one asking that are not links yet."""
        clients = getattr(self.server, "_clients", None)
        return 0 if clients is None else max(0, len(clients) - len(self.links) - 1)


ACCEPT_RETRY_DELAY_S = 1.0  # as asyncio's: the listener rests this long when the process is out of descriptors


def _patch_accept_when_out_of_files() -> None:
    """aiofastnet 1.2 (picows' server) calls `remove_reader` on the listening socket instead
    of on the loop when accept() fails for want of file descriptors (EMFILE): the
    AttributeError ends its accept loop for good, and the node never accepts again, /healthz
    included. Wrap it to do what it meant: stop reading the listener for a second, then try
    again (asyncio's own servers do so). Applied once, and only to a class that has the bug's
    shape; a fixed aiofastnet raises no AttributeError there and is left alone."""
    try:
        from aiofastnet import api_utils
    except ImportError:
        return
    for server_class in vars(api_utils).values():
        if (isinstance(server_class, type) and hasattr(server_class, "_accept_connection")
                and hasattr(server_class, "_start_serving_one_listener")
                and not getattr(server_class, "_pfnode_accept_patched", False)):
            accept = server_class._accept_connection

            def _accept_connection(self, listening_sock, _accept=accept):
                try:
                    _accept(self, listening_sock)
                except AttributeError:  # its EMFILE path, after it reported the error
                    self._loop.remove_reader(listening_sock.fileno())
                    self._loop.call_later(ACCEPT_RETRY_DELAY_S, self._start_serving_one_listener, listening_sock)

            server_class._accept_connection = _accept_connection
            server_class._pfnode_accept_patched = True


async def serve(node: NodeInterface, ssl_context=None) -> asyncio.Server:
    s = node.settings
    accepted = _Accepted()

    def route(request: WSUpgradeRequest):
        path = request.path.decode() if isinstance(request.path, bytes) else request.path
        reply = node.http_route(path, "websocket" in request.headers.get("Upgrade", "").lower(),
                                request.headers, accepted.asking(request), accepted.pending())
        if reply is None:
            link = PicowsLink(node, accepted.links)
            link.request_path, link.request_headers = path, request.headers
            return link
        headers = {"Content-Type": reply.content_type, "Cache-Control": "no-store", **dict(reply.headers)}
        if reply.status == 200:
            response = WSUpgradeResponse.create_ok_response(reply.body, headers)
        else:
            response = WSUpgradeResponse.create_error_response(reply.status, reply.body, headers)
        return WSUpgradeResponseWithListener(response, None)

    _patch_accept_when_out_of_files()
    server = await ws_create_server(
        route, s.host, s.port,
        max_frame_size=hard_frame_limit(s.max_frame_bytes),
        # picows' own auto-ping breaks its plain-HTTP answers (/healthz); the node's
        # heartbeat loop sends the WebSocket pings instead (see PicowsLink.ping)
        enable_auto_ping=False,
        enable_auto_pong=True,
        **server_tls_options(s, ssl_context),
    )
    accepted.watch(server)
    return server


class PicowsUplinkLink(PicowsLink):
    """The dial-out uplink (pfnode/app/dialout.py) on picows: one listener across connections,
    `transport` being the connection of the moment (None between two). Frames written
    while there is none wait in the outbox for the next, after its `greeting()`."""

    def __init__(self, node: NodeInterface, url: str, greeting: Callable[[], bytes],
                 token: str | None = None) -> None:
        PicowsLink.__init__(self, node)
        self.url = url
        self.peer = redact_url(url)  # what the logs show of it
        self.greeting = greeting
        self._headers = bearer(token)
        self.final = False  # closed by us for good (shutdown): do not dial again
        self._outbox: collections.deque[bytes] = collections.deque()
        self._close_code: int | None = None
        self._next: WSTransport | None = None

    @property
    def connected(self) -> bool:
        return self.transport is not None and not self.transport.is_disconnected

    @property
    def waiting(self) -> int:
        return len(self._outbox)

    # -- picows callbacks
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport  # the node knows this link since dialling began: no on_open
        self._close_code = None
        hello = self.greeting()
        waiting, self._outbox = self._outbox, collections.deque()
        for frame in (hello, *waiting):
            self._write(frame)
        if self.reading_paused:
            transport.underlying_transport.pause_reading()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            self._close_code = int(frame.get_close_code())
        PicowsLink.on_ws_frame(self, transport, frame)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.transport = None  # not the node's on_close: the link lives on, dialling again
        self.resume_reading("writing")  # a slow hub's write backlog went with its connection

    # -- PeerLink
    def _write(self, frame: bytes) -> None:
        if self.connected:
            PicowsLink._write(self, frame)
        else:
            self._outbox.append(frame)

    def _flush_pending(self) -> None:
        frames, self._pending = self._pending, []
        if not self.connected or self.transport.is_close_frame_sent:
            self._outbox.extend(frames)  # for the next connection
            return
        # A client masks its frames (RFC 6455 5.3) with fresh unpredictable keys; framing
        # them here lets a turn's frames leave in one vectored write, as on the server side.
        keys = os.urandom(4 * len(frames))
        parts = []
        for i, frame in enumerate(frames):
            key = keys[4 * i:4 * i + 4]
            parts += (text_header(len(frame), masked=True), key, apply_mask(frame, key))
        self.transport.underlying_transport.writelines(parts)

    def _pause(self) -> None:
        if self.connected:
            self.transport.underlying_transport.pause_reading()

    def _resume(self) -> None:
        if self.connected:
            self.transport.underlying_transport.resume_reading()

    def ping(self) -> None:
        if self.connected:
            self.transport.send_ping()

    def close(self, code: int, reason: str) -> None:
        if code == 1001:
            self.final = True
        PicowsLink.close(self, code, reason)

    async def flush(self, timeout_s: float) -> None:
        if self.connected:
            await PicowsLink.flush(self, timeout_s)

    # -- one connection (pfnode/app/dialout.py's dial loop)
    async def connect(self) -> None:
        try:
            transport, _ = await ws_connect(lambda: self, self.url, websocket_handshake_timeout=OPEN_TIMEOUT_S,
                                            max_frame_size=hard_frame_limit(self.node.settings.max_frame_bytes),
                                            enable_auto_ping=False, enable_auto_pong=True,
                                            ssl_context=uplink_ssl(self.node.settings, self.url),
                                            extra_headers=self._headers)
        except WSError as exc:  # a refused or broken handshake
            raise ConnectionError(str(exc)) from exc
        self._next = transport

    async def run_connection(self) -> int | None:
        await self._next.wait_disconnected()
        return self._close_code


UplinkLink = PicowsUplinkLink  # the registry's name for the dial-out link (transports/__init__.py)
