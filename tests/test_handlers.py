"""Tests of the bundled handlers (handlers/examples.py, handlers/numeric.py) and of the
worker's in-process piece, pfnode.worker.run_task (the pipe's framing: tests/test_pipe.py)."""
from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

import pfnode.handlers.examples as examples
import pfnode.handlers.numeric as numeric
from pfnode.pool import pipe, worker
from pfnode.errors import ConfigError
from pfnode.registry import STANDARD_HANDLERS, Registry, default_registry, load_handler_modules, register_standard
from pfnode.settings import DEFAULT_HANDLER_MODULES
from pfnode.pool.supervisor import STANDARD_MODULE


# ============================================================================ the spec's examples

def test_quick_start_uppercase():
    assert examples.uppercase("text") == "TEXT"


@pytest.mark.parametrize("bad", [None, 5, ["a"], {"s": "x"}])
def test_uppercase_refuses_non_strings(bad):
    with pytest.raises(TypeError) as info:
        examples.uppercase(bad)
    assert "string" in str(info.value)


def test_interop_example_process_data():
    items = [1, 2, 3, 4, 5]
    assert examples.process_data({"items": items}) == sum(2 * x for x in items) == 30


def test_process_data_empty_and_floats():
    assert examples.process_data({"items": []}) == 0
    assert examples.process_data({"items": [0.5, 1.5]}) == pytest.approx(4.0)


@pytest.mark.parametrize("bad", [None, [1, 2], {"items": 5}, {"things": [1]}, "items"])
def test_process_data_refuses_bad_shapes(bad):
    with pytest.raises(TypeError) as info:
        examples.process_data(bad)
    assert "items" in str(info.value)


def test_validate_null_is_invalid():
    assert examples.validate(None) == {"valid": False}


@pytest.mark.parametrize("value", [{"a": 1}, "x", 1, [1], True, 0, "", False, []])
def test_validate_any_value_is_valid(value):
    """The Elixir quick-start rule (`not is_nil(data)`): only null is invalid."""
    assert examples.validate(value) == {"valid": True}


@pytest.mark.parametrize("value", [None, 0, "s", [1, {"a": None}], {"k": [1.5]}])
def test_noop_returns_its_input(value):
    assert examples.noop(value) == value


def test_bundled_handlers_and_standard_elements_are_in_the_default_registry():
    load_handler_modules([STANDARD_MODULE, *DEFAULT_HANDLER_MODULES])
    keys = set(default_registry.keys())
    assert {"df:transform", "df:produce", "df:reduce", "df:uppercase", "df:process_data", "cf:validate",
            "df:noop", "df:matmul", "df:fft"} <= keys
    assert default_registry.get("df:uppercase").fn is examples.uppercase
    for key in STANDARD_HANDLERS:  # the spec's worker elements, replaceable by any handler
        spec = default_registry.get(key)
        assert spec.standard and spec.options()["standard"] is True
        assert spec.fn.__module__ == "pfnode.elements.worker.data"
    assert "standard" not in default_registry.get("df:noop").options()


def test_a_user_handler_replaces_a_standard_element_whichever_registers_first():
    def mine(data):
        return "mine"

    before = Registry()
    register_standard(before)
    before.register("df", "transform", mine)  # the spec's usage example does this
    after = Registry()
    after.register("df", "transform", mine)
    register_standard(after)
    for reg in (before, after):
        spec = reg.get("df:transform")
        assert spec.fn is mine and not spec.standard
        assert reg.get("df:reduce").standard
    with pytest.raises(ConfigError, match="already registered"):  # two user handlers still clash
        after.register("df", "transform", lambda data: data)


def test_standard_elements_run_from_the_registry():
    reg = Registry()
    register_standard(reg)
    assert reg.get("df:transform")("hello world", None) == "HELLO WORLD"  # the spec's usage example
    assert float(reg.get("df:reduce")({"values": [1, 2, 3.5]}, None)) == pytest.approx(6.5)


