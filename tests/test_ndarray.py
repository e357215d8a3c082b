"""numpy payloads: the `$ndarray` encoding (pfnode/ndarray.py), the worker's opt-in
(run_task), the numeric handlers with ndarray inputs, and end to end through a real node."""
from __future__ import annotations

import base64

import numpy as np
import orjson
import pytest

import pfnode.handlers.numeric as numeric
from pfnode.elements.worker import data as data_elements
from pfnode import ndarray as nd
from pfnode.client import Reactor
from pfnode.errors import PayloadError, PFNodeError
from pfnode.registry import Registry
from tests.test_handlers import FAILED, OK, run_task, task
from tests.e2e_util import new_id, run


def wire(value):
    """Through real JSON text, as a peer would see it."""
    return orjson.loads(orjson.dumps(value))


_SIXTEEN_ZERO_BYTES = base64.b64encode(bytes(16)).decode()


def tagged(dtype="<f8", shape=(2,), b64=_SIXTEEN_ZERO_BYTES, **extra):
    body = {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape, "b64": b64}
    body.update(extra)
    return {"$ndarray": body}


# ============================================================================ one array

ROUND_TRIPS = {
    "f8-2x3": np.arange(6, dtype=np.float64).reshape(2, 3) / 7,
    "f4-3d": np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32),
    "f2": np.array([0.5, -2.0, 65504.0], dtype=np.float16),
    "i1": np.array([-128, 0, 127], dtype=np.int8),
    "u1": np.arange(256, dtype=np.uint8),
    "u2": np.array([0, 65535], dtype=np.uint16),
    "i8-extremes": np.array([np.iinfo(np.int64).min, -1, np.iinfo(np.int64).max]),
    "bool-2x2": np.array([[True, False], [False, True]]),
    "c16": np.array([1 + 2j, -3.5j, 0]),
    "c8": np.array([[1 - 1j]], dtype=np.complex64),
    "0-d": np.array(3.25),
    "0-d-int": np.array(7, dtype=np.int32),
    "empty": np.zeros(0),
    "empty-3d": np.zeros((3, 0, 2), dtype=np.int16),
    "big-endian-f8": np.arange(5, dtype=">f8"),
    "big-endian-i4-2d": np.arange(6, dtype=">i4").reshape(3, 2),
    "specials": np.array([np.nan, np.inf, -np.inf, -0.0, 5e-324]),
}


@pytest.mark.parametrize("name", list(ROUND_TRIPS))
def test_round_trip_through_json(name):
    x = ROUND_TRIPS[name]
    obj = wire(nd.encode_array(x))
    body = obj["$ndarray"]
    assert set(obj) == {"$ndarray"} and set(body) == {"dtype", "shape", "b64"}
    assert body["dtype"] == x.dtype.str
    assert body["shape"] == list(x.shape)
    assert base64.b64decode(body["b64"]) == x.tobytes()
    y = nd.decode_array(obj)
    assert type(y) is np.ndarray
    assert y.dtype == x.dtype and y.dtype.str == x.dtype.str  # byte order kept
    assert y.shape == x.shape
    np.testing.assert_array_equal(y, x)
    assert y.flags.c_contiguous and y.flags.writeable


def test_decoded_arrays_are_writable_and_own_their_memory():
    y = nd.decode_array(wire(nd.encode_array(np.arange(4.0))))
    y += 1  # in place: no "assignment destination is read-only"
    assert y.tolist() == [1.0, 2.0, 3.0, 4.0]
    owner = y
    while isinstance(owner, np.ndarray):
        owner = owner.base
    if isinstance(owner, memoryview):
        owner = owner.obj
    assert isinstance(owner, bytearray)  # not the decoded bytes, not the JSON text


