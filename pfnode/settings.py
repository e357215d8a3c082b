"""One settings object, built by the CLI (or by code) and passed explicitly everywhere.

Fields carry their units in their names. The object is picklable so that the pool
can hand it to worker processes unchanged.
"""
from __future__ import annotations

import dataclasses
import os

from .errors import ConfigError

DEFAULT_HANDLER_MODULES = ("handlers.examples", "handlers.numeric")


@dataclasses.dataclass(frozen=True)
class Settings:
    # Where the WebSocket endpoint listens: ws://host:port/path
    host: str = "127.0.0.1"
    port: int = 8443
    path: str = "/packetflow/v1"
    # The WebSocket layer: "picows" (Cython, the faster: see bench/) or "websockets"
    # (pure Python, the reference); both pass the same test suite
    transport: str = "picows"

    # Worker pool. Lanes: cf has one worker pinned to one core; df has `workers`;
    # ed has `ed_workers` reserved for ed packets; rm has `rm_workers`, memory-limited.
    # None: as the capacity recommendation says at start (usable cores, as memory allows)
    workers: int | None = None
    ed_workers: int = 1
    rm_workers: int = 1
    cf_core: int | None = None  # the core the cf worker is pinned to; None: the last usable one
    rm_memory_limit_mb: int = 1024  # address space an rm handler may add to its worker
    handler_modules: tuple[str, ...] = DEFAULT_HANDLER_MODULES
    # Prefetch (pfnode/dispatch.py): besides the packet it runs, a df worker holds about
    # prefetch_ms of estimated work (its handlers' moving average run times), and at most
    # worker_window packets in all; cf, ed and rm workers take one at a time.
    prefetch_ms: float = 1.0
    worker_window: int = 32
    worker_start_timeout_ms: int = 30_000
    # "fork": workers are forked by a fork server that has the handler modules imported
    # (a replacement takes milliseconds); "spawn": each is a new interpreter (for handler
    # modules that start threads at import, which forking cannot copy)
    worker_start: str = "fork"
    # Threads for numpy's BLAS in each worker: the pool parallelises across processes,
    # so more threads per worker only oversubscribe the cores.
    worker_blas_threads: int = 1
    # Payloads over shm_threshold_bytes travel through a shared-memory ring of
    # worker_shm_bytes per direction per worker instead of the pipe (0: pipes only).
    worker_shm_bytes: int = 8 * 1024 * 1024
    shm_threshold_bytes: int = 32 * 1024

    # Scheduling
    aging_ms: int = 1000  # a queued packet gains one priority level per aging_ms waited (up to 10)
    max_queued: int = 100_000  # node-wide bound on packets waiting; past it new packets get PF004
    max_blocked: int = 10_000  # packets waiting for dependencies, node-wide
    max_blocked_per_client: int = 1_000  # ... of one client
    max_queued_bytes: int = 1 << 30  # data of the packets in flight, node-wide
    max_queued_bytes_per_client: int = 256 << 20  # ... of one client
    result_store_entries: int = 10_000  # completed results kept for dependencies
    result_store_age_ms: int = 600_000
    result_store_bytes: int = 256 * 1024 * 1024

    # Autoscaling of the df lane (off by default): between min and max workers, by queue depth
    autoscale: bool = False
    autoscale_interval_ms: int = 1000
    df_min_workers: int = 1
    df_max_workers: int = dataclasses.field(default_factory=lambda: 2 * (os.cpu_count() or 1))

    # Packets
    default_timeout_ms: int = 30_000
    max_timeout_ms: int = 24 * 3600 * 1000
    max_frame_bytes: int = 16 * 1024 * 1024

    # Connections
    max_connections: int = 1000  # past it, a new connection's handshake is answered 503
    max_inflight_per_connection: int = 1024
    # A client that does not read its results: past write_buffer_high_bytes buffered for it,
    # its reading pauses (no new work from it); past max_write_buffer_bytes it is closed (1008)
    write_buffer_high_bytes: int = 1 << 20
    max_write_buffer_bytes: int = 64 << 20
    heartbeat_interval_ms: int = 30_000
    heartbeat_missed_limit: int = 3

    # Hub routing (pfnode/hub.py): packets with no local handler go to connected reactors.
    # Off: they are answered PF001 at once.
    hub_routing: bool = True
    # How long a forwarded packet whose reactor went away waits for another (within its deadline)
    reroute_grace_ms: int = 10_000
    # How long a link that never answered a forwarded packet nor announced capabilities
    # is given to answer one before the hub asks the next (a plain client gets PF001 then)
    probe_ms: int = 500

    # Dial-out (`pfnode connect`, pfnode/dialout.py): reconnect delays grow from min to max,
    # doubled each failed try, with random jitter; answers are kept this many packets back
    # so a packet the hub sends again after a reconnect is answered, not run twice.
    reconnect_min_ms: int = 250
    reconnect_max_ms: int = 15_000
    replay_entries: int = 10_000

    # Shutdown: how long in-flight packets may take to finish before they get PF503
    shutdown_grace_ms: int = 10_000

    log_level: str = "INFO"

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be 0..65535, got {self.port}")
        if self.worker_start not in ("fork", "spawn"):
            problems.append(f"worker_start must be fork or spawn, got {self.worker_start!r}")
        if self.transport not in ("websockets", "picows"):
            problems.append(f"transport must be websockets or picows, got {self.transport!r}")
        if not self.path.startswith("/"):
            problems.append(f"path must start with '/', got {self.path!r}")
        if self.workers is not None and self.workers < 1:
            problems.append(f"workers must be >= 1, got {self.workers}")
        for name in ("ed_workers", "rm_workers"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.cf_core is not None and self.cf_core not in os.sched_getaffinity(0):
            problems.append(f"cf_core {self.cf_core} is not one of this process's cores "
                            f"{sorted(os.sched_getaffinity(0))}")
        if not 1 <= self.df_min_workers <= self.df_max_workers:
            problems.append("need 1 <= df_min_workers <= df_max_workers")
        if self.worker_window < 1:
            problems.append(f"worker_window must be >= 1, got {self.worker_window}")
        if self.prefetch_ms < 0:
            problems.append(f"prefetch_ms must be >= 0, got {self.prefetch_ms}")
        for name in ("default_timeout_ms", "max_timeout_ms", "max_frame_bytes",
                     "max_inflight_per_connection", "heartbeat_interval_ms",
                     "heartbeat_missed_limit", "worker_start_timeout_ms", "rm_memory_limit_mb",
                     "max_queued", "max_blocked", "max_blocked_per_client", "max_queued_bytes",
                     "max_queued_bytes_per_client", "max_connections", "write_buffer_high_bytes",
                     "max_write_buffer_bytes", "result_store_entries", "result_store_age_ms", "result_store_bytes",
                     "autoscale_interval_ms", "worker_blas_threads", "reroute_grace_ms", "probe_ms",
                     "reconnect_min_ms", "reconnect_max_ms", "replay_entries"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.worker_shm_bytes < 0 or self.shm_threshold_bytes < 0:
            problems.append("worker_shm_bytes and shm_threshold_bytes must be >= 0")
        if self.aging_ms < 0:
            problems.append(f"aging_ms must be >= 0 (0 turns aging off), got {self.aging_ms}")
        if self.shutdown_grace_ms < 0:
            problems.append(f"shutdown_grace_ms must be >= 0, got {self.shutdown_grace_ms}")
        if self.reconnect_min_ms > self.reconnect_max_ms:
            problems.append("reconnect_min_ms must not exceed reconnect_max_ms")
        if self.write_buffer_high_bytes > self.max_write_buffer_bytes:
            problems.append("write_buffer_high_bytes must not exceed max_write_buffer_bytes")
        if self.default_timeout_ms > self.max_timeout_ms:
            problems.append("default_timeout_ms must not exceed max_timeout_ms")
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))

    @property
    def endpoint(self) -> str:
        return f"ws://{self.host}:{self.port}{self.path}"

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)
