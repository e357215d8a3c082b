"""The command line: a thin layer that builds Settings and calls the node or the client."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import orjson

from . import __version__
from .errors import PFNodeError
from .settings import DEFAULT_HANDLER_MODULES, Settings

DEFAULT_ENDPOINT = "ws://127.0.0.1:8443/packetflow/v1"


def _modules(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("give at least one module name")
    return names


def _add_node_options(parser: argparse.ArgumentParser, defaults: Settings) -> None:
    """The options of a node's pool, scheduling and links, for `serve` and `connect`."""
    parser.add_argument("--transport", choices=["websockets", "picows"],
                        default=os.environ.get("PFNODE_TRANSPORT", defaults.transport),
                        help="WebSocket layer: the endpoint's, or the uplink's for connect (default "
                        "%(default)s; env PFNODE_TRANSPORT)")
    parser.add_argument("--workers", type=int, default=None,
                       help="df lane workers (default: from capacity: one per usable core, "
                       "as memory allows)")
    parser.add_argument("--ed-workers", type=int, default=defaults.ed_workers,
                       help="workers reserved for ed packets (default %(default)s)")
    parser.add_argument("--rm-workers", type=int, default=defaults.rm_workers,
                       help="memory-limited workers for rm packets (default %(default)s; 0 sends rm to df)")
    parser.add_argument("--rm-memory-limit-mb", type=int, default=defaults.rm_memory_limit_mb,
                       help="memory an rm handler may add to its worker (default %(default)s)")
    parser.add_argument("--cf-core", type=int, default=None,
                       help="core the cf worker is pinned to (default: the last usable core)")
    parser.add_argument("--worker-shm-bytes", type=int, default=defaults.worker_shm_bytes,
                       help="shared-memory ring per worker and direction for payloads over "
                       f"{defaults.shm_threshold_bytes} bytes (default %(default)s; 0: pipes only)")
    parser.add_argument("--aging-ms", type=int, default=defaults.aging_ms,
                       help="a waiting packet gains one priority level per this many ms (default "
                       "%(default)s; 0: strict priorities)")
    parser.add_argument("--max-queued", type=int, default=defaults.max_queued,
                       help="node-wide bound on waiting packets; past it PF004 (default %(default)s)")
    parser.add_argument("--autoscale", action="store_true",
                       help="grow/shrink the df lane with its queue (off by default)")
    parser.add_argument("--df-min-workers", type=int, default=defaults.df_min_workers,
                       help="autoscaling lower bound (default %(default)s)")
    parser.add_argument("--df-max-workers", type=int, default=defaults.df_max_workers,
                       help="autoscaling upper bound (default %(default)s)")
    parser.add_argument("--handlers", type=_modules, default=DEFAULT_HANDLER_MODULES,
                       metavar="MOD1,MOD2", help="handler modules to import (default %s)"
                       % ",".join(DEFAULT_HANDLER_MODULES))
    parser.add_argument("--default-timeout-ms", type=int, default=defaults.default_timeout_ms,
                       help="deadline for packets without timeout_ms (default %(default)s)")
    parser.add_argument("--max-frame-bytes", type=int, default=defaults.max_frame_bytes,
                       help="frames larger than this get PF413 (default %(default)s)")
    parser.add_argument("--max-connections", type=int, default=defaults.max_connections,
                       help="connections at once; past it a handshake is answered 503 (default %(default)s)")
    parser.add_argument("--max-inflight-per-connection", type=int,
                       default=defaults.max_inflight_per_connection,
                       help="a peer's reads pause at this many unanswered packets (default %(default)s)")
    parser.add_argument("--worker-window", type=int, default=defaults.worker_window,
                       help="most packets one df worker holds at once (default %(default)s; 1: "
                       "one at a time)")
    parser.add_argument("--prefetch-ms", type=float, default=defaults.prefetch_ms,
                       help="estimated work a df worker holds beyond the packet it runs (default "
                       "%(default)s)")
    parser.add_argument("--heartbeat-interval-ms", type=int, default=defaults.heartbeat_interval_ms,
                       help="heartbeat period; peers silent for 3 periods are dropped (default %(default)s)")
    parser.add_argument("--shutdown-grace-ms", type=int, default=defaults.shutdown_grace_ms,
                       help="how long in-flight packets may finish on SIGTERM (default %(default)s)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pfnode", description="PacketFlow v1.0 compute node")
    parser.add_argument("--version", action="version", version=f"pfnode {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    defaults = Settings(workers=1)
    serve = commands.add_parser("serve", help="run a node",
                                description="Run a PacketFlow node until SIGTERM or Ctrl-C.")
    serve.add_argument("--host", default=defaults.host, help="address to listen on (default %(default)s)")
    serve.add_argument("--port", type=int, default=defaults.port, help="TCP port (default %(default)s; 0 picks one)")
    serve.add_argument("--path", default=defaults.path, help="WebSocket path (default %(default)s)")
    serve.add_argument("--no-hub-routing", dest="hub_routing", action="store_false",
                       help="answer packets with no local handler PF001 at once instead of "
                       "forwarding them to connected reactors")
    serve.add_argument("--reroute-grace-ms", type=int, default=defaults.reroute_grace_ms,
                       help="how long a forwarded packet whose reactor disconnected waits for "
                       "another (default %(default)s)")
    serve.add_argument("--probe-ms", type=int, default=defaults.probe_ms,
                       help="how long a link that never answered a forwarded packet nor announced "
                       "what it runs may take to answer one before the next is asked (default "
                       "%(default)s)")
    _add_node_options(serve, defaults)

    connect = commands.add_parser(
        "connect", help="run a node as a reactor of another endpoint",
        description="Dial out to a PacketFlow endpoint (a hub) and answer the packets it "
        "sends with this node's workers; reconnect with backoff when the link drops. "
        "Listens nowhere. Runs until SIGTERM or Ctrl-C.")
    connect.add_argument("url", help="the hub's endpoint, e.g. ws://hub:8443/packetflow/v1")
    connect.add_argument("--reconnect-min-ms", type=int, default=defaults.reconnect_min_ms,
                         help="first reconnect delay; doubles per failed try (default %(default)s)")
    connect.add_argument("--reconnect-max-ms", type=int, default=defaults.reconnect_max_ms,
                         help="longest reconnect delay (default %(default)s)")
    _add_node_options(connect, defaults)

    submit = commands.add_parser("submit", help="send one packet and print its result",
                                 description="Submit one packet; print the result as JSON. "
                                 "Exit status 0 on success, 1 on an error result, 2 on a usage "
                                 "or connection problem.")
    submit.add_argument("group", help="behavioural group: cf df ed co mc rm")
    submit.add_argument("element", help="element name, e.g. transform")
    submit.add_argument("data", help="the packet's data as JSON, e.g. '\"hello world\"'")
    submit.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="node URL (default %(default)s)")
    submit.add_argument("--priority", type=int, default=5, help="1-10, higher first (default 5)")
    submit.add_argument("--timeout-ms", type=int, default=None, help="deadline for the packet")
    submit.add_argument("--metadata", default=None, help="metadata as a JSON object")
    return parser


