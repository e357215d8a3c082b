"""The front process: a node, its transport, its signals, its life from start to drain.

`run(settings)` serves the PacketFlow endpoint on the configured transport until
SIGTERM or SIGINT; `run(settings, connect_url)` listens nowhere and dials out to a hub
instead (pfnode/app/dialout.py). The node (pfnode/node/) holds every protocol rule; this
module only wires it to the outside world.
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
from typing import Any

from ..ops import logs, sdnotify
from .. import transports
from ..transports import tls
from ..node.node import Node
from ..errors import ConfigError
from ..settings import Settings, is_loopback

log = logging.getLogger("pfnode.front")

def endpoint_of(node: Node, server: Any) -> str:
    port = server.sockets[0].getsockname()[1]
    return f"{node.settings.scheme}://{node.settings.host}:{port}{node.settings.path}"


FDS_BESIDE_CONNECTIONS = 256  # the workers' pipes and rings, the fork server, logs, /healthz and the rest


def fit_open_files(settings: Settings) -> tuple[Settings, str | None]:
    """Let the node hold its connections: the soft RLIMIT_NOFILE up to the hard one; when
    even that cannot hold --max-connections and the rest, lower --max-connections to what
    fits, so that the node refuses connections (503) before it runs out of file descriptors
    (where an accept loop can only fail, over and over). Returns the settings and a warning
    for the node to log once it has started."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= settings.max_connections + FDS_BESIDE_CONNECTIONS:
        return settings, None
    fits = max(1, soft - FDS_BESIDE_CONNECTIONS)
    return settings.replace(max_connections=fits), (
        f"front: only {soft} open files allowed; --max-connections {settings.max_connections} needs about "
        f"{settings.max_connections + FDS_BESIDE_CONNECTIONS}: serving at most {fits} connections (raise "
        "LimitNOFILE / ulimit -n, or set --max-connections)")


OUT_OF_FILES = "socket.accept() out of system resource"  # asyncio's (and aiofastnet's) words for EMFILE


def quiet_handshake_failures(node: Node, loop: asyncio.AbstractEventLoop) -> None:
    """A client that gives up its TLS handshake is counted (`pfnode_connections_refused_total`,
    reason `tls`) and logged as one refused connection, at most one line a minute (the
    node's `refusals` limiter), instead of the event loop's error with a traceback. So is an
    accept that fails for want of file descriptors (reason `out_of_files`: the listener
    pauses a moment and tries again). Every other exception the loop reports goes where it went."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") == OUT_OF_FILES:
            node.metrics.connection_refused("out_of_files")
            logs.connection_refused(log, peer=None, reason="out_of_files", limiter=node.refusals,
                                    detail=f"{context.get('exception')}: accepting again in a second")
            return
        failure = tls.handshake_failure(context)
        if failure is None:
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        peer, why = failure
        node.metrics.connection_refused("tls")
        logs.connection_refused(log, peer=peer, reason="tls", detail=f"TLS handshake failed: {why}",
                                limiter=node.refusals, level=logging.INFO)

    loop.set_exception_handler(handler)


async def run_node(node: Node, connect_url: str | None = None, token: str | None = None,
                   files_warning: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `node.stopping` is set), then drain and stop; with
    `connect_url`, dial out to that hub instead (presenting `token`, if any). A node that
    fails to start (the port in use, a handler module that cannot be imported, a TLS file
    missing) stops what it started without a word and raises: the caller reports it, as the
    one line of the node's log."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.stopping.set)  # handlers only enqueue
    loop.add_signal_handler(signal.SIGHUP, node.request_reload)
    transport = transports.load(node.settings.transport)
    server = dialer = None
    started = False
    try:
        if connect_url is None:
            # listen first, so that a port in use is reported at once, not after the workers
            # started; packets that arrive before they are ready are answered PF503
            s = node.settings
            ssl_context = tls.server_context(s.tls_cert, s.tls_key, s.tls_client_ca) if s.tls_cert else None
            quiet_handshake_failures(node, loop)
            try:
                server = await transport.serve(node, ssl_context)
            except OSError as exc:  # the port in use, an address not of this machine
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise ConfigError(f"cannot listen on {s.host}:{s.port}: {reason}") from None
            await node.start()
            where = f"serving {endpoint_of(node, server)}"
        else:
            await node.start()
            from .dialout import dial

            dialer = asyncio.ensure_future(dial(node, connect_url, token))
            dialer.add_done_callback(lambda _: node.stopping.set())
            where = "started without a listening endpoint"
        started = True
        if files_warning:
            log.warning("%s", files_warning)
        _started_lines(node, where, listening=connect_url is None)
        await sdnotify.ready_until(node.stopping, where)  # systemd: READY=1, then STOPPING=1
    finally:
        await node.shutdown(quiet=not started)
        if server is not None:
            server.close()
            await server.wait_closed()
        if dialer is not None:
            await asyncio.wait_for(dialer, 5.0)


def _started_lines(node: Node, where: str, listening: bool) -> None:
    """What a node that has started says: its warnings, then the one line that it is ready."""
    s = node.settings
    if node.access.enabled:
        log.info("front: %d tokens from %s", len(node.access.tokens), s.token_file)
        if listening and not s.tls_cert and not is_loopback(s.host):
            log.warning("front: listening on %s with tokens but without TLS: the tokens travel in "
                        "cleartext; give --tls-cert and --tls-key (or put a TLS proxy in front and "
                        "listen on loopback)", s.host, extra={"event": "cleartext_tokens", "host": s.host})
    elif listening and s.insecure_no_auth:
        log.warning("front: no authentication (--insecure-no-auth) on %s: anyone who can reach "
                    "the port can submit, answer forwarded packets and resize the node", s.host)
    hot = node.hot_path
    if hot["stale"]:
        log.warning("front: %s: compiled from older source, so the .py runs instead (rebuild: make native)",
                    ", ".join(hot["stale"]), extra={"event": "stale_compiled", "modules": hot["stale"]})
    log.info("front: hot path %s (%d of %d modules compiled%s)", hot["mode"], len(hot["compiled"]), hot["of"],
             "; PFNODE_PURE=1" if hot["pure_forced"] else "")
    keys = node.keys()
    log.info("front: %s with lanes %s; ready; %d handlers: %s", where,
             ", ".join(f"{k}={v}" for k, v in node.pool.lane_sizes().items()), len(keys), ", ".join(keys))


def run(settings: Settings, connect_url: str | None = None, token: str | None = None) -> None:
    """Run a node in this process until SIGTERM/SIGINT; with `connect_url`, as a
    reactor of the hub there instead of listening (presenting `token`, if any)."""
    settings, files_warning = fit_open_files(settings)
    node_main = run_node(Node(settings), connect_url, token, files_warning)
    try:
        import uvloop
    except ImportError:  # uvloop is optional at run time; asyncio's loop works too
        asyncio.run(node_main)
    else:
        uvloop.run(node_main)
