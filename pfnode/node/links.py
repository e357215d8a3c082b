"""The node's connections: who each link is (its token, checked on open and again on every
reload), whose ids it submits among (its scope), what happens to its packets when it
leaves, and the in-flight count its reading pauses at.

- Open: with a token file, a link without a known token gets PF401 (seq 0) and is closed
  4401; with one, it takes its token's identity. Every link but our uplink joins the hub.
- Close: its packets in flight are abandoned (`abandon`); what only it held of the
  elements' resources is released (its scope's, when its token has no other link open).
- Reload (SIGHUP): the token file is read again; links whose token is gone get PF401 and
  are closed, the others take their token's roles as the file now says.
"""
from __future__ import annotations

import logging
from typing import Any

from ..core import protocol
from ..core.flight import BLOCKED, DISPATCHED, FORWARDED, HOSTED, QUEUED, Flight
from ..errors import ErrorCode
from ..core.shares import Shares
from ..ops import logs
from ..transports.base import PeerLink
from .auth import TokenTable, token_hash
from .http import auth_failed
from .shared import NodeShared


log = logging.getLogger("pfnode.front")

AUTH_CLOSE_CODE = 4401  # a private-use close code: "unauthenticated"
TRY_AGAIN_CLOSE_CODE = 1013  # "try again later": over its principal's share of connections, or idle
IDLE_NEAR_BOUND = 0.9  # idle links are closed once this part of max_connections is taken


def scope_of(link: PeerLink) -> Any:
    """Whose ids and results a link's packets are among (see Flight.scope): its token's
    identity, or without authentication the connection itself. So one client can
    neither take another's ids (PF409) nor read or feed another's results."""
    return link.identity.name if link.identity is not None else link


class Links:
    def __init__(self, node: NodeShared) -> None:
        self.node = node
        self.open: set[PeerLink] = set()
        # connections per principal (with tokens): a fair share of max_connections each
        self.shares = Shares(node.settings.max_connections, "connections")

    def __len__(self) -> int:
        return len(self.open)

    def __iter__(self):
        return iter(list(self.open))

    def is_uplink(self, link: PeerLink) -> bool:
        uplink = self.node.uplink
        return uplink is not None and link is uplink.link

    def on_open(self, link: PeerLink) -> None:
        node = self.node
        self.open.add(link)
        node.metrics.connection_opened()
        if node.access.enabled and not self.is_uplink(link):
            identity, token = node.access.identify(link.request_path, link.request_headers)
            if identity is None:
                self._refuse(link, token)
                return
            refusal = self.shares.refusal(identity.name)
            if refusal is not None:
                node.metrics.connection_refused("principal_share")
                link.refused = True
                link.send(protocol.encode_error(0, ErrorCode.OVERLOADED, refusal))
                link.close(TRY_AGAIN_CLOSE_CODE, "over your share of connections")
                return
            self.shares.add(identity.name)
            link.identity = identity
            link.credential = token_hash(token)
        log.debug("front: %s connected%s", link.peer, f" as {link.identity}" if link.identity else "")
        if node.settings.hub_routing and not self.is_uplink(link):
            node.hub.add_link(link)

    def _refuse(self, link: PeerLink, token: str | None) -> None:
        node = self.node
        metrics = node.metrics
        metrics.auth_failure("bad_token" if token else "missing_token")
        metrics.connection_refused("unauthenticated")
        auth_failed(node, link.peer)
        logs.connection_refused(log, peer=link.peer, reason="unauthenticated", limiter=node.refusals,
                                detail="an unknown token" if token else "no token")
        link.refused = True
        link.send(protocol.encode_error(0, ErrorCode.UNAUTHENTICATED,
                                        "unknown token" if token else
                                        "authentication required: present a token as "
                                        "'Authorization: Bearer <token>' or '?token=<token>'"))
        link.close(AUTH_CLOSE_CODE, "unauthenticated")

    def on_close(self, link: PeerLink, code: int | None) -> None:
        if link.closed:
            return
        node = self.node
        link.closed = True
        self.open.discard(link)
        if link.identity is not None and not self.is_uplink(link):
            self.shares.remove(link.identity.name)
        node.metrics.connection_closed(code)
        dropped = node.scheduler.of_origin(link)
        for flight in dropped:
            self.abandon(flight)
        node.hub.remove_link(link)
        scope = scope_of(link)
        if not isinstance(scope, str) or not any(other.identity is not None and other.identity.name == scope
                                                 for other in self.open):
            node.elements.release(scope)  # what only it held: its subscriptions, buffers, leases, cache
        if not isinstance(scope, str):
            node.scheduler.refused.forget(scope)  # the connection was the scope: it submits no more
        log.log(logging.INFO if dropped else logging.DEBUG, "front: %s disconnected (%s)%s",
                link.peer, code, f"; dropped {len(dropped)} in-flight packets" if dropped else "")

    def abandon(self, flight: Flight) -> None:
        """Its submitter left (or its parent element ended): it will not run if it has not
        started, and its answer is dropped if it has (a running packet keeps its worker and
        its deadline, so a hung handler is still killed when nobody waits for its answer)."""
        node = self.node
        state = flight.state
        node.metrics.packet_cancelled(flight.packet.group, counted=state is not DISPATCHED)
        if state is FORWARDED:
            node.hub.abandon(flight)
            node.scheduler.forget(flight)
        elif state is DISPATCHED and flight.lane == HOSTED:
            node.scheduler.forget(flight)  # nobody waits: its element stops, and its steps with it
            node.hosted.cancel(flight)
        elif state is DISPATCHED:
            node.scheduler.orphan(flight)
            node.pool.cancel(flight)
        elif state is QUEUED or state is BLOCKED:
            node.scheduler.forget(flight)
            node.pump()

    def close_idle(self, now: float) -> int:
        """Near the connection bound, close links that never submitted nor answered a packet
        and have been open for idle_link_ms (1013, try again later); how many."""
        settings = self.node.settings
        if len(self.open) < IDLE_NEAR_BOUND * settings.max_connections:
            return 0
        limit = settings.idle_link_ms / 1000
        idle = [link for link in self.open if not link.active and not link.closed and not self.is_uplink(link)
                and now - link.opened_at >= limit]
        for link in idle:
            link.close(TRY_AGAIN_CLOSE_CODE, "idle while the node is near its connection bound")
        if idle:
            log.info("front: closed %d idle connections (open %d of %d)", len(idle), len(self.open),
                     settings.max_connections)
        return len(idle)

    def awaiting(self, link: PeerLink) -> int:
        """A link's packets that count against its in-flight limit: not those it runs
        itself (the hub sent them back to it), whose answers can only come if we read on."""
        return self.node.scheduler.count_of(link) - self.node.hub.own_held(link)

    def reload_tokens(self) -> None:
        """Read the token file again (SIGHUP). A file with problems keeps the previous
        table (logged)."""
        access = self.node.access
        if not access.token_file:
            return
        try:
            tokens = TokenTable.load(access.token_file)
        except Exception as exc:
            log.error("front: token file not reloaded, the previous one stays in force: %s", exc)
            return
        access.tokens = tokens
        closed = 0
        for link in list(self.open):
            if link.identity is None or self.is_uplink(link):
                continue
            identity = tokens.by_hash(link.credential)
            if identity is None:
                closed += 1
                link.refused = True
                link.send(protocol.encode_error(0, ErrorCode.UNAUTHENTICATED, "token revoked"))
                link.close(AUTH_CLOSE_CODE, "token revoked")
            else:
                link.identity = identity
        log.info("front: %d tokens from %s; %d connections closed (their token is gone)",
                 len(tokens), access.token_file, closed)
