"""The live dashboard (/dashboard, node/dashboard.py): its data and its auth over plain HTTP,
and the page itself in a real browser (Debian's chromium and chromium-driver, driven with
selenium) against a node with tokens.

The browser test is skipped, saying why, only where Chromium, its driver or selenium is
missing (`.ci/run` installs them). It saves a screenshot in its tmp_path, and with
PFTEST_SCREENSHOT=1 also as docs/dashboard.png (the README shows that one).
"""
from __future__ import annotations

import asyncio
import http.client
import os
import re
import shutil
import threading
import urllib.parse
from pathlib import Path

import orjson
import pytest

from tests.conftest import ROOT, start_node
from tests.e2e_util import Raw, packet, run, wait_until

pytestmark = pytest.mark.timeout(120)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = ROOT / "docs" / "dashboard.png"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """A node with tokens, 2 df workers, one packet at a time each (so that packets queue)."""
    node = start_node(tmp_path_factory.mktemp("dashboard"), "--worker-window", "1", workers=2, tokens=True)
    yield node
    node.stop()


def get(node, path: str, token: str | None = None) -> tuple[int, dict, bytes]:
    url = urllib.parse.urlsplit(node.http)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def data(node) -> dict:
    status, _, body = get(node, "/dashboard/data", node.tokens["admin"])
    assert status == 200, body
    return orjson.loads(body)


# ---------------------------------------------------------------- over HTTP

def test_the_page_and_its_data_need_the_admin_role_and_its_files_nothing(secured):
    tokens = secured.tokens
    for path in ("/dashboard", "/dashboard/data"):
        assert get(secured, path)[0] == 401
        assert get(secured, path, tokens["client"])[0] == 403
        assert get(secured, path, tokens["admin"])[0] == 200
        assert get(secured, f"{path}?token={urllib.parse.quote(tokens['admin'])}")[0] == 200
    status, headers, body = get(secured, "/dashboard", tokens["admin"])
    assert headers["content-type"].startswith("text/html") and b"/dashboard/dashboard.js" in body
    assert "default-src 'none'" in headers["content-security-policy"]
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        status, headers, body = get(secured, f"/dashboard/{name}")
        assert status == 200 and headers["content-type"].startswith(kind) and body
    assert get(secured, "/dashboard/../status")[0] == 404
    assert get(secured, "/dashboard/nothing.js")[0] == 404


def test_the_page_loads_nothing_from_another_host():
    """No CDN, no font service: every URL the page's files name is the node's own."""
    from pfnode.node import dashboard

    for name in (dashboard.PAGE, *dashboard.ASSETS):
        text = (ROOT / "pfnode" / "node" / "static" / name).read_text()
        urls = [u for u in re.findall(r"(?:https?:)?//[\w-][^\s\"'`)<>]*", text)
                if u != "http://www.w3.org/2000/svg"]  # SVG's XML namespace, a name never fetched
        assert not urls, (name, urls)


def test_the_data_follows_what_the_node_runs(secured):
    before = data(secured)

    async def go():
        async with Raw(secured.endpoint, secured.tokens["client"]) as raw:
            for seq in range(1, 21):
                await raw.submit(seq, packet("uppercase", f"x{seq}"))
            await raw.submit(21, packet("boom", 1))
            await raw.submit(22, packet("cache", {"op": "put", "key": "k", "value": [1, 2, 3]}, group="rm"))
            await raw.recv_n(22)
            return data(secured)  # while this client is connected
    during = run(go())
    df = during["groups"]["df"]
    assert df["ok"] - before["groups"].get("df", {"ok": 0})["ok"] == 20
    assert sum(df["rtt"]) >= df["ok"] + df["failed"] - df["cancelled"]
    assert during["errors"]["PF500"]["failed"] - before["errors"].get("PF500", {"failed": 0})["failed"] == 1
    assert during["elements"]["by_principal"]["client"]["cache"][0] == 1
    assert "client" in {link["name"] for link in during["hub"]["links"]}
    status = secured.health()
    workers = {w["pid"]: w for w in during["workers"] if w["lane"] != "front"}
    assert sorted(workers) == sorted(status["worker_pids"])
    assert all(w["rss_bytes"] > 0 and w["cpu_s"] >= 0 for w in workers.values())
    ran = sum(w["packets"] for w in workers.values() if w["lane"] == "df")
    assert ran - sum(w["packets"] for w in before["workers"] if w["lane"] == "df") == 21
    assert during["lanes"]["df"]["workers"] == 2 and during["dask"] is None


