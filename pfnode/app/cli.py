"""The command line: a thin layer over config.load (settings from a file, the environment and
flags; one flag per Settings field, generated) that calls the node or the client."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import orjson

from .. import __version__
from . import config
from ..errors import PFNodeError
from ..settings import HELP_GROUPS

DEFAULT_ENDPOINT = "ws://127.0.0.1:8443/packetflow/v1"

SOURCES_HELP = ("Each option is also a key of the --config TOML file and a PFNODE_<OPTION> "
                "environment variable (--max-queued: max_queued, PFNODE_MAX_QUEUED); flags override "
                "the environment, which overrides the file. `pfnode config` shows the result; "
                "docs/CONFIGURATION.md lists every setting.")
_SETTING = "setting:"  # the prefix of the argparse dests of settings' flags


class _Given(argparse.Action):
    """Keeps a setting's flag as typed, and its text: config.load converts it (so that every
    bad value is reported at once) and names the flag as the value's source."""

    def __call__(self, parser, namespace, values, option_string=None):
        if self.nargs == 0:  # a bool's --x / --no-x
            values = not option_string.startswith("--no-")
        setattr(namespace, self.dest, (option_string, values))


def _settings_command(commands, name: str, scope: str | None, help: str, description: str,
                      usage: str = "") -> argparse.ArgumentParser:
    """A subcommand with --config and a flag for each setting of `scope` ("serve",
    "connect"; None: all of them), listed by --help in the groups of HELP_GROUPS."""
    parser = commands.add_parser(name, help=help, description=description, epilog=SOURCES_HELP,
                                 usage=f"%(prog)s {usage}[--config PATH] [OPTION ...]")
    parser.add_argument("--config", dest="config_path", metavar="PATH",
                        help=f"TOML file of settings (default: ${config.CONFIG_ENV}, else none)")
    known = config.options()
    for title, names in HELP_GROUPS.items():
        options = [known[n] for n in names if not scope or known[n].scope in ("", scope)]
        group = parser.add_argument_group(title) if options else None
        for option in options:
            is_bool = option.type is bool
            group.add_argument(
                *option.flags, dest=_SETTING + option.name, action=_Given, default=argparse.SUPPRESS,
                nargs=0 if is_bool else None, metavar=None if is_bool else config.metavar(option),
                help=f"{option.help} (default {option.shown_default})".replace("%", "%%"))
    return parser