@pytest.mark.parametrize("data, field", [
    ({"op": "sum"}, "values"),
    ({"values": None}, "values"),
    ({"values": [1, None, 3]}, "values"),
], ids=["reduce-values-missing", "reduce-values-null", "reduce-null-element"])
def test_standard_reduce_refuses_null_values_as_pf002_naming_the_field(data, field):
    load_handler_modules([STANDARD_MODULE, *DEFAULT_HANDLER_MODULES])
    _, status, body, _ = run_task(default_registry, task("df:reduce", data))
    assert status == FAILED, f"df:reduce({data!r}) succeeded with {body!r}"
    code, message = body
    assert code == "PF002" and message.startswith(f"{field}: "), message


@pytest.mark.parametrize("key, data", [
    ("df:matmul", {"a": [[1, None]], "b": [[1], [2]]}),
    ("df:fft", [1.0, None, 2.0]),
], ids=["matmul-null-element", "fft-null-element"])
def test_numeric_handlers_refuse_null_values(key, data):
    _, status, body, _ = run_task(default_registry, task(key, data))
    assert status == FAILED, f"{key}({data!r}) succeeded with {body!r} instead of raising"
    code, message = body
    assert code == "PF500" and message.startswith("ValueError: ")


# ============================================================================ numeric: matmul

def test_matmul_matches_numpy():
    a = [[1, 2], [3, 4]]
    b = [[5, 6], [7, 8]]
    got = numeric.matmul({"a": a, "b": b})
    np.testing.assert_allclose(got, np.array(a) @ np.array(b))
    assert np.asarray(got).tolist() == [[19.0, 22.0], [43.0, 50.0]]


def test_matmul_rectangular_random():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(3, 5))
    b = rng.normal(size=(5, 2))
    got = numeric.matmul({"a": a.tolist(), "b": b.tolist()})
    assert np.shape(got) == (3, 2)
    np.testing.assert_allclose(got, a @ b, rtol=1e-12)
    as_json = orjson.loads(orjson.dumps(got, option=orjson.OPT_SERIALIZE_NUMPY))
    np.testing.assert_allclose(as_json, a @ b, rtol=1e-12)


@pytest.mark.parametrize("data, exc, phrase", [
    ([[1]], TypeError, "matmul"),
    ({"a": [[1, 2]], "b": [[1, 2]]}, ValueError, "cannot be multiplied"),
    ({"a": [1, 2], "b": [[1], [2]]}, ValueError, "dimension"),
    ({"a": [[1, 2]], "b": [[[1]], [[2]]]}, ValueError, "dimension"),
    ({"b": [[1]]}, ValueError, "dimension"),
    ({"a": [["x"]], "b": [[1]]}, ValueError, "must be numbers"),
])
def test_matmul_errors(data, exc, phrase):
    with pytest.raises(exc) as info:
        numeric.matmul(data)
    assert phrase in str(info.value)


# ============================================================================ numeric: fft

@pytest.mark.parametrize("as_dict", [False, True], ids=["list", "signal-dict"])
def test_fft_magnitude_matches_numpy(as_dict):
    t = np.arange(64)
    signal = (np.sin(2 * np.pi * 4 * t / 64) + 0.5 * np.cos(2 * np.pi * 10 * t / 64)).tolist()
    got = numeric.fft_magnitude({"signal": signal} if as_dict else signal)
    expected = np.abs(np.fft.rfft(np.array(signal)))
    assert np.shape(got) == (33,)
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert int(np.argmax(got)) == 4  # the dominant tone's bin
    assert np.asarray(got)[10] == pytest.approx(16.0)  # 0.5 * 64 / 2


def test_fft_of_a_constant_is_all_dc():
    got = np.asarray(numeric.fft_magnitude([2.0] * 8))
    assert got[0] == pytest.approx(16.0)
    np.testing.assert_allclose(got[1:], 0.0, atol=1e-12)


@pytest.mark.parametrize("data, phrase", [
    ([], "empty"),
    ({"signal": []}, "empty"),
    ([[1, 2], [3, 4]], "dimension"),
    ({"samples": [1, 2]}, "dimension"),
    (None, "dimension"),
    (["a", "b"], "must be numbers"),
])
def test_fft_errors(data, phrase):
    with pytest.raises(ValueError) as info:
        numeric.fft_magnitude(data)
    assert phrase in str(info.value)