def test_the_lanes_show_their_queue_by_priority(secured):
    async def go():
        async with Raw(secured.endpoint, secured.tokens["client"]) as raw:
            for seq in (1, 2):  # both df workers busy, one packet each (--worker-window 1)
                await raw.submit(seq, packet("sleep", 2.0, priority=5))
            wait = wait_until(lambda: data(secured)["lanes"]["df"]["busy"] == 2, what="both df workers busy")
            assert wait
            for seq, priority in ((3, 9), (4, 9), (5, 3), (6, 9), (7, 3)):
                await raw.submit(seq, packet("noop", seq, priority=priority))
            shown = wait_until(lambda: (d := data(secured))["lanes"]["df"]["queued"] == 5 and d, what="5 queued")
            await raw.recv_n(7)
            return shown
    lane = run(go())["lanes"]["df"]
    assert lane["queued_by_priority"] == {"9": 3, "3": 2}
    assert (lane["workers"], lane["busy"], lane["idle"]) == (2, 2, 0)


# ---------------------------------------------------------------- in a real browser

def chromium(tmp_path: Path):
    """A headless Chromium under selenium, with a fresh profile, that reaches no other host."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver (.ci/run does)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[test]'")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1240", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER, log_output=str(tmp_path / "driver.log")))


_PAGE_FIGURES = """
const text = (selector) => { const e = document.querySelector(selector); return e ? e.textContent : null; };
return {updated: text('#updated'), total: text('#packets-total'), rate: text('#rate-total'),
        df: text('tr[data-group="df"] td[data-field="packets"]'),
        p50: text('tr[data-group="df"] td[data-field="p50"]'),
        pids: [...document.querySelectorAll('#workers tr[data-pid]')].map(r => Number(r.dataset.pid)),
        errors: text('tr[data-code="PF500"] td[data-field="total"]'),
        links: [...document.querySelectorAll('#links tr[data-link]')].map(r => r.dataset.link),
        principals: [...document.querySelectorAll('#elements tr[data-principal]')].map(r => r.dataset.principal),
        problem: document.getElementById('problem').hidden ? null : text('#problem'),
        resources: performance.getEntriesByType('resource').map(e => e.name)};
