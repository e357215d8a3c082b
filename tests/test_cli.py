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
