"""Tests of pfnode.elements.predicates: the test language of cf:branch and cf:loop (paths,
ops, combinators, the safe regular expressions, validation naming the bad field), with a
property test against a naive evaluator written here from the documented rules."""
from __future__ import annotations

import pickle
import re
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pfnode.elements import errors
from pfnode.elements import predicates as P
from pfnode.elements.predicates import ElementError, MISSING, compile_predicate, evaluate, resolve, validate

DOC = {"a": {"b": [10, 20, {"c": "x"}]}, "a/b": 1, "m~n": 2, "": 3, "list": [1, 2, 3],
       "name": "Widget-42", "empty": [], "zero": 0, "flag": False, "none": None, "01": "key"}


# ============================================================================ paths

@pytest.mark.parametrize("path, expected", [
    ("", DOC), ("/", DOC),
    ("/a/b/0", 10), ("/a/b/2/c", "x"), ("/a~1b", 1), ("/m~0n", 2), ("/list/2", 3),
    ("/none", None), ("/01", "key"),
    ("/a/b/3", MISSING), ("/a/b/01", MISSING), ("/a/b/-1", MISSING), ("/a/b/x", MISSING),
    ("/nope", MISSING), ("/zero/0", MISSING), ("/name/0", MISSING), ("/a/b/0/0", MISSING),
    ("/list/-", MISSING), ("/a/", MISSING),
])
def test_paths_resolve_like_json_pointers(path, expected):
    assert resolve(DOC, path) is expected if expected is MISSING else resolve(DOC, path) == expected


def test_a_trailing_slash_is_the_empty_key():
    assert resolve({"a": {"": 5}}, "/a/") == 5


def test_escapes_decode_tilde_one_before_tilde_zero():
    # RFC 6901: "~01" is "~1" (not "/")
    assert resolve({"~1": "literal", "/": "slash"}, "/~01") == "literal"


@pytest.mark.parametrize("path, phrase", [
    ("a/b", 'start with "/"'), ("/a~2", "'~' must be followed by 0 or 1"), ("/a~", "followed by 0 or 1"),
    (5, "must be a string"), ("/" + "x" * P.MAX_PATH_LENGTH, "at most"),
])
def test_bad_paths_name_the_path_field(path, phrase):
    with pytest.raises(ElementError) as info:
        validate({"path": path, "op": "exists"}, "test")
    assert info.value.field == "test.path"
    assert phrase in info.value.message


# ============================================================================ ops

@pytest.mark.parametrize("path, op, value, expected", [
    ("/a/b/0", "eq", 10, True), ("/a/b/0", "eq", 10.0, True), ("/a/b/0", "eq", "10", False),
    ("/flag", "eq", False, True), ("/zero", "eq", False, False), ("/zero", "eq", 0, True),
    ("/list", "eq", [1, 2, 3], True), ("/list", "eq", [1, 2], False), ("/a/b/2", "eq", {"c": "x"}, True),
    ("/none", "eq", None, True), ("/list", "eq", [1, 2, True], False),
    ("/a/b/0", "ne", 11, True), ("/a/b/0", "ne", 10, False), ("/a/b/0", "ne", "10", True),
    ("/a/b/0", "lt", 11, True), ("/a/b/0", "le", 10, True), ("/a/b/0", "gt", 10, False), ("/a/b/0", "ge", 9.5, True),
    ("/name", "gt", "Apple", True), ("/name", "lt", "Apple", False),
    ("/a/b/0", "lt", "99", False), ("/name", "gt", 1, False), ("/flag", "lt", 1, False),
    ("/list", "lt", 5, False),
    ("/a/b/0", "in", [5, 10], True), ("/a/b/0", "in", [5, "10"], False), ("/flag", "in", [0], False),
    ("/zero", "in", [False], False), ("/list", "in", [[1, 2, 3]], True), ("/a/b/2", "in", [{"c": "x"}], True),
    ("/a/b/0", "not_in", [5], True), ("/a/b/0", "not_in", [10], False),
    ("/name", "contains", "get-4", True), ("/name", "contains", "xyz", False), ("/name", "contains", 4, False),
    ("/list", "contains", 2, True), ("/list", "contains", 2.0, True), ("/list", "contains", "2", False),
    ("/a", "contains", "b", True), ("/a", "contains", "c", False), ("/a/b/0", "contains", 1, False),
    ("/none", "exists", None, True), ("/nope", "exists", None, False),
    ("/name", "truthy", None, True), ("/empty", "truthy", None, False), ("/zero", "truthy", None, False),
    ("/flag", "truthy", None, False), ("/none", "truthy", None, False), ("/a", "truthy", None, True),
    ("/list", "len_eq", 3, True), ("/name", "len_gt", 5, True), ("/a", "len_lt", 2, True),
    ("/a/b/0", "len_eq", 0, False), ("/empty", "len_eq", 0, True),
    ("/name", "matches", r"Widget-\d+", True), ("/name", "matches", r"Widget", False),
    ("/name", "matches", r"(?i)widget-42", True), ("/a/b/0", "matches", r"10", False),
])
def test_ops(path, op, value, expected):
    predicate = {"path": path, "op": op} if op in ("exists", "truthy") else {"path": path, "op": op, "value": value}
    assert evaluate(predicate, DOC) is expected


