"""Deployable and secure: TLS handshakes, tokens and roles, scoping, safe defaults,
/status and /metrics, SIGHUP, against real nodes over real sockets (both transports:
`make test` runs this module on each)."""
from __future__ import annotations

import asyncio
import datetime
import signal
import subprocess
import sys

import orjson
import pytest
import trustme
from prometheus_client.parser import text_string_to_metric_families

from pfnode.node.auth import new_token, parse_tokens, token_entry, token_hash, token_of
from pfnode.client import Reactor
from pfnode.errors import ConfigError
from tests.conftest import ROOT, TEST_TOKENS, write_token_file
from tests.e2e_util import Raw, frame, http_get, new_id, packet, run, wait_until

ADMIN, CLIENT, REACTOR = TEST_TOKENS["admin"], TEST_TOKENS["client"], TEST_TOKENS["reactor"]


# ---------------------------------------------------------------- pure rules

def test_a_token_file_is_read_and_every_problem_listed():
    token = new_token()
    doc = {"token": [{"name": "a", "roles": ["submit"], "sha256": token_hash(token)}]}
    (identity,) = parse_tokens(doc).values()
    assert identity.name == "a" and identity.may("submit") and not identity.may("admin")
    bad = {"tokens": 1, "token": [{"name": "", "roles": ["submit"], "sha256": "x"},
                                  {"name": "b", "roles": ["root"], "sha256": token_hash(token)},
                                  {"name": "c", "roles": ["admin"], "sha256": "ABC"},
                                  {"name": "d", "roles": ["admin"], "sha256": token_hash(token), "x": 1},
                                  {"name": "d", "roles": ["admin"], "sha256": token_hash(new_token())}]}
    with pytest.raises(ConfigError) as info:
        parse_tokens(bad, "tokens.toml")
    message = str(info.value)
    for needle in ("unknown top-level key(s) tokens", "token 1: name", "'b': roles must be",
                   "'c': sha256 must be", "'d': unknown key(s) x", "'d': the name is used twice"):
        assert needle in message, (needle, message)
    assert token_entry("n", ["submit", "reactor"], token).count("\n") == 4


@pytest.mark.parametrize("name", ['bad"name', "back\\slash", "new\nline", "tab\tand\x00nul\x7f",
                                  "é ☃ 名前", '"""', "x = 1\n[[token]]"])
def test_a_token_entry_escapes_any_name_and_reads_back_as_itself(name):
    import tomllib

    token = new_token()
    entry = token_entry(name, ["submit", "admin"], token)
    assert tomllib.loads(entry) == {"token": [{"name": name, "roles": ["submit", "admin"],
                                               "sha256": token_hash(token)}]}
    (identity,) = parse_tokens(tomllib.loads(entry)).values()
    assert identity.name == name


@pytest.mark.parametrize("path, headers, expected", [
    ("/packetflow/v1", {"Authorization": "Bearer abc"}, "abc"),
    ("/packetflow/v1", {"authorization": "bearer  abc "}, "abc"),
    ("/packetflow/v1?token=xyz", None, "xyz"),
    ("/packetflow/v1?a=1&token=x%2By", {}, "x+y"),
    ("/packetflow/v1?token=url", {"Authorization": "Bearer header"}, "header"),
    ("/packetflow/v1", {"Authorization": "Basic abc"}, None),
    ("/packetflow/v1", None, None),
])
def test_a_token_comes_from_the_authorization_header_or_the_url(path, headers, expected):
    assert token_of(path, headers) == expected