def _serve(args: argparse.Namespace) -> int:
    from .front import run

    connect_url = None
    if args.command == "connect":
        from .dialout import check_url

        connect_url = check_url(args.url)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    # one line per connection is ours to log, at DEBUG; picows also warns each time a
    # slow reader's write buffer crosses its high mark, which the node handles (it stops
    # reading that peer until the buffer drains): not worth a warning per event
    logging.getLogger("websockets").setLevel(logging.WARNING)
    logging.getLogger("picows").setLevel(logging.ERROR)
    if args.command == "serve":
        network = dict(host=args.host, port=args.port, path=args.path,
                       hub_routing=args.hub_routing, reroute_grace_ms=args.reroute_grace_ms,
                       probe_ms=args.probe_ms)
    else:
        network = dict(reconnect_min_ms=args.reconnect_min_ms, reconnect_max_ms=args.reconnect_max_ms)
    settings = Settings(**network, transport=args.transport, workers=args.workers,
                        ed_workers=args.ed_workers, rm_workers=args.rm_workers,
                        rm_memory_limit_mb=args.rm_memory_limit_mb, cf_core=args.cf_core,
                        aging_ms=args.aging_ms, worker_shm_bytes=args.worker_shm_bytes,
                        max_queued=args.max_queued, autoscale=args.autoscale,
                        df_min_workers=args.df_min_workers, df_max_workers=args.df_max_workers,
                        handler_modules=args.handlers, default_timeout_ms=args.default_timeout_ms,
                        max_frame_bytes=args.max_frame_bytes,
                        max_inflight_per_connection=args.max_inflight_per_connection,
                        max_connections=args.max_connections,
                        worker_window=args.worker_window, prefetch_ms=args.prefetch_ms,
                        heartbeat_interval_ms=args.heartbeat_interval_ms,
                        shutdown_grace_ms=args.shutdown_grace_ms, log_level=args.log_level)
    run(settings, connect_url)
    return 0


def _json_arg(text: str, name: str):
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PFNodeError(f"{name} is not valid JSON ({exc}); quote strings, e.g. '\"hello\"'") from None


def _submit(args: argparse.Namespace) -> int:
    from .client import Reactor

    data = _json_arg(args.data, "data")
    metadata = _json_arg(args.metadata, "--metadata") if args.metadata is not None else None

    async def go():
        async with Reactor(args.endpoint) as reactor:
            return await reactor.submit(args.group, args.element, data, priority=args.priority,
                                        timeout_ms=args.timeout_ms, metadata=metadata)

    result = asyncio.run(go())
    sys.stdout.write(orjson.dumps(result.to_wire(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if result.ok else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"serve": _serve, "connect": _serve, "submit": _submit}[args.command](args)
    except PFNodeError as exc:
        print(f"pfnode: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"pfnode: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
