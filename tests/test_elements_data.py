"""Tests of pfnode.elements.worker.data: df:produce, df:transform and df:reduce as pure handlers
(against numpy reference computations), the errors naming their field, the size bounds, and
their results through the worker's encoding (pfnode.worker.run_task)."""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import pfnode.ndarray
from pfnode.pool import pipe, worker
from pfnode.elements.worker import data as D
from pfnode.elements.worker.data import ElementError, produce, reduce, transform
from pfnode.registry import Registry


def nest(value, levels: int):
    for _ in range(levels):
        value = [value]
    return value


def element_error(fn, data) -> ElementError:
    with pytest.raises(ElementError) as info:
        fn(data)
    error = info.value
    assert str(error) == f"{error.field}: {error.message}"
    return error


# ============================================================================ df:produce

@settings(max_examples=100, deadline=None)
@given(st.integers(-50, 50), st.integers(-50, 50), st.integers(-7, 7).filter(bool))
def test_integer_range_is_numpy_arange(start, stop, step):
    got = produce({"range": [start, stop, step]})
    expected = np.arange(start, stop, step)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=100, deadline=None)
@given(st.floats(-100, 100), st.floats(-100, 100), st.floats(0.01, 10) | st.floats(-10, -0.01))
def test_float_range_is_numpy_arange(start, stop, step):
    got = produce({"range": [start, stop, step]})
    np.testing.assert_array_equal(got, np.arange(start, stop, step))


def test_range_short_forms():
    np.testing.assert_array_equal(produce({"range": [4]}), [0, 1, 2, 3])
    np.testing.assert_array_equal(produce({"range": [2, 5]}), [2, 3, 4])
    np.testing.assert_array_equal(produce({"range": [0, 1, 0.25]}), [0, 0.25, 0.5, 0.75])
    assert produce({"range": [5, 1]}).size == 0


@settings(max_examples=100, deadline=None)
@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6), st.integers(0, 200))
def test_linspace_is_numpy_linspace(start, stop, count):
    np.testing.assert_array_equal(produce({"linspace": [start, stop, count]}), np.linspace(start, stop, count))


@pytest.mark.parametrize("spec, reference", [
    ({"dist": "normal", "shape": [3, 4], "seed": 7, "loc": 1, "scale": 2},
     lambda rng: rng.normal(1, 2, (3, 4))),
    ({"dist": "normal", "shape": 5, "seed": 7}, lambda rng: rng.normal(0.0, 1.0, (5,))),
    ({"dist": "uniform", "shape": [10], "seed": 1, "low": -1, "high": 1}, lambda rng: rng.uniform(-1, 1, (10,))),
    ({"dist": "integers", "shape": [2, 3], "seed": 3, "high": 6}, lambda rng: rng.integers(0, 6, (2, 3))),
    ({"dist": "integers", "shape": [4], "seed": 3, "low": -5, "high": 5}, lambda rng: rng.integers(-5, 5, (4,))),
])
def test_random_is_default_rng_and_deterministic_for_a_seed(spec, reference):
    first, second = produce({"random": spec}), produce({"random": dict(spec)})
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, reference(np.random.default_rng(spec["seed"])))
    other = produce({"random": {**spec, "seed": spec["seed"] + 1}})
    assert not np.array_equal(first, other)


def test_random_ranges_and_dtypes():
    ints = produce({"random": {"dist": "integers", "shape": 1000, "seed": 0, "low": 2, "high": 5}})
    assert ints.dtype == np.int64 and set(np.unique(ints)) == {2, 3, 4}
    uniform = produce({"random": {"dist": "uniform", "shape": 1000, "seed": 0, "low": 3, "high": 4}})
    assert uniform.dtype == np.float64 and 3 <= uniform.min() and uniform.max() < 4
    unseeded = produce({"random": {"dist": "normal", "shape": [2]}})  # no seed: fresh entropy
    assert unseeded.shape == (2,)


def test_shape_of_no_dimensions_gives_a_scalar():
    value = produce({"random": {"dist": "normal", "shape": [], "seed": 1}})
    assert np.ndim(value) == 0 and not isinstance(value, np.ndarray)  # orjson cannot write 0-d arrays


