"""Small helpers shared by the end-to-end tests (test_e2e, test_faults, test_cli).

Everything here talks to a real node over real sockets: a raw WebSocket client that
sends exactly the bytes a test gives it, packet/frame builders, a plain HTTP GET, and
`run()` to drive a coroutine from a synchronous pytest test (no pytest-asyncio).
"""
from __future__ import annotations

import asyncio
import http.client
import time
import urllib.parse
import uuid
from typing import Any, Callable

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

SPEC_ID = "550e8400-e29b-41d4-a716-446655440000"


def run(coro, timeout_s: float = 30.0):
    """Run a coroutine to completion in a fresh event loop, with an overall time limit."""
    async def bounded():
        return await asyncio.wait_for(coro, timeout_s)
    return asyncio.run(bounded())


def new_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4()}"


def packet(element: str = "noop", data: Any = None, *, group: str = "df", priority: Any = 5,
           id: str | None = None, **extra: Any) -> dict:
    """A packet as the spec's minimal wire format, plus any extra fields."""
    return {"version": "1.0", "id": id or new_id(), "group": group, "element": element,
            "data": data, "priority": priority, **extra}


def frame(mtype: str, seq: Any, payload: Any) -> str:
    return orjson.dumps({"type": mtype, "seq": seq, "payload": payload}).decode()


def submit_frame(seq: int, pkt: dict) -> str:
    return frame("submit", seq, pkt)


class Raw:
    """A bare WebSocket client: sends the text it is given and reads frames back as dicts.

    The node's own heartbeats (seq counted by the node) are kept apart in `node_heartbeats`
    unless a test asks for heartbeats explicitly."""

    def __init__(self, endpoint: str, token: str | None = None, **connect_kwargs: Any) -> None:
        self.endpoint = with_token(endpoint, token)
        self.connect_kwargs = connect_kwargs
        self.ws: ClientConnection | None = None
        self.node_heartbeats: list[dict] = []

    async def __aenter__(self) -> "Raw":
        self.ws = await connect(self.endpoint, compression=None, max_size=None, **self.connect_kwargs)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.ws is not None
        await self.ws.close()

    async def send(self, text: str | bytes) -> None:
        assert self.ws is not None
        await self.ws.send(text)

    async def submit(self, seq: int, pkt: dict) -> None:
        await self.send(submit_frame(seq, pkt))

    async def recv(self, timeout_s: float = 10.0, *, heartbeats: bool = False) -> dict:
        """The next frame (skipping the node's unsolicited heartbeats unless `heartbeats`)."""
        assert self.ws is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError(f"no frame within {timeout_s} s")
            text = await asyncio.wait_for(self.ws.recv(), left)
            msg = orjson.loads(text)
            if msg.get("type") == "heartbeat" and not heartbeats:
                self.node_heartbeats.append(msg)
                continue
            return msg

    async def recv_n(self, n: int, timeout_s: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        return [await self.recv(max(0.01, deadline - time.monotonic())) for _ in range(n)]

    async def recv_until_closed(self, timeout_s: float = 20.0) -> list[dict]:
        """Every frame until the node closes the connection."""
        frames = []
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                frames.append(await self.recv(max(0.01, deadline - time.monotonic())))
        except ConnectionClosed:
            return frames

    async def roundtrip(self, element: str = "noop", data: Any = None, seq: int = 999_001,
                        timeout_s: float = 10.0) -> dict:
        """Submit one packet and return its reply: proves the connection still works."""
        pkt = packet(element, data)
        await self.submit(seq, pkt)
        reply = await self.recv(timeout_s)
        assert reply["seq"] == seq, reply
        assert reply["payload"]["packet_id"] == pkt["id"], reply
        return reply

    @property
    def close_code(self) -> int | None:
        assert self.ws is not None
        return self.ws.close_code


def with_token(endpoint: str, token: str | None) -> str:
    """The endpoint URL carrying a token (`?token=`), as a spec reactor presents one."""
    if token is None:
        return endpoint
    return f"{endpoint}{'&' if '?' in endpoint else '?'}token={urllib.parse.quote(token)}"


def http_get(base: str, path: str, timeout_s: float = 5.0) -> tuple[int, dict, bytes]:
    """GET base+path; return (status, lower-cased headers, body) whatever the status."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def wait_until(predicate: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.05,
               what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"{what} not reached within {timeout_s} s (last value: {last!r})")
