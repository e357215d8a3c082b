"""The Python clients of a PacketFlow endpoint: `Reactor` (asyncio) and `Client` (synchronous).

`Client` is for scripts and notebooks. It runs its own event loop in a thread of its own, so
it works the same in a plain script, inside a running event loop (Jupyter's, or a coroutine
of `asyncio.run`), and from several threads at once:

    import pfnode

    with pfnode.Client("ws://127.0.0.1:8443/packetflow/v1") as client:   # token= or $PFNODE_TOKEN
        future = client.submit("df", "transform", "hello world")          # a concurrent.futures.Future
        print(future.result())                                            # HELLO WORLD
        print(client.map("df", "transform", ["a", "b", "c"]))             # ['A', 'B', 'C'], in order

`submit` returns a `concurrent.futures.Future` of the packet's data (a `RemoteError` with the
node's `code` and `message` when it fails); `map` sends one packet per item (or, with `chunk`,
`df:consume` packets of many items), at most `window` in flight, and returns the results in
order, with a tqdm progress bar (`pip install 'pfnode[progress]'`) when asked or, for a few
hundred items or more, in a terminal or a notebook; `gather`, `as_completed`, `close`.

`Reactor` is the same protocol for asyncio code, and the spec's reactor API over one link:

    async with Reactor("ws://127.0.0.1:8443/packetflow/v1") as reactor:
        result = await reactor.submit("df", "transform", "hello world")
        print(result.data)  # "HELLO WORLD"

Its `submit` returns a `Result` whatever its status (check `result.ok`); an `error` frame from
the node (the message itself was refused) raises `RemoteError`. Many submits may be in flight
at once on one link; `map` is the windowed map `Client.map` uses. `register` lets the reactor
answer `submit` frames the endpoint sends it; the reactor tells the endpoint what it runs with
a `capabilities` list in a heartbeat (pfnode's extension, which spec endpoints ignore;
docs/PROTOCOL.md, "Hub routing"), so a pfnode hub routes those packets here and does not ask
it for others. `announce=False` keeps it to the spec.

What both do by themselves (retries and reconnection as `retry=`, a `Retry`, says;
`retry=None` turns them off):

- **Authentication**: `token=`, else `$PFNODE_TOKEN`, sent as `Authorization: Bearer`. Each
  link starts with one heartbeat exchanged before any packet goes on it: a node that refuses
  the token answers PF401 and closes the link (4401), so `start()` (and `Client(...)`) raises
  `RemoteError("PF401", <the node's message>)`, as does every request after; never retried.
- **Busy answers are retried**: PF003, PF004 and PF503 say the packet did not run (or cannot
  now): it is sent again after a delay that doubles from `Retry.first_s` to `Retry.max_s`, each
  a random 50-100 % of that, up to `Retry.attempts` times; then the last answer stands.
- **Reconnect**: a lost link is dialled again (same back-off) when something needs it: a
  packet to send, or registered handlers to serve. A packet not yet sent when the link went
  is sent on the new one. A packet whose frame was sent and whose answer was lost may have
  run: it fails with `ConnectionLost`, unless `retries=n` allows sending it again (it may then
  run twice).

numpy arrays travel as `$ndarray` objects when a packet opts in (docs/PROTOCOL.md, "numpy
payloads"): `submit(..., ndarray=True)` does it all, or use pfnode.ndarray's encode_array /
decode_tree with `metadata={"ndarray": True}` by hand.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib.util
import inspect
import itertools
import logging
import os
import random
import ssl as ssl_module
import sys
import threading
import time
import uuid
from typing import Any, Callable, Iterable, Iterator

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from .core import protocol
from .core.protocol import Packet, Result
from .errors import ConnectionLost, ErrorCode, PFNodeError, RemoteError, ReplyTimeout
from .registry import Registry

log = logging.getLogger("pfnode.client")

DEFAULT_ENDPOINT = "ws://127.0.0.1:8443/packetflow/v1"  # `pfnode serve`'s, with its defaults
TOKEN_ENV = "PFNODE_TOKEN"
DEFAULT_TIMEOUT_MS = 30_000
REPLY_SLACK_S = 5.0  # how long past a packet's own deadline we still wait for the node's PF408
AUTH_CLOSE_CODE = 4401  # the node's close code after PF401 (pfnode/node/links.py)
DEFAULT_WINDOW = 256  # map: packets in flight
CONSUME_SUBPACKETS = 16  # map with chunk=n: a df:consume packet carries 16 sub-packets of n items
PROGRESS_MIN_ITEMS = 500  # map: the bar shows by itself from this many items on
PROGRESS_INTERVAL_S = 0.1  # how often Client.map's caller thread redraws the bar
SWEEP_S = 1.0  # how often a reactor looks for packets past their reply deadline (a hang guard)
BATCH_BYTES = 1 << 20  # map: frames up to this much go in one socket write (more: one by one, with flow control)
_ENCODE = orjson.OPT_SERIALIZE_NUMPY


@dataclasses.dataclass(frozen=True)
class Retry:
    """What a reactor sends again by itself, and when. A packet answered with one of `codes`
    (it did not run, or cannot now) is sent again up to `attempts` times; a lost link is
    dialled again up to `attempts` times for each request waiting for it. The delays double
    from `first_s` up to `max_s`, each a random 50-100 % of that (so that clients cut off
    together do not come back together): about 15 s of trying with the defaults."""

    attempts: int = 8
    first_s: float = 0.1
    max_s: float = 5.0
    codes: frozenset = frozenset({ErrorCode.NO_REACTOR.value, ErrorCode.OVERLOADED.value,
                                  ErrorCode.UNAVAILABLE.value})

    def delay_s(self, attempt: int) -> float:
        return min(self.max_s, self.first_s * 2 ** attempt) * random.uniform(0.5, 1.0)


def error_of(result: Result) -> RemoteError:
    """A failed result as the exception `Client` raises for it."""
    error = result.error or {}
    return RemoteError(str(error.get("code", ErrorCode.HANDLER_FAILED.value)), str(error.get("message", "")),
                       packet_id=result.packet_id)


class _Job:
    """One packet's life in a reactor: sent, answered, sent again (a busy answer, a link lost
    before the frame went, or with `retries` after), and ended exactly once: `on_end(job,
    outcome)` gets its Result or the exception that ended it."""

    __slots__ = ("id", "body", "wait_s", "retries", "resent", "busy", "last", "on_end", "ended", "deadline", "tag")

    def __init__(self, packet_id: str, body: bytes, wait_s: float, retries: int,
                 on_end: Callable[["_Job", Any], None], tag: Any = None) -> None:
        self.id, self.body, self.wait_s, self.retries = packet_id, body, wait_s, retries
        self.on_end, self.tag = on_end, tag
        self.resent = self.busy = 0
        self.last: Result | None = None  # the last busy answer: what stands if no retry gets through
        self.ended = False
        self.deadline = 0.0  # loop time after which no answer is waited for (sweep)

    def frame(self, seq: int) -> bytes:
        return b'{"type":"submit","seq":%d,"payload":%b}' % (seq, self.body)


class _Unanswered(ConnectionLost):
    """The link closed before the endpoint answered our first heartbeat: nothing was sent on
    it but that, so dialling again is safe (a refusal's words may have been lost: _hello)."""


class _Link:
    """One WebSocket connection and what waits for an answer on it."""

    __slots__ = ("ws", "pending", "heartbeats", "by_id", "announcements", "ready", "closed", "error", "loss")

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: dict[int, _Job] = {}  # seq -> the packet it carried
        self.heartbeats: dict[int, asyncio.Future] = {}  # seq -> a heartbeat's waiter
        self.by_id: dict[str, int] = {}  # packet id -> seq, for peers that answer with seq 0
        self.announcements: set[int] = set()  # seqs of heartbeats that carried our capabilities
        self.ready = False  # the first heartbeat exchanged (Reactor._hello): packets may go
        self.closed = False
        self.error: RemoteError | None = None  # an error frame that answered nothing of ours (PF401)
        self.loss: PFNodeError | None = None  # why it closed

    def open(self) -> bool:
        return not self.closed and self.ws.protocol.state is State.OPEN

    def usable(self) -> bool:
        """Open, and past the first heartbeat: packets may go."""
        return self.ready and self.open()


def _end(job: _Job, outcome: Any) -> None:
    """End a packet's life, once: hand its outcome to its owner."""
    if job.ended:
        return
    job.ended = True
    job.on_end(job, outcome)


class _Links:
    """A reactor's connection to its endpoint: one link at a time, dialled again when lost,
    and what waits on it (packets as `_Job`s, heartbeats), answered, retried or failed by
    the rules in the module docstring. `Reactor` adds the API and runs the endpoint's packets
    (`_answer`); the settings (endpoint, token, ssl, retry, ...) are its."""

    endpoint: str
    token: str | None
    ssl: "ssl_module.SSLContext | None"
    announce: bool
    heartbeat_interval_ms: int
    max_frame_bytes: int | None
    open_timeout_s: float
    retry: "Retry | None"

    def __init__(self) -> None:
        self.registry = Registry()
        self.last_heartbeat: dict | None = None
        self._link: _Link | None = None
        self._seq = itertools.count(1)
        self._tasks: set[asyncio.Task] = set()
        self._fatal: PFNodeError | None = ConnectionLost("reactor is not started")  # every request raises it
        self._changed: asyncio.Future | None = None  # resolved when a link comes or goes
        self._dials = 0  # failed dials, ever
        self._dial_error: PFNodeError | None = None
        self._dialling: asyncio.Task | None = None
        self._waiting = 0  # requests waiting for a link
        self._announce_refused = False

    @property
    def _ws(self) -> ClientConnection | None:
        return self._link.ws if self._link is not None else None

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ the link
    async def _open(self) -> _Link:
        options: dict[str, Any] = {}
        if self.token is not None:
            options["additional_headers"] = {"Authorization": f"Bearer {self.token}"}
        if self.ssl is not None and self.endpoint.startswith("wss:"):
            options["ssl"] = self.ssl
        try:
            ws = await connect(self.endpoint, max_size=self.max_frame_bytes, compression=None,
                               open_timeout=self.open_timeout_s, **options)
        except Exception as exc:  # OSError, a timeout, websockets' handshake errors (InvalidStatus, ...)
            raise ConnectionLost(f"cannot connect to {self.endpoint}: {exc}") from exc
        link = self._link = _Link(ws)
        self._spawn(self._read(link))
        await self._hello(link)
        link.ready = True
        self._notify()
        return link

    async def _hello(self, link: _Link) -> None:
        """Send the first heartbeat (the announcement, when announcing) and wait for its answer
        before anything else goes on the link: a node that refuses the token answers PF401 and
        closes the link at once, and a frame sent meanwhile may cost that answer (it arrives
        unread at a closed socket, whose reset can overtake the PF401). So a packet never goes
        on a link the node may be refusing, and a refusal is raised here as `RemoteError`. An
        endpoint that does not answer heartbeats (the spec's reactors) is given `open_timeout_s`."""
        try:
            await self._heartbeat_round(link)
        except RemoteError as exc:
            if exc.code == ErrorCode.UNAUTHENTICATED.value:
                raise
            # (PF403: the capabilities refused, noted by _on_error; the link serves all the same)
        except ConnectionLost as exc:
            raise _Unanswered(f"{exc}, before it answered our first heartbeat") from None
        if link.error is not None and link.error.code == ErrorCode.UNAUTHENTICATED.value:
            raise link.error  # refused, though the node answered what it had read before it closed

    async def _link_up(self) -> _Link:
        """The open link; if there is none, wait while it is dialled again (`Retry.attempts`
        tries at most). Raises what ended the last one when it cannot be had."""
        link = self._link
        if link is not None and link.usable():
            return link
        start = self._dials
        self._waiting += 1
        try:
            while True:
                if self._fatal is not None:
                    raise self._fatal
                link = self._link
                if link is not None and link.usable():
                    return link
                if link is None:  # (else it is closing: its reader ends it and tells)
                    if self.retry is None:
                        raise self._dial_error or ConnectionLost(f"link to {self.endpoint} closed")
                    if self._dials - start >= self.retry.attempts:
                        raise ConnectionLost(f"cannot reconnect to {self.endpoint} ({self.retry.attempts} tries): "
                                             f"{self._dial_error}")
                    self._dial()
                await asyncio.shield(self._change())
        finally:
            self._waiting -= 1

    def _change(self) -> asyncio.Future:
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def _notify(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _dial(self) -> None:
        if self._dialling is None or self._dialling.done():
            self._dialling = self._spawn(self._redial())

    async def _redial(self) -> None:
        """Dial until a link is up, with back-off, while something needs one."""
        assert self.retry is not None
        for attempt in itertools.count():
            if self._fatal is not None or self._link is not None or not (self._waiting or self.registry.keys()):
                return
            try:
                await self._open()
            except RemoteError:
                return  # refused (_on_lost made it final and told the waiters)
            except ConnectionLost as exc:
                self._dials += 1
                self._dial_error = exc
                log.info("reactor: %s (try %d)", exc, attempt + 1)
                self._notify()
                await asyncio.sleep(self.retry.delay_s(attempt))
                continue
            log.info("reactor: connected to %s again", self.endpoint)
            return

    def _on_lost(self, link: _Link) -> None:
        """A link ended: what waited on it is answered, retried or failed; it is dialled again
        at once if this reactor serves packets (else when a request needs it)."""
        if link.closed:
            return
        link.closed = True
        if self._link is link:
            self._link = None
        error = link.loss = self._loss_error(link)
        if isinstance(error, RemoteError):
            self._fatal = error  # refused: no retry will do
        self._dial_error = error
        for waiter in link.heartbeats.values():
            if not waiter.done():
                waiter.set_exception(error)
        pending, link.pending = link.pending, {}
        for job in pending.values():
            self._lost(job, error)
        self._notify()
        if self._fatal is None and self.retry is not None and self.registry.keys():
            self._dial()

    def _loss_error(self, link: _Link) -> PFNodeError:
        if isinstance(self._fatal, ConnectionLost):  # stopped
            return self._fatal
        code, reason = link.ws.close_code, link.ws.close_reason
        if (link.error is not None and link.error.code == ErrorCode.UNAUTHENTICATED.value) or code == AUTH_CLOSE_CODE:
            return link.error or RemoteError(ErrorCode.UNAUTHENTICATED, reason or "unauthenticated")
        detail = f"{code} {reason}".strip() if code is not None else "no close frame"
        if link.error is not None:
            detail += f"; it said {link.error}"
        return ConnectionLost(f"link to {self.endpoint} closed ({detail})")

    # ------------------------------------------------------------------ one packet's life
    async def _send_job(self, job: _Job) -> None:
        """Send the packet on the link (waiting for one if needed); its answer ends it."""
        link = self._link
        if link is None or not link.usable():
            try:
                link = await self._link_up()
            except PFNodeError as exc:  # no link: the last busy answer stands, if there was one
                _end(job, job.last if job.last is not None and not isinstance(exc, RemoteError) else exc)
                return
        if job.ended:
            return
        frame = self._enter(link, job, asyncio.get_running_loop().time())
        try:
            await link.ws.send(frame, text=True)
        except ConnectionClosed:
            pass  # written, or not: the link's end decides (it was open when the frame went)

    async def _send_jobs(self, jobs: list[_Job]) -> None:
        """Send packets together, their frames in one socket write (websockets' `send` makes
        one system call a frame: as much as the rest of a packet's cost on the client)."""
        link = self._link
        if link is None or not link.usable():
            for job in jobs:  # (waits for a link)
                await self._send_job(job)
            return
        now = asyncio.get_running_loop().time()
        frames = [self._enter(link, job, now) for job in jobs if not job.ended]
        ws = link.ws
        if sum(map(len, frames)) > BATCH_BYTES:
            for frame in frames:  # large: websockets' own flow control
                try:
                    await ws.send(frame, text=True)
                except ConnectionClosed:
                    return
            return
        for frame in frames:
            ws.protocol.send_text(frame)
        chunks = ws.protocol.data_to_send()
        if all(chunks):
            ws.transport.write(b"".join(chunks))
        else:  # (an end of stream among them: the link is closing)
            ws.send_data()

    def _enter(self, link: _Link, job: _Job, now: float) -> bytes:
        """The packet's frame on `link`, its answer now waited for there."""
        seq = next(self._seq)
        link.pending[seq] = job
        link.by_id[job.id] = seq
        job.deadline = now + job.wait_s
        return job.frame(seq)

    def _settle(self, job: _Job, result: Result) -> None:
        if job.ended:
            return
        retry = self.retry
        if not result.ok and retry is not None and job.busy < retry.attempts and result.error_code in retry.codes:
            job.last = result
            self._spawn(self._send_later(job, retry.delay_s(job.busy)))
            job.busy += 1
            return
        _end(job, result)

    def _lost(self, job: _Job, error: PFNodeError) -> None:
        if job.ended:
            return
        if isinstance(error, RemoteError) or self._fatal is not None or self.retry is None:
            _end(job, error)
        elif job.resent < job.retries:
            job.resent += 1
            self._spawn(self._send_later(job, 0))
        else:
            _end(job, ConnectionLost(
                f"packet {job.id} was sent, then {error}: it may have run, so it is not sent again "
                f"(retries={job.retries}; pass retries= to allow it)"))

    async def _send_later(self, job: _Job, delay_s: float) -> None:
        try:
            if delay_s:
                await asyncio.sleep(delay_s)
            if not job.ended:
                await self._send_job(job)
        except asyncio.CancelledError:
            _end(job, self._fatal or ConnectionLost("reactor stopped"))
            raise

    async def _sweep(self) -> None:
        """Packets past their reply deadline (their own plus REPLY_SLACK_S: the node answers
        PF408 at the deadline itself, so this guards against a silent endpoint) end with
        ReplyTimeout; looked for every SWEEP_S."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_S)
            link, now = self._link, loop.time()
            if link is None:
                continue
            for seq, job in [(seq, job) for seq, job in link.pending.items() if job.deadline < now]:
                del link.pending[seq]
                if link.by_id.get(job.id) == seq:
                    del link.by_id[job.id]
                _end(job, ReplyTimeout(f"no reply to packet {job.id} (seq {seq}) within {job.wait_s:.1f} s"))

    # ------------------------------------------------------------------ frames in and out
    async def _send_on(self, link: _Link, frame: bytes) -> None:
        """Send a frame on `link`; a link that is going fails what waits on it (its reader)."""
        if link.open():
            try:
                await link.ws.send(frame, text=True)
            except ConnectionClosed:
                pass

    def _heartbeat_waiter(self, link: _Link) -> tuple[int, asyncio.Future]:
        seq = next(self._seq)
        link.heartbeats[seq] = asyncio.get_running_loop().create_future()
        return seq, link.heartbeats[seq]

    def _heartbeat_frame(self, link: _Link, seq: int) -> bytes:
        payload: dict[str, Any] = {"timestamp": int(time.time() * 1000)}
        if self.announce and not (self._announce_refused and not self.registry.keys()):
            payload["capabilities"] = self.registry.keys()
            link.announcements.add(seq)
        return protocol.encode_heartbeat(seq, payload)

    async def _read(self, link: _Link) -> None:
        """Read the link's frames until it closes, then `_on_lost(link)` (Reactor's)."""
        raise NotImplementedError


class Reactor(_Links):
    """The spec's reactor over one link (module docstring): `submit`, `map`, `register`,
    `heartbeat`; `async with Reactor(url) as reactor:` or `start()`/`stop()`."""

    def __init__(self, endpoint: str | None = None, *, token: str | None = None,
                 heartbeat_interval_ms: int = 30_000, max_frame_bytes: int | None = 64 * 1024 * 1024,
                 open_timeout_s: float = 10.0, announce: bool = True, ca_file: str | None = None,
                 ssl: "ssl_module.SSLContext | None" = None, retry: Retry | None = Retry()) -> None:
        """`endpoint`: default `ws://127.0.0.1:8443/packetflow/v1`. `token`: default
        `$PFNODE_TOKEN`; sent as `Authorization: Bearer <token>` (or put `?token=` in the
        endpoint). For `wss://`, the server is verified with `ssl`, else with `ca_file`, else
        with the system's trust store. `retry`: busy answers and lost links (module docstring);
        None: neither retried nor reconnected, answers returned as they come."""
        self.endpoint = endpoint or DEFAULT_ENDPOINT
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        self.ssl = ssl
        if self.ssl is None and ca_file is not None:
            from .transports.tls import client_context

            self.ssl = client_context(ca_file)
        self.announce = announce
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_frame_bytes = max_frame_bytes
        self.open_timeout_s = open_timeout_s
        self.retry = retry
        super().__init__()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> "Reactor":
        """Connect, and exchange a heartbeat: a node that cannot be reached raises
        `ConnectionLost` at once, one that refuses the token `RemoteError` (PF401). A link
        that closes before the node said a word is dialled again (`retry`)."""
        self._fatal = None
        try:
            try:
                await self._open()
            except _Unanswered:
                if self.retry is None:
                    raise
                await self._link_up()  # dialled again, as after any loss (one dialler: _redial)
        except BaseException:
            self._fatal = ConnectionLost("reactor is not started")
            raise
        self._spawn(self._heartbeat_loop())
        self._spawn(self._sweep())
        return self

    async def stop(self) -> None:
        self._fatal = ConnectionLost("reactor stopped")
        link = self._link
        if link is not None:
            await link.ws.close()
            self._on_lost(link)
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._notify()

    async def __aenter__(self) -> "Reactor":
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    # ------------------------------------------------------------------ API
    def register(self, group: str, element: str, fn: Callable[..., Any]) -> None:
        """Answer packets for group:element sent to this reactor. `fn(data)` or
        `fn(data, ctx)`, plain or async; plain functions run in a thread. Registering
        on a started reactor announces the new list; await `announce_capabilities()` to
        be sure the endpoint has it before submitting."""
        self.registry.register(group, element, fn)
        if self._link is not None and self.announce:
            self._spawn(self._announce_quietly())

    async def announce_capabilities(self) -> None:
        """Tell the endpoint what this reactor runs, and wait for its answer: `RemoteError`
        (PF403) if it refuses (the token lacks the reactor role). An endpoint that does not
        answer heartbeats (the spec's reactors) is given `open_timeout_s`."""
        self._announce_refused = False
        await self._heartbeat_round(await self._link_up())

    async def _heartbeat_round(self, link: _Link) -> None:
        """Send a heartbeat on `link` (the announcement, when announcing) and wait for its
        answer: an error frame raises; an endpoint that does not answer heartbeats (the spec's
        reactors) is given `open_timeout_s`."""
        seq, waiter = self._heartbeat_waiter(link)
        try:
            await self._send_on(link, self._heartbeat_frame(link, seq))
            async with asyncio.timeout(self.open_timeout_s):
                await waiter
        except TimeoutError:
            pass
        finally:
            link.heartbeats.pop(seq, None)

    async def _announce_quietly(self) -> None:
        try:
            await self.announce_capabilities()
        except PFNodeError as exc:
            log.warning("reactor: capabilities not announced to %s: %s", self.endpoint, exc)

    async def submit(self, group: str, element: str, data: Any = None, priority: int = 5,
                     timeout_ms: int | None = None, dependencies: list[str] | None = None,
                     metadata: dict | None = None, packet_id: str | None = None,
                     ndarray: bool = False, retries: int = 0) -> Result:
        """Send one packet and wait for its result. `ndarray=True` sends the numpy arrays in
        `data` as `$ndarray` objects, sets `"ndarray": true` in the metadata, and decodes the
        arrays in a success result's data (pfnode.ndarray; docs/PROTOCOL.md). `retries`: how
        many times it may be sent again after a link was lost once its frame had gone (it may
        then run more than once); busy answers are retried regardless (`Retry`)."""
        if ndarray:
            from .ndarray import OPT_IN_KEY, decode_tree, encode_tree  # numpy only for callers that use it

            data = encode_tree(data)
            metadata = {**(metadata or {}), OPT_IN_KEY: True}
        packet = Packet(id=packet_id or str(uuid.uuid4()), group=group, element=element, data=data,
                        priority=priority, timeout_ms=timeout_ms,
                        dependencies=tuple(dependencies) if dependencies is not None else None,
                        metadata=metadata)
        future = asyncio.get_running_loop().create_future()
        job = _Job(packet.id, orjson.dumps(packet.to_wire(), option=_ENCODE), _wait_s(timeout_ms), retries,
                   _settle_future, future)
        try:
            await self._send_job(job)
            result = await future
        except asyncio.CancelledError:
            job.ended = True  # its answer, if it comes, is dropped
            raise
        if ndarray and result.ok:
            result = dataclasses.replace(result, data=decode_tree(result.data))
        return result

    async def map(self, group: str, element: str, items: Iterable, *, window: int = DEFAULT_WINDOW,
                  chunk: int | None = None, priority: int = 5, timeout_ms: int | None = None,
                  metadata: dict | None = None, retries: int = 0, return_exceptions: bool = False,
                  progress: Callable[[int], Any] | None = None) -> list:
        """group:element over `items`: the results' data, in order. At most `window` packets
        in flight. With `chunk=n`, `df:consume` packets of up to 16 n items each, n items per
        sub-packet (the step takes a list and answers a list of as many: docs/ELEMENTS.md).
        The first failure raises (`RemoteError`, or `ConnectionLost`) and nothing more is
        sent; with `return_exceptions`, failed items hold their exception instead.
        `progress(n)` is called as n more items are done."""
        return await _MapRun(self, group, element, items, window, chunk, priority, timeout_ms, metadata,
                             retries, return_exceptions, progress).run()

    async def heartbeat(self, timeout_s: float = 10.0) -> dict:
        """Send a heartbeat and return the node's answer (its status)."""
        link = await self._link_up()
        seq, waiter = self._heartbeat_waiter(link)
        try:
            await self._send_on(link, protocol.encode_heartbeat(seq, {"timestamp": int(time.time() * 1000)}))
            async with asyncio.timeout(timeout_s):
                return await waiter
        except TimeoutError:
            raise ReplyTimeout(f"no heartbeat reply to seq {seq} within {timeout_s:.1f} s") from None
        finally:
            link.heartbeats.pop(seq, None)

    async def _heartbeat_loop(self) -> None:
        interval = self.heartbeat_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            link = self._link
            if link is not None and link.usable():
                await self._send_on(link, self._heartbeat_frame(link, next(self._seq)))

    # ------------------------------------------------------------------ what the endpoint sends
    async def _read(self, link: _Link) -> None:
        try:
            while True:
                self._on_frame(link, await link.ws.recv(decode=False))
        except ConnectionClosed:
            pass
        except Exception:  # a bug here must not leave the waiters hanging
            log.exception("reactor: reading from %s failed", self.endpoint)
            await link.ws.close()
        finally:
            self._on_lost(link)

    def _on_frame(self, link: _Link, frame: bytes) -> None:
        msg = protocol.decode(frame)
        if isinstance(msg, protocol.Rejected):
            log.warning("reactor: bad frame from %s: %s", self.endpoint, msg.message)
        elif msg.type == "result":
            seq = msg.seq or link.by_id.get(msg.payload.packet_id, 0)  # spec reactors answer with seq 0
            job = link.pending.pop(seq, None)
            if job is not None:
                if link.by_id.get(job.id) == seq:
                    del link.by_id[job.id]
                self._settle(job, msg.payload)
        elif msg.type == "error":
            self._on_error(link, msg.seq, msg.payload)
        elif msg.type == "heartbeat":
            # the node's own heartbeats carry the node's seq numbers, which may equal one of
            # ours: only a heartbeat we asked for answers a waiter
            self.last_heartbeat = msg.payload
            link.announcements.discard(msg.seq)
            waiter = link.heartbeats.get(msg.seq)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg.payload)
        elif msg.type == "submit":
            self._spawn(self._answer(link, msg.seq, msg.payload))

    def _on_error(self, link: _Link, seq: int, payload: Any) -> None:
        """An `error` frame: it fails what it answers; one that answers nothing of ours (seq 0:
        PF401 before the node closes the link) is what the link's end will report."""
        payload = payload if isinstance(payload, dict) else {}
        error = RemoteError(str(payload.get("code", ErrorCode.MALFORMED_FRAME.value)), str(payload.get("message", "")),
                            packet_id=payload.get("packet_id"))
        job = link.pending.pop(seq, None) if seq else None
        waiter = link.heartbeats.get(seq) if seq else None
        if job is not None:
            if link.by_id.get(job.id) == seq:
                del link.by_id[job.id]
            _end(job, error)
        elif seq in link.announcements:
            link.announcements.discard(seq)
            self._announce_refused = True
            log.log(logging.WARNING if self.registry.keys() else logging.DEBUG,
                    "reactor: %s refused our capabilities: %s", self.endpoint, error)
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)
        elif waiter is not None and not waiter.done():
            waiter.set_exception(error)
        else:
            if error.code == ErrorCode.UNAUTHENTICATED.value:
                self._fatal = error  # refused: the link closes next, and no request goes on it
            else:
                log.warning("reactor: error frame from %s: %s", self.endpoint, error)
            link.error = error

    async def _answer(self, link: _Link, seq: int, packet: Packet) -> None:
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
        if not link.open():
            log.warning("reactor: link closed before the result of %s could be sent", packet.id)
        await self._send_on(link, frame)



