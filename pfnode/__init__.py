"""pfnode: a PacketFlow v1.0 compute node with a multiprocess worker pool.

`pfnode.Client` is the synchronous client (pfnode/client.py), imported on first use so that
a worker process importing `pfnode` for `@handler` does not load the WebSocket client."""
from typing import TYPE_CHECKING

from . import native

native.install()  # before any compiled module is imported: PFNODE_PURE=1, and stale builds

from .errors import (ConnectionLost, ErrorCode, HandlerError, PayloadError, PFNodeError,  # noqa: E402
                     RemoteError, ReplyTimeout)
from .registry import Context, handler, register  # noqa: E402
from .settings import Settings  # noqa: E402

if TYPE_CHECKING:
    from .client import Client

__version__ = "0.1.0"
__all__ = ["Client", "ConnectionLost", "Context", "ErrorCode", "HandlerError", "PayloadError", "PFNodeError",
           "RemoteError", "ReplyTimeout", "Settings", "handler", "register", "__version__"]


def __getattr__(name: str):
    if name == "Client":
        from .client import Client

        return Client
    raise AttributeError(f"module 'pfnode' has no attribute {name!r}")
