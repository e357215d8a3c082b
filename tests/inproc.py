"""A node in the test's own process: real workers, no sockets.

`RecordingLink` is a PeerLink whose frames land in a list; `started_node` runs a
`pfnode.node.Node` (with its real worker processes) for the body of an `async with`.
Use it where a test is about the node's rules and not about the transport.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from pfnode.transports.base import PeerLink
from pfnode.node.node import Node
from pfnode.settings import Settings


class RecordingLink(PeerLink):
    def __init__(self, node: Node, peer: str = "test") -> None:
        super().__init__(node, peer)
        self.frames: list[dict] = []
        self._arrived = asyncio.Event()
        self.paused = False

    def _write(self, frame: bytes) -> None:
        self.frames.append(orjson.loads(frame))
        self._arrived.set()

    def _pause(self) -> None:
        self.paused = True

    def _resume(self) -> None:
        self.paused = False

    def close(self, code: int, reason: str) -> None:
        self.node.on_close(self, code)

    async def flush(self, timeout_s: float) -> None:
        return None

    def submit(self, seq: int, packet: dict) -> None:
        self.deliver(orjson.dumps({"type": "submit", "seq": seq, "payload": {"version": "1.0", **packet}}))

    async def reply(self, seq: int, timeout_s: float = 10.0) -> dict:
        """The frame answering `seq` (waits for it)."""
        async def find() -> dict:
            while True:
                for frame in self.frames:
                    if frame.get("seq") == seq and frame.get("type") in ("result", "error"):
                        return frame
                self._arrived.clear()
                await self._arrived.wait()
        return await asyncio.wait_for(find(), timeout_s)


@contextlib.asynccontextmanager
async def started_node(**settings: Any):
    node = Node(Settings(**{"workers": 1, "ed_workers": 0, "rm_workers": 0,
                            "handler_modules": ("pfnode.handlers.examples",), **settings}))
    await node.start()
    try:
        yield node
    finally:
        await node.shutdown()
