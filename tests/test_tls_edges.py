"""The endpoint's edges, against real nodes over real sockets (both transports: run this
module with PFNODE_TRANSPORT=websockets too): clients that give up their TLS handshake,
reject our certificate or never start one, and a storm of wrong tokens from one address."""
from __future__ import annotations

import socket
import ssl

import orjson
import pytest
import trustme
from websockets.exceptions import InvalidStatus

from pfnode.client import Reactor
from pfnode.errors import ConnectionLost
from tests.e2e_util import Raw, http_get, run, wait_until

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(directory / "node.pem"))
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return {"node": str(directory / "node.pem"), "ca": str(directory / "ca.pem")}


def tls_node(fresh_node, pki, *args: str, **kwargs):
    return fresh_node("--tls-cert", pki["node"], "--tls-key", pki["node"], *args, workers=1, **kwargs)


def port_of(node) -> int:
    return int(node.endpoint.split(":")[2].split("/")[0])


def submit_over_tls(node, pki, text: str = "fine") -> str:
    async def go():
        async with Reactor(node.endpoint, ca_file=pki["ca"]) as reactor:
            return (await reactor.submit("df", "transform", text)).data
    return run(go())


def give_up_handshakes(port: int) -> None:
    """Clients that open the port and leave, leave in the middle of a ClientHello, or reject
    the node's certificate (they do not know its CA)."""
    for _ in range(5):
        socket.create_connection(("127.0.0.1", port)).close()
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello's first bytes, then gone
    strict = ssl.create_default_context()  # the system's CAs: not the node's
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            with pytest.raises(ssl.SSLCertVerificationError):
                strict.wrap_socket(sock, server_hostname="127.0.0.1")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_handshakes_given_up_cost_no_traceback_and_at_most_one_line(fresh_node, pki, fmt):
    node = tls_node(fresh_node, pki, "--log-format", fmt)
    give_up_handshakes(port_of(node))
    assert submit_over_tls(node, pki) == "FINE"  # the node serves on
    assert node.stop() == 0
    log = node.log()
    assert "Traceback" not in log and "Logging error" not in log, log
    refused = [line for line in log.splitlines() if "TLS handshake failed" in line]
    assert len(refused) <= 1, refused  # one a minute, whatever the number of clients
    if fmt == "json":
        lines = [orjson.loads(line) for line in log.splitlines()]  # every line is JSON
        for line in lines:
            if "TLS handshake failed" in line["msg"]:
                assert (line["event"], line["reason"], line["level"]) == ("connection_refused", "tls", "INFO")


def test_a_client_that_never_says_hello_counts_toward_max_connections_until_dropped(fresh_node, pki):
    node = tls_node(fresh_node, pki, "--max-connections", "2", "--tls-handshake-timeout-ms", "1000")
    silent = [socket.create_connection(("127.0.0.1", port_of(node))) for _ in range(2)]
    try:
        with pytest.raises(ConnectionLost, match="503"):  # 2 handshakes under way: no room
            submit_over_tls(node, pki)
        for sock in silent:  # the node drops them once their handshake time is up
            sock.settimeout(30)  # a hang guard only: the node's timeout is 1 s
            try:
                assert sock.recv(1) == b""
            except ConnectionResetError:
                pass
        assert submit_over_tls(node, pki, "room again") == "ROOM AGAIN"
    finally:
        for sock in silent:
            sock.close()
    assert "Traceback" not in node.log()


def test_a_storm_of_wrong_tokens_from_one_address_is_refused_before_any_work(fresh_node):
    node = fresh_node("--auth-backoff-failures", "3", "--auth-backoff-ms", "1500", tokens=True, workers=1)

    async def wrong_token() -> list[dict]:
        async with Raw(node.endpoint, "not-a-token") as raw:
            return await raw.recv_until_closed()

    async def good_token() -> dict:
        async with Raw(node.endpoint, node.tokens["client"]) as raw:
            return await raw.roundtrip("transform", "let in")

    for _ in range(3):
        assert [f["payload"]["code"] for f in run(wrong_token())] == ["PF401"]
    with pytest.raises(InvalidStatus) as refused:  # even with a good token: the address is backed off
        run(good_token())
    assert refused.value.response.status_code == 429
    assert 1 <= int(refused.value.response.headers["Retry-After"]) <= 2
    assert http_get(node.http, "/metrics")[0] == 429  # the token-guarded pages too
    assert http_get(node.http, "/healthz")[0] == 200

    def admitted():
        try:
            return run(good_token())["payload"]["data"]
        except InvalidStatus:
            return None
    assert wait_until(admitted, timeout_s=20, what="the back-off to end") == "LET IN"
    log = node.log()
    assert log.count("unauthenticated") == 1, log  # the refused connections' lines: one a minute
    assert log.count("failed to authenticate 3 times") == 1, log
