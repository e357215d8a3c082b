"""Tests of the handler registry: pfnode/registry.py (fresh Registry instances only)."""
from __future__ import annotations

import functools
import sys
import time

import pytest

from pfnode.errors import ConfigError, PFNodeError
from pfnode.registry import Context, HandlerSpec, Registry, load_handler_modules


def make_ctx(deadline: float | None = None, **changes) -> Context:
    fields = dict(packet_id="p-1", group="df", element="x", priority=5,
                  metadata={"m": 1}, deadline=time.monotonic() + 60 if deadline is None else deadline)
    fields.update(changes)
    return Context(**fields)


# ============================================================================ register / decorator

def test_register_returns_a_spec_and_get_finds_it():
    reg = Registry()

    def double(data):
        return [2 * x for x in data]

    spec = reg.register("df", "double", double)
    assert isinstance(spec, HandlerSpec)
    assert spec.key == "df:double"
    assert spec.fn is double
    assert reg.get("df:double") is spec
    assert reg.get("df:missing") is None
    assert reg.keys() == ["df:double"]
    assert spec([1, 2], make_ctx()) == [2, 4]


def test_decorator_registers_and_returns_the_function_unchanged():
    reg = Registry()

    @reg.handler("cf", "validate")
    def validate(data):
        return {"valid": data is not None}

    assert callable(validate)
    assert validate(None) == {"valid": False}  # still the plain function
    spec = reg.get("cf:validate")
    assert spec is not None and spec.fn is validate
    assert spec(1, make_ctx()) == {"valid": True}


def test_keys_are_sorted_and_registries_are_independent():
    a, b = Registry(), Registry()
    a.register("ed", "signal", lambda d: d)
    a.register("cf", "seq", lambda d: d)
    a.register("df", "reduce", lambda d: d)
    assert a.keys() == ["cf:seq", "df:reduce", "ed:signal"]
    assert b.keys() == []
    assert b.get("cf:seq") is None


def test_same_element_in_different_groups_is_two_handlers():
    reg = Registry()
    reg.register("df", "x", lambda d: "df")
    reg.register("cf", "x", lambda d: "cf")
    assert reg.get("df:x")(None, make_ctx()) == "df"
    assert reg.get("cf:x")(None, make_ctx()) == "cf"


# ============================================================================ wants_ctx

def _one(data):
    return ("one", data)


def _two(data, ctx):
    return ("two", data, ctx.packet_id)


def _star(*args):
    return ("star", len(args))


def _data_and_star(data, *rest):
    return ("data+star", data, len(rest))


def _scale(data, factor):
    return data * factor


class _Callable:
    def __call__(self, data, ctx):
        return ("callable", data, ctx.priority)


class _Holder:
    def method(self, data):
        return ("method", data)

    def method_ctx(self, data, ctx):
        return ("method_ctx", data, ctx.group)


@pytest.mark.parametrize("fn, wants", [
    (_one, False),
    (lambda data: data, False),
    (_two, True),
    (lambda data, ctx: data, True),
    (_star, True),
    (_data_and_star, True),
    (_Callable(), True),
    (_Holder().method, False),  # self is bound, one parameter left
    (_Holder().method_ctx, True),
    (functools.partial(_scale, factor=3), False),  # factor bound by keyword: data only
    (len, False),
    (abs, False),
    (str.upper, False),
], ids=["1-arg", "lambda-1", "2-arg", "lambda-2", "*args", "data,*rest", "callable-object",
        "bound-method", "bound-method-ctx", "partial", "len", "abs", "str.upper"])
def test_wants_ctx_detection(fn, wants):
    spec = Registry().register("df", "h", fn)
    assert spec.wants_ctx is wants


def test_spec_call_passes_ctx_only_when_wanted():
    reg = Registry()
    ctx = make_ctx(packet_id="pid-7", priority=9, group="df")
    assert reg.register("df", "one", _one)("d", ctx) == ("one", "d")
    assert reg.register("df", "two", _two)("d", ctx) == ("two", "d", "pid-7")
    assert reg.register("df", "star", _star)("d", ctx) == ("star", 2)
    assert reg.register("df", "obj", _Callable())("d", ctx) == ("callable", "d", 9)
    assert reg.register("df", "len", len)("abcd", ctx) == 4
    assert reg.register("df", "scale", functools.partial(_scale, factor=3))(2, ctx) == 6


