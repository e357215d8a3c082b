"""The node's HTTP routes, answered by the transport before (or instead of) the WebSocket
upgrade:

| path              | who                               | what                                     |
|-------------------|-----------------------------------|------------------------------------------|
| `/healthz`        | anyone                            | readiness only: ready, starting, draining, degraded |
| `/metrics`        | admin role (anyone without tokens)| Prometheus text or OpenMetrics           |
| `/status`         | admin role (anyone without tokens)| the node's detail as JSON (node/status.py)|
| `/dashboard`      | admin role (anyone without tokens)| the live dashboard's page (node/dashboard.py); the token may come as `?token=` |
| `/dashboard/data` | admin role (anyone without tokens)| what the page shows, as JSON, polled once a second |
| `/dashboard/dashboard.js`, `.css` | anyone            | the page's script and style sheet (they hold no data) |
| the endpoint path | anyone (tokens are checked on open)| the upgrade, or 503 draining / too many connections, 426 without an upgrade |
| anything else     | anyone                            | 404 naming the endpoint                  |

An address that failed to authenticate too often lately (node/backoff.py) gets 429 with
Retry-After on the endpoint, /metrics and /status, before its token is looked at. The
connections a transport accepted that are not links yet (TLS handshakes and upgrades under
way: `pending`) count toward max_connections with the links.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import orjson

from ..ops import logs
from ..transports.base import HttpReply
from . import dashboard
from .backoff import address_of
from .shared import NodeShared


log = logging.getLogger("pfnode.front")

TEXT = "text/plain; charset=utf-8"
JSON = "application/json"


def auth_failed(node: NodeShared, peer: str | None) -> None:
    """`peer` presented no token or an unknown one: counted toward its address's back-off
    (node/backoff.py), and one line when that starts."""
    if node.auth_backoff.failed(address_of(peer), node.clock()):
        s = node.settings
        log.warning("front: %s failed to authenticate %d times within %g s: its address is refused "
                    "for %g s (--auth-backoff-failures, --auth-backoff-ms)", peer, s.auth_backoff_failures,
                    s.auth_backoff_ms / 1000, s.auth_backoff_ms / 1000,
                    extra={"event": "auth_backoff", "peer": peer, "address": address_of(peer)})


class HttpRoutes:
    def __init__(self, node: NodeShared) -> None:
        self.node = node

    def route(self, path: str, upgrade: bool = True, headers: Any = None, peer: str | None = None,
              pending: int = 0) -> HttpReply | None:
        """What a transport answers an HTTP request for `path` with, or None to go on
        with the WebSocket upgrade (`upgrade`: the request asked for one; `pending`: the
        transport's other connections that are not links yet)."""
        node = self.node
        full_path, path = path, path.partition("?")[0]
        if path == "/metrics":
            refusal = self.refusal(full_path, headers, "admin", peer)
            if refusal is not None:
                return refusal
            body, content_type = node.metrics.render(headers.get("Accept") if headers is not None else None)
            return HttpReply(200, "OK", content_type, body)
        if path == "/healthz":
            return self._health()
        if path == "/status":
            refusal = self.refusal(full_path, headers, "admin", peer)
            if refusal is not None:
                return refusal
            return HttpReply(200, "OK", JSON, orjson.dumps(node.status(), option=orjson.OPT_INDENT_2) + b"\n")
        if path == "/dashboard" or path.startswith("/dashboard/"):
            return self._dashboard(path, full_path, headers, peer)
        if path != node.settings.path:
            return HttpReply(404, "Not Found", TEXT,
                             f"Not found. The PacketFlow endpoint is {node.settings.path}\n".encode())
        return self._endpoint(upgrade, peer, pending)

    def _dashboard(self, path: str, full_path: str, headers: Any, peer: str | None = None) -> HttpReply:
        """The dashboard's page and its data (admin role), or one of its static files."""
        name = path.removeprefix("/dashboard").strip("/")
        if name in ("", "data"):
            refusal = self.refusal(full_path, headers, "admin", peer, hint=" (in a browser: /dashboard?token=<token>)")
            if refusal is not None:
                return refusal
            if not name:
                return dashboard.page()
            return HttpReply(200, "OK", JSON, orjson.dumps(dashboard.data(self.node)))
        reply = dashboard.asset(name)
        if reply is None:
            return HttpReply(404, "Not Found", TEXT, b"Not found. The dashboard is /dashboard\n")
        return reply

    def _health(self) -> HttpReply:
        """Readiness, for load balancers and systemd: nothing more."""
        node = self.node
        body = orjson.dumps({"status": node.state}) + b"\n"
        dask = node.pool.dask
        if node.ready and dask is not None and dask.problem:  # the Dask cluster unreachable
            body = orjson.dumps({"status": "degraded", "dask": dask.problem}) + b"\n"
        elif node.ready:
            return HttpReply(200, "OK", JSON, body)
        return HttpReply(503, "Service Unavailable", JSON, body)

    def _endpoint(self, upgrade: bool, peer: str | None, pending: int) -> HttpReply | None:
        node = self.node
        if node.draining:
            if upgrade:
                node.metrics.connection_refused("draining")
                logs.connection_refused(log, peer=peer, reason="draining", detail="node shutting down",
                                        limiter=node.refusals)
            return HttpReply(503, "Service Unavailable", TEXT, b"Node shutting down\n")
        if upgrade:
            backed_off = self.backoff(peer)
            if backed_off is not None:
                return backed_off
        if upgrade and len(node.links) + pending >= node.settings.max_connections:
            node.metrics.connection_refused("max_connections")
            logs.connection_refused(log, peer=peer, reason="max_connections", limiter=node.refusals,
                                    detail=f"{len(node.links)} connections and {pending} handshakes "
                                    "under way already (--max-connections)")
            return HttpReply(503, "Service Unavailable", TEXT, b"Too many connections; retry later\n",
                             (("Retry-After", "1"),))
        if not upgrade:
            return HttpReply(426, "Upgrade Required", TEXT,
                             b"This is a PacketFlow WebSocket endpoint; connect with a WebSocket client.\n")
        return None

    def backoff(self, peer: str | None) -> HttpReply | None:
        """429 when `peer`'s address failed to authenticate too often lately, else None."""
        node = self.node
        wait_s = node.auth_backoff.retry_after(address_of(peer), node.clock())
        if not wait_s:
            return None
        node.metrics.connection_refused("auth_backoff")
        logs.connection_refused(log, peer=peer, reason="auth_backoff", limiter=node.refusals,
                                detail=f"too many failed authentications; refused for {wait_s:.0f} s more")
        return HttpReply(429, "Too Many Requests", TEXT,
                         b"Too many failed authentications from this address; retry later\n",
                         (("Retry-After", str(max(1, math.ceil(wait_s)))),))

    def refusal(self, path: str, headers: Any, role: str, peer: str | None = None,
                hint: str = "") -> HttpReply | None:
        """None when the request may see a page that needs `role`, else the HTTP answer
        (`hint`: how a browser gives the token, after the 401's first sentence)."""
        node = self.node
        access = node.access
        if not access.enabled:
            return None
        backed_off = self.backoff(peer)
        if backed_off is not None:
            return backed_off
        identity, token = access.identify(path, headers)
        if identity is None:
            node.metrics.auth_failure("bad_token" if token else "missing_token")
            auth_failed(node, peer)
            return HttpReply(401, "Unauthorized", TEXT,
                             f"A token is needed: 'Authorization: Bearer <token>'{hint}\n".encode(),
                             (("WWW-Authenticate", 'Bearer realm="pfnode"'),))
        if not access.may(identity, role):
            node.metrics.auth_failure("forbidden")
            return HttpReply(403, "Forbidden", TEXT, f"{identity.name} does not have the {role} role\n".encode())
        return None