def test_big_endian_input_is_explicit_on_the_wire_and_native_arrays_name_their_order():
    assert nd.encode_array(np.arange(3, dtype=">f8"))["$ndarray"]["dtype"] == ">f8"
    assert nd.encode_array(np.arange(3, dtype=">i2"))["$ndarray"]["dtype"] == ">i2"
    native = nd.encode_array(np.arange(3, dtype="=f8"))["$ndarray"]["dtype"]
    assert native in ("<f8", ">f8")  # never "=f8"
    assert nd.encode_array(np.zeros(2, dtype=bool))["$ndarray"]["dtype"] == "|b1"
    assert nd.encode_array(np.zeros(2, dtype=np.uint8))["$ndarray"]["dtype"] == "|u1"
    y = nd.decode_array(nd.encode_array(np.array([1.5, 2.5], dtype=">f8")))
    assert y.dtype.str == ">f8" and y.tolist() == [1.5, 2.5]


def test_non_contiguous_inputs_travel_in_c_order():
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    for view in (base.T, base[::2, 1::2], np.asfortranarray(base), base[:, 3]):
        obj = nd.encode_array(view)
        assert base64.b64decode(obj["$ndarray"]["b64"]) == np.ascontiguousarray(view).tobytes()
        np.testing.assert_array_equal(nd.decode_array(obj), view)


def test_zero_d_and_empty_shapes_on_the_wire():
    assert nd.encode_array(np.array(1.0))["$ndarray"]["shape"] == []
    assert nd.decode_array(nd.encode_array(np.array(1.0))).shape == ()
    empty = nd.encode_array(np.zeros((0, 4)))
    assert empty["$ndarray"] == {"dtype": "<f8" if np.little_endian else ">f8", "shape": [0, 4], "b64": ""}
    assert nd.decode_array(empty).shape == (0, 4)


def test_encode_array_takes_array_likes():
    obj = nd.encode_array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(nd.decode_array(obj), [[1, 2], [3, 4]])


@pytest.mark.parametrize("x", [np.array([object()]), np.array(["ab", "c"]), np.array([b"x"]),
                               np.array(["2024-01-01"], dtype="datetime64[D]"),
                               np.array([1], dtype="timedelta64[s]"), np.zeros(2, dtype="V4"),
                               np.zeros(2, dtype=[("a", "<f8"), ("b", "<i4")])],
                         ids=["object", "unicode", "bytes", "datetime", "timedelta", "void", "struct"])
def test_encode_array_refuses_non_numeric_dtypes(x):
    with pytest.raises(PayloadError) as info:
        nd.encode_array(x)
    assert "only bool and numeric dtypes" in str(info.value)


def test_payload_error_is_a_pfnode_error_and_a_value_error():
    assert issubclass(PayloadError, PFNodeError) and issubclass(PayloadError, ValueError)
    import pfnode
    assert pfnode.PayloadError is PayloadError


