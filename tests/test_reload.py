"""SIGHUP: new handler code is picked up by rolling the workers one lane slot at a time,
and no packet is lost while it happens."""
from __future__ import annotations

import signal
import textwrap

from tests.e2e_util import Raw, packet, run, wait_until

MODULE = '''
import time
from pfnode import handler

@handler("df", "version")
def version(data):
    time.sleep(0.01)
    return {{"version": {version}, "n": data}}

@handler("cf", "version")
def cf_version(data):
    return {{"version": {version}, "n": data}}
'''


def test_sighup_rolls_the_workers_onto_new_code_losing_no_packet(fresh_node, tmp_path):
    source = tmp_path / "rolling_handlers.py"
    source.write_text(textwrap.dedent(MODULE.format(version=1)))
    n = fresh_node(workers=2, handlers="rolling_handlers", env={"PYTHONPATH": str(tmp_path)})
    before = n.health()["worker_pids"]

    async def go():
        async with Raw(n.endpoint) as raw:
            seq = 0
            versions = []
            rolled = False
            while True:
                seq += 1
                group = "cf" if seq % 5 == 0 else "df"
                reply = await raw.roundtrip("version", seq, seq=seq) if group == "df" else None
                if reply is None:
                    await raw.submit(seq, packet("version", seq, group="cf"))
                    reply = await raw.recv()
                    assert reply["seq"] == seq
                assert reply["payload"]["status"] == "success", reply
                versions.append(reply["payload"]["data"]["version"])
                if seq == 20:
                    source.write_text(textwrap.dedent(MODULE.format(version=2)))
                    n.proc.send_signal(signal.SIGHUP)
                    rolled = True
                if rolled and versions[-10:] == [2] * 10:
                    return versions
                assert seq < 5000, "the workers never ran the new code"

    versions = run(go(), 60)
    assert versions[:20] == [1] * 20 and versions[-1] == 2
    assert sorted(set(versions)) == [1, 2]
    health = wait_until(lambda: (h := n.health())["workers"] == 5 and h, what="the lanes back at size")
    assert not set(before) & set(health["worker_pids"]), "every worker was replaced"
    assert health["counters"].get("failed", 0) == 0
    assert "rolled 5 workers" in n.log()