def test_size_bound(monkeypatch):
    monkeypatch.setattr(D, "MAX_ELEMENTS", 100)
    assert produce({"range": [100]}).size == 100
    assert produce({"linspace": [0, 1, 100]}).size == 100
    assert produce({"random": {"dist": "normal", "shape": [10, 10], "seed": 0}}).size == 100
    for data, field in [({"range": [101]}, "range"), ({"range": [0, 1, 0.0099]}, "range"),
                        ({"range": [0, -101, -1]}, "range"), ({"linspace": [0, 1, 101]}, "linspace[2]"),
                        ({"random": {"dist": "normal", "shape": [10, 11]}}, "random.shape"),
                        ({"random": {"dist": "normal", "shape": 101}}, "random.shape")]:
        error = element_error(produce, data)
        assert error.field == field and "at most 100" in error.message, error


def test_the_real_bound_refuses_before_allocating():
    start = time.perf_counter()
    for data in ({"range": [0, 10**15]}, {"range": [0, 1, 1e-300]}, {"range": [-1e308, 1e308, 1e-308]},
                 {"linspace": [0, 1, 10**12]}, {"random": {"dist": "normal", "shape": [10**6, 10**6]}}):
        error = element_error(produce, data)
        assert f"at most {D.MAX_ELEMENTS}" in error.message
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize("data, field, phrase", [
    ("x", "data", 'expected an object with one of "range", "linspace", "random"'),
    ({}, "data", "give exactly one of range, linspace, random"),
    ({"range": [1], "random": {}}, "data", "got range and random"),
    ({"ranges": [1]}, "ranges", "unknown field; expected range, linspace, random"),
    ({"range": []}, "range", "expected [stop], [start, stop] or [start, stop, step]"),
    ({"range": [1, 2, 3, 4]}, "range", "expected [stop]"),
    ({"range": 5}, "range", "expected [stop]"),
    ({"range": [0, "9"]}, "range[1]", "must be a number"),
    ({"range": [0, True]}, "range[1]", "must be a number"),
    ({"range": [0, None]}, "range[1]", "must be a number, got null"),
    ({"range": [0, 10, 0]}, "range[2]", "step must not be 0"),
    ({"range": [0, 2**70]}, "range[1]", "does not fit in 64 bits"),
    ({"linspace": [0, 1]}, "linspace", "expected [start, stop, count]"),
    ({"linspace": [0, 1, -1]}, "linspace[2]", "non-negative integer"),
    ({"linspace": [0, 1, 2.5]}, "linspace[2]", "non-negative integer"),
    ({"linspace": [0, 1, float("nan")]}, "linspace[2]", "non-negative integer"),
    ({"linspace": [float("inf"), 1, 3]}, "linspace[0]", "must be finite"),
    ({"linspace": [-1e308, 1e308, 3]}, "linspace", "overflows"),
    ({"random": [1]}, "random", "expected an object"),
    ({"random": {"shape": 3}}, "random.dist", "required; one of normal, uniform, integers"),
    ({"random": {"dist": "poisson", "shape": 3}}, "random.dist", "unknown distribution 'poisson'"),
    ({"random": {"dist": 1, "shape": 3}}, "random.dist", "unknown distribution the number 1"),
    ({"random": {"dist": "normal"}}, "random.shape", "required"),
    ({"random": {"dist": "normal", "shape": [2, -1]}}, "random.shape[1]", "non-negative integer"),
    ({"random": {"dist": "normal", "shape": -3}}, "random.shape", "non-negative integer"),
    ({"random": {"dist": "normal", "shape": [2.0]}}, "random.shape[0]", "non-negative integer"),
    ({"random": {"dist": "normal", "shape": [1] * 33}}, "random.shape", "at most 32"),
    ({"random": {"dist": "normal", "shape": 2, "seed": -1}}, "random.seed", "non-negative integer"),
    ({"random": {"dist": "normal", "shape": 2, "seed": "7"}}, "random.seed", "non-negative integer"),
    ({"random": {"dist": "normal", "shape": 2, "low": 0}}, "random.low",
     "not a parameter of normal; expected dist, shape, seed, loc, scale"),
    ({"random": {"dist": "normal", "shape": 2, "scale": -1}}, "random.scale", "must not be negative"),
    ({"random": {"dist": "uniform", "shape": 2, "low": 2, "high": 1}}, "random.high", "must not be below low"),
    ({"random": {"dist": "uniform", "shape": 2, "low": -1e308, "high": 1e308}}, "random", "overflows"),
    ({"random": {"dist": "integers", "shape": 2}}, "random.high", "required for integers"),
    ({"random": {"dist": "integers", "shape": 2, "high": 2.5}}, "random.high", "must be an integer"),
    ({"random": {"dist": "integers", "shape": 2, "low": 3, "high": 3}}, "random.high", "high is exclusive"),
    ({"random": {"dist": "integers", "shape": 2, "high": 2**64}}, "random.high", "64 bits"),
])
def test_produce_errors_name_the_field(data, field, phrase):
    error = element_error(produce, data)
    assert error.field == field
    assert phrase in error.message


