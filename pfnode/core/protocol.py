"""The PacketFlow v1.0 wire protocol, sans I/O.

Text or bytes in, typed messages or ready-to-send reply frames out. Nothing here
touches a socket, a clock, a process or asyncio, so every rule is testable with
plain strings. Decoding never raises for bad input: a frame the node cannot
accept becomes a `Rejected` carrying the `error` frame to send back.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Optional, Union

import msgspec
import orjson

from ..errors import ErrorCode

log = logging.getLogger("pfnode.protocol")

VERSION = "1.0"
GROUPS = frozenset({"cf", "df", "ed", "co", "mc", "rm"})
MESSAGE_TYPES = frozenset({"submit", "result", "error", "heartbeat"})
MAX_SEQ = 2**53 - 1  # the largest integer a JavaScript peer can hold exactly
MAX_ID_CHARS = 256
MAX_DEPENDENCIES = 1024
# A timeout is a safe integer whatever --max-timeout-ms says: the node writes it on (the time
# left of a forwarded packet) and peers read it.
MAX_TIMEOUT_MS = MAX_SEQ
_ELEMENT_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# orjson reads frames nested at most this deep (the frame itself is level 1) ...
MAX_NESTING = 1024
_DEPTH_EXCEEDED = "depth limit exceeded"  # ... and says so in its JSONDecodeError
# The values the node builds as Python objects and hands on (metadata, heartbeat and error
# payloads) nest at most this deep: orjson writes at most 254 levels, repr() and pickle
# recurse. (serde_json's default limit.)
MAX_OBJECT_NESTING = 128
# Where the seq of a frame too large or too deeply nested to parse may be found: TypeScript
# peers put it first, Elixir peers (sorted map keys) put it after the payload.
_SCAN_BYTES = 256
_TOKEN_RE = re.compile(rb'\s*("(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+)')
_SEQ_TOKEN_RE = re.compile(rb"0|[1-9][0-9]{0,15}")
_TAIL_RES = {b'"seq"': re.compile(rb'"seq"\s*:\s*(0|[1-9][0-9]{0,15})(?=\s*[,}])'),
             b'"type"': re.compile(rb'"type"\s*:\s*("(?:submit|result|error|heartbeat)")(?=\s*[,}])')}
_INT64_MIN, _UINT64_MAX = -2**63, 2**64 - 1  # the integers orjson reads and writes as integers
# The message of the PF500 that answers a frame whose decoding raised (a bug in the checks)
DECODER_FAILED = "the node failed to read this frame (a bug in the node, logged there)"


# The per-packet dataclasses below write their own __init__ (init=False): the one dataclasses
# generates is Python code made at run time, which stays interpreted where this module is
# compiled (pfnode/native.py). Each takes the same arguments, in the same order, as the
# generated one would (dataclasses.replace relies on it).
_set = object.__setattr__  # how a frozen dataclass's own __init__ sets its fields


@dataclasses.dataclass(slots=True, init=False)
class Packet:
    """A packet, as accepted. Not changed once made (not frozen only because a frozen
    dataclass's construction costs the front's hot path several times as much)."""

    id: str
    group: str
    element: str
    data: Any = None
    priority: int = 5
    timeout_ms: int | None = None
    dependencies: tuple[str, ...] | None = None
    metadata: dict | None = None
    version: str = VERSION
    key: str = dataclasses.field(init=False, repr=False, compare=False)  # "group:element"

    def __init__(self, id: str, group: str, element: str, data: Any = None, priority: int = 5,
                 timeout_ms: int | None = None, dependencies: tuple[str, ...] | None = None,
                 metadata: dict | None = None, version: str = VERSION) -> None:
        self.id = id
        self.group = group
        self.element = element
        self.data = data
        self.priority = priority
        self.timeout_ms = timeout_ms
        self.dependencies = dependencies
        self.metadata = metadata
        self.version = version
        self.key = f"{group}:{element}"

    def to_wire(self) -> dict:
        wire = {"version": self.version, "id": self.id, "group": self.group,
                "element": self.element, "data": self.data, "priority": self.priority}
        if self.timeout_ms is not None:
            wire["timeout_ms"] = self.timeout_ms
        if self.dependencies is not None:
            wire["dependencies"] = list(self.dependencies)
        if self.metadata is not None:
            wire["metadata"] = self.metadata
        return wire


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    packet_id: str
    status: str  # "success" | "error"
    data: Any = None
    error: dict | None = None  # {"code": ..., "message": ...}
    duration_ms: float = 0

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def error_code(self) -> str | None:
        return self.error.get("code") if self.error else None

    def to_wire(self) -> dict:
        wire: dict[str, Any] = {"packet_id": self.packet_id, "status": self.status}
        if self.ok:
            wire["data"] = self.data
        else:
            wire["error"] = self.error
        wire["duration_ms"] = self.duration_ms
        return wire


@dataclasses.dataclass(frozen=True, slots=True, init=False)
class Message:
    """An accepted frame. `payload` is a Packet for submit, a Result for result,
    and the decoded object for heartbeat and error."""

    type: str
    seq: int
    payload: Any

    def __init__(self, type: str, seq: int, payload: Any) -> None:
        _set(self, "type", type)
        _set(self, "seq", seq)
        _set(self, "payload", payload)


@dataclasses.dataclass(frozen=True, slots=True)
class Rejected:
    """A frame the node could not accept, with the error frame to answer it. `type` and
    `packet_id` say, when they could be read, what the frame was (its `type`, one of
    MESSAGE_TYPES) and which packet it was about (a submit's `id`, a result's or an error's
    `packet_id`): enough to route it, e.g. to fail a forwarded packet whose reactor sent a
    result frame that cannot be read."""

    seq: int
    code: str
    message: str
    reply: bytes
    packet_id: str | None = None
    type: str | None = None


Decoded = Union[Message, Rejected]


# A packet opts in to numpy payloads (pfnode/ndarray.py) with metadata {"ndarray": true}.
# The rule lives here, numpy-free, so a worker can test it without importing numpy.
NDARRAY_OPT_IN_KEY = "ndarray"


def ndarray_opted_in(metadata: Any) -> bool:
    """True when a packet's metadata asks for the ndarray encoding (`"ndarray": true`, exactly)."""
    return type(metadata) is dict and metadata.get(NDARRAY_OPT_IN_KEY) is True


