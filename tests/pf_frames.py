"""Frames that orjson cannot write, for the protocol's property tests and the wire fuzz test.

PacketFlow peers send JSON text; a broken or hostile one sends anything. This writes the
frames a normal encoder refuses to: integers beyond 64 bits and beyond the double range,
number tokens orjson reads as infinity, repeated keys, lone surrogates (raw, or escaped),
any nesting depth, invalid UTF-8 inside strings. `dump` returns bytes; `as_text` gives the
str a transport would hand over (invalid bytes as lone surrogates).

`reference` reads a frame as the protocol rules say the node must (orjson, after replacing
invalid UTF-8), so that tests can state what `decode` answers without calling it.
"""
from __future__ import annotations

import json
from typing import Any

import orjson

from pfnode.core.protocol import MAX_SEQ


class Raw(str):
    """JSON text written as it is: a number token, a deeply nested value, a broken value."""


class Obj(tuple):
    """A JSON object as (key, value) pairs: keys may repeat, and keep their order."""


class Bad(bytes):
    """A string whose content is these bytes as they are (invalid UTF-8)."""


INVALID_UTF8 = (b"\xff", b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\xfe\xfe")

# Integers at every boundary the node or its JSON libraries have: seq and priority ranges,
# 2^53 (JavaScript), 64 bits (orjson reads beyond as floats, and cannot write), the double
# range (orjson refuses beyond as infinity; msgspec reads up to 4300 digits exactly).
EDGE_INTS = (0, 1, -1, 5, 10, 11, MAX_SEQ, MAX_SEQ + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64,
             -2**63, -2**63 - 1, 10**29, -10**29, 10**308, 10**309, -10**309, 10**400)
# Number tokens that are not what they look like to every reader.
NUMBER_TOKENS = tuple(Raw(t) for t in ("1e400", "-1e400", "1e-400", "-0", "0.0", "5.0", "1E1",
                                       "1.7976931348623157e308", "2e308", "1e16", "9007199254740993"))
# Not JSON at all, in a value's place.
BROKEN_TOKENS = tuple(Raw(t) for t in ("NaN", "Infinity", "-Infinity", "undefined", "01", "1.", "+1",
                                       "'x'", '"\\x"', '"\\ud800"', '"\\udc00x"', '"a\tb"', "[1,]", "{,}", ""))
DEPTHS = (100, 128, 129, 254, 255, 300, 900, 1000, 1021, 1022, 1023, 1024, 1025, 2000, 10_000)


def nested(depth: int, kind: str = "[") -> Raw:
    """A value nested `depth` arrays (or objects) deep."""
    if kind == "[":
        return Raw("[" * depth + "1" + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


def dump(value: Any, ascii_only: bool = False) -> bytes:
    """`value` as JSON text (bytes). With `ascii_only`, non-ASCII characters are escaped (a
    lone surrogate then becomes a \\udXXX escape); else they are written as UTF-8 (a lone
    surrogate then becomes invalid UTF-8)."""
    parts: list[bytes] = []
    _dump(value, ascii_only, parts)
    return b"".join(parts)


def _dump(value: Any, ascii_only: bool, out: list[bytes]) -> None:
    if isinstance(value, Raw):
        out.append(value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, Bad):
        out.append(b'"' + value + b'"')
    elif value is None or isinstance(value, (bool, int, float, str)):
        text = json.dumps(value, ensure_ascii=ascii_only) if not isinstance(value, int) or isinstance(value, bool) \
            else str(value)
        out.append(text.encode("utf-8", "surrogatepass"))
    elif isinstance(value, (Obj, dict)):
        pairs = value if isinstance(value, Obj) else value.items()
        out.append(b"{")
        for i, (key, item) in enumerate(pairs):
            if i:
                out.append(b",")
            _dump(key, ascii_only, out)
            out.append(b":")
            _dump(item, ascii_only, out)
        out.append(b"}")
    elif isinstance(value, (list, tuple)):
        out.append(b"[")
        for i, item in enumerate(value):
            if i:
                out.append(b",")
            _dump(item, ascii_only, out)
        out.append(b"]")
    else:
        raise TypeError(f"cannot write {type(value).__name__}")


def as_text(frame: bytes) -> str:
    """The frame as a str: its invalid bytes become lone surrogates."""
    return frame.decode("utf-8", "surrogateescape")


def utf8_of(frame: str | bytes) -> bytes:
    return frame.encode("utf-8", "surrogatepass") if isinstance(frame, str) else frame


def is_utf8(frame: str | bytes) -> bool:
    try:
        utf8_of(frame).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


TOO_DEEP = object()
NOT_JSON = object()


def reference(frame: str | bytes) -> Any:
    """The frame as orjson reads it once invalid UTF-8 is replaced: the object, TOO_DEEP
    (well-formed but nested past orjson's limit) or NOT_JSON."""
    try:
        return orjson.loads(utf8_of(frame).decode("utf-8", "replace"))
    except orjson.JSONDecodeError as exc:
        return TOO_DEEP if "depth limit exceeded" in str(exc) else NOT_JSON


def valid_seq(value: Any) -> int | None:
    return value if type(value) is int and 0 <= value <= MAX_SEQ else None
