"""Every process the benchmark starts, and how each is stopped.

Three kinds: `pfnode` nodes (`python -m pfnode ARGV`, subprocesses whose log goes to a file),
long-lived servers run by multiprocessing (the echo servers, the Python reactor: started once,
they answer ("ok", value) when ready), and one-shot calls (a client function run in a fresh
process, its return value sent back). All are set to die with the benchmark (Linux
PR_SET_PDEATHSIG), and `run_with_cleanup` stops them however the run ends: done, Ctrl-C,
SIGTERM or a failure. Also here: a node's /status and the CPU time of a set of pids.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import ROOT, BenchError, progress

# A serving node logs this line; its group is the node's endpoint.
SERVING = re.compile(r"front: serving (ws://\S+)")


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Linux: have the kernel send `sig` to this process when its parent dies, so nothing
    this benchmark starts can outlive it even if it is SIGKILLed."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_LIBC: list = []


def _cpu_clock_s(pid: int) -> float | None:
    """The CPU time of process `pid` from the kernel's per-process CPU clock (POSIX
    clock_getcpuclockid): nanoseconds, all its threads, live and exited. None where that clock
    cannot be read (not Linux, no such process)."""
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
            _LIBC[0].clock_getcpuclockid  # noqa: B018 - present?
        except (OSError, AttributeError):
            _LIBC[:] = [None]
    libc = _LIBC[0]
    if libc is None:
        return None
    clock, ts = ctypes.c_int(), _Timespec()
    if libc.clock_getcpuclockid(pid, ctypes.byref(clock)) or libc.clock_gettime(clock, ctypes.byref(ts)):
        return None
    return ts.tv_sec + ts.tv_nsec / 1e9


def cpu_s(pids: list[int]) -> float:
    """CPU time (user + system, seconds) the processes `pids` have used so far: from each
    one's CPU clock where it can be read, else from psutil, in clock ticks (10 ms on Linux). A
    process that is gone counts 0."""
    import psutil

    total = 0.0
    for pid in pids:
        seconds = _cpu_clock_s(pid)
        if seconds is not None:
            total += seconds
            continue
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def node_health(endpoint: str) -> dict:
    """The node's `GET /status` (same host and port as its WebSocket endpoint; the bench nodes listen on
    loopback without tokens, so it is open to them), decoded."""
    import urllib.request

    import orjson

    url = endpoint.split("/packetflow")[0].replace("ws://", "http://", 1) + "/status"
    with urllib.request.urlopen(url, timeout=5) as response:
        return orjson.loads(response.read())


def serve_takes(flag: str) -> bool:
    """Whether this checkout's `pfnode serve` takes `flag` (its --help lists it)."""
    try:
        out = subprocess.run([sys.executable, "-m", "pfnode", "serve", "--help"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", out.stdout) is not None


def worker_start_of(front_pid: int) -> str:
    """How a node's workers were started, from its process tree: "fork" when the front has a
    fork server child (pfnode/pool/forkserver.py; the workers are its children), else "spawn"."""
    import psutil

    for child in psutil.Process(front_pid).children():
        try:
            if "pfnode.pool.forkserver" in child.cmdline():
                return "fork"
        except psutil.Error:
            pass
    return "spawn"


# ---------------------------------------------------------------------------- in the child

def _child_setup() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    die_with_parent()


def _reply(conn, status: str, value) -> None:
    try:
        conn.send((status, value))
    except OSError:  # the parent stopped waiting (Ctrl-C): nothing to report to
        pass


def _call_entry(conn, func, kwargs: dict) -> None:
    """A one-shot call: func(**kwargs), its result (or what went wrong) sent back on `conn`."""
    _child_setup()
    try:
        result = func(**kwargs)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        _reply(conn, "error", str(exc) if isinstance(exc, BenchError) else traceback.format_exc())
        return
    _reply(conn, "ok", result)


def _server_entry(conn, func, kwargs: dict) -> None:
    """A long-lived server: func(conn, **kwargs) answers ("ok", ...) on `conn` itself once ready."""
    _child_setup()
    try:
        func(conn, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        _reply(conn, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}")


# ---------------------------------------------------------------------------- the parent's handles

class NodeProcess:
    """One `python -m pfnode ARGV` started by the benchmark."""

    def __init__(self, name: str, argv: list[str], popen: subprocess.Popen, log_path: Path) -> None:
        self.name, self.argv, self.popen, self.log_path = name, argv, popen, log_path
        self.pids: list[int] = []  # the front first, then its workers
        self.endpoint = ""
        self.returncode: int | None = None

    @property
    def front_pid(self) -> int:
        return self.pids[0]

    @property
    def worker_pids(self) -> list[int]:
        return self.pids[1:]

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_text(self, tail: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-tail:])

    def log_problems(self) -> list[str]:
        """Its log lines at WARNING or ERROR."""
        return [line for line in self.log().splitlines() if " WARNING " in line or " ERROR " in line]

    def wait_log(self, pattern: re.Pattern, what: str, timeout_s: float = 30.0) -> re.Match:
        """Wait until its log matches `pattern`; fail if it exits first or it takes too long."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = pattern.search(self.log())
            if match:
                return match
            if not self.alive():
                raise BenchError(f"the {self.name} node exited while waiting for {what}:\n{self.log_text()}")
            time.sleep(0.05)
        raise BenchError(f"{what}: not within {timeout_s:.0f} s; {self.name} node log:\n{self.log_text()}")


class ChildServer:
    """A long-lived server in a child process (see `Processes.start_server`). `ready` is what
    it answered when it started (an echo server's port, the reactor's pid)."""

    def __init__(self, procs: "Processes", name: str, proc, conn, ready) -> None:
        self.procs, self.name, self.proc, self.conn, self.ready = procs, name, proc, conn, ready

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.is_alive()

    def answer(self, what: str, timeout_s: float):
        """The child's next ("ok", value) on its pipe; BenchError for anything else."""
        try:
            if not self.conn.poll(timeout_s):
                raise BenchError(f"{self.name}: no answer to {what} within {timeout_s:.0f} s")
            status, value = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(5)
            raise BenchError(f"{self.name} died ({what}; exit code {self.proc.exitcode})") from None
        if status != "ok":
            raise BenchError(f"{self.name} failed ({what}): {value}")
        return value

    def ask_stop(self, timeout_s: float = 15.0):
        """Send "stop" and return its final answer, then make sure it is gone."""
        try:
            self.conn.send("stop")
            return self.answer("stop", timeout_s)
        except OSError as exc:  # it is gone already
            raise BenchError(f"{self.name}: cannot stop it ({exc}; exit code {self.proc.exitcode})") from None
        finally:
            self.stop(wait_s=5.0)

    def stop(self, wait_s: float = 0.0) -> None:
        """Close its pipe; give it wait_s to exit, then SIGTERM (then SIGKILL) it."""
        self.conn.close()
        self.procs.stop_child(self.proc, wait_s)


class Processes:
    """Every process this benchmark starts, so that all of them can be stopped."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.children: set = set()
        self.nodes: dict[str, NodeProcess] = {}
        self._log_dir: Path | None = None

    @property
    def log_dir(self) -> Path:
        if self._log_dir is None:
            self._log_dir = Path(tempfile.mkdtemp(prefix="pfnode-bench-"))
        return self._log_dir

    def _spawn(self, entry, name: str, func, kwargs: dict, duplex: bool):
        recv_conn, send_conn = self.ctx.Pipe(duplex=duplex)
        proc = self.ctx.Process(target=entry, args=(send_conn, func, kwargs), name=name)
        proc.start()
        send_conn.close()
        self.children.add(proc)
        return proc, recv_conn

    # -- multiprocessing children
    def call(self, label: str, func, limit_s: float, **kwargs):
        """Run func(**kwargs) in a fresh process; return its result or raise BenchError."""
        proc, conn = self._spawn(_call_entry, f"bench-{label}", func, kwargs, duplex=False)
        answered = False
        try:
            if not conn.poll(limit_s):
                raise BenchError(f"{label}: no answer within {limit_s:.0f} s")
            try:
                status, payload = conn.recv()
            except EOFError:
                proc.join(5)
                raise BenchError(f"{label}: client process died (exit code {proc.exitcode})") from None
            answered = True
        finally:
            conn.close()
            # An answered child exits by itself; any other (timeout, Ctrl-C) is stopped now.
            self.stop_child(proc, wait_s=5.0 if answered else 0.0)
        if status != "ok":
            raise BenchError(f"{label} failed: {payload}")
        return payload

    def start_server(self, name: str, func, timeout_s: float = 30.0, **kwargs) -> ChildServer:
        """Start func(conn, **kwargs) in a child process and wait for its ("ok", value)."""
        proc, conn = self._spawn(_server_entry, f"bench-{name}", func, kwargs, duplex=True)
        server = ChildServer(self, name, proc, conn, None)
        server.ready = server.answer("start", timeout_s)
        return server

    def stop_child(self, proc, wait_s: float = 5.0) -> None:
        """Let a child finish for wait_s, then SIGTERM it, then SIGKILL it."""
        proc.join(wait_s)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
        self.children.discard(proc)

    # -- the nodes
    def launch_node(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> NodeProcess:
        """Start `python -m pfnode ARGV` (cwd: the repository root, output to a log file; `env`
        added to this process's environment); do not wait for it (see `wait_node`)."""
        log_path = self.log_dir / f"node-{name}.log"
        with open(log_path, "wb") as log_file:
            popen = subprocess.Popen(
                [sys.executable, "-m", "pfnode", *argv],
                cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})}, preexec_fn=lambda: die_with_parent(signal.SIGTERM))
        node = self.nodes[name] = NodeProcess(name, argv, popen, log_path)
        return node

    def wait_node(self, node: NodeProcess, ready: re.Pattern = SERVING, timeout_s: float = 60.0) -> NodeProcess:
        """Wait until the node's log matches `ready`; its first group, if it has one, is the
        node's endpoint. The front's pid and its children's (the workers) are noted then."""
        import psutil

        match = node.wait_log(ready, f"the {node.name} node's start", timeout_s)
        node.pids = [node.popen.pid] + [p.pid for p in psutil.Process(node.popen.pid).children(recursive=True)]
        node.endpoint = match.group(1) if ready.groups else ""
        return node

    def start_nodes(self, argvs: dict[str, list[str]], envs: dict[str, dict[str, str]] | None = None
                    ) -> dict[str, NodeProcess]:
        """Start several nodes at once (name -> argv; name -> added environment) and wait until
        each serves."""
        launched = {name: self.launch_node(name, argv, (envs or {}).get(name)) for name, argv in argvs.items()}
        return {name: self.wait_node(node) for name, node in launched.items()}

    def node_log_text(self, tail: int = 40) -> str:
        """The tail of every running or stopped node's log, each under its name."""
        parts = [f"--- {node.name} node log\n{node.log_text(tail)}" for node in self.nodes.values()
                 if node.log_text(tail)]
        return "\n".join(parts)

    def stop_node(self, name: str) -> int | None:
        """SIGTERM the node (SIGKILL after 20 s), make sure its workers went with it; its exit status."""
        node = self.nodes.get(name)
        if node is None or node.popen is None:
            return node.returncode if node else None
        popen, node.popen = node.popen, None
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(20)
            except subprocess.TimeoutExpired:
                progress(f"{name} node did not stop within 20 s of SIGTERM; killing it")
                popen.kill()
                popen.wait()
        import psutil

        for pid in node.pids[1:]:
            try:
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    progress(f"{name} node worker pid {pid} outlived the node; killing it")
                    proc.kill()
            except psutil.Error:
                pass
        node.returncode = popen.returncode
        return popen.returncode

    def stop_all(self) -> None:
        for proc in list(self.children):
            self.stop_child(proc, wait_s=0)
        for name in list(self.nodes):
            self.stop_node(name)

    def remove_logs(self) -> None:
        """Delete the nodes' logs (after a run that succeeded; a failed one keeps them)."""
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None


def run_with_cleanup(run_fn, args) -> dict | int:
    """`run_fn(args, procs)`, with every child process stopped however it ends (done, Ctrl-C,
    SIGTERM, a failure). Returns the report, or the exit status when it did not complete."""
    procs = Processes()

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return run_fn(args, procs)
    except KeyboardInterrupt:
        progress("interrupted; stopping every process ...")
        return 130
    except BenchError as exc:
        progress(f"FAILED: {exc}")
        tail = procs.node_log_text()
        if tail:
            progress(f"node logs (tail):\n{tail}")
        return 1
    finally:
        # Ctrl-C during cleanup must not leave anything behind either.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        procs.stop_all()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