def _load(args: argparse.Namespace, files: bool = False) -> config.Loaded:
    """The settings the arguments give (with `files`: the files they name checked too)."""
    flags = {dest.removeprefix(_SETTING): given for dest, given in vars(args).items()
             if dest.startswith(_SETTING)}
    loaded = config.load(flags, path=args.config_path)
    if files:
        config.check_files(loaded, None if args.command == "config" else args.command)
    return loaded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pfnode", description="PacketFlow v1.0 compute node")
    parser.add_argument("--version", action="version", version=f"pfnode {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    _settings_command(commands, "serve", "serve", "run a node",
                      "Run a PacketFlow node until SIGTERM or Ctrl-C.")
    connect = _settings_command(
        commands, "connect", "connect", "run a node as a reactor of another endpoint",
        "Dial out to a PacketFlow endpoint (a hub) and answer the packets it sends with this "
        "node's workers; reconnect with backoff when the link drops. Listens nowhere. Runs "
        "until SIGTERM or Ctrl-C.", usage="URL [--hub-token-file PATH] ")
    connect.add_argument("url", help="the hub's endpoint, e.g. ws://hub:8443/packetflow/v1 (its token: "
                         "--hub-token-file or $PFNODE_TOKEN, not ?token= here, which ps shows)")
    connect.add_argument("--hub-token-file", metavar="PATH", default=None,
                         help="file whose first line is the token to present to the hub (default: "
                         "$PFNODE_TOKEN); sent as 'Authorization: Bearer', never logged")
    show = _settings_command(
        commands, "config", None, "print the effective settings and where each came from",
        "Print every setting, its value and its source (default, file:PATH, env:NAME or "
        "flag:--x) as serve or connect would get them from the same file, environment and "
        "flags; check that the files they name (token file, TLS certificates and keys) can be "
        "read. Exit status 0, or 2 with the list of problems.", usage="[--json] ")
    show.add_argument("--json", action="store_true", help="print a JSON object instead of a table")

    token = commands.add_parser("token", help="make a token for the token file",
                                description="Make a new random token. Its [[token]] entry (the "
                                "token's SHA-256, never the token) goes to stdout, or is appended "
                                "to --file; the token itself goes to stderr, or to --out. Give the "
                                "token to the client: it is shown only this once.")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    new = token_commands.add_parser(
        "new", help="a new token", description="pfnode token new alice --roles submit,reactor "
        "--file /etc/pfnode/tokens.toml --out alice.token (then SIGHUP the node: systemctl "
        "reload pfnode)")
    new.add_argument("name", help="who it is for (logs, the scope of its packet ids)")
    new.add_argument("--roles", default="submit", help="comma-separated: submit, reactor, admin "
                     "(default %(default)s)")
    new.add_argument("--file", metavar="TOKEN_FILE", default=None,
                     help="append the entry to this token file (checked: it must stay valid, "
                     "the name unused) instead of printing it")
    new.add_argument("--out", metavar="FILE", default=None,
                     help="write the token to this new file (mode 0600) instead of stderr")

    submit = commands.add_parser("submit", help="send one packet and print its result",
                                 description="Submit one packet; print the result as JSON. "
                                 "Exit status 0 on success, 1 on an error result, 2 on a usage "
                                 "or connection problem.")
    submit.add_argument("group", help="behavioural group: cf df ed co mc rm")
    submit.add_argument("element", help="element name, e.g. transform")
    submit.add_argument("data", help="the packet's data as JSON, e.g. '\"hello world\"'; "
                        "- reads it from stdin, @FILE from a file")
    submit.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="node URL (default %(default)s)")
    submit.add_argument("--priority", type=int, default=5, help="1-10, higher first (default 5)")
    submit.add_argument("--timeout-ms", type=int, default=None, help="deadline for the packet")
    submit.add_argument("--metadata", default=None, help="metadata as a JSON object")
    submit.add_argument("--token", default=os.environ.get("PFNODE_TOKEN"),
                        help="the token to present (default: $PFNODE_TOKEN; or ?token= in the endpoint)")
    submit.add_argument("--ca-file", default=None,
                        help="CA bundle to verify a wss:// endpoint (default: the system's trust store)")
    return parser


def _serve(args: argparse.Namespace) -> int:
    from .front import run

    connect_url = token = None
    if args.command == "connect":
        from .dialout import check_url, hub_token

        connect_url = check_url(args.url)
        token = hub_token(args.hub_token_file)
    loaded = _load(args)
    settings = loaded.settings
    from ..ops import logs

    logs.configure(settings.log_level, settings.log_format)
    try:
        config.check_files(loaded, args.command)
        if connect_url is not None and "token=" in connect_url.partition("?")[2]:
            logging.getLogger("pfnode.dialout").warning(
                "dial-out: the hub URL carries its token, which the process's arguments show (ps, "
                "systemctl status): give it in --hub-token-file or $PFNODE_TOKEN instead")
        run(settings, connect_url, token)
    except (PFNodeError, OSError) as exc:  # before anything else was logged: the one line
        logs.start_failed(logging.getLogger("pfnode.front"), str(exc))
        return 2
    return 0