# ============================================================================ df:transform

def test_a_plain_string_is_upper_cased_as_in_the_spec_example():
    assert transform("hello world") == "HELLO WORLD"
    assert transform("") == ""


FINITE = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
ARRAYS = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=6), elements=FINITE)
OPS = st.one_of(
    st.sampled_from(["abs", "sqrt", "log", "exp", "cumsum", "diff", "sort", "normalize"]),
    st.builds(lambda by: {"op": "scale", "by": by}, FINITE),
    st.builds(lambda by: {"op": "shift", "by": by}, FINITE),
    st.builds(lambda lo, hi: {"op": "clip", "min": min(lo, hi), "max": max(lo, hi)}, FINITE, FINITE),
    st.builds(lambda axis: {"op": "normalize", "axis": axis}, st.sampled_from([0, -1])),
    st.builds(lambda axis: {"op": "cumsum", "axis": axis}, st.sampled_from([0, -1])),
    st.builds(lambda axis, d: {"op": "sort", "axis": axis, "descending": d}, st.sampled_from([0, -1]), st.booleans()),
)


class Refused(Exception):
    pass


def reference(x: np.ndarray, op) -> np.ndarray:
    """The documented meaning of each op, in plain numpy."""
    name = op if isinstance(op, str) else op["op"]
    params = {} if isinstance(op, str) else op
    if name == "abs":
        return np.abs(x)
    if name == "sqrt":
        if np.any(x < 0):
            raise Refused
        return np.sqrt(x)
    if name == "log":
        if np.any(x <= 0):
            raise Refused
        return np.log(x)
    if name == "exp":
        return np.exp(x)
    if name == "scale":
        return x * params["by"]
    if name == "shift":
        return x + params["by"]
    if name == "clip":
        return np.minimum(np.maximum(x, params["min"]), params["max"])
    if name in ("cumsum", "diff", "sort") and x.ndim == 0:
        raise Refused
    axis = params.get("axis", -1)
    if name == "cumsum":
        return np.cumsum(x, axis=axis)
    if name == "diff":
        return np.diff(x, axis=axis)
    if name == "sort":
        ordered = np.sort(x, axis=axis)
        return np.flip(ordered, axis=axis) if params.get("descending") else ordered
    assert name == "normalize"
    axis = params.get("axis")
    if x.size == 0:
        return x
    mean, std = x.mean(axis=axis, keepdims=True), x.std(axis=axis, keepdims=True)
    return np.where(std == 0, x - mean, (x - mean) / np.where(std == 0, 1, std))


@settings(max_examples=120, deadline=None)
@given(ARRAYS, st.lists(OPS, max_size=4), st.booleans())
def test_transform_ops_match_numpy(x, ops, as_list):
    expected = x
    try:
        with np.errstate(all="ignore"):
            for op in ops:
                expected = reference(expected, op)
                if not np.all(np.isfinite(expected)):  # refused at the op that overflows
                    raise Refused
    except Refused:
        with pytest.raises(ElementError) as info:
            transform({"input": x.tolist() if as_list else x, "ops": ops})
        assert info.value.field.startswith("ops[")
        return
    got = transform({"input": x.tolist() if as_list else x, "ops": ops})
    assert np.shape(got) == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_integers_stay_integers_where_numpy_keeps_them():
    got = transform({"input": [3, 1, 2], "ops": ["cumsum", {"op": "scale", "by": 2}, "sort"]})
    assert got.dtype == np.int64 and got.tolist() == [6, 8, 12]
    assert transform({"input": [1, 2], "ops": [{"op": "scale", "by": 0.5}]}).tolist() == [0.5, 1.0]
    assert transform({"input": [True, False, True], "ops": ["cumsum"]}).tolist() == [1, 1, 2]
    assert transform({"input": [4, 9], "ops": ["sqrt"]}).tolist() == [2.0, 3.0]