REFUSALS = [
    # dtype
    (tagged(dtype="|O"), "dtype '|O' is not allowed"),
    (tagged(dtype="<U3"), "dtype '<U3' is not allowed"),
    (tagged(dtype="|S4"), "dtype '|S4' is not allowed"),
    (tagged(dtype="|V8"), "dtype '|V8' is not allowed"),
    (tagged(dtype="<M8[ns]"), "dtype '<M8[ns]' is not allowed"),
    (tagged(dtype="float64"), "dtype 'float64' is not allowed"),
    (tagged(dtype="f8"), "dtype 'f8' is not allowed"),
    (tagged(dtype="=f8"), "dtype '=f8' is not allowed"),
    (tagged(dtype="<f8,<i4"), "is not allowed"),
    (tagged(dtype="<f3"), "unknown dtype '<f3'"),
    (tagged(dtype="<u16"), "unknown dtype '<u16'"),
    (tagged(dtype="<b2"), "unknown dtype '<b2'"),
    (tagged(dtype="|f8"), "needs an explicit byte order"),
    (tagged(dtype=8), "dtype must be a string"),
    (tagged(dtype=None), "dtype must be a string"),
    # shape
    (tagged(shape=[-1]), "shape must be a list of at most 64 non-negative integers"),
    (tagged(shape=[2, -2]), "non-negative integers"),
    (tagged(shape=[2.0]), "non-negative integers"),
    (tagged(shape=[True, 2]), "non-negative integers"),
    (tagged(shape="2"), "non-negative integers"),
    (tagged(shape=2), "non-negative integers"),
    (tagged(shape=None), "non-negative integers"),
    (tagged(shape=[1] * 65), "at most 64"),
    # base64 and size
    (tagged(b64="AAA"), "b64 is not valid base64"),
    (tagged(b64="AAAA AAAA AAAA AAAA AAAA"), "b64 is not valid base64"),
    (tagged(b64="AAAAAAAAAAAAAAAAAAAAAA==\n"), "b64 is not valid base64"),
    (tagged(b64="AAAAAAAAAAA=é"), "b64 is not valid base64"),
    (tagged(b64="!!!!"), "b64 is not valid base64"),
    (tagged(b64=["AAAA"]), "b64 must be a string"),
    (tagged(b64=None), "b64 must be a string"),
    (tagged(shape=[3]), "b64 holds 16 bytes; shape [3] of dtype '<f8' needs 24"),
    (tagged(shape=[1]), "b64 holds 16 bytes; shape [1] of dtype '<f8' needs 8"),
    (tagged(shape=[]), "needs 8"),
    (tagged(shape=[0]), "needs 0"),
    (tagged(dtype="<i4", shape=[2, 3]), "needs 24"),
    # structure
    ({"$ndarray": {"dtype": "<f8", "shape": [2]}}, "missing 'b64'"),
    ({"$ndarray": {}}, "missing 'b64', 'dtype', 'shape'"),
    (tagged(order="F"), "unknown 'order'"),
    ({**tagged(), "extra": 1}, "must have no other keys, got 'extra'"),
    ({"$ndarray": [1, 2]}, "$ndarray must be an object"),
    ({"$ndarray": None}, "$ndarray must be an object"),
    ({"$ndarray": "AAAA"}, "$ndarray must be an object"),
    ([1, 2], "expected a {'$ndarray'"),
    (None, "expected a {'$ndarray'"),
    ("AAAA", "expected a {'$ndarray'"),
    ({"dtype": "<f8", "shape": [2], "b64": "AAAA"}, "expected a {'$ndarray'"),
]


@pytest.mark.parametrize("obj,phrase", REFUSALS, ids=[f"{i}-{p[:24]}" for i, (_, p) in enumerate(REFUSALS)])
def test_decode_array_refuses_malformed_objects(obj, phrase):
    with pytest.raises(PayloadError) as info:
        nd.decode_array(obj)
    assert phrase in str(info.value)


def test_decode_array_accepts_either_order_mark_for_one_byte_types():
    for mark in "<>|":
        y = nd.decode_array(tagged(dtype=f"{mark}u1", shape=[4], b64="AQIDBA=="))
        assert y.dtype == np.uint8 and y.tolist() == [1, 2, 3, 4]


# ============================================================================ trees

def test_decode_tree_replaces_tagged_objects_anywhere_and_keeps_the_rest():
    a, b, c = np.arange(3.0), np.eye(2, dtype=np.int32), np.array([True])
    data = wire({"signal": nd.encode_array(a), "meta": {"name": "x", "n": 3, "deep": [1, [nd.encode_array(b)]]},
                 "list": [nd.encode_array(c), "s", None, 1.5]})
    out = nd.decode_tree(data)
    np.testing.assert_array_equal(out["signal"], a)
    np.testing.assert_array_equal(out["meta"]["deep"][1][0], b)
    np.testing.assert_array_equal(out["list"][0], c)
    assert out["meta"]["name"] == "x" and out["list"][1:] == ["s", None, 1.5]
    # the input is untouched
    assert isinstance(data["signal"], dict) and isinstance(data["meta"]["deep"][1][0], dict)


def test_decode_tree_shares_what_holds_no_array():
    untouched = {"k": [1, 2, {"x": "y"}]}
    data = {"plain": untouched, "arr": nd.encode_array(np.zeros(1))}
    out = nd.decode_tree(data)
    assert out["plain"] is untouched
    no_arrays = {"a": [1, 2], "b": {"c": None}}
    assert nd.decode_tree(no_arrays) is no_arrays


