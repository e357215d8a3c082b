"""The fork server: workers in milliseconds, with the handler modules already imported.

Starting a worker as a new interpreter costs an interpreter start and the imports of
numpy and the handler modules: hundreds of milliseconds, during which a lane is short of
a worker. So the supervisor starts one fork server per handler-module set: a process that
imports the handler modules once, then forks a worker whenever asked. The child runs
`pfnode.worker.main` as a freshly started worker would (its modules are already in
`sys.modules`), so a replacement is ready in a few milliseconds, and the children share
the imported modules' memory pages until they write to them.

The front and the server talk over a Unix SOCK_SEQPACKET socket (its fd number in the
server's configuration, `control_fd`):

    front -> server   Spawn(token, config), with the child's stdin and stdout pipe ends
                      passed as file descriptors (SCM_RIGHTS)
    server -> front   Ready(pid, version) once, then Spawned(token, pid) or
                      SpawnFailed(token, message) per request, and Exited(pid, status) as
                      each child ends (the server is the children's parent: it reaps them)

The server ignores SIGINT, dies with the front (PR_SET_PDEATHSIG) and exits when the
socket closes; its children die with it. It is single-threaded and never runs an event
loop, so forking it is safe; handler modules that start threads at import are not, and
should run with `worker_start = "spawn"`.
"""
from __future__ import annotations

import os
import select
import signal
import socket
import sys
import traceback

import msgspec
import orjson

MAX_MESSAGE = 1 << 20


class Spawn(msgspec.Struct, array_like=True, tag=1):
    token: int
    config: bytes  # the worker's configuration JSON, as `python -m pfnode.worker` takes it


class Ready(msgspec.Struct, array_like=True, tag=2):
    pid: int
    version: int


class Spawned(msgspec.Struct, array_like=True, tag=3):
    token: int
    pid: int


class SpawnFailed(msgspec.Struct, array_like=True, tag=4):
    token: int
    message: str


class Exited(msgspec.Struct, array_like=True, tag=5):
    pid: int
    status: int  # a wait status: os.waitstatus_to_exitcode() turns it into a return code


class Fatal(msgspec.Struct, array_like=True, tag=6):
    message: str


FromServer = Ready | Spawned | SpawnFailed | Exited | Fatal
encode = msgspec.msgpack.Encoder().encode
decode_request = msgspec.msgpack.Decoder(Spawn).decode
decode_reply = msgspec.msgpack.Decoder(FromServer).decode


def _child(ctl: socket.socket, wakeup_r: int, wakeup_w: int, fds: list[int], config: bytes) -> None:
    """In the forked child: become a worker on the given pipes; never return."""
    code = 70
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        ctl.close()
        os.close(wakeup_r)
        os.close(wakeup_w)
        stdin_r, stdout_w = fds
        os.dup2(stdin_r, 0)
        os.dup2(stdout_w, 1)
        os.close(stdin_r)
        os.close(stdout_w)
        from . import worker

        code = worker.main(["pfnode.pool.worker", config.decode()])
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code if isinstance(code, int) else 1)


