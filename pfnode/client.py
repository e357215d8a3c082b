"""The Python reactor: the spec's reactor API over one WebSocket link.

    async with Reactor("ws://127.0.0.1:8443/packetflow/v1") as reactor:
        result = await reactor.submit("df", "transform", "hello world")
        print(result.data)  # "HELLO WORLD"

`submit` returns a `Result` whatever its status (check `result.ok`); an `error`
frame from the node (the message itself was refused) raises `RemoteError`. Many
submits may be in flight at once on one link. `register` lets the reactor answer
`submit` frames the endpoint sends it; the reactor tells the endpoint what it runs
with a `capabilities` list in a heartbeat (pfnode's extension, which spec endpoints
ignore; docs/PROTOCOL.md, "Hub routing"), so a pfnode hub routes those packets here
and does not ask it for others. `announce=False` keeps it to the spec.

numpy arrays travel as `$ndarray` objects when a packet opts in (docs/PROTOCOL.md, "numpy
payloads"): `submit(..., ndarray=True)` does it all, or use pfnode.ndarray's encode_array /
decode_tree with `metadata={"ndarray": True}` by hand.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import ssl as ssl_module
import itertools
import logging
import time
import uuid
from typing import Any, Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .core import protocol
from .errors import ConnectionLost, ErrorCode, PFNodeError, RemoteError, ReplyTimeout
from .core.protocol import Packet, Result
from .registry import Registry

log = logging.getLogger("pfnode.client")

DEFAULT_TIMEOUT_MS = 30_000
REPLY_SLACK_S = 5.0  # how long past a packet's own deadline we still wait for the node's PF408


class Reactor:
    def __init__(self, endpoint: str, *, heartbeat_interval_ms: int = 30_000,
                 max_frame_bytes: int | None = 64 * 1024 * 1024, open_timeout_s: float = 10.0,
                 announce: bool = True, token: str | None = None, ca_file: str | None = None,
                 ssl: "ssl_module.SSLContext | None" = None) -> None:
        """`token`: sent as `Authorization: Bearer <token>` (or put `?token=` in the
        endpoint); for `wss://`, the server is verified with `ssl`, else with `ca_file`,
        else with the system's trust store."""
        self.endpoint = endpoint
        self.token = token
        self.ssl = ssl
        if self.ssl is None and ca_file is not None:
            from .transports.tls import client_context

            self.ssl = client_context(ca_file)
        self.announce = announce
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_frame_bytes = max_frame_bytes
        self.open_timeout_s = open_timeout_s
        self.registry = Registry()
        self._ws: ClientConnection | None = None
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}  # seq -> reply to a submit
        self._heartbeats: dict[int, asyncio.Future] = {}  # seq -> reply to our heartbeat
        self._by_packet_id: dict[str, int] = {}  # for peers that answer with seq 0
        self._tasks: set[asyncio.Task] = set()
        self.last_heartbeat: dict | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> "Reactor":
        options: dict[str, Any] = {}
        if self.token is not None:
            options["additional_headers"] = {"Authorization": f"Bearer {self.token}"}
        if self.ssl is not None and self.endpoint.startswith("wss:"):
            options["ssl"] = self.ssl
        try:
            self._ws = await connect(self.endpoint, max_size=self.max_frame_bytes, compression=None,
                                     open_timeout=self.open_timeout_s, **options)
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectionLost(f"cannot connect to {self.endpoint}: {exc}") from exc
        except Exception as exc:  # websockets' handshake errors (InvalidStatus, InvalidURI, ...)
            raise ConnectionLost(f"cannot connect to {self.endpoint}: {exc}") from exc
        self._spawn(self._read_loop())
        self._spawn(self._heartbeat_loop())
        if self.announce:
            await self._send(self._heartbeat_frame())
        return self

    async def stop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        for task in list(self._tasks):
            task.cancel()
        self._fail_pending(ConnectionLost("reactor stopped"))

    async def __aenter__(self) -> "Reactor":
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ API
    def register(self, group: str, element: str, fn: Callable[..., Any]) -> None:
        """Answer packets for group:element sent to this reactor. `fn(data)` or
        `fn(data, ctx)`, plain or async; plain functions run in a thread. Registering
        on a started reactor announces the new list; await `announce_capabilities()` to
        be sure the endpoint has it before submitting."""
        self.registry.register(group, element, fn)
        if self._ws is not None and self.announce:
            self._spawn(self.announce_capabilities())

    async def announce_capabilities(self) -> None:
        await self._send(self._heartbeat_frame())

    def _heartbeat_frame(self) -> bytes:
        payload: dict[str, Any] = {"timestamp": int(time.time() * 1000)}
        if self.announce:
            payload["capabilities"] = self.registry.keys()
        return protocol.encode_heartbeat(next(self._seq), payload)

    async def submit(self, group: str, element: str, data: Any = None, priority: int = 5,
                     timeout_ms: int | None = None, dependencies: list[str] | None = None,
                     metadata: dict | None = None, packet_id: str | None = None,
                     ndarray: bool = False) -> Result:
        """Send one packet and wait for its result. `ndarray=True` sends the numpy arrays in
        `data` as `$ndarray` objects, sets `"ndarray": true` in the metadata, and decodes the
        arrays in a success result's data (pfnode.ndarray; docs/PROTOCOL.md)."""
        if ndarray:
            from . import ndarray as nd  # numpy only for callers that use it

            data = nd.encode_tree(data)
            metadata = {**(metadata or {}), nd.OPT_IN_KEY: True}
        packet = Packet(id=packet_id or str(uuid.uuid4()), group=group, element=element, data=data,
                        priority=priority, timeout_ms=timeout_ms,
                        dependencies=tuple(dependencies) if dependencies is not None else None,
                        metadata=metadata)
        wait_s = (timeout_ms or DEFAULT_TIMEOUT_MS) / 1000 + REPLY_SLACK_S
        result = await self._request(packet, wait_s)
        if ndarray and result.ok:
            result = dataclasses.replace(result, data=nd.decode_tree(result.data))
        return result

    async def heartbeat(self, timeout_s: float = 10.0) -> dict:
        """Send a heartbeat and return the node's answer (its status)."""
        seq = next(self._seq)
        future = asyncio.get_running_loop().create_future()
        self._heartbeats[seq] = future
        try:
            await self._send(protocol.encode_heartbeat(seq, {"timestamp": int(time.time() * 1000)}))
            return await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            raise ReplyTimeout(f"no heartbeat reply to seq {seq} within {timeout_s:.1f} s") from None
        finally:
            self._heartbeats.pop(seq, None)

    # ------------------------------------------------------------------ internals
    def _expect(self, seq: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        return future

    async def _request(self, packet: Packet, wait_s: float) -> Result:
        seq = next(self._seq)
        future = self._expect(seq)
        self._by_packet_id[packet.id] = seq
        try:
            await self._send(protocol.encode_submit(seq, packet))
            return await self._wait(seq, future, wait_s)
        finally:
            self._by_packet_id.pop(packet.id, None)

    async def _wait(self, seq: int, future: asyncio.Future, wait_s: float) -> Any:
        try:
            return await asyncio.wait_for(future, wait_s)
        except asyncio.TimeoutError:
            raise ReplyTimeout(f"no reply to seq {seq} within {wait_s:.1f} s") from None
        finally:
            self._pending.pop(seq, None)

    async def _send(self, frame: bytes) -> None:
        if self._ws is None:
            raise ConnectionLost("reactor is not started")
        try:
            await self._ws.send(frame, text=True)
        except ConnectionClosed as exc:
            raise ConnectionLost(f"link to {self.endpoint} closed: {exc}") from exc

    def _fail_pending(self, exc: PFNodeError) -> None:
        pending, self._pending = self._pending, {}
        heartbeats, self._heartbeats = self._heartbeats, {}
        for future in (*pending.values(), *heartbeats.values()):
            if not future.done():
                future.set_exception(exc)

    async def _read_loop(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            async for frame in ws:
                msg = protocol.decode(frame)
                if isinstance(msg, protocol.Rejected):
                    log.warning("reactor: bad frame from %s: %s", self.endpoint, msg.message)
                elif msg.type == "result":
                    self._on_result(msg.seq, msg.payload)
                elif msg.type == "error":
                    future = self._pending.get(msg.seq)
                    if future is not None and not future.done():
                        payload = msg.payload
                        future.set_exception(RemoteError(str(payload.get("code", "PF400")),
                                                         str(payload.get("message", ""))))
                elif msg.type == "heartbeat":
                    # the node's own heartbeats carry the node's seq numbers, which may
                    # equal one of ours: only a heartbeat we asked for answers a waiter
                    self.last_heartbeat = msg.payload
                    future = self._heartbeats.get(msg.seq)
                    if future is not None and not future.done():
                        future.set_result(msg.payload)
                elif msg.type == "submit":
                    self._spawn(self._answer(msg.seq, msg.payload))
        except ConnectionClosed:
            pass
        finally:
            self._fail_pending(ConnectionLost(f"link to {self.endpoint} closed"))

    def _on_result(self, seq: int, result: Result) -> None:
        if seq == 0:  # spec reactors answer with seq 0: correlate by packet id
            seq = self._by_packet_id.get(result.packet_id, 0)
        future = self._pending.get(seq)
        if future is not None and not future.done():
            future.set_result(result)

    async def _answer(self, seq: int, packet: Packet) -> None:
        spec = self.registry.get(packet.key)
        if spec is None:
            frame = protocol.encode_failure(seq, packet.id, ErrorCode.NO_HANDLER, f"No handler for {packet.key}")
        else:
            from .registry import Context

            deadline = time.monotonic() + (packet.timeout_ms or DEFAULT_TIMEOUT_MS) / 1000
            ctx = Context(packet.id, packet.group, packet.element, packet.priority, packet.metadata, deadline)
            start = time.perf_counter()
            try:
                if inspect.iscoroutinefunction(spec.fn):
                    value = await spec(packet.data, ctx)
                else:
                    value = await asyncio.to_thread(spec, packet.data, ctx)
                body = protocol.encode_json(value)
            except Exception as exc:
                frame = protocol.encode_failure(seq, packet.id, ErrorCode.HANDLER_FAILED,
                                                f"{type(exc).__name__}: {exc}",
                                                (time.perf_counter() - start) * 1000)
            else:
                frame = protocol.encode_success_raw(seq, packet.id, body, (time.perf_counter() - start) * 1000)
        try:
            await self._send(frame)
        except ConnectionLost:
            log.warning("reactor: link closed before the result of %s could be sent", packet.id)

    async def _heartbeat_loop(self) -> None:
        interval = self.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                await self._send(self._heartbeat_frame())
            except ConnectionLost:
                return