def test_axis_ops_on_two_dimensions():
    x = [[3, 1, 2], [9, 7, 8]]
    a = np.array(x)
    np.testing.assert_array_equal(transform({"input": x, "ops": ["cumsum"]}), np.cumsum(a, axis=-1))
    np.testing.assert_array_equal(transform({"input": x, "ops": [{"op": "cumsum", "axis": 0}]}), np.cumsum(a, axis=0))
    np.testing.assert_array_equal(transform({"input": x, "ops": ["diff"]}), [[-2, 1], [-2, 1]])
    np.testing.assert_array_equal(transform({"input": x, "ops": [{"op": "diff", "axis": 0}]}), [[6, 6, 6]])
    np.testing.assert_array_equal(transform({"input": x, "ops": [{"op": "sort", "descending": True}]}),
                                  [[3, 2, 1], [9, 8, 7]])
    np.testing.assert_array_equal(transform({"input": x, "ops": [{"op": "sort", "axis": 0, "descending": True}]}),
                                  [[9, 7, 8], [3, 1, 2]])
    whole = transform({"input": x, "ops": ["normalize"]})
    assert abs(whole.mean()) < 1e-12 and abs(whole.std() - 1) < 1e-12
    rows = transform({"input": x, "ops": [{"op": "normalize", "axis": -1}]})
    np.testing.assert_allclose(rows.std(axis=-1), [1, 1])


def test_normalize_leaves_constant_values_centred():
    assert transform({"input": [5, 5, 5], "ops": ["normalize"]}).tolist() == [0.0, 0.0, 0.0]
    got = transform({"input": [[1, 1], [1, 3]], "ops": [{"op": "normalize", "axis": 1}]})
    assert got.tolist() == [[0.0, 0.0], [-1.0, 1.0]]
    assert transform({"input": [], "ops": ["normalize"]}).size == 0


def test_clip_and_astype():
    assert transform({"input": [-5, 0, 5], "ops": [{"op": "clip", "min": -1}]}).tolist() == [-1, 0, 5]
    assert transform({"input": [-5, 0, 5], "ops": [{"op": "clip", "max": 1}]}).tolist() == [-5, 0, 1]
    got = transform({"input": [1.9, -1.9, 0.0], "ops": [{"op": "astype", "dtype": "int32"}]})
    assert got.dtype == np.int32 and got.tolist() == [1, -1, 0]
    assert transform({"input": [0, 2], "ops": [{"op": "astype", "dtype": "bool"}]}).tolist() == [False, True]
    assert transform({"input": [1, 2], "ops": [{"op": "astype", "dtype": "float32"}]}).dtype == np.float32
    edge = transform({"input": [-128.0, 127.9], "ops": [{"op": "astype", "dtype": "int8"}]})
    assert edge.tolist() == [-128, 127]


def test_ndarray_inputs_keep_their_dtype():
    x = np.arange(4, dtype=np.float32)
    got = transform({"input": x, "ops": [{"op": "scale", "by": 2}]})
    assert got.dtype == np.float32 and got.tolist() == [0, 2, 4, 6]
    nan = np.array([np.nan, 1.0])  # NaN in an ndarray is a value, not an overflow
    assert np.isnan(transform({"input": nan, "ops": ["abs"]})[0])


def test_a_single_number_and_empty_lists():
    assert transform({"input": 4, "ops": ["sqrt"]}) == 2.0
    assert not isinstance(transform({"input": 4, "ops": ["sqrt"]}), np.ndarray)
    assert transform({"input": [], "ops": ["upper"]}) == []
    assert transform({"input": [[], []], "ops": ["strip"]}) == [[], []]
    assert transform({"input": [], "ops": ["abs"]}).size == 0
    assert transform({"input": [1, 2], "ops": []}).tolist() == [1, 2]
    assert transform({"input": "a", "ops": []}) == "a"


def test_string_ops():
    assert transform({"input": "  Hello ", "ops": ["strip", "upper"]}) == "HELLO"
    assert transform({"input": "xxhixx", "ops": [{"op": "strip", "chars": "x"}, "upper"]}) == "HI"
    assert transform({"input": ["A", ["B", "c"], []], "ops": ["lower"]}) == ["a", ["b", "c"], []]
    assert transform({"input": ["a", ["b"]], "ops": ["upper"]}) == ["A", ["B"]]  # ragged is fine for strings