"""


def _number(text: str | None) -> float:
    return float(text.replace(",", "")) if text and text not in ("–", "-") else -1.0


class Traffic:
    """Packets of several groups, an error now and then, a reactor that announces what it
    runs, and resources held by two principals, in a thread, until stopped."""

    def __init__(self, node) -> None:
        self.node = node
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        from pfnode.client import Reactor

        node, tokens = self.node, self.node.tokens
        async with Reactor(node.endpoint, token=tokens["reactor"]) as reactor, \
                Raw(node.endpoint, tokens["client"]) as client, Raw(node.endpoint, tokens["admin"]) as admin:
            reactor.register("df", "tokenize", lambda text: text.split())
            await reactor.announce_capabilities()
            await admin.submit(1, packet("alloc", {"name": "frames", "shape": [256, 256], "dtype": "<f8"}, group="rm"))
            await client.submit(1, packet("cache", {"op": "put", "key": "k", "value": list(range(100))}, group="rm"))
            await client.submit(2, packet("lock", {"name": "ledger", "lease_ms": 600_000}, group="rm"))
            await admin.recv()
            await client.recv_n(2)
            await asyncio.gather(self._mixed(client), self._slow(node))

    async def _mixed(self, client) -> None:
        seq = 10
        while not self.stop.is_set():
            batch = [packet("uppercase", "x"), packet("noop", seq), packet("validate", seq, group="cf"),
                     packet("tokenize", "a b c"), packet("matmul", {"a": [[1, 2]], "b": [[3], [4]]})]
            batch += [packet("boom", seq)] if seq % 50 < 6 else []  # an error now and then
            for pkt in batch:
                seq += 1
                await client.submit(seq, pkt)
            await client.recv_n(len(batch))
            await asyncio.sleep(0.02)

    async def _slow(self, node) -> None:
        """Slow packets of low priorities, three at a time: a busy worker, and a queue."""
        async with Raw(node.endpoint, node.tokens["client"]) as raw:
            seq = 0
            while not self.stop.is_set():
                for priority in (2, 3, 2):
                    seq += 1
                    await raw.submit(seq, packet("sleep", 0.15, priority=priority))
                await raw.recv_n(3)

    def __enter__(self) -> "Traffic":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)


def test_the_page_in_a_real_browser_shows_the_numbers_change(secured, tmp_path):
    driver = chromium(tmp_path)
    try:
        driver.get(f"{secured.http}/dashboard?token={urllib.parse.quote(secured.tokens['admin'])}")
        first = wait_until(lambda: (f := driver.execute_script(_PAGE_FIGURES))["updated"] != "never" and f,
                           timeout_s=30, what="the page's first read")
        assert first["problem"] is None, first["problem"]
        run(_submit_many(secured, 200))
        after = wait_until(lambda: (f := driver.execute_script(_PAGE_FIGURES))
                           and _number(f["total"]) >= _number(first["total"]) + 200 and f,
                           timeout_s=30, what="the page showing the 200 packets")
        assert _number(after["rate"]) > 0, after  # read with the count that grew: the same update
        assert _number(after["df"]) >= _number(first["df"]) + 200
        assert after["p50"] not in (None, "–"), after
        assert set(secured.health()["worker_pids"]) <= set(after["pids"])
        with Traffic(secured):
            shown = wait_until(lambda: (f := driver.execute_script(_PAGE_FIGURES))
                               and {"reactor", "client"} <= set(f["links"]) and {"admin", "client"} <= set(f["principals"])
                               and _number(f["errors"]) > _number(after["errors"]) and f,
                               timeout_s=30, what="the hub links, the principals and the errors")
            wait_until(lambda: _number(driver.execute_script(_PAGE_FIGURES)["rate"]) > 100, timeout_s=30,
                       what="a busy node's rate")  # for the screenshot: a page in the middle of work
            if os.environ.get("PFTEST_SCREENSHOT"):  # the README's: a minute of the sparkline drawn
                wait_until(lambda: driver.execute_script("return document.getElementById('sparkline')"
                                                         ".dataset.points") == "60", timeout_s=90, interval_s=1,
                           what="a full sparkline")
            driver.save_screenshot(str(tmp_path / "dashboard.png"))
        origin = secured.http
        assert all(url.startswith(origin + "/dashboard") or url.startswith("data:") for url in shown["resources"]), \
            shown["resources"]
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not severe, severe  # a script error or a refused load (the CSP) would be here
    finally:
        driver.quit()
    assert (tmp_path / "dashboard.png").read_bytes().startswith(b"\x89PNG")
    if os.environ.get("PFTEST_SCREENSHOT"):
        shutil.copy(tmp_path / "dashboard.png", SCREENSHOT)


async def _submit_many(node, n: int) -> None:
    async with Raw(node.endpoint, node.tokens["client"]) as raw:
        for seq in range(1, n + 1):
            await raw.submit(seq, packet("uppercase", f"x{seq}"))
        await raw.recv_n(n)
