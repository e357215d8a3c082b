"""The one root exception and the PacketFlow error-code table."""
from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    """Error codes carried in `error` frames and in `result` frames with status "error"."""

    NO_HANDLER = "PF001"  # no handler for group:element
    INVALID_PACKET = "PF002"  # schema, version, group, element, priority, field types
    NO_REACTOR = "PF003"  # no reactor can run a packet the node would forward
    OVERLOADED = "PF004"  # admission refused; retry later
    DEPENDENCY_FAILED = "PF006"  # a dependency failed or never arrived
    NO_QUORUM = "PF007"  # co:vote: too few replicas agreed
    LOOP_EXHAUSTED = "PF008"  # cf:loop: `until` did not hold within max_iterations
    LOCK_BUSY = "PF009"  # rm:lock: the lock was not had within wait_ms (or the deadline)
    MALFORMED_FRAME = "PF400"  # not JSON, not an object, unknown type, bad seq
    UNAUTHENTICATED = "PF401"
    FORBIDDEN = "PF403"
    DEADLINE_EXCEEDED = "PF408"  # timeout_ms passed, queued or running
    DUPLICATE_ID = "PF409"  # a packet with this id is already in flight
    TOO_LARGE = "PF413"  # frame over the configured limit
    HANDLER_FAILED = "PF500"  # the handler raised
    MEMORY_EXCEEDED = "PF501"  # the handler went over its memory limit
    WORKER_DIED = "PF502"  # the worker died while running the packet
    UNAVAILABLE = "PF503"  # node shutting down or unavailable
    REMOTE_TIMEOUT = "PF504"  # a forwarded packet timed out at the remote reactor


class PFNodeError(Exception):
    """Root of every exception pfnode raises on purpose."""


class ConfigError(PFNodeError):
    """Bad settings or a handler module that cannot be loaded."""


class HandlerError(PFNodeError):
    """A packet ended in an error; carries the PacketFlow code and message."""

    def __init__(self, code: str | ErrorCode, message: str) -> None:
        self.code = ErrorCode(code).value if isinstance(code, ErrorCode) else str(code)
        self.message = message
        super().__init__(f"{self.code}: {message}")


class RemoteError(HandlerError):
    """The remote end refused a message with an `error` frame (PF401, PF403, PF002, ...), or,
    for `pfnode.Client`, answered a packet with an error result. `code` and `message` are the
    node's; `packet_id` the packet's, when known."""

    def __init__(self, code: str | ErrorCode, message: str, packet_id: str | None = None) -> None:
        super().__init__(code, message)
        self.packet_id = packet_id


class ConnectionLost(PFNodeError):
    """The WebSocket link closed while a request was waiting for its reply (or could not be
    opened). Its message names the endpoint with its query redacted (`?token=***`), since
    callers print and log it."""

    def __init__(self, message: str = "") -> None:
        from .ops.logs import redact_text

        super().__init__(redact_text(message))


class ReplyTimeout(PFNodeError, TimeoutError):
    """No reply arrived in time for a request sent over the link."""


class PayloadError(PFNodeError, ValueError):
    """A `$ndarray` tagged object that cannot be decoded, or a value that cannot be encoded
    as one (pfnode.ndarray). In a worker, a bad packet payload is answered PF002."""
