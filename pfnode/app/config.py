"""Where the settings come from: defaults < a TOML file < PFNODE_* variables < flags.

Every option is derived from a field of `Settings` (pfnode/settings.py), the one
definition of each setting: field `max_queued` is the TOML key `max_queued`, the
environment variable `PFNODE_MAX_QUEUED` and the flag `--max-queued`, typed by the
field's annotation. `load` reads the three sources, keeps where each value came from,
and reports every problem of all of them in one `SettingsError`.

The TOML file (`--config PATH`, or `PFNODE_CONFIG`) has the settings as top-level keys.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import sys
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Literal

from ..settings import Settings, SettingsError, field_types

ENV_PREFIX = "PFNODE_"
CONFIG_ENV = "PFNODE_CONFIG"  # names the TOML file when --config does not
# Not node settings: the clients' token (pfnode submit), and pfnode/native.py's switch to pure Python
# (PFNODE_PURE, read by every process at import) and its build-time twin (setup.py).
CLIENT_ENV = frozenset({"PFNODE_TOKEN", "PFNODE_PURE", "PFNODE_BUILD_PURE"})
NONE_WORDS = ("none", "auto")  # how an `X | None` field is set to None in text and TOML
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclasses.dataclass(frozen=True)
class Option:
    """One setting as the outside world sees it, derived from its Settings field."""

    name: str
    type: object  # the field's annotation, resolved
    help: str
    default: object
    default_text: str  # the default in words where it is computed at start, else ""
    scope: str  # "serve" or "connect": the flag is that subcommand's only; "": both
    unset: str  # how None is shown for an `X | None` field: "none" (not set) or "auto" (decided at start)
    flags: tuple[str, ...]  # --field-name first, then kept spellings (and --no-... for a bool)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def parse(self, value: object, from_text: bool = True) -> object:
        """`value` as this field's type: text from a flag or the environment, or (from_text=False)
        a TOML value, which must have the TOML type (a number, not a string of digits).
        ValueError says what was expected."""
        return _parse(self.type, value, from_text, self.unset)

    def text(self, value: object) -> str:
        """`value` written as a flag or an environment variable would take it."""
        if value is None:
            return self.unset
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, tuple):
            return ",".join(value)
        return str(value)

    @property
    def shown_default(self) -> str:
        return self.default_text or self.text(self.default)


def _is_optional(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _parse(hint, value: object, from_text: bool, unset: str = NONE_WORDS[0]) -> object:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_optional(hint):
        if isinstance(value, str) and value.strip().lower() in NONE_WORDS:
            return None
        (inner,) = (arg for arg in args if arg is not type(None))
        try:
            return _parse(inner, value, from_text)
        except ValueError as exc:
            raise ValueError(f"{exc} or {unset}") from None
    if origin is Literal:
        if value in args:
            return value
        raise ValueError("one of " + ", ".join(map(str, args)))
    if origin is tuple and args[1:] == (Ellipsis,) and args[0] is str:
        if from_text and isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return tuple(value)
        raise ValueError("an array of strings")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError("a string")
    if from_text and isinstance(value, str):  # a number or a bool, written out
        value = value.strip().lower()
        if hint is bool and value in _TRUE + _FALSE:
            return value in _TRUE
        try:
            value = int(value) if hint is int else float(value) if hint is float else value
        except ValueError:
            pass
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError("an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ValueError("a number")
    raise TypeError(f"a Settings field of type {hint!r}: pfnode/app/config.py cannot read it")


def metavar(option: Option) -> str:
    hint = option.type
    suffix = ""
    if _is_optional(hint):
        (hint,) = (arg for arg in typing.get_args(hint) if arg is not type(None))
        suffix = "|" + option.unset
    if typing.get_origin(hint) is Literal:
        return "{" + ",".join(typing.get_args(hint)) + "}" + suffix
    if typing.get_origin(hint) is tuple:
        return "A,B,..." + suffix
    return {int: "N", float: "X", str: "TEXT"}.get(hint, "VALUE") + suffix


@functools.cache
def options() -> dict[str, Option]:
    """Every setting, by field name, in the order of Settings' fields."""
    hints = field_types()
    found = {}
    for field in dataclasses.fields(Settings):
        meta = field.metadata
        hint = hints[field.name]
        _parse_check(field.name, hint)
        flag = "--" + field.name.replace("_", "-")
        flags = (flag, "--no-" + flag[2:]) if hint is bool else (flag,)
        default = field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
        found[field.name] = Option(
            name=field.name, type=hint, help=meta.get("help", ""), default=default,
            default_text=meta.get("default_text", ""), scope=meta.get("scope", ""),
            unset=meta.get("unset", NONE_WORDS[0]), flags=flags + tuple(meta.get("flags", ())))
    return found