@pytest.mark.parametrize("op, value", [
    ("eq", 1), ("ne", 1), ("lt", 1), ("le", 1), ("gt", 1), ("ge", 1), ("in", [1]), ("not_in", [1]),
    ("contains", 1), ("truthy", None), ("len_eq", 0), ("len_gt", 0), ("len_lt", 9), ("matches", ".*"),
])
def test_every_op_but_exists_is_false_on_a_missing_path(op, value):
    predicate = {"path": "/nope", "op": op} if op == "truthy" else {"path": "/nope", "op": op, "value": value}
    assert evaluate(predicate, DOC) is False
    assert evaluate({"not": predicate}, DOC) is True


def test_path_defaults_to_the_value_itself():
    assert evaluate({"op": "gt", "value": 3}, 4) is True
    assert evaluate({"op": "eq", "value": "HELLO"}, "HELLO") is True


def test_a_long_subject_does_not_match():
    predicate = {"op": "matches", "value": "a*"}
    assert evaluate(predicate, "a" * P.MAX_SUBJECT_LENGTH) is True
    assert evaluate(predicate, "a" * (P.MAX_SUBJECT_LENGTH + 1)) is False


def test_json_equal_handles_any_depth():
    deep_a: list = []
    deep_b: list = []
    for _ in range(5000):
        deep_a, deep_b = [deep_a], [deep_b]
    assert P.json_equal(deep_a, deep_b)
    assert not P.json_equal(deep_a, [deep_b])


# ============================================================================ combinators

def test_combinators():
    gt = {"path": "/a/b/0", "op": "gt", "value": 5}
    lt = {"path": "/a/b/0", "op": "lt", "value": 5}
    assert evaluate({"all": [gt, {"not": lt}]}, DOC) is True
    assert evaluate({"all": [gt, lt]}, DOC) is False
    assert evaluate({"any": [lt, gt]}, DOC) is True
    assert evaluate({"any": [lt, lt]}, DOC) is False
    assert evaluate({"all": []}, DOC) is True
    assert evaluate({"any": []}, DOC) is False


def test_a_compiled_predicate_is_reusable():
    until = compile_predicate({"path": "/i", "op": "ge", "value": 3}, "until")
    assert [until({"i": i}) for i in range(5)] == [False, False, False, True, True]


def nested_not(levels: int) -> dict:
    predicate: dict = {"op": "exists"}
    for _ in range(levels):
        predicate = {"not": predicate}
    return predicate


