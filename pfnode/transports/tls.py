"""TLS for the endpoint (`wss://`) and for the node's own clients.

The node serves TLS when it has a certificate and key (`tls_cert`, `tls_key`), and then
asks clients for a certificate signed by `tls_client_ca` when that is set (mutual TLS).
Clients (the Python reactor, `pfnode submit`, `pfnode connect`) verify the server with
the system's trust store, or with a given CA bundle.

A client that gives up its handshake (or rejects our certificate) is the client's business:
the event loop reports some of those to its exception handler, which the front answers with
one rate-limited line instead of a traceback (`handshake_failure`, app/front.py).
"""
from __future__ import annotations

import ssl
from typing import Any

from ..errors import ConfigError


def server_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert} and key {key}: {exc}") from None
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the client CA bundle {client_ca}: {exc}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca_file: str | None = None, cert: str | None = None,
                   key: str | None = None) -> ssl.SSLContext:
    """Verifies the server against `ca_file`, else the system's trust store; presents a
    client certificate when given one."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the CA bundle {ca_file}: {exc}") from None
    if cert:
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the client certificate {cert}: {exc}") from None
    return ctx


def handshake_failure(context: dict[str, Any]) -> tuple[str | None, str] | None:
    """When an event loop's exception `context` reports a server-side TLS handshake that
    failed (the client hung up, reset, or rejected our certificate): (the peer "host:port"
    or None, what went wrong in words); else None."""
    if not str(context.get("message", "")).startswith("SSL handshake failed"):
        return None
    exc = context.get("exception")
    if isinstance(exc, type):  # some loops report the class alone (aiofastnet: ConnectionResetError)
        why = exc.__name__
    elif exc is not None:
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    else:
        why = "no reason given"
    peer = None
    try:
        address = context["transport"].get_extra_info("peername")
        peer = "%s:%s" % address[:2] if address else None
    except Exception:  # a transport already gone, or none
        pass
    return peer, why
