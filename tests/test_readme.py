"""The README's examples, run as written against real nodes, and its deployment steps checked
against the files they install.

Runnable blocks carry a mark, an HTML comment just before the fence (GitHub and package
indexes show nothing of it):

    <!-- example -->         sh: each line starting with "$ " is a command and the lines after
                             it, if any, its output; a block with no "$ " line is all commands.
                             python: a program, run whole; a comment after a print(...) is
                             the line it prints.
    <!-- example: file -->   python: a module, its name on its first line (`# myhandlers.py`),
                             written to the examples' folder.
    <!-- example: serve -->  sh: one `pfnode serve` command, the node the examples after it
                             talk to. Before the first, they talk to the node `make run` starts
                             (`.venv/bin/pfnode serve`).

Everything runs as written, in a temporary folder holding the file blocks and `.venv` (a link
to the environment running the tests), except: each node listens on a free port
(PFNODE_PORT=0) with 2 df workers (PFNODE_WORKERS=2); that port replaces the README's 8443, and
a `pfnode submit` without --endpoint is given the node's. JSON output is compared as JSON: a
string ending in "…" stands for any string, and a `duration_ms` for any number.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import orjson
import pytest

from pfnode.app import config
from tests.conftest import ROOT, RunningNode, start_node

pytestmark = pytest.mark.timeout(120)

README = ROOT / "README.md"
TEXT = README.read_text()
DEFAULT_SERVE = ".venv/bin/pfnode serve"
PRINTS = re.compile(r"^\s*print\(.*\)\s*#\s*(.+?)\s*$")


@dataclasses.dataclass(frozen=True)
class Example:
    line: int  # of the opening fence
    mark: str  # "", "file" or "serve"
    lang: str
    text: str

    @property
    def id(self) -> str:
        return f"line{self.line}-{self.mark or self.lang}"


def find_examples() -> list[Example]:
    found = []
    for match in re.finditer(r"<!-- example(?::\s*(\w+))? -->\n```(\w+)\n(.*?)```", TEXT, re.S):
        line = TEXT.count("\n", 0, match.start()) + 2
        found.append(Example(line, match.group(1) or "", match.group(2), match.group(3)))
    return found


EXAMPLES = find_examples()
RUNS = [e for e in EXAMPLES if not e.mark]


def test_the_readme_marks_its_examples():
    """The marks are spelled right (a typo would silently leave a block untested)."""
    assert len(re.findall(r"<!--\s*example", TEXT)) == len(EXAMPLES)
    assert {e.mark for e in EXAMPLES} == {"", "file", "serve"}
    assert all(e.lang == "sh" for e in EXAMPLES if e.mark == "serve")
    assert all(e.lang == "python" and re.match(r"# \w+\.py\n", e.text) for e in EXAMPLES if e.mark == "file")


class Nodes:
    """The examples' folder and the nodes started in it, one per serve command."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.running: dict[str, RunningNode] = {}
        (folder / ".venv").symlink_to(sys.prefix)
        for example in EXAMPLES:
            if example.mark == "file":
                name = example.text.splitlines()[0].removeprefix("# ").strip()
                (folder / name).write_text(example.text)

    def node_for(self, example: Example) -> RunningNode:
        """The node of the last serve block before `example` (or make run's)."""
        serves = [e.text.strip() for e in EXAMPLES if e.mark == "serve" and e.line < example.line]
        command = serves[-1] if serves else DEFAULT_SERVE
        if command not in self.running:
            for node in self.running.values():  # one at a time, as a reader runs them
                node.stop()
            self.running.clear()
            env = {**os.environ, "PFNODE_PORT": "0", "PFNODE_WORKERS": "2"}
            self.running[command] = start_node(self.folder, command=shlex.split(command),
                                               cwd=self.folder, env=env)
        return self.running[command]

    def stop(self) -> None:
        for node in self.running.values():
            node.stop()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    made = Nodes(tmp_path_factory.mktemp("readme"))
    yield made
    made.stop()


