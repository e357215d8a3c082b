"""Imports fine, but every worker process dies as it starts (forked from the fork server,
or started as a new interpreter): a node that cannot get its workers ready must fail to
start cleanly, leaving nothing behind."""
import os
import sys

from pfnode import handler


@handler("df", "never")
def never(data):
    return data


if any("pfnode.pool.worker" in arg for arg in sys.argv):
    os._exit(5)  # a new interpreter started as a worker
os.register_at_fork(after_in_child=lambda: os._exit(5))  # a worker forked by the fork server