def test_integer_overflow_is_refused_not_wrapped():
    big = 2**62
    cases = [
        ({"input": [big], "ops": [{"op": "scale", "by": 4}]}, "scale overflows int64"),
        ({"input": [big, big], "ops": [{"op": "shift", "by": big}]}, "shift overflows int64"),
        ({"input": [big, big], "ops": ["cumsum"]}, "cumsum overflows int64"),
        ({"input": [-big, big], "ops": ["diff"]}, "diff overflows int64"),
        ({"input": np.array([np.iinfo(np.int64).min]), "ops": ["abs"]}, "abs overflows int64"),
        ({"input": np.array([7, 5], dtype=np.uint8), "ops": ["diff"]}, "diff overflows uint8"),
        ({"input": np.array([200], dtype=np.uint8), "ops": [{"op": "scale", "by": 2}]}, "scale overflows uint8"),
        ({"input": [1.5, 300.0], "ops": [{"op": "astype", "dtype": "int8"}]}, "do not fit in int8"),
        ({"input": [2.0**63], "ops": [{"op": "astype", "dtype": "int64"}]}, "do not fit in int64"),
        ({"input": [-1], "ops": [{"op": "astype", "dtype": "uint8"}]}, "do not fit in uint8"),
        ({"input": np.array([np.nan]), "ops": [{"op": "astype", "dtype": "int64"}]}, "cannot cast inf or NaN"),
        ({"input": [70000.0], "ops": [{"op": "astype", "dtype": "float16"}]}, "astype overflows"),
        ({"input": [1e308], "ops": [{"op": "scale", "by": 10}]}, "scale overflows"),
        ({"input": [1000], "ops": ["exp"]}, "exp overflows"),
    ]
    for data, phrase in cases:
        error = element_error(transform, data)
        assert error.field == "ops[0]" and phrase in error.message, (data, error)
    assert transform({"input": np.array([7, 5], dtype=np.uint8), "ops": [{"op": "sort"}, "diff"]}).tolist() == [2]


@pytest.mark.parametrize("data, field, phrase", [
    (5, "data", 'expected an object {"input": ..., "ops": [...]} (or a string, to upper-case)'),
    ({"ops": []}, "input", "required"),
    ({"input": [1]}, "ops", "required: a list of ops"),
    ({"input": [1], "ops": "abs"}, "ops", "expected a list of ops"),
    ({"input": [1], "ops": ["abs"] * 65}, "ops", "at most 64"),
    ({"input": [1], "ops": [], "extra": 1}, "extra", "unknown field; expected input, ops"),
    ({"input": [1], "ops": ["abs", "abs", {"op": "sqr"}]}, "ops[2].op", "unknown op 'sqr'; expected one of scale, shift"),
    ({"input": [1], "ops": ["sqr"]}, "ops[0]", "unknown op 'sqr'"),
    ({"input": [1], "ops": [{"by": 2}]}, "ops[0].op", "required: the op's name"),
    ({"input": [1], "ops": [{"op": 5}]}, "ops[0].op", "unknown op the number 5"),
    ({"input": [1], "ops": [5]}, "ops[0]", 'expected an op name or an object {"op": name, ...}'),
    ({"input": [1], "ops": ["scale"]}, "ops[0]", 'scale needs \'by\'; write it as {"op": "scale", "by": ...}'),
    ({"input": [1], "ops": [{"op": "scale"}]}, "ops[0].by", "required by scale"),
    ({"input": [1], "ops": [{"op": "scale", "by": "2"}]}, "ops[0].by", "must be a number"),
    ({"input": [1], "ops": [{"op": "scale", "by": 2, "times": 3}]}, "ops[0].times",
     "not a parameter of scale; expected op, by"),
    ({"input": [1], "ops": [{"op": "abs", "by": 3}]}, "ops[0].by", "not a parameter of abs; it takes none"),
    ({"input": [1], "ops": [{"op": "clip"}]}, "ops[0]", "clip needs min, max or both"),
    ({"input": [1], "ops": [{"op": "clip", "min": 2, "max": 1}]}, "ops[0].max", "must not be below min"),
    ({"input": [1], "ops": [{"op": "astype", "dtype": "complex128"}]}, "ops[0].dtype", "unknown dtype 'complex128'"),
    ({"input": [1], "ops": [{"op": "sort", "descending": 1}]}, "ops[0].descending", "must be true or false"),
    ({"input": [1], "ops": [{"op": "cumsum", "axis": 1}]}, "ops[0].axis", "axis 1 is out of range for 1-d values"),
    ({"input": [1], "ops": [{"op": "cumsum", "axis": "0"}]}, "ops[0].axis", "must be an integer axis"),
    ({"input": [[1]], "ops": [{"op": "normalize", "axis": -3}]}, "ops[0].axis", "out of range for 2-d"),
    ({"input": 5, "ops": ["diff"]}, "ops[0]", "diff needs an array, not a single number"),
    ({"input": [1], "ops": [{"op": "strip", "chars": 1}]}, "ops[0].chars", "characters to strip"),
    ({"input": [-1, 4], "ops": ["abs", {"op": "shift", "by": -2}, "sqrt"]}, "ops[2]", "sqrt of a negative number (-1)"),
    ({"input": [0, 1], "ops": ["log"]}, "ops[0]", "log of zero or a negative number (0)"),
    ({"input": "abc", "ops": ["upper", "abs"]}, "ops[1]", "abs applies to numbers, but the input is strings"),
    ({"input": "abc", "ops": [{"op": "scale", "by": 2}]}, "ops[0].op", "scale applies to numbers"),
    ({"input": ["a"], "ops": ["sort"]}, "ops[0]", "sort applies to numbers"),
    ({"input": [1, 2], "ops": ["upper"]}, "ops[0]", "upper applies to strings, but the input is numbers"),
    ({"input": [1, "a"], "ops": ["upper"]}, "input", "must be numbers, found a string 'a'"),
    ({"input": [1, None], "ops": ["abs"]}, "input", "must be numbers, not null"),
    ({"input": [[1, 2], [3]], "ops": ["abs"]}, "input", "rectangular"),
    ({"input": [{"a": 1}], "ops": ["abs"]}, "input", "found an object"),
    ({"input": [2**70], "ops": ["abs"]}, "input", "64 bits"),
    ({"input": None, "ops": ["abs"]}, "input", "not null"),
    ({"input": {"a": 1}, "ops": ["abs"]}, "input", "must be numbers, got an object"),
    ({"input": np.array([1j]), "ops": ["abs"]}, "input", "real numbers, got an ndarray of dtype complex128"),
    ({"input": nest(1, 33), "ops": []}, "input",
     "deeper than 32"),
    ({"input": nest("a", 33), "ops": []}, "input",
     "deeper than 32"),
])
def test_transform_errors_name_the_field(data, field, phrase):
    error = element_error(transform, data)
    assert error.field == field
    assert phrase in error.message


