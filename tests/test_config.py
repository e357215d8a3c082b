"""Settings from a TOML file, PFNODE_* variables and flags (pfnode/app/config.py), the flags
generated from the Settings fields (pfnode/app/cli.py), `pfnode config`, and the docs that
list the settings."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import orjson
import pytest

from pfnode.app import cli, config
from pfnode.errors import ConfigError
from pfnode.settings import Settings, SettingsError, field_types
from tests.conftest import ROOT

FIELDS = [field.name for field in dataclasses.fields(Settings)]
DOCS = [ROOT / "README.md", ROOT / "docs" / "CONFIGURATION.md"]


def load(flags=None, env=None, toml: str | None = None, tmp_path: Path | None = None):
    path = None
    if toml is not None:
        path = str(tmp_path / "pfnode.toml")
        Path(path).write_text(toml)
    return config.load(flags, path=path, environ=env or {})


def problems_of(**kwargs) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load(**kwargs)
    return info.value.problems


def toml_value(value) -> str:
    """`value` as a TOML literal (JSON's spelling is TOML's for these types)."""
    if value is None:
        return '"auto"'
    if isinstance(value, tuple):
        return json.dumps(list(value))
    return json.dumps(value)


# --- one definition per setting -------------------------------------------------------------

@pytest.mark.parametrize("name", FIELDS)
def test_every_setting_has_help_a_toml_key_an_env_var_and_a_flag(name, tmp_path):
    field = next(f for f in dataclasses.fields(Settings) if f.name == name)
    assert field.metadata.get("help", "").strip(), (
        f"Settings.{name} has no help: declare it as setting(default, \"one-line help\")")
    option = config.options()[name]
    value = option.default
    flag = "--" + name.replace("_", "-")

    from_file = load(toml=f"{name} = {toml_value(value)}\n", tmp_path=tmp_path)
    from_env = load(env={f"PFNODE_{name.upper()}": option.text(value)})
    command = [option.scope or "serve"] + (["ws://hub/packetflow/v1"] if option.scope == "connect" else [])
    if option.type is bool:
        given = [flag if value else "--no-" + flag[2:]]
    else:
        given = [flag, option.text(value)]
    from_flag = cli._load(cli.build_parser().parse_args(command + given))

    assert from_file.sources[name] == f"file:{tmp_path / 'pfnode.toml'}"
    assert from_env.sources[name] == f"env:PFNODE_{name.upper()}"
    assert from_flag.sources[name] == f"flag:{given[0]}"
    for loaded in (from_file, from_env, from_flag):
        assert getattr(loaded.settings, name) == value


def test_flags_keep_their_old_spellings():
    args = cli.build_parser().parse_args(["serve", "--handlers", "a,b", "--no-hub-routing", "--autoscale"])
    loaded = cli._load(args)
    assert loaded.settings.handler_modules == ("a", "b")
    assert loaded.settings.hub_routing is False and loaded.settings.autoscale is True
    assert loaded.sources["handler_modules"] == "flag:--handlers"
    assert loaded.sources["hub_routing"] == "flag:--no-hub-routing"
    assert cli._load(cli.build_parser().parse_args(["serve", "--handler-modules", "c"])).settings.handler_modules == ("c",)


def test_serve_only_and_connect_only_flags_stay_on_their_subcommand(capsys):
    parser = cli.build_parser()
    for argv in (["connect", "ws://hub/packetflow/v1", "--port", "1"], ["serve", "--reconnect-min-ms", "5"]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(argv)
        assert info.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err
    assert parser.parse_args(["config", "--port", "1", "--reconnect-min-ms", "5"])  # config takes all


def test_the_help_groups_hold_every_setting_once():
    """`--help` lists every setting under its group (tests/test_cli.py runs it)."""
    from pfnode.settings import HELP_GROUPS

    grouped = [name for names in HELP_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(FIELDS) and len(grouped) == len(set(grouped))


# --- precedence -----------------------------------------------------------------------------

def test_file_then_environment_then_flags(tmp_path):
    loaded = load(
        toml='max_queued = 10\naging_ms = 20\nprobe_ms = 30\nhost = "127.0.0.2"\n',
        env={"PFNODE_AGING_MS": "21", "PFNODE_PROBE_MS": "31", "PFNODE_PORT": "9000"},
        flags={"probe_ms": ("--probe-ms", "32"), "workers": ("--workers", "2")},
        tmp_path=tmp_path)
    file = f"file:{tmp_path / 'pfnode.toml'}"
    assert (loaded.settings.max_queued, loaded.sources["max_queued"]) == (10, file)
    assert (loaded.settings.host, loaded.sources["host"]) == ("127.0.0.2", file)
    assert (loaded.settings.aging_ms, loaded.sources["aging_ms"]) == (21, "env:PFNODE_AGING_MS")
    assert (loaded.settings.port, loaded.sources["port"]) == (9000, "env:PFNODE_PORT")
    assert (loaded.settings.probe_ms, loaded.sources["probe_ms"]) == (32, "flag:--probe-ms")
    assert (loaded.settings.workers, loaded.sources["workers"]) == (2, "flag:--workers")
    assert loaded.sources["shutdown_grace_ms"] == "default"
    assert loaded.settings.shutdown_grace_ms == Settings().shutdown_grace_ms
    assert set(loaded.sources) == set(FIELDS)


def test_the_file_is_named_by_the_config_flag_or_else_pfnode_config(tmp_path):
    by_env, by_flag = tmp_path / "env.toml", tmp_path / "flag.toml"
    by_env.write_text("max_queued = 1\n")
    by_flag.write_text("max_queued = 2\n")
    assert config.load(environ={"PFNODE_CONFIG": str(by_env)}).settings.max_queued == 1
    loaded = config.load(path=str(by_flag), environ={"PFNODE_CONFIG": str(by_env)})
    assert (loaded.settings.max_queued, loaded.path) == (2, str(by_flag))
    assert config.load(environ={}).path is None


# --- types ----------------------------------------------------------------------------------

def kind(hint) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(sorted(kind(arg) for arg in typing.get_args(hint)))
    if origin is typing.Literal:
        return "Literal"
    if origin is tuple:
        return f"tuple[{typing.get_args(hint)[0].__name__}, ...]"
    return hint.__name__


# (kind, field, text from the environment, what it gives, a TOML literal, what that gives)
GOOD = [
    ("int", "max_queued", "16_384", 16_384, "16_384", 16_384),
    ("int", "port", " 0 ", 0, "0", 0),
    ("float", "prefetch_ms", "0.25", 0.25, "2", 2.0),
    ("bool", "autoscale", "yes", True, "true", True),
    ("bool", "hub_routing", "OFF", False, "false", False),
    ("bool", "autoscale", "1", True, "false", False),
    ("str", "host", "::1", "::1", '"127.0.0.2"', "127.0.0.2"),
    ("NoneType | str", "token_file", "/etc/pfnode/tokens.toml", "/etc/pfnode/tokens.toml",
     '"tokens.toml"', "tokens.toml"),
    ("NoneType | str", "tls_client_ca", "none", None, '"none"', None),
    ("Literal", "transport", "websockets", "websockets", '"picows"', "picows"),
    ("Literal", "log_level", "DEBUG", "DEBUG", '"ERROR"', "ERROR"),
    ("tuple[str, ...]", "handler_modules", "a, b,,c", ("a", "b", "c"), '["x", "y"]', ("x", "y")),
    ("tuple[str, ...]", "handler_modules", "", (), "[]", ()),
    ("NoneType | int", "workers", "auto", None, '"auto"', None),
    ("NoneType | int", "workers", "3", 3, "3", 3),
    ("NoneType | int", "cf_core", "None", None, '"none"', None),
]


def test_the_type_tests_cover_every_annotation_kind_in_settings():
    kinds = {kind(hint) for hint in field_types().values()}
    for cases in (GOOD, BAD):
        assert {case[0] for case in cases} == kinds, "a new kind of setting: add cases to GOOD and BAD"


@pytest.mark.parametrize("_, name, text, from_text, toml, from_file", GOOD)
def test_values_are_read_by_the_field_type(_, name, text, from_text, toml, from_file, tmp_path):
    got = getattr(load(env={f"PFNODE_{name.upper()}": text}).settings, name)
    assert (got, type(got)) == (from_text, type(from_text))
    got = getattr(load(toml=f"{name} = {toml}\n", tmp_path=tmp_path).settings, name)
    assert (got, type(got)) == (from_file, type(from_file))


BAD = [  # (kind, field, a bad value from the environment, a bad TOML literal, what is expected)
    ("int", "max_queued", "12k", "1.5", "an integer"),
    ("int", "port", "", "true", "an integer"),
    ("int", "port", "80.0", '"8443"', "an integer"),
    ("float", "prefetch_ms", "nan", '"1.0"', "a number"),
    ("bool", "autoscale", "maybe", '"true"', "true or false"),
    ("str", "host", None, "1", "a string"),
    ("Literal", "transport", "tcp", '"PICOWS"', "one of picows, websockets"),
    ("tuple[str, ...]", "handler_modules", None, '["a", 1]', "an array of strings"),
    ("tuple[str, ...]", "handler_modules", None, '"a,b"', "an array of strings"),
    ("NoneType | int", "workers", "many", "2.0", "an integer or auto"),
    ("NoneType | str", "token_file", None, "3", "a string or none"),
]


@pytest.mark.parametrize("_, name, text, toml, expected", BAD)
def test_a_value_of_the_wrong_type_is_a_problem_naming_its_source(_, name, text, toml, expected, tmp_path):
    if text is not None:
        [problem] = problems_of(env={f"PFNODE_{name.upper()}": text})
        assert problem == f"env:PFNODE_{name.upper()}: {name} must be {expected}, got {text!r}"
    [problem] = problems_of(toml=f"{name} = {toml}\n", tmp_path=tmp_path)
    assert problem.startswith(f"file:{tmp_path / 'pfnode.toml'}: {name} must be {expected}, got ")


# --- every problem at once ------------------------------------------------------------------

def test_every_problem_of_every_source_is_reported_at_once(tmp_path):
    problems = problems_of(
        toml='max_queue = 5\nworkers = "x"\n[pfnode]\nport = 1\n',
        env={"PFNODE_WROKERS": "3", "PFNODE_AGING_MS": "-1", "PFNODE_CONFIG": "ignored.toml",
             "HOME": "/root", "PFNODEX": "not ours"},
        flags={"port": ("--port", "99999"), "transport": ("--transport", "tcp"),
               "df_min_workers": ("--df-min-workers", "9"), "df_max_workers": ("--df-max-workers", "2")},
        tmp_path=tmp_path)
    file = f"file:{tmp_path / 'pfnode.toml'}"
    assert problems == [
        f"{file}: unknown key 'max_queue' (did you mean 'max_queued'?)",
        f"{file}: workers must be an integer or auto, got 'x'",
        f"{file}: unknown key 'pfnode' (settings are top-level keys, not a table)",
        "env:PFNODE_WROKERS: unknown variable (did you mean 'PFNODE_WORKERS'?)",
        "flag:--transport: transport must be one of picows, websockets, got 'tcp'",
        "port must be 0..65535, got 99999 (port from flag:--port)",
        "need 1 <= df_min_workers <= df_max_workers (df_min_workers from flag:--df-min-workers, "
        "df_max_workers from flag:--df-max-workers)",
        "aging_ms must be >= 0 (0 turns aging off), got -1 (aging_ms from env:PFNODE_AGING_MS)",
    ]


def test_settings_report_all_their_own_problems_together():
    with pytest.raises(SettingsError) as info:
        Settings(port=-1, workers=0, transport="tcp", log_level="LOUD", reconnect_min_ms=0)
    assert isinstance(info.value, ConfigError)
    assert len(info.value.problems) == 5, info.value.problems
    text = str(info.value)
    assert text.startswith("invalid settings:\n  - ")
    for needle in ("port must be 0..65535", "workers must be >= 1", "transport must be one of",
                   "log_level must be one of", "reconnect_min_ms must be > 0"):
        assert needle in text


@pytest.mark.parametrize("content, needle", [
    (None, "no such file"),
    ("port = \n", "not valid TOML"),
    ("port = 1\nport = 2\n", "not valid TOML"),
])
def test_a_missing_or_unparsable_file_is_a_clear_problem(content, needle, tmp_path):
    path = tmp_path / "pfnode.toml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SettingsError) as info:
        config.load(path=str(path), environ={"PFNODE_WORKERS": "x"})
    assert info.value.problems[0].startswith(f"file:{path}: {needle}")
    assert len(info.value.problems) == 2  # and the rest is still checked
    with pytest.raises(SettingsError, match="cannot read it"):
        config.load(path=str(tmp_path), environ={})


# --- pfnode config ----------------------------------------------------------------------------

def pfnode(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PFNODE_")}
    return subprocess.run([sys.executable, "-m", "pfnode", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env={**clean, **(env or {})})


def test_pfnode_config_json_prints_every_value_and_its_source(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('workers = 4\nmax_queued = 50\nhandler_modules = ["a", "b"]\n')
    done = pfnode("config", "--json", "--workers", "3", "--no-hub-routing",
                  env={"PFNODE_CONFIG": str(path), "PFNODE_MAX_QUEUED": "60", "PFNODE_CF_CORE": "auto"})
    assert done.returncode == 0, done.stderr
    out = orjson.loads(done.stdout)
    assert out["file"] == str(path)
    settings = out["settings"]
    assert list(settings) == FIELDS
    assert settings["workers"] == {"value": 3, "source": "flag:--workers"}
    assert settings["max_queued"] == {"value": 60, "source": "env:PFNODE_MAX_QUEUED"}
    assert settings["handler_modules"] == {"value": ["a", "b"], "source": f"file:{path}"}
    assert settings["hub_routing"] == {"value": False, "source": "flag:--no-hub-routing"}
    assert settings["cf_core"] == {"value": None, "source": "env:PFNODE_CF_CORE"}
    assert settings["port"] == {"value": 8443, "source": "default"}


def test_pfnode_config_prints_an_aligned_table_by_default():
    done = pfnode("config", "--port", "0", env={"PFNODE_WORKERS": "2"})
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header == "# config file: none"
    assert len(rows) == len(FIELDS) + 1
    starts = {tuple(match.start() for match in re.finditer(r"\S+", row)) for row in rows}
    assert len(starts) == 1 and len(next(iter(starts))) == 3, "the columns do not line up"
    lines = {row.split()[0]: row.split()[1:] for row in rows}
    assert lines["workers"] == ["2", "env:PFNODE_WORKERS"]
    assert lines["port"] == ["0", "flag:--port"]
    assert lines["cf_core"] == ["auto", "default"]


def test_pfnode_config_exits_2_with_every_problem():
    done = pfnode("config", "--workers", "0", "--port", "x", env={"PFNODE_NOPE": "1"})
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "pfnode: invalid settings:",
        "  - env:PFNODE_NOPE: unknown variable",
        "  - flag:--port: port must be an integer, got 'x'",
        "  - workers must be >= 1, got 0 (workers from flag:--workers)",
    ]


# --- the docs -----------------------------------------------------------------------------------

def toml_examples(path: Path) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", path.read_text(), re.S)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_the_documented_toml_examples_load_as_written(doc, tmp_path):
    import tomllib

    examples = toml_examples(doc)
    assert examples, f"{doc.name} shows no TOML example"
    for example in examples:
        if "[[token]]" in example:  # a token file's example, not the settings': its keys are the token table's
            for entry in tomllib.loads(example)["token"]:
                assert set(entry) <= {"name", "roles", "sha256", "namespaces"}, entry
            continue
        loaded = load(toml=example, tmp_path=tmp_path)
        for key, value in tomllib.loads(example).items():
            assert loaded.sources[key].startswith("file:")
            expected = config.options()[key].parse(value, from_text=False)
            assert getattr(loaded.settings, key) == expected


def test_the_configuration_doc_example_means_what_it_says(tmp_path):
    [example] = toml_examples(ROOT / "docs" / "CONFIGURATION.md")
    settings = load(toml=example, tmp_path=tmp_path).settings
    assert settings.host == "0.0.0.0" and settings.port == 8443
    assert settings.token_file == "/etc/pfnode/tokens.toml"
    assert settings.handler_modules == ("pfnode.handlers.examples", "pfnode.handlers.numeric", "myhandlers")
    assert settings.workers is None and settings.autoscale is True
    assert (settings.max_queued, settings.df_max_workers, settings.log_level) == (50_000, 16, "WARNING")


def test_the_settings_table_in_the_docs_is_generated_from_settings():
    doc = (ROOT / "docs" / "CONFIGURATION.md").read_text()
    assert config.with_table(doc) == doc, (
        "docs/CONFIGURATION.md is out of date: run python -m pfnode.app.config docs/CONFIGURATION.md")
    for name in FIELDS:
        assert f"| `{name}` | `--{name.replace('_', '-')}`" in doc
        assert f"`PFNODE_{name.upper()}`" in doc
