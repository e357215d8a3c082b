"""One settings object, built by the CLI (or by code) and passed explicitly everywhere.

Fields carry their units in their names. The object is picklable so that the pool
can hand it to worker processes unchanged.

Each field is the one definition of its setting: its annotation is its type, and
`setting(default, help, ...)` gives its one-line help and where its option appears.
pfnode/app/config.py derives from the fields the flag `--field-name`, the environment
variable `PFNODE_FIELD_NAME` and the TOML key `field_name`, so a new field needs
nothing more than its line here (with its help: tests/test_config.py checks).
"""
from __future__ import annotations

import dataclasses
import functools
import os
import typing
from typing import Literal

from .errors import ConfigError
from .transports import NAMES as TRANSPORT_NAMES

DEFAULT_HANDLER_MODULES = ("pfnode.handlers.examples", "pfnode.handlers.numeric")


def setting(default=dataclasses.MISSING, help: str = "", *, factory=None, default_text: str = "",
            scope: str = "", flags: tuple[str, ...] = (), unset: str = "none"):
    """A Settings field with its help text and its command-line metadata.

    factory: builds the default at construction (then default_text says it in words, for
    the docs); scope: "serve" or "connect" when the flag belongs to that subcommand only
    (the environment and the file set it everywhere); flags: spellings kept besides
    `--field-name`; unset: how an `X | None` field's None is shown ("none": not set;
    "auto": decided at start). Every setting is listed by `--help`, in its group of
    `HELP_GROUPS`.
    """
    metadata = {"help": help, "default_text": default_text, "scope": scope,
                "flags": tuple(flags), "unset": unset}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def is_loopback(host: str) -> bool:
    """Whether a listening address reaches this machine only (Redis' protected mode rule)."""
    import ipaddress

    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name, or "" and "0.0.0.0"-like wildcards: not loopback