# ============================================================================ df:reduce

VALUES = [3.0, -1.5, 4.25, 10.0, 0.5, 2.0]


def _reduce_before(data):
    """df:reduce as handlers/numeric.py had it before the standard element replaced it: the
    values as one float64 array, reduced whole. The element must answer the same JSON."""
    ops = {"sum": np.sum, "mean": np.mean, "min": np.min, "max": np.max, "std": np.std, "prod": np.prod}
    return ops[data.get("op", "sum")](np.asarray(data["values"], dtype=np.float64))


@pytest.mark.parametrize("op", ["sum", "mean", "min", "max", "std", "prod"])
@pytest.mark.parametrize("values", [VALUES, [[1, 2], [3, 4]], [7], np.arange(6.0)])
def test_reduce_agrees_with_the_bundled_reduce_it_replaced(op, values):
    data = {"values": values, "op": op}
    got = reduce(data)
    assert got == _reduce_before(data)
    assert orjson.dumps(got, option=orjson.OPT_SERIALIZE_NUMPY) == \
        orjson.dumps(_reduce_before(data), option=orjson.OPT_SERIALIZE_NUMPY)


def test_reduce_defaults_to_sum_and_keeps_float64_results():
    assert reduce({"values": [1, 2, 3]}) == 6.0
    assert orjson.dumps(reduce({"values": [1, 2, 3]}), option=orjson.OPT_SERIALIZE_NUMPY) == b"6.0"


AXES = st.one_of(st.none(), st.integers(-3, 2), st.lists(st.integers(-3, 2), min_size=1, max_size=3))
REFERENCE = {"sum": np.sum, "mean": np.mean, "min": np.min, "max": np.max, "std": np.std, "prod": np.prod,
             "median": np.median, "var": np.var, "any": np.any, "all": np.all}


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4),
                  elements=st.floats(-100, 100)),
       st.lists(st.sampled_from(sorted(REFERENCE)), min_size=1, max_size=4, unique=True), AXES)
