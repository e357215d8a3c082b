"""numpy arrays as tagged JSON objects (the opt-in "numpy payloads" encoding), sans I/O.

An array travels as

    {"$ndarray": {"dtype": "<f8", "shape": [2, 3], "b64": "<base64 of the C-order bytes>"}}

`dtype` is numpy's `dtype.str` (explicit byte order: "<f8", ">i4", "|u1", "|b1", "<c16");
only bool and numeric dtypes travel (kinds b i u f c). `shape` is a list of non-negative
ints, and the base64 text must decode (standard alphabet, padded, no whitespace) to exactly
prod(shape) * itemsize bytes. A packet opts in with `"ndarray": true` in its metadata; see
docs/PROTOCOL.md, "numpy payloads".

Decoded arrays are writable, C-contiguous and keep the byte order they were sent with (a
">f8" array stays big-endian). They own their memory: the base64 text is decoded to bytes and
copied once into a bytearray that the array wraps (np.frombuffer, no Python-list detour);
the copy costs under 1 % of the base64 decode, so handlers may modify their inputs in place.

Base64 is done by `binascii` (b2a_base64(..., newline=False) and a2b_base64(...,
strict_mode=True)): the `base64` module wraps the same C functions, and its validating
decoder adds a regular-expression pass on top.
"""
from __future__ import annotations

import binascii
import math
import re
from typing import Any

import numpy as np

from .errors import PayloadError
from .core.protocol import NDARRAY_OPT_IN_KEY as OPT_IN_KEY  # noqa: F401 (metadata[OPT_IN_KEY] is True: opted in)
from .core.protocol import ndarray_opted_in as opted_in  # noqa: F401 (part of this module's API)

TAG = "$ndarray"
ALLOWED_KINDS = frozenset("biufc")
_FIELDS = frozenset({"dtype", "shape", "b64"})
# byte order, kind, item size: what dtype.str looks like for bool and numeric dtypes
_DTYPE_RE = re.compile(r"([<>|])([biufc])([0-9]{1,2})")
_MAX_NDIM = 64


# ---------------------------------------------------------------------------- one array

def encode_array(a: Any) -> dict:
    """A numpy array (or anything np.asarray accepts) as a tagged object."""
    array = np.asarray(a)
    dtype = array.dtype
    if dtype.kind not in ALLOWED_KINDS:
        raise PayloadError(f"cannot encode an array of dtype {dtype.str!r} ({dtype}): only bool "
                           "and numeric dtypes (kinds b i u f c) travel as $ndarray")
    shape = list(array.shape)  # before ascontiguousarray, which turns 0-d into 1-d
    raw = binascii.b2a_base64(np.ascontiguousarray(array), newline=False)
    return {TAG: {"dtype": dtype.str, "shape": shape, "b64": raw.decode("ascii")}}


def decode_array(obj: Any) -> np.ndarray:
    """A tagged object back to a writable numpy array; PayloadError if it is malformed."""
    if type(obj) is not dict or TAG not in obj:
        raise PayloadError(f"expected a {{{TAG!r}: {{dtype, shape, b64}}}} object, got {_describe(obj)}")
    if len(obj) != 1:
        others = sorted(str(k) for k in obj if k != TAG)
        raise PayloadError(f"a {TAG} object must have no other keys, got {_names(others)}")
    body = obj[TAG]
    if type(body) is not dict:
        raise PayloadError(f"{TAG} must be an object {{dtype, shape, b64}}, got {_describe(body)}")
    keys = set(body)
    if keys != _FIELDS:
        missing, extra = _FIELDS - keys, keys - _FIELDS
        parts = []
        if missing:
            parts.append(f"missing {_names(missing)}")
        if extra:
            parts.append(f"unknown {_names(extra)}")
        raise PayloadError(f"{TAG} needs exactly dtype, shape and b64: {'; '.join(parts)}")
    dtype = _parse_dtype(body["dtype"])
    shape = _parse_shape(body["shape"])
    text = body["b64"]
    if type(text) is not str:
        raise PayloadError(f"b64 must be a string, got {_describe(text)}")
    try:
        raw = binascii.a2b_base64(text, strict_mode=True)
    except ValueError as exc:  # binascii.Error, or a non-ASCII str
        raise PayloadError(f"b64 is not valid base64: {exc}") from None
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise PayloadError(f"b64 holds {len(raw)} bytes; shape {shape} of dtype {dtype.str!r} "
                           f"needs {expected}")
    # bytearray: one memcpy so that the array is writable and owns its memory
    return np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)


