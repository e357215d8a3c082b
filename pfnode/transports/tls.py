"""TLS for the endpoint (`wss://`) and for the node's own clients.

The node serves TLS when it has a certificate and key (`tls_cert`, `tls_key`), and then
asks clients for a certificate signed by `tls_client_ca` when that is set (mutual TLS).
Clients (the Python reactor, `pfnode submit`, `pfnode connect`) verify the server with
the system's trust store, or with a given CA bundle.
"""
from __future__ import annotations

import ssl

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