def _config(args: argparse.Namespace) -> int:
    loaded = _load(args, files=True)
    known = config.options()
    values = {name: getattr(loaded.settings, name) for name in known}
    if args.json:
        out = {"file": loaded.path, "settings": {
            name: {"value": value, "source": loaded.sources[name]} for name, value in values.items()}}
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    rows = [("setting", "value", "source")] + [
        (name, known[name].text(value), loaded.sources[name]) for name, value in values.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    sys.stdout.write(f"# config file: {loaded.path or 'none'}\n" + "".join(
        f"{name:<{widths[0]}}  {value:<{widths[1]}}  {source}\n" for name, value, source in rows))
    return 0


def _json_arg(text: str, name: str):
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise PFNodeError(f"{name} is not valid JSON ({exc}); quote strings, e.g. '\"hello\"'") from None


def _data_text(arg: str) -> tuple[str | bytes, str]:
    """The data's JSON text and its name for messages: `-` is stdin, `@PATH` a file (JSON
    text never starts with either), anything else the argument itself."""
    if arg == "-":
        return sys.stdin.buffer.read(), "data from stdin"
    if arg.startswith("@"):
        path = arg[1:]
        try:
            with open(path, "rb") as file:
                return file.read(), f"data from {path}"
        except OSError as exc:
            raise PFNodeError(f"cannot read the data file {path}: {exc.strerror or exc}") from None
    return arg, "data"


def _submit(args: argparse.Namespace) -> int:
    from ..client import Reactor

    data = _json_arg(*_data_text(args.data))
    metadata = _json_arg(args.metadata, "--metadata") if args.metadata is not None else None

    async def go():
        async with Reactor(args.endpoint, token=args.token, ca_file=args.ca_file) as reactor:
            return await reactor.submit(args.group, args.element, data, priority=args.priority,
                                        timeout_ms=args.timeout_ms, metadata=metadata)

    result = asyncio.run(go())
    sys.stdout.write(orjson.dumps(result.to_wire(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0 if result.ok else 1


def _token(args: argparse.Namespace) -> int:
    from ..node.auth import ROLES, new_token, token_entry

    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        raise PFNodeError(f"--roles must be some of {', '.join(ROLES)}, got {args.roles!r}")
    try:
        args.name.encode("utf-8")
    except UnicodeEncodeError:
        raise PFNodeError(f"the name {args.name!r} is not valid text") from None
    token = new_token()
    entry = token_entry(args.name, roles, token)
    if args.out is not None and os.path.lexists(args.out):  # before the entry goes in the file
        raise PFNodeError(f"{args.out} exists; give --out a new file")
    if args.file is not None:
        _append_entry(args.file, entry)
    if args.out is not None:
        _write_secret(args.out, token)
    if args.file is None:
        sys.stdout.write(entry)
    if args.out is None:
        sys.stderr.write(token + "\n")
    if args.file is not None:
        sys.stderr.write(f"pfnode: appended {args.name!r} to {args.file}; SIGHUP the node to read it "
                         "(systemctl reload pfnode)\n")
    return 0


def _append_entry(path: str, entry: str) -> None:
    """Append a [[token]] entry to a token file, once the whole file, entry included, is
    known to read back as a valid token file (so a typo or a name used twice changes nothing)."""
    import tomllib

    from ..node.auth import parse_tokens

    try:
        with open(path, encoding="utf-8") as file:
            before = file.read()
    except FileNotFoundError:
        before = ""
    addition = ("\n" if before and not before.endswith("\n") else "") + entry
    try:
        parse_tokens(tomllib.loads(before + addition), path)
    except tomllib.TOMLDecodeError as exc:
        raise PFNodeError(f"{path} is not valid TOML ({exc}); fix it first") from None
    with open(path, "a", encoding="utf-8") as file:
        file.write(addition)


def _write_secret(path: str, token: str) -> None:
    """The token alone, in a new file only its owner may read."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise PFNodeError(f"{path} exists; give --out a new file") from None
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"serve": _serve, "connect": _serve, "config": _config, "token": _token,
                "submit": _submit}[args.command](args)
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