def _parse_dtype(value: Any) -> np.dtype:
    if type(value) is not str:
        raise PayloadError(f"dtype must be a string such as '<f8', got {_describe(value)}")
    match = _DTYPE_RE.fullmatch(value)
    if match is None:
        raise PayloadError(f"dtype {value!r} is not allowed: expected numpy's dtype.str of a bool "
                           "or numeric dtype, with explicit byte order ('<f8', '>i4', '|u1', '|b1', "
                           "'<c16'); object, string, void and datetime dtypes are refused")
    try:
        dtype = np.dtype(value)
    except (TypeError, ValueError):
        raise PayloadError(f"unknown dtype {value!r}") from None
    if dtype.kind != match.group(2):  # defensive: the regex and numpy disagree
        raise PayloadError(f"dtype {value!r} is not allowed")
    if match.group(1) == "|" and dtype.itemsize > 1:
        raise PayloadError(f"dtype {value!r} needs an explicit byte order ('<' or '>'), "
                           f"e.g. {dtype.newbyteorder('<').str!r}")
    return dtype


def _parse_shape(value: Any) -> list[int]:
    if type(value) not in (list, tuple) or len(value) > _MAX_NDIM or not all(
            type(n) is int and n >= 0 for n in value):
        raise PayloadError(f"shape must be a list of at most {_MAX_NDIM} non-negative integers, "
                           f"got {_describe(value)}")
    return list(value)


# ---------------------------------------------------------------------------- trees

def decode_tree(value: Any) -> Any:
    """`value` with every tagged object inside it (nested in dicts and lists) replaced by a
    numpy array. The input is not modified: containers on the way to an array are copied,
    the rest is shared. A malformed tagged object raises PayloadError naming where it was;
    nothing is returned half-decoded."""
    if type(value) is not dict and type(value) is not list:
        return value
    try:
        return _decode(value)
    except PayloadError as exc:
        path = "".join(reversed(getattr(exc, "path", [])))
        raise PayloadError(f"invalid ndarray at data{path}: {exc}") from None
    except RecursionError:
        raise PayloadError("data is nested too deeply to look for ndarrays") from None


def _decode(value: Any) -> Any:
    kind = type(value)
    if kind is dict:
        if TAG in value:
            return decode_array(value)
        items, copy = value.items(), dict
    elif kind is list:
        items, copy = enumerate(value), list
    else:
        return value
    out = None
    for key, item in items:
        if type(item) is dict or type(item) is list:
            try:
                new = _decode(item)
            except PayloadError as exc:
                _add_step(exc, f"[{key!r}]" if kind is dict else f"[{key}]")
                raise
            if new is not item:
                if out is None:
                    out = copy(value)  # copy only the containers that change
                out[key] = new
    return value if out is None else out


def encode_tree(value: Any) -> Any:
    """`value` with every numpy array inside it (nested in dicts, lists and tuples) replaced by
    a tagged object; numpy scalars stay scalars. The input is not modified."""
    if isinstance(value, np.ndarray):
        return encode_array(value)
    if not isinstance(value, (dict, list, tuple)):
        return value
    try:
        return _encode(value)
    except RecursionError:
        raise PayloadError("value is nested too deeply to look for ndarrays") from None


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return encode_array(value)
    if isinstance(value, dict):
        items, copy = value.items(), dict
    elif isinstance(value, (list, tuple)):
        items, copy = enumerate(value), list
    else:
        return value
    out = None
    for key, item in items:
        if isinstance(item, (np.ndarray, dict, list, tuple)):
            new = _encode(item)
            if new is not item:
                if out is None:
                    out = copy(value)  # copy only the containers that change
                out[key] = new
    return value if out is None else out


# ---------------------------------------------------------------------------- messages

def _add_step(exc: PayloadError, step: str) -> None:
    path = getattr(exc, "path", None)
    if path is None:
        path = exc.path = []
    path.append(step)


def _names(keys) -> str:
    return ", ".join(repr(k) for k in sorted(keys))


def _describe(value: Any, limit: int = 60) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value!r}"
    if isinstance(value, str):
        text = value if len(value) <= limit else value[:limit] + "..."
        return f"string {text!r}"
    if isinstance(value, (list, tuple)):
        text = repr(list(value))
        return f"array {text if len(text) <= limit else text[:limit] + '...'}"
    if isinstance(value, dict):
        return f"object with keys {_names(str(k) for k in value)}"[:limit + 20]
    return type(value).__name__