def port_of(node: RunningNode) -> str:
    return node.endpoint.split(":")[2].split("/")[0]


def json_matches(expected, actual) -> bool:
    if isinstance(expected, dict):
        return (isinstance(actual, dict) and expected.keys() == actual.keys() and all(
            (key == "duration_ms" and isinstance(actual[key], (int, float)))
            or json_matches(value, actual[key]) for key, value in expected.items()))
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(expected) == len(actual)
                and all(json_matches(e, a) for e, a in zip(expected, actual)))
    if isinstance(expected, str) and expected.endswith("…"):
        return isinstance(actual, str)
    return expected == actual


def shell_steps(text: str) -> list[tuple[str, str]]:
    """(command, its output as shown) for each command of a sh block."""
    lines = text.splitlines()
    if not any(line.startswith("$ ") for line in lines):
        return [(line, "") for line in lines if line.strip()]
    steps: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return [(command, "\n".join(output).strip()) for command, output in steps]


def run_shell(command: str, node: RunningNode, folder: Path) -> str:
    port = port_of(node)
    command = command.replace("8443", port)
    words = shlex.split(command, comments=True)
    if shutil.which(words[0], path=str(folder / ".venv" / "bin") + os.pathsep + os.environ["PATH"]) is None \
            and not (folder / words[0]).exists():
        pytest.skip(f"{words[0]} is not installed")
    if "submit" in words and "--endpoint" not in words:
        command = shlex.join(words + ["--endpoint", f"ws://127.0.0.1:{port}/packetflow/v1"])
    done = subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("example", RUNS, ids=lambda e: e.id)
