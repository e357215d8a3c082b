"""The WebSocket transports, and the one registry of them: a name -> the module that serves
it (`serve(node, ssl_context)`) and dials out on it (its `UplinkLink` class). The front,
the dial-out and the settings' check all read `TRANSPORTS`; adding a transport is a module
with those two names and one line here (docs/ARCHITECTURE.md, "where to add").

- `base`: `PeerLink`, one connection as the node sees it, and `NodeInterface`, the node as
  a transport sees it (the transports never import the node).
- `picows` (the default) and `websockets`: the two implementations.
- `tls`: server and client SSL contexts.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ConfigError

TRANSPORTS = {"picows": "pfnode.transports.picows", "websockets": "pfnode.transports.websockets"}
NAMES = tuple(TRANSPORTS)  # the `transport` setting's choices


def load(name: str) -> ModuleType:
    """The transport module of `name` (ConfigError when unknown or not importable)."""
    if name not in TRANSPORTS:
        raise ConfigError(f"unknown transport {name!r}; one of {', '.join(NAMES)}")
    try:
        return importlib.import_module(TRANSPORTS[name])
    except ImportError as exc:
        raise ConfigError(f"transport {name!r} is not available: {exc}") from exc
