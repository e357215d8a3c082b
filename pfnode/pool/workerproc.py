"""The front's handle on one worker process: its pipes, its start, its exit.

A worker is started one of two ways: forked by the fork server (pfnode/pool/forkserver.py:
milliseconds, the handler modules already imported), or as a new interpreter with
`asyncio`'s subprocess machinery (`python -m pfnode.worker`). Either way the event loop
reads the worker's answers as they come (never blocking on a worker) and reports them, a
read's worth at a time, to its listener (the pool); the listener also hears of its exit
once both the exit status and the end of its answer pipe are in, so answers written just
before a crash are delivered, not blamed on the crash.
"""
from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Protocol


from . import pipe
from .arena import Arena
from ..errors import ConfigError


class WorkerListener(Protocol):
    def on_worker_messages(self, proc: "WorkerProcess", messages: list) -> None: ...

    def on_worker_exit(self, proc: "WorkerProcess") -> None: ...

    def on_worker_ready(self, proc: "WorkerProcess") -> None: ...


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "unknown status"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


class _AnswerPipe(asyncio.Protocol):
    """The read end of a forked worker's answer pipe, feeding its WorkerProcess."""

    def __init__(self, proc: "WorkerProcess") -> None:
        self.proc = proc

    def data_received(self, data: bytes) -> None:
        self.proc.pipe_data_received(1, data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.proc.pipe_connection_lost(1, exc)


# A new interpreter's entry: `python -c`, not `python -m pfnode.pool.worker`, which cannot run a
# compiled module (pfnode/native.py; runpy needs its code object). argv[0] as -m would set it.
WORKER_ENTRY = ("import sys; from pfnode.pool.worker import run_main; "
                "run_main(['pfnode.pool.worker', *sys.argv[1:]])")


class WorkerProcess(asyncio.SubprocessProtocol):
    def __init__(self, listener: WorkerListener, lane: str, slot: int,
                 arenas: tuple[Arena, Arena] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.listener = listener
        self.lane = lane
        self.slot = slot
        # shared memory for bulk payloads: tasks' data in, results out (see pfnode/pool/arena.py)
        self.inbound, self.outbound = arenas if arenas else (None, None)
        self.pid: int | None = None
        self.forked = False
        self.cpus: list[int] = []
        self.handlers: dict[str, dict] = {}
        self.hello: asyncio.Future = loop.create_future()
        self.exited: asyncio.Future = loop.create_future()
        self.view = None  # the dispatcher's view of it, once it takes work
        self.kill_reason: str | None = None
        self.ran_packets = False  # answered at least one packet (for the respawn rule)
        self._subprocess: asyncio.SubprocessTransport | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._returncode: int | None = None
        self._reader = pipe.FrameReader()
        self._process_exited = False
        self._stdout_closed = False

    @classmethod
    async def start(cls, listener: WorkerListener, lane: str, slot: int, config: pipe.WorkerSettings,
                    env: dict[str, str], arenas: tuple[Arena, Arena] | None) -> "WorkerProcess":
        """Start a new interpreter running pfnode.pool.worker's main; returns once the process
        exists (see `hello`)."""
        loop = asyncio.get_running_loop()
        _, proc = await loop.subprocess_exec(
            lambda: cls(listener, lane, slot, arenas), sys.executable, "-c", WORKER_ENTRY,
            config.encode(), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=None, env=env)
        return proc

    @classmethod
    async def fork(cls, server, listener: WorkerListener, lane: str, slot: int, config: pipe.WorkerSettings,
                   arenas: tuple[Arena, Arena] | None, timeout_s: float) -> "WorkerProcess":
        """Have the fork server fork a worker; returns once it exists (see `hello`)."""
        loop = asyncio.get_running_loop()
        proc = cls(listener, lane, slot, arenas)
        proc.forked = True
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        try:
            proc.pid = await server.spawn(config.encode(), [stdin_r, stdout_w], proc.forked_exited,
                                          timeout_s)
        except BaseException:
            for fd in (stdin_w, stdout_r):
                os.close(fd)
            raise
        finally:
            os.close(stdin_r)
            os.close(stdout_w)
        proc._stdin, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(stdin_w, "wb", buffering=0))
        await loop.connect_read_pipe(lambda: _AnswerPipe(proc), os.fdopen(stdout_r, "rb", buffering=0))
        return proc

    # -- asyncio.SubprocessProtocol (a spawned worker)
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._subprocess = transport  # type: ignore[assignment]
        self.pid = transport.get_pid()  # type: ignore[attr-defined]
        self._stdin = transport.get_pipe_transport(0)  # type: ignore[attr-defined]

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        messages = self._reader.feed(data)
        if not self.hello.done():
            for i, message in enumerate(messages):
                kind = type(message)
                if kind is pipe.Hello:
                    if message.version != pipe.VERSION:
                        self.hello.set_exception(ConfigError(
                            f"worker speaks pipe version {message.version}, the front {pipe.VERSION}"))
                        return
                    self.handlers, self.cpus = message.handlers, message.cpus
                    self.hello.set_result(message.handlers)
                    messages = messages[i + 1:]
                    break
                if kind is pipe.Fatal:
                    self.hello.set_exception(ConfigError(message.message))
                    return
            else:
                return
        if messages:
            self.listener.on_worker_messages(self, messages)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1:
            self._stdout_closed = True
            self._maybe_finish()

    def process_exited(self) -> None:
        self._returncode = self._subprocess.get_returncode() if self._subprocess else None
        self._process_exited = True
        self._maybe_finish()

    # -- a forked worker's end, as its fork server reports it
    def forked_exited(self, returncode: int | None) -> None:
        self._returncode = returncode
        self._process_exited = True
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self._process_exited and self._stdout_closed and not self.exited.done():
            if not self.hello.done():
                self.hello.set_exception(ConfigError(
                    f"worker exited with {describe_exit(self.returncode)} before it was ready"))
            self.exited.set_result(self.returncode)
            for arena in (self.inbound, self.outbound):
                if arena is not None:
                    arena.close(unlink=True)
            if self._stdin is not None:
                self._stdin.close()
            self.listener.on_worker_exit(self)

    # -- the front's side
    @property
    def returncode(self) -> int | None:
        return self._returncode

    def send(self, frame: bytes) -> None:
        stdin = self._stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(frame)

    def kill(self, reason: str) -> None:
        if self.kill_reason is None:
            self.kill_reason = reason
        if self.view is not None:
            self.view.ready = False  # takes no more work
        if self._process_exited or self.pid is None:
            return
        try:
            if self._subprocess is not None:
                self._subprocess.kill()
            else:
                os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close_channel(self) -> None:
        """End of input: the worker finishes what it holds and exits."""
        if self._stdin is not None:
            self._stdin.close()