# ============================================================================ worker.run_task

OK, FAILED = "ok", "failed"


def task(key, data, *, deadline_s=60.0, task_no=1, packet_id="pid-1", priority=5,
         metadata=None, dependencies=None, memory_limit_mb=None) -> pipe.Task:
    """A task as the front sends it: the data as JSON text."""
    return pipe.Task(task_no, key, orjson.dumps(data), packet_id, priority, metadata,
                     time.monotonic() + deadline_s, dependencies, memory_limit_mb)


def run_task(registry, t, cap=None) -> tuple:
    """worker.run_task's answer as (no, OK, body, ms) or (no, FAILED, (code, message), ms)."""
    answer = worker.run_task(registry, t, cap)
    if type(answer) is pipe.Done:
        return answer.no, OK, answer.body, answer.duration_ms
    assert type(answer) is pipe.Failed, answer
    return answer.no, FAILED, (answer.code, answer.message), answer.duration_ms


def test_run_task_success_returns_ok_and_json_bytes():
    reg = Registry()
    reg.register("df", "uppercase", examples.uppercase)
    task_no, status, body, duration = run_task(reg, task("df:uppercase", "hello world", task_no=7))
    assert (task_no, status) == (7, OK)
    assert isinstance(body, bytes)
    assert orjson.loads(body) == "HELLO WORLD"
    assert isinstance(duration, float) and duration >= 0


def test_run_task_with_the_default_registry_and_numpy_results():
    _, status, body, _ = run_task(default_registry,
                                  task("df:matmul", {"a": [[1, 2], [3, 4]], "b": [[5, 6], [7, 8]]}))
    assert status == OK
    assert orjson.loads(body) == [[19.0, 22.0], [43.0, 50.0]]
    load_handler_modules([STANDARD_MODULE, *DEFAULT_HANDLER_MODULES])
    _, status, body, _ = run_task(default_registry,
                                  task("df:reduce", {"values": [1, 2, 3], "op": "mean"}))
    assert status == OK
    assert orjson.loads(body) == 2.0
    _, status, body, _ = run_task(default_registry, task("df:process_data", {"items": [1, 2, 3, 4, 5]}))
    assert (status, orjson.loads(body)) == (OK, 30)
    _, status, body, _ = run_task(default_registry, task("cf:validate", None))
    assert (status, orjson.loads(body)) == (OK, {"valid": False})


def test_run_task_passes_a_context_to_two_arg_handlers():
    reg = Registry()
    seen = {}

    def with_ctx(data, ctx):
        seen["ctx"] = ctx
        return {"remaining_positive": ctx.remaining_ms() > 0}

    reg.register("cf", "ctx", with_ctx)
    t = task("cf:ctx", None, packet_id="pid-ctx", priority=9, metadata={"k": "v"})
    _, status, body, _ = run_task(reg, t)
    assert status == OK
    assert orjson.loads(body) == {"remaining_positive": True}
    ctx = seen["ctx"]
    assert (ctx.packet_id, ctx.group, ctx.element, ctx.priority, ctx.metadata) == (
        "pid-ctx", "cf", "ctx", 9, {"k": "v"})
    assert ctx.deadline == t.deadline
    assert ctx.dependencies == {}


def test_run_task_decodes_dependency_results_for_the_context():
    reg = Registry()
    seen = {}

    def with_deps(data, ctx):
        seen.update(ctx.dependencies)
        return sum(ctx.dependencies.values())

    reg.register("df", "deps", with_deps)
    _, status, body, _ = run_task(reg, task("df:deps", None, dependencies={"a": b"2", "b": b"40"}))
    assert status == OK and orjson.loads(body) == 42
    assert seen == {"a": 2, "b": 40}


def test_run_task_handler_raising_is_pf500_with_the_exception_text():
    reg = Registry()

    def boom(data):
        raise ValueError("bad input 42")

    reg.register("df", "boom", boom)
    task_no, status, (code, message), duration = run_task(reg, task("df:boom", 1, task_no=3))
    assert (task_no, status, code) == (3, FAILED, "PF500")
    assert message == "ValueError: bad input 42"
    assert duration >= 0