# A packet's `data` as JSON text the front did not turn into Python objects. msgspec's
# Raw is a view into the received frame (no copy), has a length, exports its bytes
# through the buffer protocol and pickles as bytes.
RawJSON = msgspec.Raw


_ABSENT = msgspec.Raw()  # a field the frame does not have (present, it holds at least "null")


class _PacketWire(msgspec.Struct):
    """The packet fields the front routes on; `data` stays raw JSON (validated, not built)."""

    version: Any = None
    id: Any = None
    group: Any = None
    element: Any = None
    data: msgspec.Raw = msgspec.Raw(b"null")
    priority: Any = None
    timeout_ms: Any = None
    dependencies: Any = None
    metadata: Any = None


class _SubmitWire(msgspec.Struct, tag_field="type", tag="submit"):
    seq: Any = None
    payload: Optional[_PacketWire] = None


class _ResultPayloadWire(msgspec.Struct):
    """A reactor's result for a packet the hub forwarded: `data` stays raw JSON, to be
    spliced into the relayed result frame unparsed."""

    packet_id: Any = None
    status: Any = None
    data: msgspec.Raw = msgspec.Raw(b"null")
    error: msgspec.Raw = _ABSENT  # read by orjson, as without raw_data (not msgspec's exact big integers)
    duration_ms: Any = None


class _ResultWire(msgspec.Struct, tag_field="type", tag="result"):
    seq: Any = None
    payload: Optional[_ResultPayloadWire] = None


# The message's "type" picks the struct, wherever it is in the frame (Elixir peers sort
# their keys, so it comes last); other types fail here and take the general path.
_LAZY_DECODER = msgspec.json.Decoder(Union[_SubmitWire, _ResultWire])


