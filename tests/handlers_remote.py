"""Handlers a dial-out node (`pfnode connect`) runs for its hub in tests/test_dialout.py.

The hub runs only tests.handlers_testing, which has none of these keys, so packets for
them can only run on a reactor."""
from __future__ import annotations

import os
import time

from pfnode import handler


@handler("df", "remote_record")
def remote_record(data, ctx):
    """Sleep data["s"] seconds, then append this packet's id to the file data["file"]:
    one line per run, so a packet that ran twice shows up twice."""
    time.sleep(data.get("s", 0))
    with open(data["file"], "a") as f:
        f.write(f"{ctx.packet_id}\n")
    return {"id": ctx.packet_id, "pid": os.getpid()}


@handler("df", "remote_upper")
def remote_upper(data):
    return data.upper()