@pytest.mark.parametrize("value", [None, 1, 2.5, "text", True, b"raw"])
def test_decode_tree_fast_path_for_scalars(value):
    assert nd.decode_tree(value) is value


def test_decode_tree_top_level_tagged_object():
    out = nd.decode_tree(nd.encode_array(np.arange(4, dtype=np.int64).reshape(2, 2)))
    assert out.tolist() == [[0, 1], [2, 3]]


def test_decode_tree_error_names_where_and_leaves_the_input_alone():
    good = nd.encode_array(np.arange(2.0))
    data = {"a": [good, {"b": tagged(dtype="|O")}], "z": good}
    with pytest.raises(PayloadError) as info:
        nd.decode_tree(data)
    message = str(info.value)
    assert message.startswith("invalid ndarray at data['a'][1]['b']: dtype '|O' is not allowed")
    assert data["a"][0] is good and data["z"] is good
    with pytest.raises(PayloadError, match=r"^invalid ndarray at data: shape"):
        nd.decode_tree(tagged(shape=[-1]))
    with pytest.raises(PayloadError, match=r"^invalid ndarray at data\[2\]: b64"):
        nd.decode_tree([1, 2, tagged(b64="@@@@")])


def test_decode_tree_too_deep_is_a_payload_error():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(PayloadError, match="nested too deeply"):
        nd.decode_tree(deep)


def test_encode_tree_walks_dicts_lists_tuples_and_keeps_scalars():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    value = {"a": a, "pair": (np.int64(3), np.array([1, 2])), "nested": [{"m": np.eye(2)}],
             "scalar": np.float64(2.5), "b": np.bool_(True), "s": "x"}
    out = nd.encode_tree(value)
    assert out["a"] == nd.encode_array(a)
    assert out["pair"][0] is value["pair"][0]  # numpy scalars stay scalars
    assert out["pair"][1] == nd.encode_array(np.array([1, 2]))
    assert out["nested"][0]["m"]["$ndarray"]["shape"] == [2, 2]
    assert out["scalar"] is value["scalar"] and out["b"] is value["b"]
    assert isinstance(value["a"], np.ndarray)  # the input is untouched
    text = orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)
    back = nd.decode_tree(orjson.loads(text))
    np.testing.assert_array_equal(back["a"], a)
    assert back["scalar"] == 2.5 and back["b"] is True and back["pair"][0] == 3
    np.testing.assert_array_equal(back["nested"][0]["m"], np.eye(2))


def test_encode_tree_top_level_and_fast_paths():
    assert nd.encode_tree(np.arange(2))["$ndarray"]["shape"] == [2]
    for value in (None, 1, "s", np.float64(1.5), np.int8(3)):
        assert nd.encode_tree(value) is value
    plain = {"a": [1, (2, 3)], "b": {"c": "d"}}
    assert nd.encode_tree(plain) is plain


def test_encode_tree_refuses_object_arrays_anywhere():
    with pytest.raises(PayloadError, match="only bool and numeric"):
        nd.encode_tree({"ok": np.zeros(2), "bad": [np.array([None, 1], dtype=object)]})


def test_opted_in_needs_exactly_true():
    assert nd.OPT_IN_KEY == "ndarray"
    assert nd.opted_in({"ndarray": True})
    for metadata in (None, {}, {"ndarray": 1}, {"ndarray": "true"}, {"ndarray": False}, ["ndarray"]):
        assert not nd.opted_in(metadata)


# ============================================================================ the worker's opt-in

def _task(key, data, metadata=None):
    return task(key, data, packet_id="pid-nd", metadata=metadata)


def _seen_registry():
    reg = Registry()
    seen = []

    def probe(data):
        seen.append(data)
        return {"got": data, "double": np.asarray(data["x"]) * 2} if isinstance(data, dict) and "x" in data else data

    reg.register("df", "probe", probe)
    return reg, seen