def test_combinator_depth_is_bounded():
    validate(nested_not(P.MAX_DEPTH))
    with pytest.raises(ElementError) as info:
        validate(nested_not(P.MAX_DEPTH + 1))
    assert info.value.field == "test" + ".not" * P.MAX_DEPTH
    assert "deeper than" in info.value.message
    with pytest.raises(ElementError):  # far deeper: refused without recursing through it all
        validate(nested_not(100_000))


def test_the_number_of_parts_is_bounded():
    validate({"any": [{"op": "exists"}] * (P.MAX_NODES - 1)})
    with pytest.raises(ElementError) as info:
        validate({"any": [{"op": "exists"}] * P.MAX_NODES})
    assert info.value.field == f"test.any[{P.MAX_NODES - 1}]"


# ============================================================================ validation

@pytest.mark.parametrize("predicate, field, phrase", [
    ("exists", "test", "expected a predicate object"),
    (None, "test", "expected a predicate object"),
    ({}, "test.op", "required"),
    ({"op": "sqr", "value": 1}, "test.op", "unknown op 'sqr'; expected one of eq, ne"),
    ({"op": 3}, "test.op", "unknown op the number 3"),
    ({"op": "eq"}, "test.value", "required by eq"),
    ({"op": "exists", "value": 1}, "test.value", "exists takes no value"),
    ({"op": "truthy", "value": 1}, "test.value", "truthy takes no value"),
    ({"op": "eq", "value": 1, "extra": 2}, "test.extra", "unknown field"),
    ({"op": "lt", "value": [1]}, "test.value", "number or a string"),
    ({"op": "lt", "value": True}, "test.value", "number or a string"),
    ({"op": "in", "value": 1}, "test.value", "needs an array"),
    ({"op": "not_in", "value": "abc"}, "test.value", "needs an array"),
    ({"op": "len_eq", "value": -1}, "test.value", "integer >= 0"),
    ({"op": "len_gt", "value": 1.5}, "test.value", "integer >= 0"),
    ({"op": "len_lt", "value": True}, "test.value", "integer >= 0"),
    ({"op": "matches", "value": 5}, "test.value", "regular expression string"),
    ({"op": "matches", "value": "("}, "test.value", "invalid regular expression"),
    ({"op": "matches", "value": "a" * (P.MAX_PATTERN_LENGTH + 1)}, "test.value", "at most"),
    ({"all": {"op": "exists"}}, "test.all", "expected a list"),
    ({"all": [], "op": "eq"}, "test.op", "no other fields"),
    ({"not": {"op": "exists"}, "any": []}, "test.not", "with 'any' has no other fields"),
    ({"any": [{"op": "exists"}, {"op": "eq"}]}, "test.any[1].value", "required by eq"),
    ({"all": [{"not": {"path": "x", "op": "exists"}}]}, "test.all[0].not.path", 'start with "/"'),
    ({"not": 5}, "test.not", "expected a predicate object"),
])
def test_validate_names_the_bad_field(predicate, field, phrase):
    with pytest.raises(ElementError) as info:
        validate(predicate)
    assert info.value.field == field
    assert str(info.value) == f"{field}: {info.value.message}"
    assert phrase in info.value.message
    with pytest.raises(ElementError):  # evaluate validates too
        evaluate(predicate, DOC)


def test_the_field_prefix_is_the_callers():
    with pytest.raises(ElementError) as info:
        validate({"any": [{"op": "bad"}]}, field="until")
    assert info.value.field == "until.any[0].op"


def test_element_error_is_a_value_error_that_pickles():
    error = ElementError("ops[2].op", "unknown op 'sqr'")
    assert isinstance(error, ValueError)
    assert str(error) == "ops[2].op: unknown op 'sqr'"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.field, copy.message, str(copy)) == (ElementError, error.field, error.message, str(error))
    assert ElementError("", "bad").field == "data"
    assert P.ElementError is errors.ElementError


