"""The node's background loops. Each is a `*_tick(now)` that decides on the node's clock
(tested with a FakeClock: tests/test_node_parts.py) and a loop that only sleeps and ticks:

- heartbeats, every `heartbeat_interval_ms`: a link silent for `heartbeat_missed_limit`
  intervals is closed 4408; every other link gets a heartbeat and a ping (the uplink: an
  announcement of what the node runs). A link not connected (an uplink between dials) or
  whose reading the node paused is not judged: its silence is not its own.
- housekeeping, every second: the elements' resources whose ttl or lease passed go; a link
  whose reading is paused is checked for a peer that hung up (a paused transport does not
  notice); suppressed handler errors and refused connections are summed up in the log.
- autoscale (`--autoscale`), every `autoscale_interval_ms`: the df lane grows while work
  queues behind busy workers and shrinks after being idle (pfnode/pool/capacity.py's rule).
"""
from __future__ import annotations

import asyncio
import logging

from ..core import protocol
from ..ops import logs
from ..pool.capacity import autoscale_step, read_capacity, recommend
from ..transports.base import HEARTBEAT_TIMEOUT_CLOSE_CODE
from .shared import NodeShared


log = logging.getLogger("pfnode.front")


class Loops:
    def __init__(self, node: NodeShared) -> None:
        self.node = node
        self.idle_since: float | None = None  # autoscale: since when the df lane has had nothing to do

    def start(self) -> None:
        node = self.node
        node.background(self._every(node.settings.heartbeat_interval_ms / 1000, self.heartbeat_tick))
        node.background(self._every(1.0, self.housekeeping_tick))
        if node.settings.autoscale:
            node.background(self._autoscale_loop())

    async def _every(self, interval_s: float, tick) -> None:
        while True:
            await asyncio.sleep(interval_s)
            tick(self.node.clock())

    # -- heartbeats
    def heartbeat_tick(self, now: float) -> None:
        node = self.node
        s = node.settings
        silent_limit = s.heartbeat_interval_ms / 1000 * s.heartbeat_missed_limit
        for link in node.links:
            if link.closed:
                continue
            uplink = node.links.is_uplink(link)
            if not link.connected or link.reading_paused:
                link.last_seen = now
            elif now - link.last_seen > silent_limit:
                log.warning("front: %s silent for %.0f s; closing", link.peer, silent_limit)
                link.close(HEARTBEAT_TIMEOUT_CLOSE_CODE, "heartbeat timeout")
                link.last_seen = now  # an uplink dials again: judge the next connection
                continue
            link.heartbeat_seq += 1
            if uplink:  # a hub learns again what we run, should it have restarted
                link.send(node.announcement(link.heartbeat_seq))
            else:
                link.send(protocol.encode_heartbeat(link.heartbeat_seq, node.heartbeat_payload()))
            link.ping()

    # -- housekeeping
    def housekeeping_tick(self, now: float) -> None:
        node = self.node
        logs.log_suppressed(log, node.pool.handler_errors, "handler errors")
        logs.log_suppressed(log, node.refusals, "refused connections")
        try:
            node.elements.sweep(now)
        except Exception:
            log.exception("front: sweeping the elements' expired resources failed")
        node.links.close_idle(now)
        for link in [link for link in node.links if link.reading_paused and not link.closed]:
            if not node.links.is_uplink(link) and link.peer_gone():
                log.debug("front: %s hung up while its reading was paused", link.peer)
                link.abort()
                node.on_close(link, 1006)  # dropped without a close frame, as the transports say it

    # -- autoscale
    def autoscale_step(self, now: float) -> int:
        """How many df workers to add (or remove, negative) now."""
        node = self.node
        s = node.settings
        stats = node.pool.stats()["lanes"]["df"]
        queued = node.scheduler.depth("df")
        if self.idle_since is None or stats["running"] or queued:
            self.idle_since = now
        cap = read_capacity(node.pool.worker_pids())
        advice = recommend(cap, rm_memory_limit_mb=s.rm_memory_limit_mb, current=node.pool.lane_sizes(),
                           df_max_workers=s.df_max_workers)
        return autoscale_step(size=node.pool.lane_size("df"), queued=queued, busy=stats["busy"],
                              idle_s=now - self.idle_since, prefetch=1, min_size=s.df_min_workers,
                              max_size=s.df_max_workers, recommended=advice["df"])

    async def _autoscale_loop(self) -> None:
        node = self.node
        self.idle_since = node.clock()
        while not node.draining:
            await asyncio.sleep(node.settings.autoscale_interval_ms / 1000)
            step = self.autoscale_step(node.clock())
            if step:
                size = node.pool.lane_size("df")
                log.info("front: autoscale df %d -> %d (queued %d)", size, size + step, node.scheduler.depth("df"))
                try:
                    await node.pool.resize("df", size + step)
                except Exception as exc:
                    log.error("front: autoscale failed: %s", exc)