def test_run_task_handler_type_error_is_reported_as_raised():
    """orjson's encode error is a TypeError: a handler's own TypeError must not be
    mistaken for a serialisation failure."""
    reg = Registry()
    reg.register("df", "uppercase", examples.uppercase)
    _, status, (code, message), _ = run_task(reg, task("df:uppercase", 123))
    assert (status, code) == (FAILED, "PF500")
    assert message.startswith("TypeError: ")
    assert "expects a string" in message
    assert "JSON" not in message and "serialis" not in message


def test_run_task_element_error_is_pf002_naming_the_field():
    """Bad input, as an element names it (pfnode/elements/errors.py): PF002, not PF500."""
    from pfnode.elements.errors import ElementError

    reg = Registry()

    def picky(data):
        raise ElementError("ops[2].op", "unknown op 'sqr'")

    reg.register("df", "picky", picky)
    _, status, (code, message), _ = run_task(reg, task("df:picky", None))
    assert (status, code, message) == (FAILED, "PF002", "ops[2].op: unknown op 'sqr'")


@pytest.mark.parametrize("value", [object(), {1, 2}, {"k": object()}, 2**70, {(1, 2): "tuple key"}],
                         ids=["object", "set", "nested-object", "huge-int", "tuple-key"])
def test_run_task_unserialisable_result_is_pf500_mentioning_json(value):
    reg = Registry()
    reg.register("df", "bad", lambda data: value)
    _, status, (code, message), _ = run_task(reg, task("df:bad", None))
    assert (status, code) == (FAILED, "PF500")
    assert "JSON" in message
    assert "df:bad" in message


def test_run_task_past_deadline_is_pf408_without_calling_the_handler():
    reg = Registry()
    calls = []
    reg.register("df", "spy", lambda data: calls.append(data) or "ran")
    task_no, status, (code, _message), duration = run_task(reg, task("df:spy", 1, deadline_s=-0.001,
                                                                     task_no=11))
    assert (task_no, status, code) == (11, FAILED, "PF408")
    assert calls == []
    assert duration == 0
    # and the same handler does run before its deadline
    _, status, body, _ = run_task(reg, task("df:spy", 2))
    assert (status, orjson.loads(body), calls) == (OK, "ran", [2])


def test_run_task_unknown_key_is_pf001():
    _, status, (code, message), _ = run_task(Registry(), task("df:nothing", None))
    assert (status, code) == (FAILED, "PF001")
    assert "df:nothing" in message


def test_run_task_memory_error_is_pf501():
    reg = Registry()

    def hungry(data):
        raise MemoryError()

    reg.register("rm", "alloc", hungry)
    _, status, (code, _), _ = run_task(reg, task("rm:alloc", None))
    assert (status, code) == (FAILED, "PF501")


def test_run_task_memory_cap_turns_a_large_allocation_into_pf501_and_is_lifted_after():
    import resource

    from pfnode.pool.worker import MemoryCap

    reg = Registry()
    reg.register("rm", "alloc", lambda mb: len(bytearray(mb * 1024 * 1024)))
    cap = MemoryCap()
    before = resource.getrlimit(resource.RLIMIT_AS)
    _, status, (code, message), _ = run_task(reg, task("rm:alloc", 512, memory_limit_mb=64), cap)
    assert (status, code) == (FAILED, "PF501") and "64 MiB" in message
    assert resource.getrlimit(resource.RLIMIT_AS) == before  # the cap does not outlive the call
    _, status, body, _ = run_task(reg, task("rm:alloc", 8, memory_limit_mb=64), cap)
    assert status == OK and orjson.loads(body) == 8 * 1024 * 1024


def test_run_task_answers_cross_the_pipe():
    """Answers travel back to the front as pipe messages."""
    reg = Registry()
    reg.register("df", "noop", examples.noop)
    for t in (task("df:noop", [1, 2]), task("df:missing", None), task("df:noop", 1, deadline_s=-1)):
        answer = worker.run_task(reg, t)
        assert pipe.FrameReader().feed(pipe.pack(answer)) == [answer]
