"""The command line, run as a user would: `python -m pfnode ...` in a child process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import orjson
import psutil
import pytest

from tests.conftest import ROOT, TEST_HANDLERS

pytestmark = pytest.mark.timeout(60)


def pfnode(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pfnode", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_submit_prints_the_result_as_json_and_exits_0(node):
    done = pfnode("submit", "df", "transform", '"hello world"', "--endpoint", node.endpoint)
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout)
    assert result["status"] == "success"
    assert result["data"] == "HELLO WORLD"
    assert isinstance(result["packet_id"], str) and result["packet_id"]
    assert "error" not in result


def test_submit_passes_priority_metadata_and_structured_data(node):
    done = pfnode("submit", "df", "ctx", "null", "--endpoint", node.endpoint, "--priority", "8",
                  "--metadata", '{"who": "cli"}')
    assert done.returncode == 0, done.stderr
    data = orjson.loads(done.stdout)["data"]
    assert data["priority"] == 8 and data["metadata"] == {"who": "cli"}
    done = pfnode("submit", "df", "process_data", '{"items": [1, 2, 3, 4, 5]}', "--endpoint", node.endpoint)
    assert done.returncode == 0 and orjson.loads(done.stdout)["data"] == 30


@pytest.mark.parametrize("args, code, needle", [
    pytest.param(("df", "boom", '"bad input"'), "PF500", "ValueError: boom: bad input", id="handler-raised"),
    pytest.param(("df", "no_such_element", "1"), "PF001", "df:no_such_element", id="no-handler"),
    pytest.param(("df", "sleep", "2", "--timeout-ms", "200"), "PF408", "deadline", id="deadline"),
])
def test_an_error_result_is_printed_and_exits_1(node, args, code, needle):
    done = pfnode("submit", *args, "--endpoint", node.endpoint)
    assert done.returncode == 1, (done.stdout, done.stderr)
    result = orjson.loads(done.stdout)
    assert result["status"] == "error"
    assert result["error"]["code"] == code
    assert needle in result["error"]["message"]


def test_bad_json_data_exits_2_with_a_helpful_message(node):
    done = pfnode("submit", "df", "transform", "hello world", "--endpoint", node.endpoint)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "data is not valid JSON" in done.stderr
    assert "quote strings" in done.stderr and "'\"hello\"'" in done.stderr
    assert "Traceback" not in done.stderr

    done = pfnode("submit", "df", "ctx", "1", "--metadata", "{oops", "--endpoint", node.endpoint)
    assert done.returncode == 2 and "--metadata is not valid JSON" in done.stderr


def test_a_refused_message_exits_2(node):
    done = pfnode("submit", "df", "transform", '"x"', "--priority", "11", "--endpoint", node.endpoint)
    assert done.returncode == 2
    assert "PF002" in done.stderr and "priority" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_endpoint_exits_2():
    endpoint = f"ws://127.0.0.1:{free_port()}/packetflow/v1"
    started = time.monotonic()
    done = pfnode("submit", "df", "transform", '"hello world"', "--endpoint", endpoint)
    assert done.returncode == 2
    assert "cannot connect" in done.stderr and endpoint in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 15


def test_endpoint_that_is_not_a_packetflow_node_path_exits_2(node):
    done = pfnode("submit", "df", "transform", '"x"', "--endpoint", node.endpoint.replace("/v1", "/v9"))
    assert done.returncode == 2
    assert "cannot connect" in done.stderr and "404" in done.stderr


def test_serve_with_zero_workers_exits_2_with_a_settings_error():
    done = pfnode("serve", "--workers", "0", "--port", "0")
    assert done.returncode == 2
    assert "invalid settings" in done.stderr and "workers must be >= 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_with_a_handler_module_that_cannot_be_imported_exits_2():
    done = pfnode("serve", "--workers", "1", "--port", "0", "--handlers", "pfnode.handlers.examples,no_such_module_xyz")
    assert done.returncode == 2
    assert "no_such_module_xyz" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_on_a_port_in_use_exits_2_at_once_without_starting_workers(node):
    """The port is bound before any worker starts: a port in use is reported at once."""
    port = int(node.endpoint.split(":")[2].split("/")[0])
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pfnode", "serve", "--workers", "2", "--port", str(port),
                             "--handlers", TEST_HANDLERS], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        children = []
        while proc.poll() is None:  # note any worker it starts while it lives
            try:
                children = psutil.Process(proc.pid).children(recursive=True) or children
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    elapsed = time.monotonic() - started
    assert proc.returncode == 2, stderr
    assert "address already in use" in stderr.lower() or "errno 98" in stderr.lower()
    assert "Traceback" not in stderr
    assert children == [], f"workers {children} were started for a node that cannot listen"
    assert elapsed < 5.0, elapsed  # an interpreter start and a bind, nothing more


def test_serve_reads_the_config_file_and_the_environment_and_flags_win(fresh_node, tmp_path, monkeypatch):
    """ed and rm lanes from the file, one overridden by the environment; the environment's
    df size overridden by the --workers flag: df 1 + cf 1 + ed 0 + rm 0 workers."""
    path = tmp_path / "node.toml"
    path.write_text("ed_workers = 1\nrm_workers = 0\nmax_queued = 5000\n")
    monkeypatch.setenv("PFNODE_CONFIG", str(path))
    monkeypatch.setenv("PFNODE_ED_WORKERS", "0")
    monkeypatch.setenv("PFNODE_WORKERS", "3")
    node = fresh_node(workers=1)
    assert node.health()["workers"] == 2


def test_connect_reports_bad_settings_from_the_environment_before_dialling():
    done = subprocess.run([sys.executable, "-m", "pfnode", "connect", f"ws://127.0.0.1:{free_port()}/packetflow/v1",
                           "--reconnect-max-ms", "100"], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PFNODE_RECONNECT_MIN_MS": "500"})
    assert done.returncode == 2
    assert ("reconnect_min_ms must not exceed reconnect_max_ms (reconnect_min_ms from "
            "env:PFNODE_RECONNECT_MIN_MS, reconnect_max_ms from flag:--reconnect-max-ms)") in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- submit: where the data comes from

def test_submit_reads_the_data_from_stdin_with_a_dash(node):
    done = subprocess.run([sys.executable, "-m", "pfnode", "submit", "df", "process_data", "-",
                           "--endpoint", node.endpoint], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, input='{"items": [1, 2, 3]}\n')
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["data"] == 12


def test_submit_reads_the_data_from_a_file_with_an_at(node, tmp_path):
    path = tmp_path / "data.json"
    path.write_text('"from a file"')
    done = pfnode("submit", "df", "transform", f"@{path}", "--endpoint", node.endpoint)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["data"] == "FROM A FILE"
    done = pfnode("submit", "df", "transform", f"@{tmp_path / 'missing.json'}", "--endpoint", node.endpoint)
    assert done.returncode == 2 and "cannot read the data file" in done.stderr and "Traceback" not in done.stderr
    path.write_text("not json")
    done = pfnode("submit", "df", "transform", f"@{path}", "--endpoint", node.endpoint)
    assert done.returncode == 2 and f"data from {path} is not valid JSON" in done.stderr


def test_submit_takes_its_token_from_pfnode_token(fresh_node):
    n = fresh_node(workers=1, tokens=True)
    argv = [sys.executable, "-m", "pfnode", "submit", "df", "transform", '"x"', "--endpoint", n.endpoint]
    with_env = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PFNODE_TOKEN": n.tokens["client"]})
    assert with_env.returncode == 0, with_env.stderr
    assert orjson.loads(with_env.stdout)["data"] == "X"
    flag = subprocess.run(argv + ["--token", n.tokens["client"]], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env={k: v for k, v in os.environ.items() if k != "PFNODE_TOKEN"})
    assert flag.returncode == 0, flag.stderr


# ---------------------------------------------------------------- token new

def test_token_new_writes_the_entry_to_stdout_and_the_token_to_stderr():
    import tomllib

    from pfnode.node.auth import token_hash

    done = pfnode("token", "new", 'bad"name\\', "--roles", "submit,admin")
    assert done.returncode == 0, done.stderr
    token = done.stderr.strip()
    assert token.startswith("pft_") and token not in done.stdout
    assert tomllib.loads(done.stdout) == {"token": [{"name": 'bad"name\\', "roles": ["submit", "admin"],
                                                     "sha256": token_hash(token)}]}


def test_token_new_appends_to_a_token_file_and_writes_the_token_to_a_private_file(tmp_path):
    import stat
    import tomllib

    from pfnode.node.auth import TokenTable

    tokens, secret = tmp_path / "tokens.toml", tmp_path / "alice.token"
    tokens.write_text("# the node's tokens")  # no newline at its end
    done = pfnode("token", "new", "alice", "--roles", "submit,reactor", "--file", str(tokens), "--out", str(secret))
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and "pft_" not in done.stderr
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert pfnode("token", "new", "bob", "--file", str(tokens)).returncode == 0
    table = TokenTable.load(str(tokens))
    assert table.lookup(secret.read_text().strip()).name == "alice"
    assert [t["name"] for t in tomllib.loads(tokens.read_text())["token"]] == ["alice", "bob"]

    before = tokens.read_text()
    again = pfnode("token", "new", "alice", "--file", str(tokens))
    assert again.returncode == 2 and "the name is used twice" in again.stderr
    assert "pft_" not in again.stderr and tokens.read_text() == before  # nothing written, nothing shown
    taken = pfnode("token", "new", "carol", "--file", str(tokens), "--out", str(secret))
    assert taken.returncode == 2 and "exists" in taken.stderr and tokens.read_text() == before


# ---------------------------------------------------------------- config: none, and the files it names

def test_config_shows_unset_settings_as_none_and_the_decided_at_start_ones_as_auto():
    done = pfnode("config")
    assert done.returncode == 0, done.stderr
    values = {row.split()[0]: row.split()[1] for row in done.stdout.splitlines()[1:]}
    for name in ("token_file", "tls_cert", "tls_key", "tls_client_ca", "ca_file", "dask"):
        assert values[name] == "none", name
    for name in ("workers", "cf_core", "dask_window"):
        assert values[name] == "auto", name


@pytest.mark.parametrize("setting, content, needle", [
    pytest.param("--token-file", None, "cannot read the token file", id="token-file-missing"),
    pytest.param("--token-file", "[[token]\n", "is not valid TOML", id="token-file-not-toml"),
    pytest.param("--token-file", '[[token]]\nname = "a"\n', "roles must be", id="token-file-bad-entry"),
    pytest.param("--tls-cert", None, "cannot load the TLS certificate", id="tls-cert-missing"),
    pytest.param("--tls-cert", "not a certificate", "cannot load the TLS certificate", id="tls-cert-not-pem"),
    pytest.param("--ca-file", None, "cannot load the CA bundle", id="ca-file-missing"),
])
def test_config_checks_that_the_files_it_names_exist_and_parse(setting, content, needle, tmp_path):
    path = tmp_path / "file"
    if content is not None:
        path.write_text(content)
    args = [setting, str(path)] + (["--tls-key", str(path)] if setting == "--tls-cert" else [])
    done = pfnode("config", *args)
    assert done.returncode == 2, done.stdout
    assert done.stdout == ""
    assert needle in done.stderr and str(path) in done.stderr and f"from flag:{setting}" in done.stderr
    assert "Traceback" not in done.stderr


def test_config_accepts_files_that_exist_and_parse(tmp_path):
    from tests.conftest import write_token_file

    path, _ = write_token_file(tmp_path)
    done = pfnode("config", "--token-file", str(path))
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- --help

@pytest.mark.parametrize("command", ["serve", "connect", "config"])
def test_help_lists_every_setting_in_groups(command):
    from pfnode.app import config
    from pfnode.settings import HELP_GROUPS

    done = pfnode(command, "--help")
    assert done.returncode == 0, done.stderr
    shown = [o for o in config.options().values() if command == "config" or o.scope in ("", command)]
    missing = [o.flags[0] for o in shown if f"  {o.flags[0]}" not in done.stdout]
    assert not missing, missing
    titles = [line[:-1] for line in done.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")
              and line != "positional arguments:"]
    assert titles[0] == "options" and titles[1:] == [
        t for t, names in HELP_GROUPS.items() if any(o.name in names for o in shown)]
    assert len(titles) >= 8


# ---------------------------------------------------------------- start-up: one line, or ready

def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("log_format", ["text", "json"])
@pytest.mark.parametrize("case", ["bad-handlers", "port-in-use", "missing-tls-file"])
def test_a_start_up_failure_is_one_line_and_exit_status_2(case, log_format, tmp_path):
    holder = _listening_socket()
    try:
        args = {"bad-handlers": ["--port", "0", "--handlers", "pfnode.handlers.examples,no_such_module_xyz"],
                "port-in-use": ["--port", str(holder.getsockname()[1])],
                "missing-tls-file": ["--port", "0", "--tls-cert", str(tmp_path / "cert.pem"),
                                     "--tls-key", str(tmp_path / "key.pem")]}[case]
        done = pfnode("serve", "--workers", "1", "--log-format", log_format, *args)
    finally:
        holder.close()
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    needle = {"bad-handlers": "no_such_module_xyz", "port-in-use": "address already in use",
              "missing-tls-file": "cert.pem"}[case]
    assert needle in lines[0].lower()
    if log_format == "json":
        line = orjson.loads(lines[0])
        assert line["level"] == "ERROR" and line["event"] == "start_failed" and needle in line["error"].lower()
    else:
        assert " ERROR pfnode: " in lines[0]


def test_the_ready_line_counts_the_handlers_it_lists(node):
    import re

    [line] = [line for line in node.log().splitlines() if "front: serving" in line]
    count, listed = re.search(r"; ready; (\d+) handlers: (.*)$", line).groups()
    assert int(count) == len(listed.split(", ")) == len(node.health()["handlers"])
    claims = re.findall(r"ready; (\d+) handlers", node.log())
    assert claims == [count], claims  # no other line says another number


def test_a_public_bind_with_tokens_but_no_tls_is_warned_about(fresh_node):
    public = fresh_node("--host", "0.0.0.0", workers=1, tokens=True)
    assert "without TLS: the tokens travel in cleartext" in public.log()
    loopback = fresh_node(workers=1, tokens=True)
    assert "cleartext" not in loopback.log()
