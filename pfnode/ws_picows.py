"""The WebSocket layer on picows (a Cython WebSocket implementation).

picows calls back per frame, in the event loop's data_received, without a task per
connection or per message; sends are plain transport writes. Complete messages are
handed to the node through `PeerLink.deliver`, which keeps the in-flight limit exact
although picows may parse several frames from one read.
"""
from __future__ import annotations

import asyncio
import time

from picows import (WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest,
                    WSUpgradeResponse, WSUpgradeResponseWithListener, ws_create_server)

from .front import Node, PeerLink, hard_frame_limit

_TEXT, _BINARY, _CONTINUATION = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION


def text_header(size: int) -> bytes:
    """The header of one unmasked, unfragmented WebSocket text frame of `size` payload
    bytes (RFC 6455 section 5.2); the payload follows it as it is."""
    if size < 126:
        return bytes((0x81, size))
    if size < 65536:
        return b"\x81\x7e" + size.to_bytes(2, "big")
    return b"\x81\x7f" + size.to_bytes(8, "big")


class PicowsLink(PeerLink, WSListener):
    def __init__(self, node: Node) -> None:
        PeerLink.__init__(self, node, "?")
        self.transport: WSTransport | None = None
        self._parts: list[bytes] | None = None  # a fragmented message being assembled
        self._parts_size = 0
        self._limit = hard_frame_limit(node.settings)
        self._pending: list[bytes] = []  # frames to send at the end of this loop turn

    # -- picows callbacks
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        address = transport.underlying_transport.get_extra_info("peername")
        self.peer = "%s:%s" % address[:2] if address else "?"
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
        self.node.on_close(self, None)

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
        self.transport.underlying_transport.writelines(parts)

    def _pause(self) -> None:
        self.transport.underlying_transport.pause_reading()

    def _resume(self) -> None:
        self.transport.underlying_transport.resume_reading()

    def ping(self) -> None:
        self.transport.send_ping()

    def close(self, code: int, reason: str) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.send_close(WSCloseCode(code), reason.encode())
            self.transport.disconnect(graceful=True)

    async def flush(self, timeout_s: float) -> None:
        self._flush_pending()
        deadline = time.monotonic() + timeout_s
        underlying = self.transport.underlying_transport
        while underlying.get_write_buffer_size() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


async def serve(node: Node) -> asyncio.Server:
    s = node.settings

    def route(request: WSUpgradeRequest):
        path = request.path.decode() if isinstance(request.path, bytes) else request.path
        reply = node.http_route(path, "websocket" in request.headers.get("Upgrade", "").lower())
        if reply is None:
            return PicowsLink(node)
        headers = {"Content-Type": reply.content_type, "Cache-Control": "no-store"}
        if reply.status == 200:
            response = WSUpgradeResponse.create_ok_response(reply.body, headers)
        else:
            response = WSUpgradeResponse.create_error_response(reply.status, reply.body, headers)
        return WSUpgradeResponseWithListener(response, None)

    return await ws_create_server(
        route, s.host, s.port,
        max_frame_size=hard_frame_limit(s),
        # picows' own auto-ping breaks its plain-HTTP answers (/healthz); the node's
        # heartbeat loop sends the WebSocket pings instead (see PicowsLink.ping)
        enable_auto_ping=False,
        enable_auto_pong=True,
    )