def test_the_example_runs_as_written(example, nodes):
    node = nodes.node_for(example)
    if example.lang == "sh":
        for command, shown in shell_steps(example.text):
            out = run_shell(command, node, nodes.folder)
            if shown:
                assert json_matches(orjson.loads(shown), orjson.loads(out)), f"{command}\n{out}"
        return
    assert example.lang == "python", example
    program = nodes.folder / f"example_{example.line}.py"
    program.write_text(example.text.replace("8443", port_of(node)))
    done = subprocess.run([sys.executable, program.name], cwd=nodes.folder, capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    expected = [m.group(1) for line in example.text.splitlines() if (m := PRINTS.match(line))]
    assert done.stdout.splitlines() == expected


def test_a_reactor_in_an_example_registers_a_key_its_node_does_not_have(nodes):
    """A hub example must show a packet forwarded to a reactor: its node has no handler of
    its own for the key, built in (the standard elements) or loaded."""
    registering = [(e, key) for e in RUNS if e.lang == "python"
                   for key in re.findall(r'\.register\("(\w+)", "(\w+)"', e.text)]
    assert registering, "no example registers a reactor's handler"
    for example, (group, element) in registering:
        assert f"{group}:{element}" not in nodes.node_for(example).health()["handlers"], example.id


# --- what the README says beside its examples ---------------------------------------------------

def test_links_work_on_a_package_index_page():
    """A package index shows the README without the repository around it: no link may be
    relative (files are named as paths in code font instead). An image (the dashboard's
    screenshot) is a file of the repository and of the source distribution, named in code font
    beside it and in its alt text, so a reader without it knows where it is."""
    relative = re.findall(r"(?<!!)\[[^\]]*\]\((?!https?://)([^)]*)\)", TEXT)
    assert not relative, relative
    for alt, path in re.findall(r"!\[([^\]]*)\]\((?!https?://)([^)]*)\)", TEXT):
        assert (ROOT / path).is_file() and path in alt and f"`{path}`" in TEXT, path


def named_in_readme() -> set[str]:
    """The repository's files the README names (by path, in code font)."""
    return set(re.findall(r"`((?:docs|bench|systemd|handlers|pfnode|tests)/[\w./-]+)`", TEXT))


def test_the_files_the_readme_names_exist():
    """(tests/test_packaging.py checks that the source distribution carries them too.)"""
    named = named_in_readme()
    assert named, "the README names no file"
    assert not [path for path in named if not (ROOT / path).exists()]


def deploying() -> str:
    return TEXT[TEXT.index("## Deploying"):TEXT.index("\n## ", TEXT.index("## Deploying") + 1)]


def deploy_block(needle: str) -> str:
    [block] = [b for b in re.findall(r"```sh\n(.*?)```", deploying(), re.S) if needle in b]
    return block


def test_deploying_installs_to_the_paths_the_units_use():
    from tests.test_systemd import UNITS, directives

    text = deploying()
    for name in UNITS:
        unit = directives(name)
        command = shlex.split(unit["ExecStart"][0])
        assert f"python3 -m venv {Path(command[0]).parent.parent}" in text
        assert f"{command[0]} " in text
        assert f"install -m 0640 -g pfnode systemd/pfnode.toml {command[command.index('--config') + 1]}" in text
        assert f"install -d {unit['Environment'][-1].removeprefix('PYTHONPATH=')}" in text
        assert f"install -m 0644 systemd/{name} /etc/systemd/system/" in text
        assert f"systemctl enable --now {name.removesuffix('.service')}" in text
    assert "/etc/pfnode/connect.env" in directives("pfnode-connect.service")["EnvironmentFile"][0]
    assert "install -D -m 0644 systemd/pfnode.sysusers /etc/sysusers.d/pfnode.conf" in text  # -D: /etc/sysusers.d may not exist


def test_deploying_writes_the_hub_token_where_the_connect_unit_loads_it_and_nowhere_else():
    """The dial-out's token goes in a root-only file, the unit's credential: not in the URL
    (the command line), not in connect.env (the environment)."""
    from tests.test_systemd import directives

    [credential] = directives("pfnode-connect.service")["LoadCredential"]
    source = credential.partition(":")[2]
    block = deploy_block("systemctl enable --now pfnode-connect")
    assert f"install -m 0600 /dev/null {source}" in block and f"> {source}" in block
    assert all("TOKEN" not in line for line in block.splitlines() if "connect.env" in line)


def test_deploying_turns_the_example_config_into_a_tls_and_token_one(tmp_path):
    """Step 5's sed, on the example config: the network, the token file and TLS."""
    copy = tmp_path / "pfnode.toml"
    shutil.copy(ROOT / "systemd" / "pfnode.toml", copy)
    [edit] = [c for c in deploy_block("sed -i").split("\n/opt/") if c.startswith("sed")]
    done = subprocess.run(["bash", "-c", edit.replace("/etc/pfnode/pfnode.toml", str(copy))],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    settings = tomllib.loads(copy.read_text())
    assert settings["host"] == "0.0.0.0"
    assert settings["token_file"] == "/etc/pfnode/tokens.toml"
    assert (settings["tls_cert"], settings["tls_key"]) == ("/etc/pfnode/tls/cert.pem", "/etc/pfnode/tls/key.pem")
    assert "tls_client_ca" not in settings
    if "token_file" in config.options():  # once the node has them, they are its settings
        assert set(settings) <= config.options().keys()


def test_deploying_by_hand_writes_the_token_entry_the_node_reads(tmp_path):
    tokens = tmp_path / "tokens.toml"
    block = deploy_block("printf '[[token]]").replace("/etc/pfnode/tokens.toml", str(tokens))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", block], capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert tomllib.loads(tokens.read_text()) == {"token": [{
        "name": "alice", "roles": ["submit", "reactor"],
        "sha256": hashlib.sha256(token.encode()).hexdigest()}]}


def test_deploying_makes_a_self_signed_certificate_for_the_name(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    block = deploy_block("openssl req").replace("/etc/pfnode/tls", str(tmp_path))
    make = block.split("\nchgrp")[0]  # the group pfnode is not on a test machine
    done = subprocess.run(["bash", "-c", make], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "cert.pem"), "-noout", "-text"],
                           capture_output=True, text=True, timeout=30).stdout
    assert "DNS:node.example.com" in shown
    assert (tmp_path / "key.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")