def _wait_s(timeout_ms: int | None) -> float:
    return (timeout_ms or DEFAULT_TIMEOUT_MS) / 1000 + REPLY_SLACK_S


def _settle_future(job: _Job, outcome: Any) -> None:
    future = job.tag
    if not future.done():
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class _MapRun:
    """One `Reactor.map`: keeps up to `window` packets in flight, topping the window up in
    one write once an eighth of it is free (not a wake-up and a write per answer), puts each
    answer in its place, stops at the first failure."""

    def __init__(self, reactor: Reactor, group: str, element: str, items: Iterable, window: int,
                 chunk: int | None, priority: int, timeout_ms: int | None, metadata: dict | None,
                 retries: int, return_exceptions: bool, progress: Callable[[int], Any] | None) -> None:
        if window < 1 or (chunk is not None and chunk < 1):
            raise ValueError(f"window and chunk must be at least 1, got window={window}, chunk={chunk}")
        self.reactor, self.window, self.chunk, self.retries = reactor, window, chunk, retries
        self.items = items if isinstance(items, list) else list(items)
        self.results: list = [None] * len(self.items)
        self.return_exceptions, self.progress = return_exceptions, progress
        self.wait_s = _wait_s(timeout_ms)
        self.prefix = f"map-{uuid.uuid4().hex[:12]}-"
        self.head = {"version": protocol.VERSION, "group": group, "element": element, "priority": priority}
        if chunk is not None:
            self.head.update(group="df", element="consume")
            self.step = {"group": group, "element": element}
        if timeout_ms is not None:
            self.head["timeout_ms"] = timeout_ms
        if metadata is not None:
            self.head["metadata"] = metadata
        self.inflight = 0
        self.refill = max(1, window // 8)  # free slots that make the window worth topping up
        self.low = 0  # on_end wakes run() when no more than this many are in flight
        self.live: set[_Job] = set()  # sent, not ended
        self.failure: BaseException | None = None
        self.wake: asyncio.Future | None = None

    def ranges(self) -> Iterator[tuple[int, int]]:
        n = len(self.items)
        if self.chunk is None:
            return ((i, i + 1) for i in range(n))
        size = self.chunk * CONSUME_SUBPACKETS
        return ((i, min(n, i + size)) for i in range(0, n, size))

    def body(self, start: int, stop: int) -> bytes:
        if self.chunk is None:
            data = self.items[start]
        else:
            data = {"items": self.items[start:stop], "step": self.step, "chunk": self.chunk}
        return orjson.dumps({**self.head, "id": f"{self.prefix}{start}", "data": data}, option=_ENCODE)

    async def run(self) -> list:
        todo = iter(self.ranges())
        more = True
        try:
            while more and self.failure is None:
                if self.window - self.inflight < self.refill:
                    await self.until(self.window - self.refill)
                    continue
                jobs = []
                for start, stop in itertools.islice(todo, self.window - self.inflight):
                    jobs.append(_Job(f"{self.prefix}{start}", self.body(start, stop), self.wait_s, self.retries,
                                     self.on_end, (start, stop)))
                more = len(jobs) == self.window - self.inflight
                if not jobs:
                    break
                self.live.update(jobs)
                self.inflight += len(jobs)
                await self.reactor._send_jobs(jobs)
            while self.inflight and self.failure is None:
                await self.until(0)
        finally:
            for job in self.live:
                job.ended = True  # stopped early: answers still to come are dropped
        if self.failure is not None and not self.return_exceptions:
            raise self.failure
        return self.results

    def on_end(self, job: _Job, outcome: Any) -> None:
        start, stop = job.tag
        self.inflight -= 1
        self.live.discard(job)
        error: BaseException | None = None
        if isinstance(outcome, BaseException):
            error = outcome
        elif not outcome.ok:
            error = error_of(outcome)
        elif self.chunk is None:
            self.results[start] = outcome.data
        elif isinstance(outcome.data, list) and len(outcome.data) == stop - start:
            self.results[start:stop] = outcome.data
        else:
            error = RemoteError(ErrorCode.HANDLER_FAILED, f"df:consume over items {start}..{stop - 1} answered "
                                f"{type(outcome.data).__name__} instead of a list of {stop - start}",
                                packet_id=job.id)
        if error is not None:
            if self.return_exceptions:
                self.results[start:stop] = [error] * (stop - start)
            elif self.failure is None:
                self.failure = error
        if self.progress is not None:
            self.progress(stop - start)
        wake = self.wake
        if wake is not None and (self.inflight <= self.low or self.failure is not None) and not wake.done():
            wake.set_result(None)

    async def until(self, low: int) -> None:
        """Wait until at most `low` packets are in flight (or one failed)."""
        self.low = low
        self.wake = asyncio.get_running_loop().create_future()
        await self.wake


# ---------------------------------------------------------------------------- the synchronous client

def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(progress: Any, total: int, what: str) -> Any:
    """The bar Client.map draws: None (nothing to draw), or an object with update(n)/close().
    `progress`: True (a tqdm bar; tqdm must be installed), False, a bar of the caller's (any
    object with `update(n)`: updated, not closed), or None: a tqdm bar when there are more than
    PROGRESS_MIN_ITEMS items, stderr is a terminal or this runs in a notebook, and tqdm is
    installed (without it nothing is imported, nothing drawn)."""
    if progress is False:
        return None
    if progress is None:
        if total < PROGRESS_MIN_ITEMS or not (_stderr_is_terminal() or _in_notebook()):
            return None
        if importlib.util.find_spec("tqdm") is None:
            return None
    elif progress is not True:
        return progress
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True draws a tqdm bar: pip install 'pfnode[progress]' (or tqdm)") from None
    return tqdm(total=total, desc=what, unit="item", dynamic_ncols=True)


class Client:
    """A synchronous PacketFlow client for scripts and notebooks (module docstring). Its event
    loop runs in a thread of its own: any thread may call it, a running event loop included;
    only its futures' done-callbacks (which run in that thread) must not wait on it."""

    def __init__(self, url: str | None = None, *, token: str | None = None, ca_file: str | None = None,
                 ssl: "ssl_module.SSLContext | None" = None, retry: Retry | None = Retry(),
                 open_timeout_s: float = 10.0) -> None:
        """Connect to `url` (default `ws://127.0.0.1:8443/packetflow/v1`) with `token` (default
        `$PFNODE_TOKEN`), and check the token with one round trip: a refused one raises
        `RemoteError("PF401", ...)` here. `retry`: as `Reactor`'s."""
        self._loop = _new_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pfnode-client", daemon=True)
        self._reactor = Reactor(url, token=token, ca_file=ca_file, ssl=ssl, retry=retry,
                                open_timeout_s=open_timeout_s, announce=False)
        self.url = self._reactor.endpoint
        self._closed = False
        self._thread.start()
        try:
            self._call(self._connect())
        except BaseException:
            self._closed = True
            try:
                self._call(self._reactor.stop())
            finally:
                self._shut_down()
            raise

    async def _connect(self) -> None:
        await self._reactor.start()  # a refused token raises here (its first heartbeat)

    def __repr__(self) -> str:
        return f"<pfnode.Client {self.url} {'closed' if self._closed else 'open'}>"

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _call(self, coro) -> Any:
        """Run `coro` on the client's loop and wait for it here."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("pfnode.Client: do not wait on the client in its own thread "
                               "(a future's done-callback runs there)")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionLost(f"pfnode.Client for {self.url} is closed")

    def submit(self, group: str, element: str, data: Any = None, *, priority: int = 5,
               timeout_ms: int | None = None, dependencies: list[str] | None = None,
               metadata: dict | None = None, id: str | None = None, retries: int = 0,
               ndarray: bool = False) -> concurrent.futures.Future:
        """Send one packet; a Future of its data, or of a `RemoteError` (its `code`,
        `message`, `packet_id`) when it fails. `retries`: as `Reactor.submit`'s."""
        self._check_open()
        return asyncio.run_coroutine_threadsafe(self._submit(
            group, element, data, priority=priority, timeout_ms=timeout_ms, dependencies=dependencies,
            metadata=metadata, packet_id=id, retries=retries, ndarray=ndarray), self._loop)

    async def _submit(self, *args: Any, **kwargs: Any) -> Any:
        result = await self._reactor.submit(*args, **kwargs)
        if not result.ok:
            raise error_of(result)
        return result.data

    def map(self, group: str, element: str, iterable: Iterable, *, window: int = DEFAULT_WINDOW,
            chunk: int | None = None, progress: Any = None, priority: int = 5, timeout_ms: int | None = None,
            metadata: dict | None = None, retries: int = 0, return_exceptions: bool = False) -> list:
        """group:element over the items: their results' data, in order (`Reactor.map`). At
        most `window` packets in flight; `chunk=n`: df:consume packets, n items per
        sub-packet. `progress`: a tqdm bar (`progress_bar`: None is automatic, True forces
        one, False none, or a bar of yours). The first failure raises, unless
        `return_exceptions`; Ctrl-C stops sending and raises KeyboardInterrupt."""
        self._check_open()
        items = iterable if isinstance(iterable, list) else list(iterable)
        bar = progress_bar(progress, len(items), f"{group}:{element}")
        done = [0]

        def tick(n: int) -> None:
            done[0] += n

        future = asyncio.run_coroutine_threadsafe(self._reactor.map(
            group, element, items, window=window, chunk=chunk, priority=priority, timeout_ms=timeout_ms,
            metadata=metadata, retries=retries, return_exceptions=return_exceptions,
            progress=tick if bar is not None else None), self._loop)
        try:
            if bar is None:
                return future.result()
            shown = 0
            while True:
                finished = not concurrent.futures.wait([future], timeout=PROGRESS_INTERVAL_S).not_done
                now = done[0]  # read once: the client's loop thread adds to it meanwhile
                if now > shown:
                    bar.update(now - shown)
                    shown = now
                if finished:
                    return future.result()
        except BaseException:
            future.cancel()
            raise
        finally:
            if bar is not None and bar is not progress:
                bar.close()

    def gather(self, futures: Iterable[concurrent.futures.Future] | concurrent.futures.Future,
               timeout: float | None = None) -> Any:
        """The results of `futures`, in their order (or of one future); the first failure raises."""
        if isinstance(futures, concurrent.futures.Future):
            return futures.result(timeout)
        return [future.result(timeout) for future in list(futures)]

    @staticmethod
    def as_completed(futures: Iterable[concurrent.futures.Future],
                     timeout: float | None = None) -> Iterator[concurrent.futures.Future]:
        """The futures as they complete (concurrent.futures.as_completed)."""
        return concurrent.futures.as_completed(list(futures), timeout)

    def close(self) -> None:
        """Close the link and stop the client's thread; futures not done fail (ConnectionLost)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._reactor.stop())
        finally:
            self._shut_down()

    def _shut_down(self) -> None:
        async def cancel_the_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:  # the submits the stopped reactor failed end with its ConnectionLost first
                _, pending = await asyncio.wait(tasks, timeout=1.0)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)

        if threading.current_thread() is not self._thread and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(cancel_the_rest(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if threading.current_thread() is not self._thread:
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()