def test_builtin_without_a_signature_takes_data_only():
    """`max` has no inspect.signature on CPython; it must be called as max(data)."""
    try:
        import inspect
        inspect.signature(max)
        pytest.skip("max has a signature on this Python")
    except ValueError:
        pass
    spec = Registry().register("df", "max", max)
    assert spec.wants_ctx is False
    assert spec([3, 9, 2], make_ctx()) == 9


# ============================================================================ refusals

def test_duplicate_registration_is_refused_and_keeps_the_first():
    reg = Registry()

    def first(data):
        return 1

    def second(data):
        return 2

    reg.register("df", "dup", first)
    with pytest.raises(ConfigError) as info:
        reg.register("df", "dup", second)
    assert "df:dup" in str(info.value)
    assert reg.get("df:dup").fn is first
    with pytest.raises(ConfigError):
        reg.handler("df", "dup")(second)
    assert reg.get("df:dup").fn is first


def test_reregistering_the_same_function_is_fine():
    reg = Registry()

    def fn(data):
        return data

    reg.register("df", "same", fn)
    reg.register("df", "same", fn)
    reg.handler("df", "same")(fn)
    assert reg.keys() == ["df:same"]
    assert reg.get("df:same").fn is fn


def test_two_equal_lambdas_are_different_functions():
    reg = Registry()
    reg.register("df", "l", lambda d: d)
    with pytest.raises(ConfigError):
        reg.register("df", "l", lambda d: d)


@pytest.mark.parametrize("group", ["xx", "", "DF", "df ", "dataflow", None])
def test_bad_group_refused(group):
    reg = Registry()
    with pytest.raises(ConfigError) as info:
        reg.register(group, "ok", _one)
    assert "group" in str(info.value)
    assert reg.keys() == []


@pytest.mark.parametrize("element", ["", "has space", "df:x", "a/b", "e" * 65, "ü", None, 5])
def test_bad_element_refused(element):
    reg = Registry()
    with pytest.raises(ConfigError) as info:
        reg.register("df", element, _one)
    assert "element" in str(info.value)
    assert reg.keys() == []


def test_longest_valid_element_accepted():
    reg = Registry()
    reg.register("df", "e" * 64, _one)
    assert reg.keys() == ["df:" + "e" * 64]


@pytest.mark.parametrize("fn", [42, "not a function", None])
def test_non_callable_refused(fn):
    reg = Registry()
    with pytest.raises(ConfigError):
        reg.register("df", "nc", fn)
    assert reg.keys() == []


def test_config_error_is_a_pfnode_error():
    assert issubclass(ConfigError, PFNodeError)


# ============================================================================ load_handler_modules

def test_load_handler_modules_missing_module_names_it():
    with pytest.raises(ConfigError) as info:
        load_handler_modules(["json", "pfnode_no_such_module_xyz"])
    assert "pfnode_no_such_module_xyz" in str(info.value)


def test_load_handler_modules_module_that_raises_on_import(tmp_path, monkeypatch):
    (tmp_path / "pfnode_test_broken_handlers.py").write_text(
        "raise RuntimeError('handler module exploded')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pfnode_test_broken_handlers", raising=False)
    with pytest.raises(ConfigError) as info:
        load_handler_modules(("pfnode_test_broken_handlers",))
    message = str(info.value)
    assert "pfnode_test_broken_handlers" in message
    assert "exploded" in message
    assert isinstance(info.value.__cause__, RuntimeError)


def test_load_handler_modules_imports_the_modules(tmp_path, monkeypatch):
    (tmp_path / "pfnode_test_ok_handlers.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pfnode_test_ok_handlers", raising=False)
    load_handler_modules(["pfnode_test_ok_handlers"])
    assert sys.modules["pfnode_test_ok_handlers"].LOADED is True
    load_handler_modules([])  # nothing to do is fine


# ============================================================================ Context

def test_remaining_ms_in_the_future():
    ctx = make_ctx(deadline=time.monotonic() + 10.0)
    remaining = ctx.remaining_ms()
    assert 9_000 < remaining <= 10_000


def test_remaining_ms_decreases():
    ctx = make_ctx(deadline=time.monotonic() + 10.0)
    first = ctx.remaining_ms()
    time.sleep(0.01)
    assert ctx.remaining_ms() < first


@pytest.mark.parametrize("ago_s", [0.001, 5.0, 1e6])
def test_remaining_ms_after_the_deadline_is_zero(ago_s):
    ctx = make_ctx(deadline=time.monotonic() - ago_s)
    assert ctx.remaining_ms() == 0.0


def test_context_is_immutable():
    ctx = make_ctx()
    with pytest.raises(Exception):
        ctx.priority = 10  # type: ignore[misc]
