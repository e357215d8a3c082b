"""The servers the benchmark runs beside the nodes, each in its own child process
(`Processes.start_server`): two bare echo servers, the baselines of the node's transport cost,
and a Python Reactor for the hub relay. Each answers ("ok", value) on its pipe once it serves.
"""
from __future__ import annotations

import os

from bench.common import run_loop


def websockets_echo_server(conn) -> None:
    """A bare `websockets` echo server (uvloop when importable, no compression): every message
    goes back as it came, unparsed. Answers ("ok", port); runs until killed."""
    import asyncio

    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    async def echo(ws) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:  # a client that failed and dropped the link
            pass

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, compression=None, max_queue=64, max_size=None) as server:
            conn.send(("ok", server.sockets[0].getsockname()[1]))
            await asyncio.Future()

    run_loop(main)


def picows_echo_server(conn) -> None:
    """A bare picows echo server, the transport's own cost: per text frame `orjson.loads`, then
    `orjson.dumps` of the decoded object, sent back (the same bytes, for orjson's own frames).
    Answers ("ok", port); runs until killed."""
    import asyncio

    import orjson
    from picows import WSListener, WSMsgType, ws_create_server

    loads, dumps, text, close = orjson.loads, orjson.dumps, WSMsgType.TEXT, WSMsgType.CLOSE

    class Echo(WSListener):
        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type is text:
                transport.send(text, dumps(loads(frame.get_payload_as_memoryview())))
            elif frame.msg_type is close:
                transport.send_close(frame.get_close_code())
                transport.disconnect()

    async def main() -> None:
        server = await ws_create_server(lambda request: Echo(), "127.0.0.1", 0,
                                        max_frame_size=64 * 1024 * 1024, enable_auto_ping=False,
                                        enable_auto_pong=True)
        conn.send(("ok", server.sockets[0].getsockname()[1]))
        await asyncio.Future()

    run_loop(main)


def python_reactor(conn, endpoint: str) -> None:
    """A pfnode.client.Reactor connected to `endpoint` that runs df:noop and announces it.
    Answers ("ok", pid) once started; on "stop" (or the parent gone) stops and answers
    ("ok", {"answered": n, "duplicates": d})."""
    import asyncio

    from pfnode.client import Reactor

    seen: set[str] = set()
    counts = {"answered": 0, "duplicates": 0}

    async def noop(data, ctx):
        counts["answered"] += 1
        if ctx.packet_id in seen:
            counts["duplicates"] += 1
        seen.add(ctx.packet_id)
        return data

    async def main() -> None:
        reactor = Reactor(endpoint)
        reactor.register("df", "noop", noop)  # registered before start: announced at start
        await reactor.start()
        conn.send(("ok", os.getpid()))
        try:
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
        except EOFError:  # the parent went away
            return
        finally:
            await reactor.stop()
        conn.send(("ok", counts))

    run_loop(main)