class SettingsError(ConfigError):
    """Settings with problems; `problems` lists every one of them."""

    def __init__(self, problems: list[str], heading: str = "invalid settings", *,
                 one_line: bool = False) -> None:
        """`one_line`: a single problem is written on the heading's line."""
        self.problems = list(problems)
        if one_line and len(self.problems) == 1:
            super().__init__(f"{heading}: {self.problems[0]}")
        else:
            super().__init__(f"{heading}:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclasses.dataclass(frozen=True)
class Settings:
    # Where the WebSocket endpoint listens: ws://host:port/path
    host: str = setting("127.0.0.1", "address to listen on", scope="serve")
    port: int = setting(8443, "TCP port to listen on (0 picks a free one)", scope="serve")
    path: str = setting("/packetflow/v1", "the WebSocket endpoint's path", scope="serve")
    # The WebSocket layer: "picows" (Cython, the faster: see bench/) or "websockets"
    # (pure Python, the reference); both pass the same test suite
    transport: Literal[TRANSPORT_NAMES] = setting(
        "picows", "WebSocket layer: the endpoint's, or the uplink's for connect")

    # Worker pool. Lanes: cf has one worker pinned to one core; df has `workers`;
    # ed has `ed_workers` reserved for ed packets; rm has `rm_workers`, memory-limited.
    workers: int | None = setting(
        None, "df lane workers (auto: the capacity recommendation, one per usable core as "
        "memory allows)", unset="auto")
    ed_workers: int = setting(1, "workers reserved for ed packets")
    rm_workers: int = setting(1, "memory-limited workers for rm packets (0 sends rm to df)")
    cf_core: int | None = setting(None, "core the cf worker is pinned to (auto: the last usable one)",
                                  unset="auto")
    rm_memory_limit_mb: int = setting(1024, "address space an rm handler may add to its worker")
    frames_per_turn: int = setting(64, "frames the front takes from its peers in one turn of its event loop "
                                   "before it polls every socket and pipe again (bounds how long one "
                                   "peer's flood delays another's frames)")
    batch_nice: int = setting(5, "niceness the cf, df and rm workers add to the node's, so that "
                              "the front and the ed lane get the CPU first on a saturated machine "
                              "(0: all alike)")
    handler_modules: tuple[str, ...] = setting(
        DEFAULT_HANDLER_MODULES, "handler modules to import", flags=("--handlers",))
    data_elements: bool = setting(True, "register the standard df:produce, df:transform and df:reduce in "
                                  "every worker, before the handler modules (a handler of the same key "
                                  "replaces one); off: keys no module registers go to the hub")
    # Prefetch (pfnode/core/dispatch.py): besides the packet it runs, a df worker holds about
    # prefetch_ms of estimated work (its handlers' moving average run times), and at most
    # worker_window packets in all; cf, ed and rm workers take one at a time.
    prefetch_ms: float = setting(1.0, "estimated work a df worker holds beyond the packet it runs")
    worker_window: int = setting(32, "most packets one df worker holds at once (1: one at a time)")
    worker_start_timeout_ms: int = setting(30_000, "how long a new worker may take to become ready")
    # "fork": workers are forked by a fork server that has the handler modules imported
    # (a replacement takes milliseconds); "spawn": each is a new interpreter (for handler
    # modules that start threads at import, which forking cannot copy)
    worker_start: Literal["fork", "spawn"] = setting(
        "fork", "how workers start: forked by a fork server with the handler modules imported "
        "(fast), or spawned as new interpreters (for modules that start threads at import)")
    # Threads for numpy's BLAS in each worker: the pool parallelises across processes,
    # so more threads per worker only oversubscribe the cores.
    worker_blas_threads: int = setting(1, "numpy BLAS threads in each worker")
    # Payloads over shm_threshold_bytes travel through a shared-memory ring of
    # worker_shm_bytes per direction per worker instead of the pipe (0: pipes only).
    worker_shm_bytes: int = setting(8 * 1024 * 1024, "shared-memory ring per worker and direction "
                                    "for large payloads (0: pipes only)")
    shm_threshold_bytes: int = setting(32 * 1024, "payloads over this size go through the "
                                       "shared-memory ring")

    # Scheduling
    aging_ms: int = setting(1000, "a waiting packet gains one priority level per this many ms, up "
                            "to 10 (0: strict priorities)")
    max_queued: int = setting(100_000, "node-wide bound on waiting packets; past it PF004")
    max_blocked: int = setting(10_000, "node-wide bound on packets waiting for dependencies")
    max_blocked_per_client: int = setting(1_000, "packets of one client waiting for dependencies")
    max_queued_bytes: int = setting(1 << 30, "data of the packets in flight, node-wide")
    max_queued_bytes_per_client: int = setting(256 << 20, "data of one client's packets in flight")
    result_store_entries: int = setting(10_000, "completed results kept for dependencies")
    result_store_age_ms: int = setting(600_000, "how long a completed result is kept for "
                                       "dependencies")
    result_store_bytes: int = setting(256 * 1024 * 1024, "memory the kept results may take")

    # Resources the standard elements hold (pfnode/elements/hosted/resources.py): rm:alloc's
    # shared-memory buffers, and rm:cache's entries with the memoised results
    max_buffer_bytes: int = setting(256 << 20, "shared memory rm:alloc buffers may take, node-wide")
    cache_bytes: int = setting(64 << 20, "memory rm:cache entries and memoised results really take "
                               "(values, keys, records), node-wide; one client's share of it while "
                               "others hold some")

    # Autoscaling of the df lane (off by default): between min and max workers, by queue depth
    autoscale: bool = setting(False, "grow and shrink the df lane with its queue")
    autoscale_interval_ms: int = setting(1000, "how often autoscaling looks at the queue")
    df_min_workers: int = setting(1, "autoscaling lower bound")
    df_max_workers: int = setting(factory=lambda: 2 * (os.cpu_count() or 1), default_text="2 × cores",
                                  help="autoscaling upper bound")

    # Packets
    default_timeout_ms: int = setting(30_000, "deadline of packets that set no timeout_ms")
    max_timeout_ms: int = setting(24 * 3600 * 1000, "longest deadline a packet may ask for")
    max_frame_bytes: int = setting(16 * 1024 * 1024, "frames larger than this get PF413")

    # Connections
    max_connections: int = setting(1000, "connections at once; past it a handshake is answered 503")
    max_inflight_per_connection: int = setting(1024, "a peer's reads pause at this many "
                                               "unanswered packets")
    idle_link_ms: int = setting(30_000, "past 90 % of max_connections, a connection that never submitted "
                                "nor answered a packet for this long is closed (1013)")
    # A client that does not read its results: past write_buffer_high_bytes buffered for it,
    # its reading pauses (no new work from it); past max_write_buffer_bytes it is closed (1008)
    write_buffer_high_bytes: int = setting(1 << 20, "results buffered for a peer past which its "
                                           "reading pauses")
    max_write_buffer_bytes: int = setting(64 << 20, "results buffered for a peer past which it is "
                                          "closed (1008: not reading)")
    heartbeat_interval_ms: int = setting(30_000, "heartbeat period")
    heartbeat_missed_limit: int = setting(3, "peers silent for this many heartbeat periods are "
                                          "dropped")

    # Security (pfnode/node/auth.py, pfnode/transports/tls.py). Without a token file the node listens on
    # loopback only, unless told otherwise with insecure_no_auth (and says so in its log).
    token_file: str | None = setting(None, "TOML file of tokens and their roles (submit, reactor, "
                                     "admin); reloaded on SIGHUP", scope="serve")
    insecure_no_auth: bool = setting(False, "allow listening on a non-loopback address without a "
                                     "token file (anyone who can reach the port controls the node)",
                                     scope="serve")
    tls_cert: str | None = setting(None, "PEM certificate (chain) to serve wss:// with", scope="serve")
    tls_key: str | None = setting(None, "PEM private key of tls_cert", scope="serve")
    tls_client_ca: str | None = setting(None, "require client certificates signed by this CA bundle "
                                        "(mutual TLS)", scope="serve")
    ca_file: str | None = setting(None, "CA bundle to verify the hub's certificate (default: the "
                                  "system's trust store)", scope="connect")
    client_cert: str | None = setting(None, "client certificate to present to the hub (mutual TLS)",
                                      scope="connect")
    client_key: str | None = setting(None, "private key of client_cert", scope="connect")
    tls_handshake_timeout_ms: int = setting(10_000, "how long a client may take over its TLS handshake "
                                            "before it is dropped (handshakes under way count toward "
                                            "max_connections)", scope="serve")
    # After auth_backoff_failures failed authentications (no token or an unknown one) from one
    # address within auth_backoff_ms, its requests are answered 429 for auth_backoff_ms
    # (pfnode/node/backoff.py)
    auth_backoff_failures: int = setting(20, "failed authentications from one address within "
                                         "auth_backoff_ms after which it is refused (HTTP 429) for "
                                         "auth_backoff_ms (0: never)", scope="serve")
    auth_backoff_ms: int = setting(60_000, "the window auth_backoff_failures are counted in, and how "
                                   "long the address is then refused", scope="serve")

    # Hub routing (pfnode/core/hub.py): packets with no local handler go to connected reactors.
    hub_routing: bool = setting(True, "forward packets with no local handler to connected "
                                "reactors (off: PF001 at once)", scope="serve")
    reroute_grace_ms: int = setting(10_000, "how long a forwarded packet whose reactor went away "
                                    "waits for another", scope="serve")
    probe_ms: int = setting(500, "how long a link that never answered a forwarded packet nor "
                            "announced what it runs may take to answer one before the next is "
                            "asked", scope="serve")

    # Dial-out (`pfnode connect`, pfnode/app/dialout.py): reconnect delays grow from min to max,
    # doubled each failed try, with random jitter; answers are kept this many packets back
    # so a packet the hub sends again after a reconnect is answered, not run twice.
    reconnect_min_ms: int = setting(250, "first reconnect delay; doubles per failed try",
                                    scope="connect")
    reconnect_max_ms: int = setting(15_000, "longest reconnect delay", scope="connect")
    replay_entries: int = setting(10_000, "answers kept for packets the hub may send again",
                                  scope="connect")

    # Dask (pfnode/dask/lane.py, docs/DASK.md): the dask_lanes run on a Dask cluster instead of
    # the local pool; everything above the lane (protocol, priorities, admission, hub) is unchanged.
    dask: str | None = setting(
        None, "run the dask_lanes on the Dask cluster whose scheduler is at this address "
        "(tcp://host:8786), or on a LocalCluster of N worker processes this node starts (local:N)")
    dask_lanes: tuple[str, ...] = setting(
        ("df",), "lanes (df, rm, ed, cf) and handler keys (group:element) that run on the Dask "
        "cluster when dask is set")
    dask_window: int | None = setting(
        None, "packets on the Dask cluster at once; the rest wait in the node's queue, in priority "
        "order (auto: 8 per worker thread, at least 64)", unset="auto")
    dask_direct: bool = setting(True, "fetch results straight from the Dask workers (off: through "
                                "the scheduler, for workers this node cannot reach)")
    dask_connect_timeout_ms: int = setting(10_000, "how long connecting to the Dask scheduler may take")
    dask_kept_results: int = setting(1_000, "results of Dask packets kept on the cluster for their "
                                     "dependents (older ones travel from the node)")
    dask_reclaim_grace_ms: int = setting(5_000, "a packet still running on a Dask worker this long after "
                                         "its deadline (it was answered PF408 at it) has its worker restarted, "
                                         "so a hung handler cannot hold a Dask worker forever")
    dask_upload: bool = setting(False, "ship the handler modules' source (a .py file, or a package as a .zip) "
                                "to the Dask workers at connection and on SIGHUP, for workers that lack them")

    shutdown_grace_ms: int = setting(10_000, "how long in-flight packets may take to finish on "
                                     "SIGTERM before they get PF503")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting("INFO", "log level")
    log_format: Literal["text", "json"] = setting("text", "log line format: text, or json (one object per line)")

    def __post_init__(self) -> None:
        problems = [f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}"
                    for name, choices in _choices().items() if getattr(self, name) not in choices]
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be 0..65535, got {self.port}")
        if not self.path.startswith("/"):
            problems.append(f"path must start with '/', got {self.path!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append("tls_cert and tls_key go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            problems.append("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)")
        if (self.client_cert is None) != (self.client_key is None):
            problems.append("client_cert and client_key go together")
        if self.token_file is None and not self.insecure_no_auth and not is_loopback(self.host):
            problems.append(f"listening on {self.host} without authentication: give a token_file "
                            "(--token-file), or accept the risk with --insecure-no-auth")
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
        if not 0 <= self.batch_nice <= 19:
            problems.append(f"batch_nice must be 0..19 (a niceness added to the node's), got {self.batch_nice}")
        if self.prefetch_ms < 0:
            problems.append(f"prefetch_ms must be >= 0, got {self.prefetch_ms}")
        for name in ("default_timeout_ms", "max_timeout_ms", "max_frame_bytes",
                     "max_inflight_per_connection", "heartbeat_interval_ms", "frames_per_turn",
                     "heartbeat_missed_limit", "worker_start_timeout_ms", "rm_memory_limit_mb",
                     "max_queued", "max_blocked", "max_blocked_per_client", "max_queued_bytes",
                     "max_queued_bytes_per_client", "max_connections", "write_buffer_high_bytes",
                     "max_write_buffer_bytes", "result_store_entries", "result_store_age_ms", "result_store_bytes",
                     "autoscale_interval_ms", "worker_blas_threads", "reroute_grace_ms", "probe_ms",
                     "reconnect_min_ms", "reconnect_max_ms", "replay_entries", "max_buffer_bytes",
                     "cache_bytes", "idle_link_ms", "tls_handshake_timeout_ms", "auth_backoff_ms"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, got {getattr(self, name)}")
        if self.auth_backoff_failures < 0:
            problems.append(f"auth_backoff_failures must be >= 0 (0: no back-off), got {self.auth_backoff_failures}")
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
        if self.dask is not None:  # the dask lane's own checks (pfnode/dask/config.py)
            from .dask.config import settings_problems
            problems += settings_problems(self)
        if problems:
            raise SettingsError(problems)

    @property
    def scheme(self) -> str:
        return "wss" if self.tls_cert else "ws"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


# The groups `pfnode serve --help` (and connect's, config's) lists the settings in: every
# field in exactly one (tests/test_config.py checks), in the order shown.
HELP_GROUPS: dict[str, tuple[str, ...]] = {
    "network": ("host", "port", "path", "transport", "max_connections", "max_frame_bytes",
                "max_inflight_per_connection", "write_buffer_high_bytes", "max_write_buffer_bytes",
                "heartbeat_interval_ms", "heartbeat_missed_limit", "frames_per_turn", "idle_link_ms"),
    "security": ("token_file", "insecure_no_auth", "tls_cert", "tls_key", "tls_client_ca", "ca_file",
                 "client_cert", "client_key", "tls_handshake_timeout_ms", "auth_backoff_failures",
                 "auth_backoff_ms"),
    "handlers": ("handler_modules", "data_elements"),
    "lanes": ("workers", "ed_workers", "rm_workers", "cf_core", "rm_memory_limit_mb", "batch_nice",
              "autoscale", "autoscale_interval_ms", "df_min_workers", "df_max_workers"),
    "pool": ("worker_start", "worker_start_timeout_ms", "prefetch_ms", "worker_window",
             "worker_blas_threads", "worker_shm_bytes", "shm_threshold_bytes"),
    "scheduling": ("aging_ms", "default_timeout_ms", "max_timeout_ms", "max_queued", "max_blocked",
                   "max_blocked_per_client", "max_queued_bytes", "max_queued_bytes_per_client",
                   "result_store_entries", "result_store_age_ms", "result_store_bytes"),
    "elements": ("max_buffer_bytes", "cache_bytes"),
    "hub": ("hub_routing", "reroute_grace_ms", "probe_ms"),
    "dial-out": ("reconnect_min_ms", "reconnect_max_ms", "replay_entries"),
    "dask": ("dask", "dask_lanes", "dask_window", "dask_direct", "dask_connect_timeout_ms",
             "dask_kept_results", "dask_reclaim_grace_ms", "dask_upload"),
    "lifecycle and logging": ("shutdown_grace_ms", "log_level", "log_format"),
}


@functools.cache
def field_types() -> dict[str, object]:
    """Each field's annotation, resolved (the module's annotations are strings)."""
    return typing.get_type_hints(Settings)


@functools.cache
def _choices() -> dict[str, tuple[str, ...]]:
    """The fields annotated Literal[...] and the values each allows."""
    return {name: typing.get_args(hint) for name, hint in field_types().items()
            if typing.get_origin(hint) is Literal}
