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

    # Worker pool
    workers: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    handler_modules: tuple[str, ...] = DEFAULT_HANDLER_MODULES
    # How many packets the front hands one worker before it has answered any;
    # >1 hides the pipe round trip for small packets.
    worker_prefetch: int = 4
    worker_start_timeout_ms: int = 30_000

    # Packets
    default_timeout_ms: int = 30_000
    max_timeout_ms: int = 24 * 3600 * 1000
    max_frame_bytes: int = 16 * 1024 * 1024

    # Connections
    max_inflight_per_connection: int = 1024
    heartbeat_interval_ms: int = 30_000
    heartbeat_missed_limit: int = 3

    # Shutdown: how long in-flight packets may take to finish before they get PF503
    shutdown_grace_ms: int = 10_000

    log_level: str = "INFO"

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be 0..65535, got {self.port}")
        if not self.path.startswith("/"):
            problems.append(f"path must start with '/', got {self.path!r}")
        if self.workers < 1:
            problems.append(f"workers must be >= 1, got {self.workers}")
        if self.worker_prefetch < 1:
            problems.append(f"worker_prefetch must be >= 1, got {self.worker_prefetch}")
        for name in ("default_timeout_ms", "max_timeout_ms", "max_frame_bytes",
                     "max_inflight_per_connection", "heartbeat_interval_ms",
                     "heartbeat_missed_limit", "worker_start_timeout_ms"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.shutdown_grace_ms < 0:
            problems.append(f"shutdown_grace_ms must be >= 0, got {self.shutdown_grace_ms}")
        if self.default_timeout_ms > self.max_timeout_ms:
            problems.append("default_timeout_ms must not exceed max_timeout_ms")
        if problems:
            raise ConfigError("invalid settings: " + "; ".join(problems))

    @property
    def endpoint(self) -> str:
        return f"ws://{self.host}:{self.port}{self.path}"

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)