def test_multi_op_reduce_with_axis_matches_numpy(x, ops, axis):
    data = {"values": x.tolist(), "op": ops, "axis": axis}
    axes = None if axis is None else [axis] if isinstance(axis, int) else axis
    if axes is not None and (any(not -x.ndim <= a < x.ndim for a in axes) or
                             len({a % x.ndim for a in axes}) != len(axes)):
        assert element_error(reduce, data).field.startswith("axis")
        return
    got = reduce(data)
    assert list(got) == ops
    for op in ops:
        expected = REFERENCE[op](x, axis=None if axes is None else tuple(axes))
        assert np.shape(got[op]) == np.shape(expected)
        np.testing.assert_allclose(got[op], expected, rtol=1e-12, atol=1e-12)


def test_count_argmin_argmax():
    x = [[5, 1, 9], [0, 8, 2]]
    assert reduce({"values": x, "op": "count"}) == 6
    assert reduce({"values": x, "op": "count", "axis": 0}) == 2
    assert reduce({"values": x, "op": "argmin"}) == 3  # a flat index, as numpy gives
    assert reduce({"values": x, "op": "argmax", "axis": 1}).tolist() == [2, 1]
    assert reduce({"values": x, "op": "argmin", "axis": [0]}).tolist() == [1, 0, 1]
    both = reduce({"values": x, "op": ["argmin", "argmax", "count"], "axis": -1})
    assert {k: np.asarray(v).tolist() for k, v in both.items()} == {"argmin": [1, 0], "argmax": [2, 1], "count": 3}


def test_reduce_of_no_values():
    assert reduce({"values": [], "op": ["sum", "prod", "count", "any", "all"]}) == \
        {"sum": 0.0, "prod": 1.0, "count": 0, "any": False, "all": True}
    for op in ("mean", "min", "max", "std", "median", "var", "argmin", "argmax"):
        error = element_error(reduce, {"values": [], "op": op})
        assert (error.field, error.message) == ("values", f"cannot take {op} of no values")
    empty_rows = np.zeros((0, 3))
    assert reduce({"values": empty_rows, "op": "min", "axis": 1}).shape == (0,)  # no cells to fill: fine
    assert element_error(reduce, {"values": empty_rows, "op": "min", "axis": 0}).field == "values"
    assert reduce({"values": empty_rows, "op": "sum", "axis": 0}).tolist() == [0.0, 0.0, 0.0]


def test_reduce_results_are_numbers_not_zero_d_arrays():
    for op in REFERENCE:
        for axis in (None, [0, 1]):
            value = reduce({"values": [[1, 2], [3, 4]], "op": op, "axis": axis})
            assert not isinstance(value, np.ndarray), (op, axis)


def test_nan_in_an_ndarray_is_a_value():
    assert np.isnan(reduce({"values": np.array([1.0, np.nan]), "op": "sum"}))


@pytest.mark.parametrize("data, field, phrase", [
    ([1, 2], "data", 'expected {"values": [...], "op": "sum", "axis": null}'),
    ({"op": "sum"}, "values", "required"),
    ({"values": [1], "ops": "sum"}, "ops", "unknown field; expected values, op, axis"),
    ({"values": [1], "op": "avg"}, "op", "unknown op 'avg'; expected one of sum, mean, min, max, std, prod"),
    ({"values": [1], "op": None}, "op", "expected an op name or a non-empty list of them, got null"),
    ({"values": [1], "op": []}, "op", "got an empty list"),
    ({"values": [1], "op": ["sum", "avg"]}, "op[1]", "unknown op 'avg'"),
    ({"values": [1], "op": ["sum", 3]}, "op[1]", "unknown op the number 3"),
    ({"values": [1], "op": ["sum", "mean", "sum"]}, "op[2]", "'sum' is given twice"),
    ({"values": [1, None]}, "values", "must be numbers, not null"),
    ({"values": None}, "values", "must be numbers, not null"),
    ({"values": ["1", "2"]}, "values", "must be numbers, found a string '1'"),
    ({"values": [[1, 2], [3]]}, "values", "rectangular"),
    ({"values": "abc"}, "values", "must be numbers, got a string 'abc'"),
    ({"values": np.array(["a"])}, "values", "real numbers, got an ndarray of dtype <U1"),
    ({"values": [[1]], "axis": 2}, "axis", "axis 2 is out of range for 2-d values"),
    ({"values": [1], "axis": True}, "axis", "must be an integer axis, a list of them or null"),
    ({"values": [1], "axis": 0.0}, "axis", "must be an integer axis"),
    ({"values": [[1]], "axis": []}, "axis", "empty list; give null"),
    ({"values": [[1]], "axis": [0, "1"]}, "axis[1]", "must be an integer axis"),
    ({"values": [[1]], "axis": [0, -2]}, "axis[1]", "axis -2 is repeated"),
    ({"values": [[1]], "axis": [0, 5]}, "axis[1]", "out of range"),
    ({"values": 5, "axis": 0}, "axis", "out of range for 0-d values"),
    ({"values": [[1]], "op": ["sum", "argmax"], "axis": [0, 1]}, "axis", "argmax takes one axis, got 2"),
])
def test_reduce_errors_name_the_field(data, field, phrase):
    error = element_error(reduce, data)
    assert error.field == field
    assert phrase in error.message


