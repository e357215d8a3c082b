"""pfnode: a PacketFlow v1.0 compute node with a multiprocess worker pool."""
from .errors import (ConnectionLost, ErrorCode, HandlerError, PayloadError, PFNodeError, RemoteError,
                     ReplyTimeout)
from .registry import Context, handler, register
from .settings import Settings

__version__ = "0.1.0"
__all__ = ["ConnectionLost", "Context", "ErrorCode", "HandlerError", "PayloadError", "PFNodeError",
           "RemoteError", "ReplyTimeout", "Settings", "handler", "register", "__version__"]