def test_run_task_decodes_before_and_encodes_after_the_handler_under_the_opt_in():
    reg, seen = _seen_registry()
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    task_no, status, body, _ = run_task(reg, _task("df:probe", wire({"x": nd.encode_array(x)}), {"ndarray": True}))
    assert (task_no, status) == (1, OK)
    assert isinstance(seen[0]["x"], np.ndarray) and seen[0]["x"].dtype == np.float64
    result = orjson.loads(body)
    assert set(result["double"]) == {"$ndarray"}
    np.testing.assert_array_equal(nd.decode_tree(result)["double"], x * 2)
    np.testing.assert_array_equal(nd.decode_tree(result)["got"]["x"], x)


def test_run_task_without_the_opt_in_changes_nothing():
    reg, seen = _seen_registry()
    obj = wire(nd.encode_array(np.arange(2.0)))
    for metadata in (None, {}, {"ndarray": 1}, {"ndarray": "true"}):
        seen.clear()
        _, status, body, _ = run_task(reg, _task("df:probe", {"t": obj}, metadata))
        assert status == OK and seen[0] == {"t": obj}  # a plain dict
        assert orjson.loads(body) == {"t": obj}
    # an ndarray result is a JSON list, as before
    reg.register("df", "arr", lambda data: np.arange(3.0))
    _, status, body, _ = run_task(reg, _task("df:arr", None))
    assert status == OK and orjson.loads(body) == [0.0, 1.0, 2.0]


def test_run_task_malformed_tagged_object_is_pf002_and_the_handler_never_runs():
    reg, seen = _seen_registry()
    data = {"ok": nd.encode_array(np.zeros(2)), "bad": [tagged(shape=[3])]}
    task_no, status, (code, message), duration = run_task(reg, _task("df:probe", data, {"ndarray": True}))
    assert (task_no, status, code) == (1, FAILED, "PF002")
    assert message == "invalid ndarray at data['bad'][0]: b64 holds 16 bytes; shape [3] of dtype '<f8' needs 24"
    assert seen == [] and duration >= 0


def test_run_task_unencodable_array_result_is_pf500():
    reg = Registry()
    reg.register("df", "strings", lambda data: {"names": np.array(["a", "b"])})
    _, status, (code, message), _ = run_task(reg, _task("df:strings", None, {"ndarray": True}))
    assert (status, code) == (FAILED, "PF500")
    assert message.startswith("df:strings returned a value that cannot be encoded as ndarrays: "
                              "cannot encode an array of dtype '<U1'")


def test_run_task_a_handlers_own_payload_error_is_still_pf500():
    reg = Registry()

    def decodes_itself(data):
        return nd.decode_array(data)  # a plain dict without the opt-in: refused by the handler

    reg.register("df", "self", decodes_itself)
    _, status, (code, message), _ = run_task(reg, _task("df:self", {"$ndarray": None}))
    assert (status, code) == (FAILED, "PF500")
    assert message.startswith("PayloadError: $ndarray must be an object")


# ============================================================================ numeric handlers

def test_float64_ndarray_inputs_are_not_copied():
    x = np.random.default_rng(2).standard_normal(100)
    assert numeric._as_array(x, "x", ndim=1) is x
    readonly = np.frombuffer(x.tobytes(), dtype=np.float64)  # read-only arrays are fine too
    assert numeric._as_array(readonly, "x") is readonly


def test_numeric_handlers_take_ndarrays():
    rng = np.random.default_rng(3)
    signal = rng.standard_normal(256)
    np.testing.assert_allclose(numeric.fft_magnitude({"signal": signal}), np.abs(np.fft.rfft(signal)))
    np.testing.assert_allclose(numeric.fft_magnitude(signal), np.abs(np.fft.rfft(signal)))
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((5, 3))
    np.testing.assert_allclose(numeric.matmul({"a": a, "b": b}), a @ b)
    np.testing.assert_allclose(numeric.matmul({"a": a.astype(">f8"), "b": b.astype(np.float32)}),
                               a @ b.astype(np.float32).astype(np.float64))
    # df:reduce, the standard element, takes them too
    assert float(data_elements.reduce({"values": np.arange(1, 5, dtype=np.int32), "op": "prod"})) == 24.0
    assert float(data_elements.reduce({"values": np.array([True, True, False])})) == 2.0
    # NaN in an ndarray is a value, not a null
    assert np.isnan(data_elements.reduce({"values": np.array([1.0, np.nan]), "op": "sum"}))