def test_predicates_do_not_import_numpy():
    """The front imports this module; numpy must stay out of it."""
    code = ("import sys, pfnode.elements.predicates as p; "
            "p.evaluate({'op': 'matches', 'value': 'a+'}, 'aa'); "
            "assert 'numpy' not in sys.modules, 'numpy imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ============================================================================ regular expressions

SAFE = [r"\d+-\d+-\d+", r".*foo.*", r".*a.*b", r"[a-z]+@[a-z]+\.[a-z]+", r"^\s*\w+\s*$", r"\w+\s+\w+",
        r"\S+\s+\S+\s+\S+", r"[^,]*,[^,]*,[^,]*", r"ERR-\d{3}", r"(foo|bar)-\d+", r"(?:ab)+c",
        r"a*a*b", r"(a|b)+", r"(?=a*)a*", r"(?>a*)a*b", "a?" * 12 + "a" * 12]
UNSAFE = [(r"(a+)+", "inside a repetition"), (r"(a|aa)*", "alternation inside a repetition"),
          (r"(ab?)+", "inside a repetition"), (r"(\w)\1", "backreferences"), (r"(?P<x>a)(?P=x)", "backreferences"),
          (r"a*a*a*b", "backtrack too long"), (r"\w*\d*\w*x", "backtrack too long"),
          (r".*.*.*", "backtrack too long"), ("a?" * 30 + "a" * 30, "backtrack too long"),
          (r"(?i)[a-z]+A[a-z]+B[a-z]+", "backtrack too long")]


@pytest.mark.parametrize("pattern", SAFE)
def test_safe_patterns_are_accepted_and_quick_on_hostile_subjects(pattern):
    test = compile_predicate({"op": "matches", "value": pattern})
    n = P.MAX_SUBJECT_LENGTH
    start = time.perf_counter()
    for subject in ("a" * n, "a" * (n - 1) + "!", "a " * (n // 2), "1" * (n - 1) + "!", "a" * 24):
        test(subject)
    assert time.perf_counter() - start < 1.0  # the worst take ~30 ms; a regression takes seconds


@pytest.mark.parametrize("pattern, phrase", UNSAFE)
def test_patterns_that_backtrack_badly_are_refused(pattern, phrase):
    with pytest.raises(ElementError) as info:
        validate({"path": "/name", "op": "matches", "value": pattern})
    assert info.value.field == "test.value"
    assert phrase in info.value.message


def test_the_category_disjointness_table_holds_for_every_character():
    """The regex cost model trusts that these classes share no character."""
    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    space, digit = set(re.findall(r"\s", everything)), set(re.findall(r"\d", everything))
    assert space and digit
    assert not any(re.fullmatch(r"\w", c) for c in space)
    assert not any(re.fullmatch(r"\W", c) for c in digit)
    assert not space & digit


# ============================================================================ against a naive evaluator

def naive_get(value, path):
    """(found, target) by the documented path rules, written plainly."""
    if path in ("", "/"):
        return True, value
    for raw in path.split("/")[1:]:
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and re.fullmatch("0|[1-9][0-9]*", key) and int(key) < len(value):
            value = value[int(key)]
        else:
            return False, None
    return True, value


def tag(v):
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    return {type(None): "null", str: "string", list: "array", dict: "object"}[type(v)]


def naive_eq(a, b):
    if tag(a) != tag(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(naive_eq(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return set(a) == set(b) and all(naive_eq(a[k], b[k]) for k in a)
    return a == b


def naive(predicate, value):
    if "all" in predicate:
        return all(naive(p, value) for p in predicate["all"])
    if "any" in predicate:
        return any(naive(p, value) for p in predicate["any"])
    if "not" in predicate:
        return not naive(predicate["not"], value)
    found, target = naive_get(value, predicate.get("path", ""))
    op, operand = predicate["op"], predicate.get("value")
    if op == "exists":
        return found
    if not found:
        return False
    if op == "eq":
        return naive_eq(target, operand)
    if op == "ne":
        return not naive_eq(target, operand)
    if op in ("lt", "le", "gt", "ge"):
        if tag(target) != tag(operand) or tag(target) not in ("number", "string"):
            return False
        return {"lt": target < operand, "le": target <= operand, "gt": target > operand, "ge": target >= operand}[op]
    if op == "in":
        return any(naive_eq(target, item) for item in operand)
    if op == "not_in":
        return not any(naive_eq(target, item) for item in operand)
    if op == "contains":
        if isinstance(target, str):
            return isinstance(operand, str) and operand in target
        if isinstance(target, list):
            return any(naive_eq(item, operand) for item in target)
        if isinstance(target, dict):
            return isinstance(operand, str) and operand in target
        return False
    if op == "truthy":
        return target not in (None, False, "", [], {}) and not (tag(target) == "number" and target == 0)
    if op.startswith("len_"):
        if not isinstance(target, (str, list, dict)):
            return False
        return {"len_eq": len(target) == operand, "len_gt": len(target) > operand,
                "len_lt": len(target) < operand}[op]
    assert op == "matches"
    return isinstance(target, str) and re.fullmatch(operand, target) is not None


KEYS = st.sampled_from(["a", "b", "0", "1", "a/b", "m~n", ""])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from([0.0, 1.0, 1.5, -2.0]),
                    st.sampled_from(["", "a", "ab", "b", "ba", "0", "1"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(KEYS, inner, max_size=3)),
                      max_leaves=12)
PATHS = st.sampled_from(["", "/", "/a", "/b", "/0", "/1", "/a/0", "/0/a", "/a~1b", "/m~0n", "/", "/a/", "/1/1"])


def leaves():
    no_operand = st.builds(lambda path, op: {"path": path, "op": op}, PATHS, st.sampled_from(["exists", "truthy"]))
    any_operand = st.builds(lambda path, op, v: {"path": path, "op": op, "value": v},
                            PATHS, st.sampled_from(["eq", "ne", "contains"]), VALUES)
    ordered = st.builds(lambda path, op, v: {"path": path, "op": op, "value": v}, PATHS,
                        st.sampled_from(["lt", "le", "gt", "ge"]),
                        st.one_of(st.integers(-2, 2), st.sampled_from([0.5, 1.0]), st.sampled_from(["", "a", "b"])))
    member = st.builds(lambda path, op, v: {"path": path, "op": op, "value": v}, PATHS,
                       st.sampled_from(["in", "not_in"]), st.lists(VALUES, max_size=4))
    sized = st.builds(lambda path, op, v: {"path": path, "op": op, "value": v}, PATHS,
                      st.sampled_from(["len_eq", "len_gt", "len_lt"]), st.integers(0, 3))
    regex = st.builds(lambda path, v: {"path": path, "op": "matches", "value": v}, PATHS,
                      st.sampled_from(["a*", "a.", "[ab]+", ".*b.*", "", "0|1"]))
    return st.one_of(no_operand, any_operand, ordered, member, sized, regex)


PREDICATES = st.recursive(leaves(), lambda inner: st.one_of(
    st.builds(lambda ps: {"all": ps}, st.lists(inner, max_size=3)),
    st.builds(lambda ps: {"any": ps}, st.lists(inner, max_size=3)),
    st.builds(lambda p: {"not": p}, inner)), max_leaves=6)


@settings(max_examples=200, deadline=None)
@given(PREDICATES, VALUES)
def test_evaluate_agrees_with_a_naive_evaluator(predicate, value):
    assert evaluate(predicate, value) is naive(predicate, value)


@settings(max_examples=100, deadline=None)
@given(VALUES, VALUES)
def test_json_equal_agrees_with_a_naive_equality(a, b):
    assert P.json_equal(a, b) is naive_eq(a, b)
    assert P.json_equal(a, a)