def serve(ctl: socket.socket, config: dict) -> int:
    from .pipe import VERSION
    from ..registry import load_handler_modules
    from .worker import _die_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the front owns shutdown
    _die_with_parent()
    try:
        load_handler_modules(config.get("handler_modules", []))
    except Exception as exc:
        ctl.send(encode(Fatal(str(exc))))
        return 2
    wakeup_r, wakeup_w = os.pipe()
    os.set_blocking(wakeup_r, False)
    os.set_blocking(wakeup_w, False)
    signal.set_wakeup_fd(wakeup_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wake-up fd tells the loop below
    ctl.send(encode(Ready(os.getpid(), VERSION)))
    while True:
        readable, _, _ = select.select([ctl, wakeup_r], [], [])
        if wakeup_r in readable:
            try:
                while os.read(wakeup_r, 512):
                    pass
            except BlockingIOError:
                pass
            _reap(ctl)
        if ctl in readable:
            try:
                message, fds, _, _ = socket.recv_fds(ctl, MAX_MESSAGE, 2)
            except OSError:
                return 0
            if not message:
                return 0  # the front is gone: exit, and the children with us
            try:
                request = decode_request(message)
            except msgspec.MsgspecError:
                for fd in fds:
                    os.close(fd)
                continue
            if len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                ctl.send(encode(SpawnFailed(request.token, "expected two pipe ends")))
                continue
            try:
                pid = os.fork()
            except OSError as exc:
                for fd in fds:
                    os.close(fd)
                ctl.send(encode(SpawnFailed(request.token, f"fork failed: {exc}")))
                continue
            if pid == 0:
                _child(ctl, wakeup_r, wakeup_w, fds, request.config)
            for fd in fds:
                os.close(fd)
            ctl.send(encode(Spawned(request.token, pid)))


def _reap(ctl: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        ctl.send(encode(Exited(pid, status)))


def main(argv: list[str]) -> int:
    config = orjson.loads(argv[1])
    ctl = socket.socket(fileno=config["control_fd"])
    try:
        return serve(ctl, config)
    finally:
        ctl.close()


class ForkServer:
    """The front's side: starts the server, asks it for workers, hears of their ends.

    Each `spawn` names the callback told of that child's end, `on_exit(returncode)`
    (None when the server itself went away, taking its children with it). It is known
    from the moment the server says the child exists, so not even a child that dies at
    once can end unheard."""

    def __init__(self, handler_modules: list[str], env: dict[str, str]) -> None:
        self.handler_modules = handler_modules
        self.env = env
        self.pid: int | None = None
        self._exits: dict[int, object] = {}  # child pid -> its on_exit
        self._sock: socket.socket | None = None
        self._proc = None
        self._ready = None
        self._pending: dict[int, tuple] = {}  # token -> (future of the pid, on_exit)
        self._tokens = 0

    @property
    def alive(self) -> bool:
        return self._sock is not None

    @property
    def children(self) -> set[int]:
        return set(self._exits)

    async def start(self, timeout_s: float) -> None:
        import asyncio

        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            config = {"handler_modules": list(self.handler_modules), "control_fd": child.fileno()}
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pfnode.pool.forkserver", orjson.dumps(config), pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL, env=self.env)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self._sock = parent
        self._ready = loop.create_future()
        loop.add_reader(parent.fileno(), self._readable)
        try:
            self.pid = await asyncio.wait_for(self._ready, timeout_s)
        except BaseException:
            await self.close()
            raise

    async def spawn(self, config: bytes, fds: list[int], on_exit, timeout_s: float) -> int:
        """Fork a worker on the given pipe ends (the child's stdin read end and stdout
        write end; the caller closes its copies); returns its pid."""
        import asyncio

        if self._sock is None:
            raise OSError("the fork server is not running")
        self._tokens += 1
        token = self._tokens
        future = asyncio.get_running_loop().create_future()
        self._pending[token] = (future, on_exit)
        try:
            socket.send_fds(self._sock, [encode(Spawn(token, config))], fds)
            return await asyncio.wait_for(future, timeout_s)
        finally:
            self._pending.pop(token, None)

    def _readable(self) -> None:
        while self._sock is not None:
            try:
                data = self._sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost("it exited")
                return
            message = decode_reply(data)
            kind = type(message)
            if kind is Exited:
                on_exit = self._exits.pop(message.pid, None)
                if on_exit is not None:
                    on_exit(os.waitstatus_to_exitcode(message.status))
            elif kind is Spawned or kind is SpawnFailed:
                future, on_exit = self._pending.get(message.token, (None, None))
                if kind is Spawned:
                    self._exits[message.pid] = on_exit
                if future is not None and not future.done():
                    if kind is Spawned:
                        future.set_result(message.pid)
                    else:
                        future.set_exception(OSError(message.message))
                elif kind is Spawned:  # its asker gave up waiting: the child is nobody's
                    os.kill(message.pid, 9)
            elif kind is Ready and not self._ready.done():
                self._ready.set_result(message.pid)
            elif kind is Fatal and not self._ready.done():
                from ..errors import ConfigError

                self._ready.set_exception(ConfigError(message.message))

    def _lost(self, why: str) -> None:
        import asyncio

        sock, self._sock = self._sock, None
        if sock is None:
            return
        asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        error = OSError(f"the fork server went away ({why})")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(error)
        exits, self._exits = self._exits, {}
        for on_exit in exits.values():  # they die with it (PR_SET_PDEATHSIG); their status is lost
            on_exit(None)

    async def close(self, timeout_s: float = 2.0) -> None:
        import asyncio

        self._lost("closed")
        if self._proc is not None and self._proc.returncode is None:
            try:
                await asyncio.wait_for(self._proc.wait(), timeout_s)
            except asyncio.TimeoutError:
                self._proc.kill()
                await self._proc.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