class _Invalid(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------- decoding

def decode(frame: str | bytes, *, max_frame_bytes: int | None = None,
           max_timeout_ms: int | None = None, raw_data: bool = False) -> Decoded:
    """Decode and validate one WebSocket text frame.

    With `raw_data`, a submit's or a result's `data` is returned as `RawJSON` (its JSON
    text, checked for well-formedness in C but never built into Python objects): the
    front's cost then does not grow with the payload; the worker parses a packet's data,
    and a relayed result's data is passed on as it came.

    Never raises, whatever `frame` holds. Should a bug make a check raise all the same, the
    frame is answered PF500 and the exception logged: the connection, and the packets in
    flight on it, must not pay for it."""
    try:  # (inline, not a call: this is the front's hot path)
        # A str holds at most 4 UTF-8 bytes per character: only a long one needs encoding to measure.
        if max_frame_bytes is not None and \
                (len(frame) * 4 if isinstance(frame, str) else len(frame)) > max_frame_bytes:
            raw = frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame
            if len(raw) > max_frame_bytes:
                seq, mtype = _scan_envelope(raw)
                return _reject(seq, ErrorCode.TOO_LARGE,
                               f"frame of {len(raw)} bytes exceeds the limit of {max_frame_bytes} bytes", mtype)
        # One rule for invalid UTF-8 whatever the transport hands over (bytes from picows, a
        # str with lone surrogates from a caller): msgspec would let it through in data it skips.
        try:
            ascii_only = frame.isascii()
        except AttributeError:  # a memoryview: the rules below read bytes
            frame = bytes(frame)
            ascii_only = frame.isascii()
        if not ascii_only:
            problem = _utf8_problem(frame)
            if problem is not None:
                return _reject_undecodable(frame, f"frame is not valid UTF-8: {problem}")
        if raw_data:
            lazy = _decode_lazily(frame, max_timeout_ms)
            if lazy is not None:
                return lazy
        try:
            obj = orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            if _DEPTH_EXCEEDED in str(exc):
                seq, mtype = _scan_envelope(_utf8(frame))
                return _reject(seq, ErrorCode.MALFORMED_FRAME, f"frame nests deeper than {MAX_NESTING} levels",
                               mtype)
            return _reject(0, ErrorCode.MALFORMED_FRAME, f"frame is not valid JSON: {exc}")
        return _decode_object(obj, max_timeout_ms, raw_data)
    except Exception:
        log.exception("protocol: decoding a frame raised; it is answered PF500 (a bug: please report)")
        return _reject(0, ErrorCode.HANDLER_FAILED, DECODER_FAILED)


def _decode_object(obj: Any, max_timeout_ms: int | None, raw_data: bool = False) -> Decoded:
    """The general path: a parsed frame checked field by field."""
    if not isinstance(obj, dict):
        return _reject(0, ErrorCode.MALFORMED_FRAME,
                       f"frame must be a JSON object, got {json_type(obj)}")
    mtype, seq, payload = obj.get("type"), obj.get("seq"), obj.get("payload")
    known = mtype if isinstance(mtype, str) and mtype in MESSAGE_TYPES else None
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        return _reject(0, ErrorCode.MALFORMED_FRAME,
                       f"seq must be an integer 0..{MAX_SEQ}, got {_show(seq)}",
                       known, _packet_id(known, payload))
    if known is None:
        return _reject(seq, ErrorCode.MALFORMED_FRAME,
                       f"unknown message type {_show(mtype)}; expected one of "
                       + ", ".join(sorted(MESSAGE_TYPES)))
    try:
        if known == "submit":
            packet = parse_packet(payload, max_timeout_ms=max_timeout_ms)
            if raw_data:
                packet = dataclasses.replace(packet, data=_as_raw(packet.data, ErrorCode.INVALID_PACKET))
            return Message("submit", seq, packet)
        if known == "result":
            result = parse_result(payload)
            if raw_data and result.ok:
                result = dataclasses.replace(result, data=_as_raw(result.data, ErrorCode.MALFORMED_FRAME))
            return Message("result", seq, result)
    except _Invalid as exc:
        return _reject(seq, exc.code, exc.message, known, _packet_id(known, payload))
    if payload is not None and not isinstance(payload, dict):
        return _reject(seq, ErrorCode.MALFORMED_FRAME,
                       f"{known} payload must be an object or null, got {json_type(payload)}", known)
    if payload is not None and _unpassable(payload) is not None:
        return _reject(seq, ErrorCode.MALFORMED_FRAME,
                       f"{known} payload nests deeper than {MAX_OBJECT_NESTING} levels", known,
                       _packet_id(known, payload))
    return Message(known, seq, payload if payload is not None else {})


def _as_raw(data: Any, code: ErrorCode) -> RawJSON:
    """`data` as raw_data promises it, for a frame the lazy path left to the general one (it
    nests deeper than msgspec recurses, or repeats its type key)."""
    try:
        return RawJSON(orjson.dumps(data))
    except orjson.JSONEncodeError:
        raise _Invalid(code, "data nests too deep for this node to pass on "
                             "(more than 254 levels; see docs/PROTOCOL.md)") from None


def _unpassable(value: Any, levels: int = MAX_OBJECT_NESTING) -> str | None:
    """Why the JSON object or array `value` (itself level 1) cannot be passed on, or None:
    containers nested more than `levels` deep, or an integer beyond 64 bits, which orjson
    cannot write (only msgspec reads one as an integer: orjson, and so the general path,
    reads a float; the raw_data path then leaves the frame to the general path). Recurses at
    most `levels` times."""
    for child in (value.values() if type(value) is dict else value):
        kind = type(child)
        if kind is dict or kind is list:
            if levels <= 1:
                return f"nests deeper than {MAX_OBJECT_NESTING} levels"
            why = _unpassable(child, levels - 1)
            if why is not None:
                return why
        elif kind is int and not _INT64_MIN <= child <= _UINT64_MAX:
            return "holds an integer beyond 64 bits"
    return None


def _utf8(frame: str | bytes) -> bytes:
    return frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame


def _packet_id(mtype: str | None, payload: Any) -> str | None:
    """The packet a frame is about: a submit's `id`, a result's or an error's `packet_id`."""
    if mtype is None or mtype == "heartbeat" or not isinstance(payload, dict):
        return None
    packet_id = payload.get("id" if mtype == "submit" else "packet_id")
    return packet_id if isinstance(packet_id, str) else None


def _utf8_problem(frame: str | bytes) -> str | None:
    """What makes `frame` not valid UTF-8 (a str: a lone surrogate), or None."""
    try:
        frame.encode() if isinstance(frame, str) else frame.decode()
    except UnicodeError as exc:
        if isinstance(frame, str):
            return f"lone surrogate U+{ord(frame[exc.start]):04X} at character {exc.start}"
        return f"{exc.reason}, byte 0x{frame[exc.start]:02x} at offset {exc.start}"
    return None


def _reject_undecodable(frame: str | bytes, message: str) -> Rejected:
    """PF400 for a frame that is not valid UTF-8, with its seq, type and packet id when the
    frame reads as JSON once its invalid bytes are replaced (U+FFFD): so that a result frame
    that cannot be read still names the packet it answers. An id that held invalid bytes is
    not the packet's id: none is given."""
    raw = _utf8(frame)
    try:
        obj = orjson.loads(raw.decode("utf-8", "replace"))
    except orjson.JSONDecodeError as exc:
        if _DEPTH_EXCEEDED in str(exc):
            seq, mtype = _scan_envelope(raw)
            return _reject(seq, ErrorCode.MALFORMED_FRAME, message, mtype)
        obj = None
    if not isinstance(obj, dict):
        return _reject(0, ErrorCode.MALFORMED_FRAME, message)
    mtype, seq = obj.get("type"), obj.get("seq")
    mtype = mtype if isinstance(mtype, str) and mtype in MESSAGE_TYPES else None
    packet_id = _packet_id(mtype, obj.get("payload"))
    if packet_id is not None and "\ufffd" in packet_id:
        packet_id = None
    return _reject(seq if type(seq) is int and 0 <= seq <= MAX_SEQ else 0, ErrorCode.MALFORMED_FRAME,
                   message, mtype, packet_id)


def _decode_lazily(frame: str | bytes, max_timeout_ms: int | None) -> Message | None:
    """The submit and result fast path of `decode`: the Message when the frame is a valid
    submit or result, else None, and the general path decides and explains (so that the
    answer never depends on `raw_data`). None for anything else too: a heartbeat, a frame
    that is not well-formed or nests deeper than msgspec recurses, a payload that is not
    an object."""
    try:
        wire = _LAZY_DECODER.decode(frame)
    except (msgspec.MsgspecError, RecursionError):
        return None
    seq, p = wire.seq, wire.payload
    if p is None or type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        return None
    try:
        if isinstance(wire, _ResultWire):
            fields = {"packet_id": p.packet_id, "status": p.status, "data": p.data,
                      "error": orjson.loads(bytes(p.error)) if len(p.error) else None,
                      "duration_ms": p.duration_ms}
            return Message("result", seq, parse_result(fields))
        packet = _packet_of_wire(p, max_timeout_ms)
        return None if packet is None else Message("submit", seq, packet)
    except (_Invalid, orjson.JSONDecodeError):
        # msgspec reads integers beyond 64 bits exactly, orjson as floats (or refuses them as
        # infinity): the general path gives the answer decoding without raw_data gives
        return None


_KNOWN_ELEMENTS: set[str] = set()  # element names seen valid (at most _MAX_KNOWN), to skip the regex


def _valid_element(element: Any) -> bool:
    if type(element) is not str:
        return False
    if element in _KNOWN_ELEMENTS:
        return True
    if not _ELEMENT_RE.fullmatch(element):
        return False
    if len(_KNOWN_ELEMENTS) < 4096:
        _KNOWN_ELEMENTS.add(element)
    return True


def _packet_of_wire(p: _PacketWire, max_timeout_ms: int | None) -> Packet | None:
    """`parse_packet`'s rules, read straight off the wire struct: the Packet when every
    check passes, else None (the general path then says what is wrong). The front's hot
    path; tests/test_protocol_properties.py checks both paths agree on every frame."""
    if p.version != VERSION or type(p.version) is not str:
        return None
    pid, group, element, priority, timeout_ms = p.id, p.group, p.element, p.priority, p.timeout_ms
    if type(pid) is not str or not 0 < len(pid) <= MAX_ID_CHARS or type(group) is not str \
            or group not in GROUPS or not _valid_element(element):
        return None
    if priority is None:
        priority = 5
    elif type(priority) is not int or not 1 <= priority <= 10:
        return None
    if timeout_ms is not None:
        if type(timeout_ms) is float and timeout_ms.is_integer():
            timeout_ms = int(timeout_ms)
        if type(timeout_ms) is not int or timeout_ms <= 0 or timeout_ms > (
                MAX_TIMEOUT_MS if max_timeout_ms is None else min(max_timeout_ms, MAX_TIMEOUT_MS)):
            return None
    deps = p.dependencies
    if deps is not None:
        if type(deps) is not list or len(deps) > MAX_DEPENDENCIES or not all(
                type(d) is str and 0 < len(d) <= MAX_ID_CHARS for d in deps):
            return None
        deps = tuple(deps)
    metadata = p.metadata
    if metadata is not None and (type(metadata) is not dict or (metadata and _unpassable(metadata) is not None)):
        return None
    return Packet(pid, group, element, p.data, priority, timeout_ms, deps, metadata)


def parse_packet(obj: Any, *, max_timeout_ms: int | None = None) -> Packet:
    """Validate a packet object (the payload of a submit frame)."""
    if not isinstance(obj, dict):
        raise _Invalid(ErrorCode.INVALID_PACKET, f"packet must be an object, got {json_type(obj)}")
    version = obj.get("version")
    if version != VERSION:
        raise _Invalid(ErrorCode.INVALID_PACKET, f"unsupported version {_show(version)}; expected \"1.0\"")
    pid = obj.get("id")
    if not isinstance(pid, str) or not 0 < len(pid) <= MAX_ID_CHARS:
        raise _Invalid(ErrorCode.INVALID_PACKET,
                       f"id must be a non-empty string of at most {MAX_ID_CHARS} characters, got {_show(pid)}")
    group = obj.get("group")
    if not isinstance(group, str) or group not in GROUPS:
        raise _Invalid(ErrorCode.INVALID_PACKET,
                       f"unknown group {_show(group)}; expected one of {', '.join(sorted(GROUPS))}")
    element = obj.get("element")
    if not isinstance(element, str) or not _ELEMENT_RE.fullmatch(element):
        raise _Invalid(ErrorCode.INVALID_PACKET,
                       f"element must be 1-64 characters of A-Z a-z 0-9 _ . -, got {_show(element)}")
    priority = obj.get("priority", 5)
    if priority is None:
        priority = 5
    if type(priority) is not int or not 1 <= priority <= 10:
        raise _Invalid(ErrorCode.INVALID_PACKET, f"priority must be an integer 1..10, got {_show(priority)}")
    given = timeout_ms = obj.get("timeout_ms")
    if timeout_ms is not None:
        if isinstance(timeout_ms, float) and timeout_ms.is_integer():
            timeout_ms = int(timeout_ms)
        if type(timeout_ms) is not int or timeout_ms <= 0:
            raise _Invalid(ErrorCode.INVALID_PACKET,
                           f"timeout_ms must be a positive integer or null, got {_show(timeout_ms)}")
        limit = MAX_TIMEOUT_MS if max_timeout_ms is None else min(max_timeout_ms, MAX_TIMEOUT_MS)
        if timeout_ms > limit:
            raise _Invalid(ErrorCode.INVALID_PACKET,
                           f"timeout_ms {_show(given)} exceeds this node's maximum of {limit}")
    deps = obj.get("dependencies")
    if deps is not None:
        if not isinstance(deps, list) or len(deps) > MAX_DEPENDENCIES or not all(
                isinstance(d, str) and 0 < len(d) <= MAX_ID_CHARS for d in deps):
            raise _Invalid(ErrorCode.INVALID_PACKET,
                           f"dependencies must be null or a list of at most {MAX_DEPENDENCIES} packet ids")
        deps = tuple(deps)
    metadata = obj.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _Invalid(ErrorCode.INVALID_PACKET,
                           f"metadata must be an object or null, got {json_type(metadata)}")
        why = _unpassable(metadata) if metadata else None
        if why is not None:
            raise _Invalid(ErrorCode.INVALID_PACKET, f"metadata {why}")
    return Packet(id=pid, group=group, element=element, data=obj.get("data"),
                  priority=priority, timeout_ms=timeout_ms, dependencies=deps, metadata=metadata)


def parse_result(obj: Any) -> Result:
    """Validate a result object (the payload of a result frame)."""
    if not isinstance(obj, dict):
        raise _Invalid(ErrorCode.MALFORMED_FRAME, f"result payload must be an object, got {json_type(obj)}")
    pid = obj.get("packet_id")
    if not isinstance(pid, str) or not pid:
        raise _Invalid(ErrorCode.MALFORMED_FRAME, f"result packet_id must be a non-empty string, got {_show(pid)}")
    status = obj.get("status")
    if status not in ("success", "error"):
        raise _Invalid(ErrorCode.MALFORMED_FRAME,
                       f"result status must be \"success\" or \"error\", got {_show(status)}")
    error = obj.get("error")
    if status == "error":
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            raise _Invalid(ErrorCode.MALFORMED_FRAME, "an error result needs error: {code, message}")
        message = error.get("message")
        if not isinstance(message, str):  # shown, not repr()'d: it may nest 1000 levels deep
            message = "" if message is None else _show(message, 200)
        error = {"code": error["code"], "message": message}
    duration = obj.get("duration_ms")
    if duration is None:
        duration = 0
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise _Invalid(ErrorCode.MALFORMED_FRAME, f"result duration_ms must be a number, got {_show(duration)}")
    if type(duration) is int and not _INT64_MIN <= duration <= _UINT64_MAX:
        try:  # read as orjson reads it (the node writes it on in the relayed result)
            duration = float(duration)
        except OverflowError:  # orjson refuses the frame: not JSON
            raise _Invalid(ErrorCode.MALFORMED_FRAME, "result duration_ms is out of range") from None
    return Result(packet_id=pid, status=status, data=obj.get("data"),
                  error=error if status == "error" else None, duration_ms=duration)


def _scan_envelope(raw: bytes) -> tuple[int, str | None]:
    """The top-level seq (0 when no valid one is found) and type of a frame too large or
    too deeply nested to parse, read in its first and last _SCAN_BYTES: a key of the
    frame's own object before the first nested value that runs past the head, or one
    after the payload's end in the tail. A seq repeated in the frame's middle goes unseen."""
    head = raw[:_SCAN_BYTES]
    found = _scan_head(head)
    if len(raw) > len(head):
        tail = raw[-_SCAN_BYTES:]
        for key, regex in _TAIL_RES.items():
            candidates = list(regex.finditer(tail))
            # after a key of the frame's own object only `,"type":"..."}` may follow: one
            # closing brace; a key nested in the payload is followed by two or more
            if candidates and tail.count(b"}", candidates[-1].end()) == 1:
                found[key] = candidates[-1].group(1)  # the later key wins, as in parsing
    seq = found.get(b'"seq"')
    mtype = found.get(b'"type"', b"")[1:-1].decode("ascii", "replace")
    return (int(seq) if seq is not None and int(seq) <= MAX_SEQ else 0,
            mtype if mtype in MESSAGE_TYPES else None)


def _scan_head(head: bytes) -> dict[bytes, bytes]:
    """The "seq" and "type" values of the frame's own object in `head`, tokenized as far as
    it goes: a value counts once the `,` or `}` after it is read (the head may cut it)."""
    found: dict[bytes, bytes] = {}
    pos, depth, key, colon, pending = 0, 0, None, False, None
    while pos < len(head):
        match = _TOKEN_RE.match(head, pos)
        if match is None:
            break
        token, pos = match.group(1), match.end()
        if pending is not None and token in (b",", b"}"):
            found[pending[0]] = pending[1]
        pending = None
        if token in (b"{", b"["):
            if depth == 0 and token != b"{":
                break
            depth += 1
        elif token in (b"}", b"]"):
            depth -= 1
            if depth <= 0:
                break
        elif depth == 1 and colon and key in (b'"seq"', b'"type"'):
            if key == b'"type"' or _SEQ_TOKEN_RE.fullmatch(token):
                pending = (key, token)
        key, colon = (key, True) if token == b":" else (token, False)
    return found


def _reject(seq: int, code: ErrorCode, message: str, mtype: str | None = None,
            packet_id: str | None = None) -> Rejected:
    """The error frame answers a refused submit with the packet's id, when it could be read."""
    reply = encode_error(seq, code, message, packet_id if mtype == "submit" else None)
    return Rejected(seq, code.value, message, reply, packet_id, mtype)


def json_type(value: Any) -> str:
    """The JSON type of a value JSON decoding made ("null", "boolean", ..., "object")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _show(value: Any, limit: int = 60) -> str:
    """A field's value for an error message: short, and never an exception, whatever the
    value (a container too deep for orjson to write, an integer beyond 64 bits)."""
    if value is None:
        return "null (or missing)"
    if isinstance(value, str):
        text = repr(value[:limit + 1])
    elif type(value) is int and not _INT64_MIN <= value <= _UINT64_MAX:
        text = f"an integer of {value.bit_length()} bits"
    else:
        try:
            text = orjson.dumps(value, default=repr).decode()
        except TypeError:  # a container nested deeper than orjson writes, or holding a too large integer
            text = f"an {json_type(value)}"
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------- encoding

def encode_json(value: Any) -> bytes:
    """JSON as the node writes it (numpy arrays and scalars become lists and numbers)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_message(mtype: str, seq: int, payload: Any) -> bytes:
    return orjson.dumps({"type": mtype, "seq": seq, "payload": payload},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def encode_submit(seq: int, packet: Packet) -> bytes:
    return encode_message("submit", seq, packet.to_wire())


def encode_submit_raw(seq: int, packet: Packet, timeout_ms: int) -> bytes:
    """A packet passed on with the time it has left; its `data` may still be `RawJSON`
    (spliced in as it arrived, not re-parsed)."""
    wire = packet.to_wire()
    if isinstance(packet.data, RawJSON):
        wire["data"] = orjson.Fragment(bytes(packet.data))
    wire["timeout_ms"] = timeout_ms
    return encode_message("submit", seq, wire)


def encode_result(seq: int, result: Result) -> bytes:
    return encode_message("result", seq, result.to_wire())


def encode_success_raw(seq: int, packet_id: str, data_json: bytes, duration_ms: float) -> bytes:
    """A success result whose data is already JSON: spliced in, never re-parsed."""
    return b"".join((b'{"type":"result","seq":', str(seq).encode(),
                     b',"payload":{"packet_id":', orjson.dumps(packet_id),
                     b',"status":"success","data":', data_json,
                     b',"duration_ms":', orjson.dumps(round(duration_ms, 3)), b"}}"))


def encode_failure(seq: int, packet_id: str, code: str | ErrorCode, message: str,
                   duration_ms: float = 0) -> bytes:
    """A result with status "error": the packet was accepted but could not complete."""
    code = code.value if isinstance(code, ErrorCode) else code
    return encode_message("result", seq, {
        "packet_id": packet_id, "status": "error",
        "error": {"code": code, "message": message}, "duration_ms": round(duration_ms, 3)})


def encode_error(seq: int, code: str | ErrorCode, message: str, packet_id: str | None = None) -> bytes:
    """An error frame: the message itself could not be accepted."""
    payload: dict[str, Any] = {"code": code.value if isinstance(code, ErrorCode) else code,
                               "message": message}
    if packet_id is not None:
        payload["packet_id"] = packet_id
    return encode_message("error", seq, payload)


def encode_heartbeat(seq: int, payload: dict) -> bytes:
    return encode_message("heartbeat", seq, payload)
