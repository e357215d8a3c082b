"""The WebSocket layer on the `websockets` library (pure Python, the reference transport)."""
from __future__ import annotations

import asyncio
import collections
import time
import weakref
from typing import Callable

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve as ws_serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.http11 import Request, Response

from ..ops.logs import redact_url
from .base import OPEN_TIMEOUT_S, NodeInterface, PeerLink, bearer, hard_frame_limit, server_tls_options, uplink_ssl


class WebsocketsLink(PeerLink):
    """A link over a websockets connection: a server's (here) or a client's (the dial-out
    uplink, below)."""

    def __init__(self, node: NodeInterface, ws: ServerConnection | None, peer: str | None = None) -> None:
        if peer is None:
            address = ws.remote_address if ws is not None else None
            peer = "%s:%s" % address[:2] if address else "?"
        super().__init__(node, peer)
        self.ws = ws
        self._outgoing: collections.deque[bytes] = collections.deque()
        self._outgoing_bytes = 0
        self._wake = asyncio.Event()
        self._readable = asyncio.Event()
        self._readable.set()

    def _write(self, frame: bytes) -> None:
        self._outgoing.append(frame)
        self._outgoing_bytes += len(frame)
        self._wake.set()
        s = self.node.settings
        if self._outgoing_bytes > s.write_buffer_high_bytes and self.connected:
            if self._outgoing_bytes > s.max_write_buffer_bytes:
                self.close(1008, "not reading its results")
            else:
                self.pause_reading("writing")  # a slow reader: take no new work from it

    def _pause(self) -> None:
        self._readable.clear()

    def _resume(self) -> None:
        self._readable.set()

    def close(self, code: int, reason: str) -> None:
        if self.ws is not None:
            asyncio.ensure_future(self._close(self.ws, code, reason))

    async def _close(self, ws, code: int, reason: str) -> None:
        await self.flush(1.0)  # what was sent before the close goes before it
        await ws.close(code, reason)

    def abort(self) -> None:
        if self.ws is not None and self.ws.transport is not None:
            self.ws.transport.abort()

    def socket_fileno(self) -> int | None:
        if self.ws is None or self.ws.transport is None:
            return None
        sock = self.ws.transport.get_extra_info("socket")
        return sock.fileno() if sock is not None else None

    async def flush(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while self._outgoing and self.ws is not None and time.monotonic() < deadline:
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
                    # only once written: an uplink sends the rest on its next connection
                    self._outgoing_bytes -= len(out.popleft())
                    if self._outgoing_bytes <= self.node.settings.write_buffer_high_bytes // 2:
                        self.resume_reading("writing")
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
        while True:
            # undecoded: a text frame's UTF-8 is checked by the node's decoder, so that
            # both transports answer an invalid one the same way (PF400, connection open)
            message = await ws.recv(decode=False)
            self.deliver(message)
            if self._pause_reasons:
                await self._paused(ws)

    async def _paused(self, ws) -> None:
        """Wait until reading may go on, or the connection is gone (a paused peer that
        disconnects, or is aborted, must still be noticed)."""
        readable = asyncio.ensure_future(self._readable.wait())
        closed = asyncio.ensure_future(ws.wait_closed())
        try:
            await asyncio.wait((readable, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            readable.cancel()
            closed.cancel()


def connection_options(s) -> dict:
    """What our websockets connections are, serving or dialling out."""
    return dict(
        max_size=hard_frame_limit(s.max_frame_bytes),
        compression=None,  # per-message deflate costs more CPU than it saves on loopback/LAN
        ping_interval=s.heartbeat_interval_ms / 1000,
        ping_timeout=s.heartbeat_interval_ms * s.heartbeat_missed_limit / 1000,
    )


async def serve(node: NodeInterface, ssl_context=None) -> Server:
    s = node.settings
    # connections accepted that are not links yet (a TLS handshake or an upgrade under way):
    # in from their making at accept until their handler starts or they are lost; one whose
    # TLS handshake failed, which websockets never hears of, when it is freed
    fresh: weakref.WeakSet = weakref.WeakSet()

    class Connection(ServerConnection):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            fresh.add(self)

        def connection_lost(self, exc: Exception | None) -> None:
            fresh.discard(self)
            super().connection_lost(exc)

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        peer = connection.remote_address
        others = len(fresh) - (connection in fresh)
        reply = node.http_route(request.path, "websocket" in request.headers.get("Upgrade", "").lower(),
                                request.headers, "%s:%s" % peer[:2] if peer else None, others)
        if reply is None:
            return None
        return Response(reply.status, reply.reason,
                        Headers([("Content-Type", reply.content_type),
                                 ("Content-Length", str(len(reply.body))),
                                 ("Cache-Control", "no-store"), *reply.headers]), reply.body)

    async def handle(ws: ServerConnection) -> None:
        fresh.discard(ws)
        link = WebsocketsLink(node, ws)
        link.request_path, link.request_headers = ws.request.path, ws.request.headers
        node.on_open(link)
        try:
            await link.converse(ws)
        finally:
            node.on_close(link, ws.close_code)

    return await ws_serve(handle, s.host, s.port, process_request=process_request, max_queue=64,
                          create_connection=Connection, **server_tls_options(s, ssl_context),
                          **connection_options(s))


class WebsocketsUplinkLink(WebsocketsLink):
    """The dial-out uplink (pfnode/app/dialout.py) on the websockets library: one link for the
    node's life; `ws` is the connection of the moment (None between two), and frames wait
    in the outgoing queue until written to one. `greeting()` is sent first on each."""

    def __init__(self, node: NodeInterface, url: str, greeting: Callable[[], bytes],
                 token: str | None = None) -> None:
        super().__init__(node, None, peer=redact_url(url))  # the logs show the peer
        self.url = url
        self._headers = bearer(token)
        self.greeting = greeting
        self.final = False  # closed by us for good (shutdown): do not dial again
        self._next = None

    @property
    def connected(self) -> bool:
        return self.ws is not None

    @property
    def waiting(self) -> int:
        return len(self._outgoing)

    def close(self, code: int, reason: str) -> None:
        if code == 1001:
            self.final = True
        super().close(code, reason)

    async def connect(self) -> None:
        try:
            tls = uplink_ssl(self.node.settings, self.url)
            self._next = await connect(self.url, open_timeout=OPEN_TIMEOUT_S, additional_headers=self._headers,
                                       **({"ssl": tls} if tls else {}), **connection_options(self.node.settings))
        except InvalidHandshake as exc:
            raise ConnectionError(str(exc)) from exc

    async def run_connection(self) -> int | None:
        """Serve the hub over the new connection until it closes; returns its close code."""
        ws = self.ws = self._next
        self._outgoing.appendleft(self.greeting())
        self._wake.set()
        try:
            await self.converse(ws)
        finally:
            self.ws = None
        return ws.close_code


UplinkLink = WebsocketsUplinkLink  # the registry's name for the dial-out link (transports/__init__.py)
