"""The WebSocket layer on the `websockets` library (pure Python, the reference transport)."""
from __future__ import annotations

import asyncio
import collections
import time

from websockets.asyncio.server import Server, ServerConnection, serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from .front import Node, PeerLink, hard_frame_limit


class WebsocketsLink(PeerLink):
    """A link over a websockets connection: a server's (here) or a client's (the dial-out
    uplink, pfnode/dialout.py, which subclasses it)."""

    def __init__(self, node: Node, ws: ServerConnection | None, peer: str | None = None) -> None:
        if peer is None:
            address = ws.remote_address if ws is not None else None
            peer = "%s:%s" % address[:2] if address else "?"
        super().__init__(node, peer)
        self.ws = ws
        self._outgoing: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._readable = asyncio.Event()
        self._readable.set()

    def _write(self, frame: bytes) -> None:
        self._outgoing.append(frame)
        self._wake.set()

    def _pause(self) -> None:
        self._readable.clear()

    def _resume(self) -> None:
        self._readable.set()

    def close(self, code: int, reason: str) -> None:
        asyncio.ensure_future(self.ws.close(code, reason))

    async def flush(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._outgoing and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def write_loop(self, ws) -> None:
        # One writer per link: results never wait for each other's send().
        out = self._outgoing
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while out:
                    await ws.send(out[0], text=True)
                    out.popleft()  # only once written: an uplink sends the rest on its next connection
        except ConnectionClosed:
            pass

    async def converse(self, ws) -> None:
        """Read from and write to `ws` until it closes."""
        writer = asyncio.ensure_future(self.write_loop(ws))
        try:
            await self.read_loop(ws)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()

    async def read_loop(self, ws) -> None:
        async for message in ws:
            self.deliver(message)
            if self.reading_paused:
                await self._readable.wait()


def connection_options(s) -> dict:
    """What our websockets connections are, serving or dialling out (pfnode/dialout.py)."""
    return dict(
        max_size=hard_frame_limit(s),
        compression=None,  # per-message deflate costs more CPU than it saves on loopback/LAN
        ping_interval=s.heartbeat_interval_ms / 1000,
        ping_timeout=s.heartbeat_interval_ms * s.heartbeat_missed_limit / 1000,
    )


async def serve(node: Node) -> Server:
    s = node.settings

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        reply = node.http_route(request.path, "websocket" in request.headers.get("Upgrade", "").lower())
        if reply is None:
            return None
        return Response(reply.status, reply.reason,
                        Headers([("Content-Type", reply.content_type),
                                 ("Content-Length", str(len(reply.body))),
                                 ("Cache-Control", "no-store")]), reply.body)

    async def handle(ws: ServerConnection) -> None:
        link = WebsocketsLink(node, ws)
        node.on_open(link)
        try:
            await link.converse(ws)
        finally:
            node.on_close(link, ws.close_code)

    return await ws_serve(handle, s.host, s.port, process_request=process_request, max_queue=64,
                          **connection_options(s))