@pytest.mark.parametrize("call,phrase", [
    (lambda: numeric.fft_magnitude({"signal": np.array([1 + 1j, 2])}), "signal must be real numbers"),
    (lambda: numeric.fft_magnitude(np.zeros((2, 2))), "1 dimension(s)"),
    (lambda: numeric.matmul({"a": np.zeros(3), "b": np.zeros((3, 1))}), "2 dimension(s)"),
    (lambda: numeric.matmul({"a": np.zeros((2, 3)), "b": np.zeros((2, 3))}), "cannot be multiplied"),
    (lambda: data_elements.reduce({"values": np.array(["x"])}), "values: must be real numbers"),
])
def test_numeric_handlers_refuse_bad_ndarrays(call, phrase):
    with pytest.raises(ValueError) as info:
        call()
    assert phrase in str(info.value)


# ============================================================================ end to end

@pytest.mark.timeout(60)
def test_end_to_end_through_a_node(node):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(1000)
    a, b = rng.standard_normal((64, 64)), rng.standard_normal((64, 64))

    async def go():
        async with Reactor(node.endpoint) as reactor:
            # by hand: encode_array + the metadata flag, decode_tree on the result
            result = await reactor.submit("df", "fft", {"signal": nd.encode_array(x)},
                                          metadata={"ndarray": True}, packet_id=new_id("nd-fft"))
            assert result.ok, result
            assert set(result.data) == {"$ndarray"}
            assert result.data["$ndarray"]["dtype"] == "<f8" and result.data["$ndarray"]["shape"] == [501]
            got = nd.decode_tree(result.data)
            assert isinstance(got, np.ndarray)
            np.testing.assert_array_equal(got, np.abs(np.fft.rfft(x)))

            # the convenience keyword; other metadata is kept
            result = await reactor.submit("df", "matmul", {"a": a, "b": b}, ndarray=True,
                                          metadata={"trace": "t-1"})
            assert result.ok, result
            assert isinstance(result.data, np.ndarray) and result.data.shape == (64, 64)
            np.testing.assert_array_equal(result.data, a @ b)

            # numpy scalars stay JSON numbers under the opt-in
            result = await reactor.submit("df", "reduce", {"values": x, "op": "sum"}, ndarray=True)
            assert result.ok and isinstance(result.data, float)
            assert result.data == pytest.approx(float(np.sum(x)))

            # the same packets without the opt-in: JSON lists, as before
            result = await reactor.submit("df", "fft", {"signal": x.tolist()})
            assert result.ok and isinstance(result.data, list)
            np.testing.assert_allclose(result.data, np.abs(np.fft.rfft(x)))
            result = await reactor.submit("df", "matmul", {"a": a, "b": b})  # arrays sent as lists
            assert result.ok and isinstance(result.data, list)
            np.testing.assert_allclose(result.data, a @ b)

            # without the opt-in a tagged object is a plain dict to the handler
            obj = nd.encode_array(np.arange(3))
            result = await reactor.submit("df", "noop", {"t": obj})
            assert result.ok and result.data == {"t": obj}

            # a malformed tagged object under the opt-in: PF002, as a result
            bad = {"signal": tagged(dtype="|O", shape=[2])}
            result = await reactor.submit("df", "fft", bad, metadata={"ndarray": True})
            assert not result.ok and result.error_code == "PF002"
            assert result.error["message"].startswith("invalid ndarray at data['signal']: dtype '|O'")
            result = await reactor.submit("df", "fft", {"signal": tagged(shape=[5])}, ndarray=True)
            assert result.error_code == "PF002" and "needs 40" in result.error["message"]
    run(go())