def _parse_check(name: str, hint) -> None:
    """Fail at once, naming the field, on an annotation the sources cannot express."""
    try:
        _parse(hint, "1", True)
    except ValueError:
        pass
    except TypeError as exc:
        raise TypeError(f"Settings.{name}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class Loaded:
    settings: Settings
    sources: dict[str, str]  # per field: "default", "file:PATH", "env:PFNODE_X" or "flag:--x"
    path: str | None  # the TOML file read, if any


def load(flags: Mapping[str, tuple[str, object]] | None = None, *, path: str | None = None,
         environ: Mapping[str, str] | None = None) -> Loaded:
    """The settings from the file at `path` (else $PFNODE_CONFIG, else none), then the
    environment, then `flags` ({field: (the flag as typed, its text or a bool)}), each
    overriding the one before. Raises SettingsError with every problem found."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(CONFIG_ENV) or None
    known = options()
    problems: list[str] = []
    given: dict[str, tuple[object, str]] = {}

    def take(name: str, value: object, source: str, from_text: bool = True) -> None:
        try:
            given[name] = (known[name].parse(value, from_text), source)
        except ValueError as exc:
            problems.append(f"{source}: {name} must be {exc}, got {value!r}")

    if path:
        source = f"file:{path}"
        for key, value in _read_toml(path, problems).items():
            if key in known:
                take(key, value, source, from_text=False)
            else:
                table = " (settings are top-level keys, not a table)" if isinstance(value, dict) else ""
                hint = _did_you_mean(key, {name: name for name in known})
                problems.append(f"{source}: unknown key {key!r}{table}{hint}")
    by_env = {option.env: option.name for option in known.values()}
    for var in sorted(environ):
        if var in by_env:
            take(by_env[var], environ[var], f"env:{var}")
        elif var.startswith(ENV_PREFIX) and var != CONFIG_ENV and var not in CLIENT_ENV:
            hint = _did_you_mean(var.removeprefix(ENV_PREFIX), {n: o.env for n, o in known.items()})
            problems.append(f"env:{var}: unknown variable{hint}")
    for name, (flag, value) in (flags or {}).items():
        take(name, value, f"flag:{flag}")

    sources = {name: given[name][1] if name in given else "default" for name in known}
    try:
        settings = Settings(**{name: value for name, (value, _) in given.items()})
    except SettingsError as exc:
        problems += [_with_sources(problem, sources) for problem in exc.problems]
    if problems:
        raise SettingsError(problems)
    return Loaded(settings, sources, path)


def check_files(loaded: Loaded, scope: str | None = None) -> None:
    """The files the settings name exist and parse: serve's token file and TLS certificate,
    key and client CA, connect's CA bundle and client certificate (scope None: all of them).
    Raises SettingsError with every problem, each naming where its setting came from."""
    from ..errors import ConfigError
    from ..node.auth import TokenTable
    from ..transports import tls

    s, problems = loaded.settings, []

    def check(names: tuple[str, ...], read: typing.Callable[[], object]) -> None:
        try:
            read()
        except ConfigError as exc:
            given = ", ".join(f"{name} from {loaded.sources[name]}" for name in names
                              if getattr(s, name) is not None)
            problems.append(f"{exc} ({given})")

    if scope in (None, "serve"):
        if s.token_file is not None:
            check(("token_file",), lambda: TokenTable.load(s.token_file))
        if s.tls_cert is not None:
            check(("tls_cert", "tls_key", "tls_client_ca"),
                  lambda: tls.server_context(s.tls_cert, s.tls_key, s.tls_client_ca))
    if scope in (None, "connect") and (s.ca_file is not None or s.client_cert is not None):
        check(("ca_file", "client_cert", "client_key"),
              lambda: tls.client_context(s.ca_file, s.client_cert, s.client_key))
    if problems:
        raise SettingsError(problems, one_line=True)


def _read_toml(path: str, problems: list[str]) -> dict:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        problems.append(f"file:{path}: no such file")
    except OSError as exc:
        problems.append(f"file:{path}: cannot read it: {exc.strerror or exc}")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"file:{path}: not valid TOML: {exc}")
    return {}


def _did_you_mean(word: str, spellings: dict[str, str]) -> str:
    """A hint naming the setting closest to `word`, spelt as `spellings` says, if any is close."""
    close = difflib.get_close_matches(word.replace("-", "_").lower(), list(spellings), n=1)
    return f" (did you mean {spellings[close[0]]!r}?)" if close else ""


def _with_sources(problem: str, sources: dict[str, str]) -> str:
    """A Settings problem, with where the values it names came from (unless defaults)."""
    named = dict.fromkeys(word for word in re.findall(r"\w+", problem)
                          if sources.get(word, "default") != "default")
    return problem + (" (" + ", ".join(f"{name} from {sources[name]}" for name in named) + ")"
                      if named else "")


# --- the settings table of docs/CONFIGURATION.md, generated from the fields ----------------

TABLE_BEGIN = "<!-- settings table: generated by `python -m pfnode.app.config docs/CONFIGURATION.md` -->"
TABLE_END = "<!-- end of the generated settings table -->"


def markdown_table() -> str:
    rows = ["| TOML key | flag | environment | default | meaning |", "|---|---|---|---|---|"]
    factories = {field.name for field in dataclasses.fields(Settings)
                 if field.default_factory is not dataclasses.MISSING}
    for option in options().values():
        if option.name in factories and not option.default_text:
            raise ValueError(f"Settings.{option.name}: a computed default needs default_text")
        flags = ", ".join(f"`{flag}`" for flag in option.flags)
        value = "" if option.type is bool else " `" + metavar(option).replace("|", "\\|") + "`"
        only = f" ({option.scope} only)" if option.scope else ""
        rows.append(f"| `{option.name}` | {flags}{value} | `{option.env}` | "
                    f"`{option.shown_default}` | {option.help}{only} |")
    return "\n".join(rows)


def with_table(doc: str) -> str:
    """`doc` with the text between the table's markers replaced by the current table."""
    begin, end = doc.index(TABLE_BEGIN) + len(TABLE_BEGIN), doc.index(TABLE_END)
    return doc[:begin] + "\n" + markdown_table() + "\n" + doc[end:]


if __name__ == "__main__":  # python -m pfnode.app.config docs/CONFIGURATION.md: regenerate its table
    for doc_path in sys.argv[1:]:
        with open(doc_path, encoding="utf-8") as doc_file:
            text = doc_file.read()
        with open(doc_path, "w", encoding="utf-8") as doc_file:
            doc_file.write(with_table(text))