# ============================================================================ registration and the worker

def test_handlers_and_register_into():
    assert D.HANDLERS == {"df:produce": produce, "df:transform": transform, "df:reduce": reduce}
    registry = Registry()
    D.register_into(registry)
    assert registry.keys() == ["df:produce", "df:reduce", "df:transform"]
    assert registry.get("df:reduce").fn is reduce and not registry.get("df:reduce").wants_ctx


def test_importing_the_elements_registers_nothing():
    """Where the elements are registered is the node's decision: importing registers nothing."""
    code = ("from pfnode.registry import default_registry as r; before = r.keys(); "
            "import pfnode.elements.worker.data, pfnode.elements.predicates; "
            "assert r.keys() == before, r.keys()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def run(registry, key, data, metadata=None):
    task = pipe.Task(1, key, orjson.dumps(data), "p1", 5, metadata, time.monotonic() + 60, None, None)
    answer = worker.run_task(registry, task)
    assert type(answer) is pipe.Done, answer
    return orjson.loads(answer.body)


@pytest.fixture
def registry():
    registry = Registry()
    D.register_into(registry)
    return registry


def test_the_spec_example_through_the_worker(registry):
    assert run(registry, "df:transform", "hello world") == "HELLO WORLD"


def test_results_encode_as_json_through_the_worker(registry):
    assert run(registry, "df:produce", {"range": [3]}) == [0, 1, 2]
    assert run(registry, "df:produce", {"random": {"dist": "normal", "shape": [], "seed": 1}}) == \
        np.random.default_rng(1).normal(0, 1, ())
    assert run(registry, "df:transform", {"input": [[1, -2]], "ops": ["abs", {"op": "astype", "dtype": "uint8"}]}) \
        == [[1, 2]]
    assert run(registry, "df:transform", {"input": 9, "ops": ["sqrt"]}) == 3.0
    assert run(registry, "df:reduce", {"values": [[1, 2], [3, 4]], "op": ["sum", "count", "any", "argmax"],
                                       "axis": 0}) == {"sum": [4.0, 6.0], "count": 2, "any": [True, True],
                                                       "argmax": [1, 1]}


def test_ndarray_payloads_through_the_worker(registry):
    opt_in = {"ndarray": True}
    body = run(registry, "df:produce", {"linspace": [0, 1, 5]}, opt_in)
    np.testing.assert_array_equal(pfnode.ndarray.decode_tree(body), np.linspace(0, 1, 5))
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    body = run(registry, "df:transform", {"input": pfnode.ndarray.encode_array(x), "ops": ["cumsum"]}, opt_in)
    np.testing.assert_array_equal(pfnode.ndarray.decode_tree(body), np.cumsum(x, axis=-1))
    body = run(registry, "df:reduce", {"values": pfnode.ndarray.encode_array(x), "op": ["mean", "max"], "axis": 1},
               opt_in)
    decoded = pfnode.ndarray.decode_tree(body)
    np.testing.assert_array_equal(decoded["mean"], [1.0, 4.0])
    np.testing.assert_array_equal(decoded["max"], [2.0, 5.0])


def test_an_element_error_reaches_the_worker_with_its_field(registry):
    """Until the node maps ElementError to PF002, it is a handler failure whose message names
    the field; this pins the text the mapping will carry."""
    task = pipe.Task(1, "df:transform", orjson.dumps({"input": [1], "ops": ["abs", "abs", {"op": "sqr"}]}),
                     "p1", 5, None, time.monotonic() + 60, None, None)
    answer = worker.run_task(registry, task)
    assert type(answer) is pipe.Failed
    assert answer.message.endswith("ops[2].op: unknown op 'sqr'; expected one of scale, shift, abs, sqrt, log, "
                                   "exp, clip, normalize, cumsum, diff, sort, astype, upper, lower, strip")
