"""systemd's readiness protocol (sd_notify(3)) with the standard library only.

A service of `Type=notify` tells systemd that it is ready (`READY=1`), that it is stopping
(`STOPPING=1`) and what it is doing (`STATUS=...`) in datagrams sent to the Unix socket
named by `$NOTIFY_SOCKET`: a path, or after a leading "@" a name in the abstract
namespace. Without `$NOTIFY_SOCKET` (not under systemd, or another `Type=`) nothing is
sent. A message that cannot be sent is logged, never raised: the node runs on, and
systemd, not told it is ready, fails the start after `TimeoutStartSec=`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger("pfnode.sdnotify")

ENV = "NOTIFY_SOCKET"


def notify(*fields: str) -> bool:
    """Send `fields` ("READY=1", "STATUS=...") to systemd as one message; True when sent."""
    address = os.environ.get(ENV, "")
    if not address:
        return False
    if address.startswith("@"):
        target = "\0" + address[1:]
    elif address.startswith("/"):
        target = address
    else:  # e.g. vsock:CID:PORT (systemd >= 254, for virtual machines): not for us
        log.warning("sdnotify: $%s=%s is not a Unix socket; not notifying", ENV, address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(target)
            sock.send("\n".join(fields).encode())
    except OSError as exc:
        log.warning("sdnotify: cannot notify %s: %s", address, exc)
        return False
    return True


async def ready_until(stopping: asyncio.Event, status: str) -> None:
    """READY=1 (with `status`) now; when `stopping` is set, STOPPING=1: the node drains."""
    notify("READY=1", f"STATUS={status}")
    await stopping.wait()
    notify("STOPPING=1", "STATUS=draining")
