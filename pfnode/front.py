"""The asyncio front process: WebSocket links in, pool work out, results back.

It owns the links and the timers and nothing else: frames are decoded by the
sans-I/O `protocol` module, packets run in the `pool`. The WebSocket layer is a
small interface (`PeerLink` plus a `serve` function per transport, see
`pfnode/ws_websockets.py` and `pfnode/ws_picows.py`): a transport hands the node
each complete text/binary message and carries out `send`, `pause_reading`,
`resume_reading` and `close`; every protocol rule lives here, so the transports
behave identically.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import importlib
import logging
import signal
import time
from typing import Any

import orjson

from . import admin, protocol
from .capacity import autoscale_step, read_capacity, recommend
from .errors import ConfigError, ErrorCode, HandlerError
from .hub import Forward, Hub, ReactorProfile
from .pool import Outcome, Pool, Task
from .scheduler import DONE, Refusal
from .settings import Settings

log = logging.getLogger("pfnode.front")

HEARTBEAT_TIMEOUT_CLOSE_CODE = 4408  # a private-use close code: "peer silent too long"
TRANSPORTS = {"websockets": "pfnode.ws_websockets", "picows": "pfnode.ws_picows"}


def hard_frame_limit(settings: Settings) -> int:
    """Frames up to this size are read and, past max_frame_bytes, answered PF413; larger
    ones cannot be read without unbounded memory, so the connection closes with 1009."""
    return max(2 * settings.max_frame_bytes, settings.max_frame_bytes + (1 << 20))


@dataclasses.dataclass(frozen=True)
class HttpReply:
    """A plain HTTP answer instead of a WebSocket upgrade."""

    status: int
    reason: str
    content_type: str
    body: bytes


class PeerLink:
    """One connected peer: its in-flight packets and its liveness. A transport subclasses
    it and implements `_write`, `_pause`, `_resume`, `close` and `flush`."""

    # True for this node's own link to a hub (`pfnode connect`): packets from it are never
    # forwarded on, and the hub routing never sends it packets (no loops between nodes).
    uplink = False

    def __init__(self, node: "Node", peer: str) -> None:
        self.node = node
        self.peer = peer
        self.inflight: dict[str, Task | Forward] = {}  # this peer's packets, by id
        # this peer as a reactor (hub routing): what it runs, and what it runs for others now
        self.reactor = ReactorProfile()
        self.forwarded: dict[str, Forward] = {}
        self.forward_seqs: dict[int, str] = {}  # seq of our submit frame -> packet id
        self.out_seq = 0
        self.looped = 0  # its own packets the hub sent back to it (see `awaiting`)
        self.last_seen = time.monotonic()
        self.heartbeat_seq = 0
        self._pause_reasons: set[str] = set()  # "inflight" (its limit), "writing" (slow reader)
        self.closed = False
        self._backlog: collections.deque[bytes | str] = collections.deque()
        self._heartbeat: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        """Whether frames sent now go out (an uplink between connections holds them)."""
        return not self.closed

    # -- called by the node
    def send(self, frame: bytes) -> None:
        if not self.closed:
            self._write(frame)

    @property
    def awaiting(self) -> int:
        """Its packets that count against its in-flight limit: not those it runs itself
        (hub routing sent them back to it), whose answers can only come if we read on."""
        return len(self.inflight) - self.looped

    @property
    def reading_paused(self) -> bool:
        return bool(self._pause_reasons)

    def pause_reading(self, reason: str = "inflight") -> None:
        if not self._pause_reasons:
            self._pause()
        self._pause_reasons.add(reason)

    def resume_reading(self, reason: str = "inflight") -> None:
        """Read again once no reason to pause is left; messages that arrived while paused
        are handled first, in order."""
        if reason not in self._pause_reasons:
            return
        self._pause_reasons.discard(reason)
        while self._backlog and not self._pause_reasons and not self.closed:
            self.node.on_message(self, self._backlog.popleft())
        if not self._pause_reasons:
            self._resume()

    # -- called by the transport
    def deliver(self, message: bytes | str) -> None:
        """One complete message from the peer. A transport that reads ahead while paused
        keeps order through the backlog, so the in-flight limit holds exactly."""
        if self.reading_paused or self._backlog:
            self._backlog.append(message)
        else:
            self.node.on_message(self, message)

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

    async def flush(self, timeout_s: float) -> None:
        raise NotImplementedError


class Node:
    def __init__(self, settings: Settings, pool: Pool | None = None) -> None:
        self.settings = settings
        self.pool = pool or Pool(settings)
        self.links: set[PeerLink] = set()
        self.draining = False
        self.ready = False
        self.server: Any = None  # the transport's server: .sockets, .close(), .wait_closed()
        self.stopping = asyncio.Event()
        self._jobs: set[asyncio.Task] = set()
        self.counters: collections.Counter[str] = collections.Counter()
        self.started_at = time.time()
        self.hub = Hub(self)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, listen: bool = True) -> None:
        """Start the workers and, with `listen`, the WebSocket endpoint (a dial-out node,
        `pfnode connect`, only has its uplink)."""
        try:
            transport = importlib.import_module(TRANSPORTS[self.settings.transport])
        except ImportError as exc:
            raise ConfigError(f"transport {self.settings.transport!r} is not available: {exc}") from exc
        await self.pool.start()
        try:
            if listen:
                self.server = await transport.serve(self)
        except BaseException:
            await self.pool.close(grace_s=0)
            raise
        self.ready = True
        shadowed = sorted(admin.BUILTIN_KEYS & self.pool.handler_keys)
        if shadowed:
            log.warning("front: handlers %s are shadowed by the node's built-ins", ", ".join(shadowed))
        if self.settings.autoscale:
            self._background(self._autoscale_loop())
        log.info("front: %s with lanes %s; handlers: %s",
                 f"serving {self.endpoint}" if listen else "started without a listening endpoint",
                 ", ".join(f"{k}={v}" for k, v in self.pool.lane_sizes().items()),
                 ", ".join(sorted(self.pool.handler_keys | admin.BUILTIN_KEYS)))

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    @property
    def endpoint(self) -> str:
        return f"ws://{self.settings.host}:{self.port}{self.settings.path}"

    async def run_until_stopped(self, connect_url: str | None = None) -> None:
        """Serve until SIGTERM/SIGINT (or `stopping` is set), then drain and stop. With
        `connect_url`, listen nowhere: be a reactor of the hub there (pfnode/dialout.py)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)  # handlers only enqueue
        dialer: asyncio.Task | None = None
        try:
            await self.start(listen=connect_url is None)
            if connect_url is not None:
                from .dialout import dial

                dialer = asyncio.ensure_future(dial(self, connect_url))
                dialer.add_done_callback(lambda _: self.stopping.set())
            await self.stopping.wait()
        finally:
            await self.shutdown()
            if dialer is not None:
                await asyncio.wait_for(dialer, 5.0)

    async def shutdown(self) -> None:
        """Stop accepting, let in-flight packets finish for shutdown_grace_ms, answer the
        rest PF503, close every link, stop the workers."""
        if self.draining:
            return
        self.draining = True
        self.ready = False
        grace = self.settings.shutdown_grace_ms / 1000
        # The listening socket stays open while draining, so that /healthz can say so;
        # new WebSocket handshakes are refused with 503 (see http_route).
        log.info("front: draining %d in-flight packets (grace %.1f s)", self.pool.inflight, grace)
        for link in self.links:
            if link.uplink:  # our hub: send us nothing more
                link.send(self.announcement())
        deadline = time.monotonic() + grace
        while (self.pool.inflight or self._jobs or self.hub.forwards) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for job in list(self._jobs):
            job.cancel()
        self.hub.fail_all(ErrorCode.UNAVAILABLE, "node is shutting down")
        await self.pool.close(grace_s=min(2.0, grace))
        for link in list(self.links):
            await link.flush(1.0)
            link.close(1001, "node shutting down")
        deadline = time.monotonic() + 2.0
        while self.links and time.monotonic() < deadline:  # let the close handshakes finish
            await asyncio.sleep(0.01)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        log.info("front: stopped (%s)", dict(self.pool.counters))

    # ------------------------------------------------------------------ HTTP
    def health(self) -> dict[str, Any]:
        state = "draining" if self.draining else ("ready" if self.ready else "starting")
        return {"status": state, "endpoint": self.settings.path, "connections": len(self.links),
                "uptime_s": round(time.time() - self.started_at, 3),
                "handlers": sorted(self.pool.handler_keys | admin.BUILTIN_KEYS), **self.pool.stats(),
                "hub": self.hub.stats()}

    def heartbeat_payload(self) -> dict[str, Any]:
        stats = self.pool.stats()
        return {"timestamp": int(time.time() * 1000),
                "node": {"status": "draining" if self.draining else "ready",
                         "workers": stats["workers"], "queued": stats["queued"],
                         "inflight": stats["inflight"]}}

    def announcement(self, seq: int = 0) -> bytes:
        """A heartbeat that tells a hub what this node runs (the capabilities extension):
        nothing once draining. The built-ins answer for the node itself: never offered."""
        keys = [] if self.draining else sorted(self.pool.handler_keys)
        return protocol.encode_heartbeat(seq, {**self.heartbeat_payload(), "capabilities": keys})

    def http_route(self, path: str, upgrade: bool = True) -> HttpReply | None:
        """What a transport answers an HTTP request for `path` with, or None to go on
        with the WebSocket upgrade (`upgrade`: the request asked for one)."""
        path = path.partition("?")[0]
        if path == "/healthz":
            body = orjson.dumps(self.health(), option=orjson.OPT_INDENT_2) + b"\n"
            if self.ready:
                return HttpReply(200, "OK", "application/json", body)
            return HttpReply(503, "Service Unavailable", "application/json", body)
        if path != self.settings.path:
            return HttpReply(404, "Not Found", "text/plain; charset=utf-8",
                             f"Not found. The PacketFlow endpoint is {self.settings.path}\n".encode())
        if self.draining:
            return HttpReply(503, "Service Unavailable", "text/plain; charset=utf-8", b"Node shutting down\n")
        if not upgrade:
            return HttpReply(426, "Upgrade Required", "text/plain; charset=utf-8",
                             b"This is a PacketFlow WebSocket endpoint; connect with a WebSocket client.\n")
        return None

    # ------------------------------------------------------------------ links
    @property
    def links_may_come(self) -> bool:
        """Whether a reactor may still connect (hub routing parks packets for one)."""
        return not self.draining

    def on_open(self, link: PeerLink) -> None:
        self.links.add(link)
        self.counters["connections"] += 1
        log.debug("front: %s connected", link.peer)
        link._heartbeat = asyncio.ensure_future(self._heartbeat_loop(link))
        if self.hub.parked:
            self.hub.retry_parked()

    def on_close(self, link: PeerLink, code: int | None) -> None:
        if link.closed:
            return
        link.closed = True
        self.links.discard(link)
        dropped = len(link.inflight)
        for entry in link.inflight.values():
            if isinstance(entry, Forward):
                self.hub.abandon(entry)
            else:
                self.pool.cancel(entry)
        link.inflight.clear()
        self.hub.on_link_closed(link)
        if link._heartbeat is not None:
            link._heartbeat.cancel()
        log.log(logging.INFO if dropped else logging.DEBUG, "front: %s disconnected (%s)%s",
                link.peer, code, f"; dropped {dropped} in-flight packets" if dropped else "")

    def on_message(self, link: PeerLink, frame: bytes | str) -> None:
        s = self.settings
        link.last_seen = time.monotonic()
        msg = protocol.decode(frame, max_frame_bytes=s.max_frame_bytes, max_timeout_ms=s.max_timeout_ms,
                              raw_data=True)
        if isinstance(msg, protocol.Rejected):
            self.counters[f"rejected_{msg.code}"] += 1
            log.debug("front: %s rejected %s: %s", link.peer, msg.code, msg.message)
            link.send(msg.reply)
        elif msg.type == "submit":
            self._submit(link, msg.seq, msg.payload)
            if link.awaiting >= s.max_inflight_per_connection:
                # Backpressure: stop reading this peer until a result frees a slot;
                # TCP flow control then slows the sender.
                link.pause_reading("inflight")
        elif msg.type == "heartbeat":
            if link.uplink:
                # our hub's heartbeat: as a reactor we only note it, as the spec's reactors do;
                # answering would start an endless exchange between two pfnode nodes
                return
            link.send(protocol.encode_heartbeat(msg.seq, self.heartbeat_payload()))
            capabilities = msg.payload.get("capabilities")
            if capabilities is not None:
                if isinstance(capabilities, list) and all(isinstance(c, str) for c in capabilities):
                    self.hub.on_announce(link, capabilities)
                else:
                    log.warning("front: %s announced capabilities that are not a list of strings; "
                                "ignored", link.peer)
        elif msg.type == "result":  # a reactor answers a packet the hub forwarded to it
            self.hub.on_result(link, msg.payload)
        else:
            self.hub.on_error_frame(link, msg.seq, msg.payload)

    async def _heartbeat_loop(self, link: PeerLink) -> None:
        s = self.settings
        interval = s.heartbeat_interval_ms / 1000
        silent_limit = interval * s.heartbeat_missed_limit
        while not link.closed:
            await asyncio.sleep(interval)
            if not link.connected:  # an uplink between connections: nobody to hear or miss
                link.last_seen = time.monotonic()
                continue
            if link.reading_paused:
                # Reads are paused by our own backpressure: the peer's frames wait unread,
                # so its silence is ours. It is judged again once reading resumes.
                link.last_seen = time.monotonic()
            elif time.monotonic() - link.last_seen > silent_limit:
                log.warning("front: %s silent for %.0f s; closing", link.peer, silent_limit)
                link.close(HEARTBEAT_TIMEOUT_CLOSE_CODE, "heartbeat timeout")
                if not link.uplink:
                    return
                link.last_seen = time.monotonic()  # an uplink dials again: judge the next connection
                continue
            link.heartbeat_seq += 1
            if link.uplink:  # a hub learns again what we run, should it have restarted
                link.send(self.announcement(link.heartbeat_seq))
            else:
                link.send(protocol.encode_heartbeat(link.heartbeat_seq, self.heartbeat_payload()))
            link.ping()

    def _submit(self, link: PeerLink, seq: int, packet: protocol.Packet) -> None:
        pid = packet.id
        if link.uplink and link.replay(pid, seq):
            return  # the hub sent it again after a reconnect: it runs (or ran) once
        if self.draining:
            link.send(protocol.encode_failure(seq, pid, ErrorCode.UNAVAILABLE, "node is shutting down"))
            return
        builtin = admin.BUILTINS.get(packet.key)
        if builtin is not None:
            self._background(self._run_builtin(link, seq, packet, builtin))
            return
        if packet.key not in self.pool.handler_keys:
            if self.settings.hub_routing and not link.uplink:
                self.hub.route(link, seq, packet)
            else:
                link.send(protocol.encode_failure(seq, pid, ErrorCode.NO_HANDLER, f"No handler for {packet.key}"))
            return

        def on_done(outcome: Outcome) -> None:
            if outcome.ok:
                frame = protocol.encode_success_raw(seq, pid, outcome.data_json, outcome.duration_ms)
            else:
                frame = protocol.encode_failure(seq, pid, outcome.code, outcome.message, outcome.duration_ms)
            self.settle(link, pid, frame)

        task = self.pool.submit(packet, packet.timeout_ms, on_done)
        if isinstance(task, Refusal):
            link.send(protocol.encode_failure(seq, pid, task.code, task.message))
        elif task.state is not DONE:  # a packet may be answered at once (its dependency failed)
            link.inflight[pid] = task

    def settle(self, link: PeerLink, packet_id: str, frame: bytes) -> None:
        """Answer one of `link`'s packets, and read from it again if it waited for a slot."""
        link.inflight.pop(packet_id, None)
        link.send(frame)
        if link.uplink:
            link.remember(packet_id, frame)
        if link.reading_paused and link.awaiting < self.settings.max_inflight_per_connection:
            link.resume_reading("inflight")

    async def _run_builtin(self, link: PeerLink, seq: int, packet: protocol.Packet, builtin) -> None:
        started = time.perf_counter()
        try:
            value = await builtin(self.pool, orjson.loads(memoryview(packet.data)))
        except HandlerError as exc:
            link.send(protocol.encode_failure(seq, packet.id, exc.code, exc.message,
                                              (time.perf_counter() - started) * 1000))
        else:
            link.send(protocol.encode_success_raw(seq, packet.id, protocol.encode_json(value),
                                                  (time.perf_counter() - started) * 1000))

    def _background(self, coro) -> None:
        job = asyncio.ensure_future(coro)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)

    async def _autoscale_loop(self) -> None:
        """Grow the df lane while work queues behind busy workers; shrink it when idle."""
        s = self.settings
        idle_since = time.monotonic()
        while not self.draining:
            await asyncio.sleep(s.autoscale_interval_ms / 1000)
            stats = self.pool.stats()["lanes"]["df"]
            if stats["running"] or stats["queued"]:
                idle_since = time.monotonic()
            cap = read_capacity(self.pool.worker_pids())
            advice = recommend(cap, rm_memory_limit_mb=s.rm_memory_limit_mb,
                               current=self.pool.lane_sizes(), df_max_workers=s.df_max_workers)
            busy = stats["busy"]
            size = self.pool.lane_size("df")
            step = autoscale_step(size=size, queued=stats["queued"], busy=busy,
                                  idle_s=time.monotonic() - idle_since, prefetch=s.worker_prefetch,
                                  min_size=s.df_min_workers, max_size=s.df_max_workers,
                                  recommended=advice["df"])
            if step:
                log.info("front: autoscale df %d -> %d (queued %d, busy %d)", size, size + step,
                         stats["queued"], busy)
                try:
                    await self.pool.resize("df", size + step)
                except Exception as exc:
                    log.error("front: autoscale failed: %s", exc)


def run(settings: Settings, connect_url: str | None = None) -> None:
    """Run a node in this process until SIGTERM/SIGINT; with `connect_url`, as a
    reactor of the hub there instead of listening."""
    node_main = Node(settings).run_until_stopped(connect_url)
    try:
        import uvloop
    except ImportError:  # uvloop is optional at run time; asyncio's loop works too
        asyncio.run(node_main)
    else:
        uvloop.run(node_main)
