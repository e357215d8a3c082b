"""`--dask local:N`: a Dask `LocalCluster` of N worker processes in a child process of the node.

    python -m pfnode.dasklocal N

The node starts this module (pfnode/dask/lane.py) and reads the scheduler's address from the
first line of its stdout; from then on it talks to the cluster as it would to any other, over
TCP, through a Dask client. The cluster runs in a process of its own so that its scheduler and
nannies do not share the node's event loop: the front stays as responsive as without Dask.

The cluster is the node's to scale: the scheduler gets two extra handlers, `pfnode_scale(n)`
(`LocalCluster.scale`) and `pfnode_adapt(minimum, maximum, stop)` (`LocalCluster.adapt`), which
`mc:scale` calls through the client. Its scheduler lets no task outlive a worker that died
running it (`allowed-failures: 0`): the node decides what a lost packet becomes (PF502, or
another run when the packet asked for retries), Dask does not run it again by itself.

It stops when its stdin closes (the node closes it, or is gone), on SIGTERM, or, should the
node be killed, by the kernel's parent-death signal; the worker processes end with it.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading

READY_PREFIX = "pfnode-dask-local "  # the line the node waits for: this prefix, then the address

log = logging.getLogger("pfnode.dask")


def _die_with_parent() -> None:
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


async def serve(workers: int, ready_fd: int) -> None:
    import dask
    from distributed import LocalCluster

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # stdin's end (EOF) means the node is gone or closing: a thread, since a pipe reader on the
    # event loop would see stdin shared with nothing else, but a blocking read is simplest
    threading.Thread(target=lambda: (sys.stdin.buffer.read(), loop.call_soon_threadsafe(stop.set)),
                     daemon=True).start()
    dask.config.set({"distributed.scheduler.allowed-failures": 0})
    cluster = await LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, asynchronous=True,
                                 host="127.0.0.1", dashboard_address="127.0.0.1:0")

    async def pfnode_scale(n: int) -> dict:
        if cluster._adaptive is not None:  # an explicit size ends adaptive scaling
            cluster._adaptive.stop()
            cluster._adaptive = None
        cluster.scale(n)
        return {"requested": n}

    async def pfnode_adapt(minimum: int = 0, maximum: int = 1, stop: bool = False) -> dict:
        if stop:
            if cluster._adaptive is not None:
                cluster._adaptive.stop()
                cluster._adaptive = None
            return {"adaptive": None}
        cluster.adapt(minimum=minimum, maximum=maximum)
        return {"adaptive": {"minimum": minimum, "maximum": maximum}}

    async def pfnode_adaptive() -> dict | None:
        adaptive = cluster._adaptive
        if adaptive is None:
            return None
        return {"minimum": adaptive.minimum, "maximum": adaptive.maximum}

    cluster.scheduler.handlers.update(pfnode_scale=pfnode_scale, pfnode_adapt=pfnode_adapt,
                                      pfnode_adaptive=pfnode_adaptive)
    os.write(ready_fd, f"{READY_PREFIX}{cluster.scheduler_address}\n".encode())
    os.close(ready_fd)
    try:
        await stop.wait()
    finally:
        await cluster.close(timeout=10)


def main(argv: list[str]) -> int:
    workers = int(argv[1]) if len(argv) > 1 else 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node owns shutdown (Ctrl-C reaches us too)
    _die_with_parent()
    ready_fd = os.dup(1)
    os.dup2(2, 1)  # the cluster's and its workers' prints go to stderr, not into the node's pipe
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(workers, ready_fd))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
