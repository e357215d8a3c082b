"""The spec's standard data-flow elements df:produce, df:transform and df:reduce.

Each is a plain handler `fn(data)` (see pfnode.registry), run in a worker process; nothing
here knows about the node. Bad input raises `ElementError(field, message)` naming the field
at fault as it is written in the packet's data (`ops[2].op: unknown op 'sqr'; ...`), before
any large computation starts.

Results are numpy arrays and scalars, which the worker encodes: as JSON lists and numbers by
default, as `$ndarray` objects under the packet's numpy-payload opt-in (pfnode.ndarray).
A 0-d result is returned as a numpy scalar (orjson cannot write 0-d arrays). Inputs are
JSON values, or ndarrays where a packet that opted in sent `$ndarray` objects.

The schemas, with an example frame for each and the errors: docs/ELEMENTS.md.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from ..errors import ElementError, child, describe, one_of

__all__ = ["ElementError", "MAX_ELEMENTS", "MAX_NDIM", "MAX_OPS", "TRANSFORM_OPS", "REDUCE_OPS",
           "DTYPES", "HANDLERS", "produce", "transform", "reduce", "real_array", "register_into"]

MAX_ELEMENTS = 10_000_000  # the most values df:produce makes (80 MB of float64)
MAX_NDIM = 32  # the most dimensions (and list nesting levels) an input or a shape may have
MAX_OPS = 64  # the most ops one df:transform applies
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_REQUIRED = object()  # a parameter with no default


# ============================================================================ field checks

def _object(data: Any, field: str, allowed: tuple[str, ...], what: str) -> dict:
    """`data` as an object whose keys are all in `allowed`."""
    if type(data) is not dict:
        raise ElementError(field, f"expected {what}, got {describe(data)}")
    for key in data:
        if key not in allowed:
            raise ElementError(child(field, key), f"unknown field; expected {one_of(allowed)}")
    return data


def _required(fields: dict, key: str, field: str, hint: str = "") -> Any:
    if key not in fields:
        raise ElementError(child(field, key), f"required{hint}")
    return fields[key]


def _number(value: Any, field: str) -> int | float:
    """A finite JSON number (not a boolean), as a Python int or float."""
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if type(value) is not int and type(value) is not float:
        raise ElementError(field, f"must be a number, got {describe(value)}")
    if not math.isfinite(value):
        raise ElementError(field, f"must be finite, got {value}")
    return value


def _integer(value: Any, field: str, minimum: int | None = None, what: str = "an integer") -> int:
    if isinstance(value, np.integer):
        value = int(value)
    if type(value) is not int or (minimum is not None and value < minimum):
        raise ElementError(field, f"must be {what}, got {describe(value)}")
    return value


def _int64(value: Any, field: str) -> int:
    value = _integer(value, field)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ElementError(field, f"{value} does not fit in 64 bits")
    return value


def _boolean(value: Any, field: str) -> bool:
    if type(value) is not bool:
        raise ElementError(field, f"must be true or false, got {describe(value)}")
    return value


def _axis_index(axis: int, ndim: int, field: str) -> int:
    """`axis` (numpy's convention: negative counts from the end) as 0..ndim-1."""
    if not -ndim <= axis < ndim:
        raise ElementError(field, f"axis {axis} is out of range for {ndim}-d values")
    return axis % ndim


def _scalar_if_0d(value: Any) -> Any:
    return value[()] if isinstance(value, np.ndarray) and value.ndim == 0 else value


# ============================================================================ number inputs

def _numbers(value: Any, field: str) -> np.ndarray:
    """A JSON number or (nested, rectangular) list of numbers, or a bool/int/float ndarray,
    as an ndarray of kind b, i, u or f (a list of ints stays int64, as numpy makes it)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise ElementError(field, f"must be real numbers, got an ndarray of dtype {value.dtype}")
        return value
    if value is None:
        raise ElementError(field, "must be numbers, not null")
    if type(value) in (list, int, float, bool):
        try:
            array = np.asarray(value)
        except (ValueError, TypeError, OverflowError):
            array = None
        if array is not None and array.dtype.kind in "biuf":
            return array
        raise ElementError(field, _why_not_numbers(value))
    raise ElementError(field, f"must be numbers, got {describe(value)}")


def _why_not_numbers(value: Any) -> str:
    """Why numpy could not make a real array of a JSON value (null, strings, objects, ints
    beyond 64 bits, nesting too deep, ragged lists), found without recursion."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if type(item) is list:
            if depth >= MAX_NDIM:
                return f"nests deeper than {MAX_NDIM} levels"
            stack.extend((x, depth + 1) for x in reversed(item))  # the first culprit first
        elif item is None:
            return "must be numbers, not null"
        elif isinstance(item, str):
            return f"must be numbers, found {describe(item)}"
        elif type(item) is int and not _INT64_MIN <= item < (1 << 64):
            return f"integers must fit in 64 bits, found {item}"
        elif type(item) not in (int, float, bool):
            return f"must be numbers, found {describe(item)}"
    return "nested lists must be rectangular (every row the same length)"


def real_array(values: Any, field: str) -> np.ndarray:
    """Numbers (a JSON number or nested lists, or a b/i/u/f ndarray) as a float64 array; a
    float64 ndarray is used as it is, not copied. JSON null is refused (it is not NaN); NaN
    inside an ndarray is a value."""
    return _numbers(values, field).astype(np.float64, copy=False)


# ============================================================================ df:produce

_SOURCES = ("range", "linspace", "random")


def produce(data: Any, *, max_result_bytes: int | None = None) -> Any:
    """Generate values: exactly one of

    - `{"range": [stop] | [start, stop] | [start, stop, step]}`: numpy.arange (int64 when all
      three are integers, else float64);
    - `{"linspace": [start, stop, count]}`: numpy.linspace, float64;
    - `{"random": {"dist": "normal"|"uniform"|"integers", "shape": n | [n, ...], "seed": s,
      ...parameters}}`: numpy.random.default_rng(seed); the same seed gives the same values.

    At most MAX_ELEMENTS values, and at most what fits the node's result limit
    (`max_result_bytes`, its frame limit) as JSON: a request whose values could pass it (at
    most 25 bytes of JSON each for floats, the longest integer's digits for integers) is
    refused up front, PF002 naming the field. Returns an ndarray (a numpy scalar for shape [])."""
    fields = _object(data, "", _SOURCES, 'an object with one of "range", "linspace", "random"')
    given = [key for key in _SOURCES if key in fields]
    if len(given) != 1:
        got = f"; got {' and '.join(given)}" if given else ""
        raise ElementError("data", f"give exactly one of {one_of(_SOURCES)}{got}")
    key = given[0]
    values = _PRODUCERS[key](fields[key], key)
    if max_result_bytes is not None:
        _check_output(values, key, max_result_bytes)
    return _scalar_if_0d(values)


def _check_output(values: np.ndarray, field: str, limit: int) -> None:
    """Refuse values whose JSON could pass `limit` bytes (before encoding any of it)."""
    if values.dtype.kind in "iu" and values.size:
        widest = max(len(str(int(values.min()))), len(str(int(values.max()))))
    else:
        widest = 24  # repr of a float64, sign and exponent included
    most = values.size * (widest + 1) + 2
    if most > limit:
        raise ElementError(field, f"asks for {values.size} values, up to {most} bytes of JSON: over the node's "
                                  f"result limit of {limit} bytes (its max_frame_bytes); ask for fewer")


def _check_count(count: int, field: str) -> None:
    if count > MAX_ELEMENTS:
        raise ElementError(field, f"asks for {count} values; at most {MAX_ELEMENTS}")


def _produce_range(spec: Any, field: str) -> np.ndarray:
    if type(spec) is not list or not 1 <= len(spec) <= 3:
        raise ElementError(field, f"expected [stop], [start, stop] or [start, stop, step], got {describe(spec)}")
    numbers = [_number(value, child(field, i)) for i, value in enumerate(spec)]
    if len(numbers) == 1:
        start, stop, step = 0, numbers[0], 1
    elif len(numbers) == 2:
        start, stop, step = numbers[0], numbers[1], 1
    else:
        start, stop, step = numbers
    if step == 0:
        raise ElementError(child(field, 2), "step must not be 0")
    if all(type(n) is int for n in numbers):
        for i, n in enumerate(numbers):
            _int64(n, child(field, i))
        count = max(0, -((start - stop) // step))  # ceil((stop - start) / step), exactly
    else:
        quotient = (stop - start) / step
        if not math.isfinite(quotient):
            raise ElementError(field, f"asks for too many values; at most {MAX_ELEMENTS}")
        count = max(0, math.ceil(quotient))
    _check_count(count, field)
    return np.arange(start, stop, step)


def _produce_linspace(spec: Any, field: str) -> np.ndarray:
    if type(spec) is not list or len(spec) != 3:
        raise ElementError(field, f"expected [start, stop, count], got {describe(spec)}")
    start = _number(spec[0], child(field, 0))
    stop = _number(spec[1], child(field, 1))
    count = _integer(spec[2], child(field, 2), 0, "a non-negative integer (how many values)")
    _check_count(count, child(field, 2))
    if not math.isfinite(float(stop) - float(start)):
        raise ElementError(field, "the span from start to stop overflows float64")
    return np.linspace(start, stop, count)


def _shape(value: Any, field: str) -> tuple[int, ...]:
    what = "a non-negative integer"
    if type(value) is list:
        if len(value) > MAX_NDIM:
            raise ElementError(field, f"has {len(value)} dimensions; at most {MAX_NDIM}")
        dims = tuple(_integer(n, child(field, i), 0, what) for i, n in enumerate(value))
    else:
        dims = (_integer(value, field, 0, f"{what} or a list of them"),)
    _check_count(math.prod(dims), field)
    return dims


def _nonnegative(value: Any, field: str) -> float:
    value = _number(value, field)
    if value < 0:
        raise ElementError(field, f"must not be negative, got {value}")
    return value


# dist -> its parameters: name -> (check, default)
_DISTRIBUTIONS: dict[str, dict[str, tuple[Callable, Any]]] = {
    "normal": {"loc": (_number, 0.0), "scale": (_nonnegative, 1.0)},
    "uniform": {"low": (_number, 0.0), "high": (_number, 1.0)},
    "integers": {"low": (_int64, 0), "high": (_int64, _REQUIRED)},
}


def _produce_random(spec: Any, field: str) -> np.ndarray:
    if type(spec) is not dict:
        raise ElementError(field, f'expected an object {{"dist", "shape", "seed", ...}}, got {describe(spec)}')
    dist = _required(spec, "dist", field, f"; one of {one_of(_DISTRIBUTIONS)}")
    if type(dist) is not str or dist not in _DISTRIBUTIONS:
        shown = repr(dist) if type(dist) is str else describe(dist)
        raise ElementError(child(field, "dist"),
                           f"unknown distribution {shown}; expected one of {one_of(_DISTRIBUTIONS)}")
    parameters = _DISTRIBUTIONS[dist]
    allowed = ("dist", "shape", "seed", *parameters)
    for key in spec:
        if key not in allowed:
            raise ElementError(child(field, key), f"not a parameter of {dist}; expected {one_of(allowed)}")
    shape = _shape(_required(spec, "shape", field), child(field, "shape"))
    seed = spec.get("seed")
    if seed is not None:
        seed = _integer(seed, child(field, "seed"), 0, "a non-negative integer")
    params = {}
    for name, (check, default) in parameters.items():
        if name in spec:
            params[name] = check(spec[name], child(field, name))
        elif default is _REQUIRED:
            raise ElementError(child(field, name), f"required for {dist}")
        else:
            params[name] = default
    rng = np.random.default_rng(seed)
    if dist == "normal":
        return rng.normal(params["loc"], params["scale"], shape)
    low, high = params["low"], params["high"]
    if dist == "uniform":
        if high < low:
            raise ElementError(child(field, "high"), f"must not be below low ({low}), got {high}")
        if not math.isfinite(high - low):
            raise ElementError(field, "high - low overflows float64")
        return rng.uniform(low, high, shape)
    if high <= low:
        raise ElementError(child(field, "high"), f"must be above low ({low}): high is exclusive; got {high}")
    return rng.integers(low, high, shape)


_PRODUCERS = {"range": _produce_range, "linspace": _produce_linspace, "random": _produce_random}


# ============================================================================ df:transform

def _optional_number(value: Any, field: str) -> int | float | None:
    return None if value is None else _number(value, field)


def _optional_axis(value: Any, field: str) -> int | None:
    return None if value is None else _integer(value, field, what="an integer axis or null")


def _axis_param(value: Any, field: str) -> int:
    return _integer(value, field, what="an integer axis")


def _optional_chars(value: Any, field: str) -> str | None:
    if value is not None and type(value) is not str:
        raise ElementError(field, f"must be a string of the characters to strip, got {describe(value)}")
    return value


DTYPES = ("float64", "float32", "float16", "int64", "int32", "int16", "int8",
          "uint64", "uint32", "uint16", "uint8", "bool")


def _dtype_name(value: Any, field: str) -> str:
    if type(value) is not str or value not in DTYPES:
        shown = repr(value) if type(value) is str else describe(value)
        raise ElementError(field, f"unknown dtype {shown}; expected one of {one_of(DTYPES)}")
    return value


def _arith(x: np.ndarray) -> np.ndarray:
    """Booleans count as 0 and 1 in arithmetic."""
    return x.astype(np.int64) if x.dtype.kind == "b" else x


def _check_fits(dtype: np.dtype, low: float, high: float, field: str, name: str) -> None:
    info = np.iinfo(dtype)
    if low < info.min or high > info.max:
        raise ElementError(field, f"{name} overflows {dtype}: a result would be {high if high > info.max else low}")


def _op_scale(x, field, by):
    x = _arith(x)
    if x.dtype.kind in "iu" and type(by) is int and x.size:
        ends = (int(x.min()) * by, int(x.max()) * by)
        _check_fits(x.dtype, min(ends), max(ends), field, "scale")
    return x * by


def _op_shift(x, field, by):
    x = _arith(x)
    if x.dtype.kind in "iu" and type(by) is int and x.size:
        _check_fits(x.dtype, int(x.min()) + by, int(x.max()) + by, field, "shift")
    return x + by


def _op_abs(x, field):
    x = _arith(x)
    if x.dtype.kind == "i" and x.size:
        _check_fits(x.dtype, 0, -int(x.min()), field, "abs")
    return np.abs(x)


def _op_sqrt(x, field):
    negative = x < 0
    if negative.any():
        raise ElementError(field, f"sqrt of a negative number ({x[negative].flat[0]})")
    return np.sqrt(_arith(x))


def _op_log(x, field):
    bad = x <= 0
    if bad.any():
        raise ElementError(field, f"log of zero or a negative number ({x[bad].flat[0]})")
    return np.log(_arith(x))


def _op_exp(x, field):
    return np.exp(_arith(x))


def _op_clip(x, field, min, max):  # noqa: A002 (the parameters' names)
    return np.clip(_arith(x), min, max)


def _op_normalize(x, field, axis):
    """(x - mean) / std over every value, or along `axis`; where std is 0, only centred."""
    x = _arith(x)
    if axis is not None:
        axis = _along(x, field, "normalize", axis)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    if x.size == 0:
        return x
    centred = x - x.mean(axis=axis, keepdims=True)
    std = x.std(axis=axis, keepdims=True)
    return centred / np.where(std == 0, 1, std)


def _along(x, field, name, axis) -> int:
    """`axis` of `x` for an op that works along one axis."""
    if x.ndim == 0:
        raise ElementError(field, f"{name} needs an array, not a single number")
    return _axis_index(axis, x.ndim, child(field, "axis"))


def _op_cumsum(x, field, axis):
    x = _arith(x)
    axis = _along(x, field, "cumsum", axis)
    result = np.cumsum(x, axis=axis)  # small ints accumulate in int64/uint64, as numpy does
    if result.dtype.kind in "iu" and x.size:
        sums = np.cumsum(x, axis=axis, dtype=np.float64)
        _check_fits(result.dtype, float(sums.min()), float(sums.max()), field, "cumsum")
    return result


def _op_diff(x, field, axis):
    x = _arith(x)
    axis = _along(x, field, "diff", axis)
    if x.dtype.kind in "iu" and x.shape[axis] > 1:
        steps = np.diff(x.astype(np.float64), axis=axis)
        _check_fits(x.dtype, float(steps.min()), float(steps.max()), field, "diff")
    return np.diff(x, axis=axis)


def _op_sort(x, field, axis, descending):
    axis = _along(x, field, "sort", axis)
    result = np.sort(x, axis=axis)
    return np.flip(result, axis=axis) if descending else result


def _op_astype(x, field, dtype):
    target = np.dtype(dtype)
    if target.kind in "iu" and x.size:
        info = np.iinfo(target)
        if x.dtype.kind == "f":
            if not np.isfinite(x).all():
                raise ElementError(field, f"cannot cast inf or NaN to {dtype}")
            truncated = np.trunc(x)  # float to int truncates toward zero
            low, high = float(truncated.min()), float(truncated.max())
            fits = low >= float(info.min) and high < float(info.max) + 1.0
        else:
            low, high = int(x.min()), int(x.max())
            fits = info.min <= low and high <= info.max
        if not fits:
            raise ElementError(field, f"values from {low} to {high} do not fit in {dtype}")
    return x.astype(target)


def _text(fn: Callable[[str], str]) -> Callable:
    def op(value, field, **params):
        if type(value) is str:
            return fn(value, **params)
        return [op(item, field, **params) for item in value]
    return op


class _OpSpec(NamedTuple):
    kind: str  # "numbers" or "text": what the op applies to
    params: dict[str, tuple[Callable, Any]]  # name -> (check, default or _REQUIRED)
    run: Callable  # run(value, field, **params); field names the op in errors


_AXIS_LAST = {"axis": (_axis_param, -1)}
TRANSFORM_OPS: dict[str, _OpSpec] = {
    "scale": _OpSpec("numbers", {"by": (_number, _REQUIRED)}, _op_scale),
    "shift": _OpSpec("numbers", {"by": (_number, _REQUIRED)}, _op_shift),
    "abs": _OpSpec("numbers", {}, _op_abs),
    "sqrt": _OpSpec("numbers", {}, _op_sqrt),
    "log": _OpSpec("numbers", {}, _op_log),
    "exp": _OpSpec("numbers", {}, _op_exp),
    "clip": _OpSpec("numbers", {"min": (_optional_number, None), "max": (_optional_number, None)}, _op_clip),
    "normalize": _OpSpec("numbers", {"axis": (_optional_axis, None)}, _op_normalize),
    "cumsum": _OpSpec("numbers", _AXIS_LAST, _op_cumsum),
    "diff": _OpSpec("numbers", _AXIS_LAST, _op_diff),
    "sort": _OpSpec("numbers", {**_AXIS_LAST, "descending": (_boolean, False)}, _op_sort),
    "astype": _OpSpec("numbers", {"dtype": (_dtype_name, _REQUIRED)}, _op_astype),
    "upper": _OpSpec("text", {}, _text(str.upper)),
    "lower": _OpSpec("text", {}, _text(str.lower)),
    "strip": _OpSpec("text", {"chars": (_optional_chars, None)}, _text(lambda s, chars: s.strip(chars))),
}
_KIND_NAMES = {"numbers": "numbers", "text": "strings"}


class _Step(NamedTuple):
    name: str
    spec: _OpSpec
    params: dict
    field: str  # the op: ops[i]
    name_field: str  # its name: ops[i] for a bare name, ops[i].op for an object


def _parse_op(op: Any, field: str) -> _Step:
    if type(op) is str:
        name, given, name_field = op, {}, field
    elif type(op) is dict:
        name_field = child(field, "op")
        name = _required(op, "op", field, ": the op's name")
        given = {key: value for key, value in op.items() if key != "op"}
    else:
        raise ElementError(field, f'expected an op name or an object {{"op": name, ...}}, got {describe(op)}')
    spec = TRANSFORM_OPS.get(name) if type(name) is str else None
    if spec is None:
        shown = repr(name) if type(name) is str else describe(name)
        raise ElementError(name_field, f"unknown op {shown}; expected one of {one_of(TRANSFORM_OPS)}")
    for key in given:
        if key not in spec.params:
            expected = f"expected {one_of(('op', *spec.params))}" if spec.params else "it takes none"
            raise ElementError(child(field, key), f"not a parameter of {name}; {expected}")
    params = {}
    for pname, (check, default) in spec.params.items():
        if pname in given:
            params[pname] = check(given[pname], child(field, pname))
        elif default is not _REQUIRED:
            params[pname] = default
        elif type(op) is str:
            raise ElementError(field, f'{name} needs {pname!r}; write it as {{"op": "{name}", "{pname}": ...}}')
        else:
            raise ElementError(child(field, pname), f"required by {name}")
    if name == "clip":
        low, high = params["min"], params["max"]
        if low is None and high is None:
            raise ElementError(field, "clip needs min, max or both")
        if low is not None and high is not None and high < low:
            raise ElementError(child(field, "max"), f"must not be below min ({low}), got {high}")
    return _Step(name, spec, params, field, name_field)


def _all_strings(value: list) -> bool | None:
    """Whether every leaf of nested lists is a string (None: there are no leaves). Stops at
    the first leaf that is not; refuses nesting deeper than MAX_NDIM."""
    stack, seen = [(value, 0)], False
    while stack:
        item, depth = stack.pop()
        if type(item) is list:
            if depth >= MAX_NDIM:
                raise ElementError("input", f"nests deeper than {MAX_NDIM} levels")
            stack.extend((x, depth + 1) for x in item)
        elif type(item) is str:
            seen = True
        else:
            return False
    return True if seen else None


def transform(data: Any) -> Any:
    """`{"input": value, "ops": [op, ...]}` -> the value after each op in turn.

    An op is a name (`"abs"`) or an object `{"op": name, ...parameters}`; see TRANSFORM_OPS and
    docs/ELEMENTS.md. Number ops take a number, nested lists of numbers or an ndarray and
    return an ndarray (or a numpy scalar); string ops take a string or nested lists of
    strings and return the same shape.

    Compatibility rule: a plain string as the whole data is upper-cased, as the spec's usage
    example registers df:transform ("hello world" -> "HELLO WORLD")."""
    if type(data) is str:
        return data.upper()
    fields = _object(data, "", ("input", "ops"),
                     'an object {"input": ..., "ops": [...]} (or a string, to upper-case)')
    value = _required(fields, "input", "")
    ops = _required(fields, "ops", "", ": a list of ops")
    if type(ops) is not list:
        raise ElementError("ops", f"expected a list of ops, got {describe(ops)}")
    if len(ops) > MAX_OPS:
        raise ElementError("ops", f"has {len(ops)} ops; at most {MAX_OPS}")
    steps = [_parse_op(op, child("ops", i)) for i, op in enumerate(ops)]
    if type(value) is str:
        kind = "text"
    elif type(value) is list:
        strings = _all_strings(value)
        kind = "text" if strings or (strings is None and steps and steps[0].spec.kind == "text") else "numbers"
    else:
        kind = "numbers"
    x = _numbers(value, "input") if kind == "numbers" else None
    for step in steps:
        if step.spec.kind != kind:
            raise ElementError(step.name_field, f"{step.name} applies to {_KIND_NAMES[step.spec.kind]}, "
                                                f"but the input is {_KIND_NAMES[kind]}")
    if kind == "text":
        for step in steps:
            value = step.spec.run(value, step.field, **step.params)
        return value
    finite = x.dtype.kind != "f" or bool(np.isfinite(x).all())
    with np.errstate(all="ignore"):
        for step in steps:
            try:
                x = step.spec.run(x, step.field, **step.params)
            except (ArithmeticError, TypeError, ValueError) as exc:
                if isinstance(exc, ElementError):
                    raise
                raise ElementError(step.field, f"{step.name} failed on {x.dtype} values: {exc}") from None
            if finite and x.dtype.kind == "f" and not np.isfinite(x).all():
                raise ElementError(step.field, f"{step.name} overflows: its result would hold inf or NaN")
    return _scalar_if_0d(x)


# ============================================================================ df:reduce

def _argreduce(fn: Callable) -> Callable:
    def reducer(values: np.ndarray, axis: tuple[int, ...] | None):
        return fn(values, axis=None if axis is None else axis[0])
    return reducer


def _count(values: np.ndarray, axis: tuple[int, ...] | None) -> int:
    return values.size if axis is None else math.prod(values.shape[a] for a in axis)


REDUCE_OPS: dict[str, Callable] = {
    "sum": np.sum, "mean": np.mean, "min": np.min, "max": np.max, "std": np.std, "prod": np.prod,
    "median": np.median, "var": np.var, "count": _count,
    "argmin": _argreduce(np.argmin), "argmax": _argreduce(np.argmax), "any": np.any, "all": np.all,
}
_NEEDS_VALUES = frozenset({"mean", "min", "max", "std", "median", "var", "argmin", "argmax"})
_SINGLE_AXIS = frozenset({"argmin", "argmax"})


def _reduce_ops(op: Any) -> tuple[list[tuple[str, str]], bool]:
    """[(name, field)] and whether one op was given as a name (not a list)."""
    if type(op) is str:
        named, single = [(op, "op")], True
    elif type(op) is list and op:
        named, single = [(name, child("op", i)) for i, name in enumerate(op)], False
    else:
        what = "an empty list" if op == [] else describe(op)
        raise ElementError("op", f"expected an op name or a non-empty list of them, got {what}")
    seen = set()
    for name, field in named:
        if type(name) is not str or name not in REDUCE_OPS:
            shown = repr(name) if type(name) is str else describe(name)
            raise ElementError(field, f"unknown op {shown}; expected one of {one_of(REDUCE_OPS)}")
        if name in seen:
            raise ElementError(field, f"{name!r} is given twice")
        seen.add(name)
    return named, single


def _axes(axis: Any, ndim: int, field: str) -> tuple[int, ...] | None:
    """null (every axis), an int or a list of ints, numpy's convention, as sorted 0..ndim-1."""
    if axis is None:
        return None
    if type(axis) is list:
        if not axis:
            raise ElementError(field, "is an empty list; give null to reduce over every axis")
        given = [(_integer(a, child(field, i), what="an integer axis"), child(field, i)) for i, a in enumerate(axis)]
    else:
        given = [(_integer(axis, field, what="an integer axis, a list of them or null"), field)]
    axes: list[int] = []
    for a, where in given:
        index = _axis_index(a, ndim, where)
        if index in axes:
            raise ElementError(where, f"axis {a} is repeated")
        axes.append(index)
    return tuple(sorted(axes))


def reduce(data: Any) -> Any:
    """`{"values": numbers, "op": name | [names], "axis": null | int | [ints]}` -> a number or
    an array (one op), or `{name: result}` in the order given (a list of ops).

    Values are taken as float64, as handlers/numeric.py's reduce does (JSON null is refused;
    NaN inside an ndarray is a value). Ops: REDUCE_OPS. `count` is how many values each
    reduction covers (a number). argmin/argmax take one axis (none: the flat index). Ops
    with no identity (mean, min, max, std, median, var, argmin, argmax) refuse to reduce
    no values; sum, prod, count, any and all give 0, 1, 0, false and true."""
    fields = _object(data, "", ("values", "op", "axis"), '{"values": [...], "op": "sum", "axis": null}')
    named, single = _reduce_ops(fields.get("op", "sum"))
    values = real_array(_required(fields, "values", ""), "values")
    axes = _axes(fields.get("axis"), values.ndim, "axis")
    covered = _count(values, axes)  # values per reduction
    cells = 1 if axes is None else math.prod(n for i, n in enumerate(values.shape) if i not in axes)
    results = {}
    for name, field in named:
        if name in _SINGLE_AXIS and axes is not None and len(axes) > 1:
            raise ElementError("axis", f"{name} takes one axis, got {len(axes)}")
        if covered == 0 and cells and name in _NEEDS_VALUES:  # an output with no cells is fine
            raise ElementError("values", f"cannot take {name} of no values")
        results[name] = _scalar_if_0d(REDUCE_OPS[name](values, axis=axes))
    return results[named[0][0]] if single else results


# ============================================================================ registration

HANDLERS: dict[str, Callable[[Any], Any]] = {"df:produce": produce, "df:transform": transform, "df:reduce": reduce}


def register_into(registry) -> None:
    """Register the three elements into `registry` (a pfnode.registry.Registry, or anything
    with its `register(group, element, fn)`)."""
    for key, fn in HANDLERS.items():
        group, _, element = key.partition(":")
        registry.register(group, element, fn)