def test_listening_beyond_loopback_without_tokens_is_refused_unless_insecure():
    done = subprocess.run([sys.executable, "-m", "pfnode", "serve", "--host", "0.0.0.0", "--port", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--insecure-no-auth" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "pfnode", "config", "--host", "0.0.0.0",
                           "--insecure-no-auth"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- tokens and roles

@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    from tests.conftest import start_node

    running = start_node(tmp_path_factory.mktemp("secured"), workers=1, tokens=True)
    yield running
    running.stop()


def test_no_token_or_an_unknown_one_is_pf401_and_the_link_closes(secured):
    async def go():
        for token in (None, "pft_nope"):
            async with Raw(secured.endpoint, token) as raw:
                frames = await raw.recv_until_closed(5)
                assert [(f["type"], f["payload"]["code"]) for f in frames] == [("error", "PF401")], frames
                assert raw.close_code == 4401
    run(go())
    assert "refused" in secured.log() and "unauthenticated" in secured.log()


def test_a_token_works_in_the_header_and_in_the_url(secured):
    async def go():
        async with Reactor(secured.endpoint, token=CLIENT) as by_header:
            assert (await by_header.submit("df", "transform", "a")).data == "A"
        async with Raw(secured.endpoint, CLIENT) as by_url:
            assert (await by_url.roundtrip("transform", "b"))["payload"]["data"] == "B"
    run(go())


def test_every_role_violation_is_pf403_for_that_message_and_changes_nothing(secured):
    async def go():
        async with Raw(secured.endpoint, CLIENT) as client, Raw(secured.endpoint, TEST_TOKENS["serve-only"]) as runner:
            before = await asyncio.to_thread(secured.health)
            # mc:* needs admin
            await client.submit(1, packet("scale", {"lane": "df", "workers": 3}, group="mc"))
            reply = await client.recv()
            assert (reply["seq"], reply["payload"]["error"]["code"]) == (1, "PF403"), reply
            # announcing capabilities needs the reactor role
            await client.send(frame("heartbeat", 2, {"timestamp": 1, "capabilities": ["df:x"]}))
            reply = await client.recv(heartbeats=True)
            assert (reply["type"], reply["seq"], reply["payload"]["code"]) == ("error", 2, "PF403"), reply
            # answering packets needs it too
            await client.send(frame("result", 0, {"packet_id": "p", "status": "success", "data": 1}))
            reply = await client.recv()
            assert (reply["type"], reply["payload"]["code"]) == ("error", "PF403"), reply
            # a reactor-only token may not submit
            await runner.submit(3, packet("transform", "x"))
            reply = await runner.recv()
            assert (reply["seq"], reply["payload"]["error"]["code"]) == (3, "PF403"), reply
            await client.roundtrip("transform", "still here")  # one message refused, the link kept
            after = await asyncio.to_thread(secured.health)
            assert after["lanes"]["df"]["target"] == before["lanes"]["df"]["target"] == 1
    run(go())


def test_status_and_metrics_need_the_admin_role_and_healthz_nothing(secured):
    base = secured.http
    assert http_get(base, "/healthz")[0] == 200
    for path in ("/status", "/metrics"):
        assert http_get(base, path)[0] == 401
        assert _get(base, path, CLIENT)[0] == 403
        assert _get(base, path, ADMIN)[0] == 200


def _get(base: str, path: str, token: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_ids_and_results_are_scoped_to_their_submitter(secured):
    async def go():
        shared_id = new_id("mine")
        async with Raw(secured.endpoint, CLIENT) as a, Raw(secured.endpoint, ADMIN) as b:
            await a.submit(1, packet("sleep", 0.3, id=shared_id))
            await b.submit(1, packet("transform", "b's own", id=shared_id))  # not a PF409
            reply_b = await b.recv()
            assert reply_b["payload"]["data" if "data" in reply_b["payload"] else "error"] == "B'S OWN"
            await a.recv()
            # b cannot read a's result through dependencies, nor feed a's dependents
            await b.submit(2, packet("ctx_deps", None, dependencies=[shared_id], timeout_ms=500))
            reply = await b.recv(5)
            deps = reply["payload"].get("data")
            assert deps != {shared_id: 0.3}, reply  # it saw its own, not a's
            # the same token on two connections is one submitter: it does see its own results
            async with Raw(secured.endpoint, CLIENT) as a2:
                await a2.submit(3, packet("ctx_deps", None, dependencies=[shared_id]))
                mine = await a2.recv(5)
                assert mine["payload"]["data"] == {shared_id: 0.3}, mine
    run(go())


def test_a_peer_may_only_answer_what_was_forwarded_to_it(secured):
    """A reactor-role peer that was never sent a packet cannot answer it (a forged result is
    dropped); only the peer holding it, while it holds it, can."""
    async def go():
        async with Raw(secured.endpoint, CLIENT) as client, Raw(secured.endpoint, REACTOR) as runner, \
                Raw(secured.endpoint, REACTOR) as forger:
            await forger.send(frame("heartbeat", 1, {"timestamp": 1, "capabilities": []}))
            await forger.recv(heartbeats=True)
            await runner.send(frame("heartbeat", 1, {"timestamp": 1, "capabilities": ["df:remote"]}))
            await runner.recv(heartbeats=True)
            pkt = packet("remote", "x", timeout_ms=5000)
            await client.submit(9, pkt)
            offered = await runner.recv()
            assert offered["type"] == "submit" and offered["payload"]["id"] == pkt["id"]
            await forger.send(frame("result", 0, {"packet_id": pkt["id"], "status": "success", "data": "forged"}))
            await asyncio.sleep(0.2)
            await runner.send(frame("result", 0, {"packet_id": pkt["id"], "status": "success", "data": "real"}))
            reply = await client.recv()
            assert reply["payload"]["data"] == "real", reply
    run(go())


def test_sighup_reloads_the_tokens_closing_links_whose_token_is_gone(fresh_node, tmp_path):
    path, tokens = write_token_file(tmp_path, {"keep": ["submit"], "drop": ["submit"], "admin": ["admin"]},
                                    {"keep": new_token(), "drop": new_token(), "admin": new_token()})
    n = fresh_node("--token-file", str(path), workers=1)
    n.tokens = tokens

    async def go():
        async with Raw(n.endpoint, tokens["keep"]) as keep, Raw(n.endpoint, tokens["drop"]) as drop:
            await keep.roundtrip()
            await drop.roundtrip()
            newcomer = new_token()
            path.write_text(token_entry("keep", ["submit"], tokens["keep"])
                            + token_entry("new", ["submit"], newcomer)
                            + token_entry("admin", ["admin"], tokens["admin"]))
            n.proc.send_signal(signal.SIGHUP)
            frames = await drop.recv_until_closed(5)
            assert frames and frames[-1]["payload"]["code"] == "PF401", frames
            await keep.roundtrip()  # untouched
            async with Raw(n.endpoint, newcomer) as new:
                await new.roundtrip()
            path.write_text("not toml [[[")  # a broken file keeps the table in force
            n.proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            async with Raw(n.endpoint, newcomer) as again:
                await again.roundtrip()
    run(go())
    assert n.proc.poll() is None, "SIGHUP must not stop the node"
    assert "token file not reloaded" in n.log()


# ---------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    good = ca.issue_cert("127.0.0.1", "localhost")
    expired = ca.issue_cert("127.0.0.1", not_before=datetime.datetime(2020, 1, 1),
                            not_after=datetime.datetime(2020, 2, 1))
    client = ca.issue_cert("client@example")
    paths = {}
    for name, cert in (("good", good), ("expired", expired), ("client", client)):
        cert.private_key_and_cert_chain_pem.write_to_path(str(directory / f"{name}.pem"))
        paths[name] = str(directory / f"{name}.pem")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(directory / "other-ca.pem"))
    paths["ca"], paths["other_ca"] = str(directory / "ca.pem"), str(directory / "other-ca.pem")
    return paths


def _tls_node(fresh_node, pki, cert: str, *extra: str):
    return fresh_node("--tls-cert", pki[cert], "--tls-key", pki[cert], *extra, workers=1)


def test_wss_with_a_good_certificate_and_tokens(fresh_node, pki, tmp_path):
    path, tokens = write_token_file(tmp_path)
    n = _tls_node(fresh_node, pki, "good", "--token-file", str(path))
    assert n.endpoint.startswith("wss://")

    async def go():
        async with Reactor(n.endpoint, token=tokens["client"], ca_file=pki["ca"]) as reactor:
            return await reactor.submit("df", "transform", "secret")
    assert run(go()).data == "SECRET"
    done = subprocess.run([sys.executable, "-m", "pfnode", "submit", "df", "transform", '"cli"', "--endpoint",
                           n.endpoint, "--ca-file", pki["ca"], "--token", tokens["client"]],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and orjson.loads(done.stdout)["data"] == "CLI", done.stderr


@pytest.mark.parametrize("cert, ca, why", [("good", "other_ca", "wrong CA"), ("expired", "ca", "expired")])
def test_a_certificate_that_does_not_verify_fails_the_handshake(fresh_node, pki, cert, ca, why):
    n = _tls_node(fresh_node, pki, cert)

    async def go():
        with pytest.raises(Exception) as info:
            async with Reactor(n.endpoint, ca_file=pki[ca]):
                pass
        return info.value
    error = run(go())
    assert "CERTIFICATE_VERIFY_FAILED" in repr(error) or "certificate" in repr(error).lower(), (why, error)


def test_mutual_tls_refuses_a_client_without_a_certificate(fresh_node, pki):
    n = _tls_node(fresh_node, pki, "good", "--tls-client-ca", pki["ca"])
    from pfnode.transports.tls import client_context

    async def go():
        with pytest.raises(Exception):
            async with Reactor(n.endpoint, ca_file=pki["ca"]) as reactor:
                await reactor.submit("df", "transform", "x")
        context = client_context(pki["ca"], pki["client"], pki["client"])
        async with Reactor(n.endpoint, ssl=context) as reactor:
            return await reactor.submit("df", "transform", "mutual")
    assert run(go()).data == "MUTUAL"


# ---------------------------------------------------------------- /metrics

def test_metrics_count_what_was_sent(fresh_node):
    n = fresh_node(workers=1)

    async def go():
        async with Raw(n.endpoint) as raw:
            for seq in range(1, 11):
                await raw.roundtrip("transform", f"x{seq}", seq=seq)
            for seq in range(11, 14):
                await raw.submit(seq, packet("boom", seq))
            await raw.recv_n(3)
            await raw.send(b"not json")
            await raw.recv()
    run(go())
    status, headers, body = http_get(n.http, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}

    def value(name: str, **labels) -> float:
        return sum(s.value for s in families[name].samples
                   if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()))

    assert value("pfnode_packets", group="df", outcome="success") == 10
    assert value("pfnode_packets", group="df", outcome="PF500") == 3
    assert value("pfnode_rejected_frames", code="PF400") == 1
    rtt = [s for s in families["pfnode_packet_round_trip_seconds"].samples
           if s.name.endswith("_count") and s.labels.get("lane") == "df"]
    assert sum(s.value for s in rtt) == 13
    workers = {s.labels["lane"]: s.value for s in families["pfnode_lane_workers"].samples}
    assert workers["df"] == 1 and workers["cf"] == 1


def test_pfnode_token_new_prints_a_token_and_the_entry_that_admits_it(fresh_node, tmp_path):
    done = subprocess.run([sys.executable, "-m", "pfnode", "token", "new", "ci-client", "--roles",
                           "submit"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    token = done.stderr.strip()  # the token on stderr, the entry alone on stdout
    assert token.startswith("pft_") and token not in done.stdout  # only its hash is written down
    path = tmp_path / "tokens.toml"
    path.write_text(done.stdout)
    n = fresh_node("--token-file", str(path), workers=1)

    async def go():
        async with Raw(n.endpoint, token) as raw:
            return await raw.roundtrip("transform", "issued")
    assert run(go())["payload"]["data"] == "ISSUED"


def test_a_dial_out_node_reaches_a_wss_hub_with_a_token_in_its_url(fresh_node, pki, tmp_path):
    from tests.test_dialout import start_connector

    path, tokens = write_token_file(tmp_path)
    hub = fresh_node("--tls-cert", pki["good"], "--tls-key", pki["good"], "--token-file", str(path),
                     workers=1, handlers="tests.handlers_testing")
    url = f"{hub.endpoint}?token={tokens['serve-only']}"  # runs packets, may not submit
    connector = start_connector(tmp_path, url, "--ca-file", pki["ca"], workers=1)
    try:
        wait_until(lambda: "df:remote_record, df:remote_upper" in hub.log(), what="the announcement")

        async def go():
            async with Reactor(hub.endpoint, token=tokens["client"], ca_file=pki["ca"]) as client:
                return await client.submit("df", "remote_upper", "over tls")
        assert run(go()).data == "OVER TLS"
    finally:
        connector.stop()
