r"""Predicates: the test language of cf:branch (its test) and cf:loop (its `until`).

Run in the front process on small JSON values, so pure Python (no numpy) and bounded.

    {"path": "/items/0/price", "op": "gt", "value": 10}      a test of one value
    {"all": [p, ...]}   {"any": [p, ...]}   {"not": p}         combinators

`path` (default `""`) points into the value, like a JSON Pointer (RFC 6901): `""` and `"/"`
are the value itself (unlike RFC 6901, where `"/"` is the key ""), `"/a/0/b"` is key a,
then index 0, then key b; `~1` stands for `/` and `~0` for `~` inside a key. An index is a
decimal without leading zeros; a path that does not resolve (no such key, index out of range,
a step into a number) is *missing*.

Ops (`value` is the predicate's operand; exists and truthy take none):

    eq ne             JSON equality (1 == 1.0; true is not 1; deep for arrays and objects)
    lt le gt ge       both numbers or both strings (code-point order); otherwise false
    in not_in         membership in the array `value`, by JSON equality
    contains          string target: substring; array target: an element equal to `value`;
                      object target: has the key `value`; otherwise false
    exists            the path resolves
    truthy            resolves to a value other than false, null, 0, "", [], {}
    len_eq len_gt len_lt   length of a string, array or object against `value` (an integer >= 0)
    matches           the whole string target matches the regular expression `value`
                      (re.fullmatch; the safe subset below); a non-string target: false

On a missing path every op but `exists` is false (ne and not_in included: use `not` to
invert). A type mismatch is false, not an error. all of [] is true, any of [] is false.

Regular expressions (`matches`): at most MAX_PATTERN_LENGTH characters, matched with
re.fullmatch against strings of at most MAX_SUBJECT_LENGTH characters (a longer target does
not match). Python's `re` backtracks and cannot be interrupted, and predicates run in the
front, so a pattern is refused up front when it holds a backreference, a repetition, optional
part or alternation inside a repetition (`(a+)+`, `(a|aa)*`, `(ab?)+`: the shapes that
backtrack exponentially), or when its estimated backtracking work on a MAX_SUBJECT_LENGTH
string is over MAX_REGEX_WORK: three or more repetitions in a row that can trade characters
(`a*a*a*b`, `\w*\d*\w*x`). A repetition of one character class followed by what it cannot
match (`\d+-`, `\w+\s+`, `[^,]*,`) ends in one place and costs nothing extra. The worst
accepted patterns take about 30 ms on a full-length string.

Bounds: MAX_DEPTH levels of combinators, MAX_NODES predicates in all, paths of at most
MAX_PATH_LENGTH characters. `validate(predicate, field)` raises ElementError naming the bad
field (`test.all[1].op`) before anything runs; `compile_predicate` validates once and
returns a function of the value (for a loop's until); `evaluate` does both.
"""
from __future__ import annotations

import re
from typing import Any, Callable

from .errors import ElementError, child, describe, one_of

try:  # Python 3.11+
    from re import _constants as _sre, _parser as _sre_parse
except ImportError:  # pragma: no cover (3.10 and earlier)
    import sre_constants as _sre  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

__all__ = ["ElementError", "OPS", "COMBINATORS", "MAX_DEPTH", "MAX_NODES", "MAX_PATH_LENGTH",
           "MAX_PATTERN_LENGTH", "MAX_SUBJECT_LENGTH", "MAX_REGEX_WORK",
           "validate", "compile_predicate", "evaluate", "resolve", "json_equal", "MISSING"]

MAX_DEPTH = 32  # levels of combinators (all, any, not) above a test
MAX_NODES = 1000  # predicates (tests and combinators) in one predicate
MAX_PATH_LENGTH = 1024
MAX_PATTERN_LENGTH = 256
MAX_SUBJECT_LENGTH = 2048
MAX_REGEX_WORK = 4 * (MAX_SUBJECT_LENGTH + 1) ** 2  # two free repetitions in a row (".*a.*") are fine

COMBINATORS = ("all", "any", "not")
_NO_OPERAND = frozenset({"exists", "truthy"})
OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "contains", "exists", "truthy",
       "len_eq", "len_gt", "len_lt", "matches")
_LEAF_FIELDS = ("path", "op", "value")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # what resolve() returns for a path that does not resolve


# ============================================================================ JSON values

def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    kind = type(value)
    if kind is int or kind is float:
        return "number"
    if kind is str:
        return "string"
    if kind is list or kind is tuple:
        return "array"
    if kind is dict:
        return "object"
    return "other"


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0), booleans only equal booleans, arrays and
    objects element by element; no recursion, so any depth is fine."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        kind = _kind(x)
        if kind != _kind(y):
            return False
        if kind == "array":
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y))
        elif kind == "object":
            if x.keys() != y.keys():
                return False
            stack.extend((x[key], y[key]) for key in x)
        elif x != y:
            return False
    return True


def _scalar_key(value: Any) -> tuple | None:
    """A hashable key equal for JSON-equal scalars (None for arrays and objects)."""
    kind = _kind(value)
    return None if kind in ("array", "object", "other") else (kind, value)


# ============================================================================ paths

def _parse_path(path: Any, field: str) -> tuple[tuple[str, int | None], ...]:
    """The steps of a path: (key, the key as an index or None)."""
    if type(path) is not str:
        raise ElementError(field, f"must be a string such as \"/a/0\", got {describe(path)}")
    if len(path) > MAX_PATH_LENGTH:
        raise ElementError(field, f"is {len(path)} characters long; at most {MAX_PATH_LENGTH}")
    if path in ("", "/"):
        return ()
    if not path.startswith("/"):
        raise ElementError(field, f"must be \"\" or start with \"/\", got {path!r}")
    steps = []
    for token in path[1:].split("/"):
        if re.search(r"~(?![01])", token):
            raise ElementError(field, f"{path!r}: '~' must be followed by 0 or 1 (~0 is '~', ~1 is '/')")
        key = token.replace("~1", "/").replace("~0", "~")
        index = int(key) if re.fullmatch(r"0|[1-9][0-9]*", key) else None
        steps.append((key, index))
    return tuple(steps)


def _resolver(steps: tuple[tuple[str, int | None], ...]) -> Callable[[Any], Any]:
    def resolve_steps(value: Any) -> Any:
        for key, index in steps:
            kind = type(value)
            if kind is dict:
                value = value.get(key, MISSING)
                if value is MISSING:
                    return MISSING
            elif (kind is list or kind is tuple) and index is not None and index < len(value):
                value = value[index]
            else:
                return MISSING
        return value
    return resolve_steps


def resolve(value: Any, path: str, field: str = "path") -> Any:
    """What `path` points to in `value`, or MISSING."""
    return _resolver(_parse_path(path, field))(value)


# ============================================================================ regular expressions

_REPEATS = frozenset(op for op in (getattr(_sre, name, None) for name in
                                   ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")) if op is not None)
_BACKREFS = frozenset((_sre.GROUPREF, _sre.GROUPREF_EXISTS))
_ATOMIC = getattr(_sre, "ATOMIC_GROUP", None)
# flags under which a character class may match more than its plain reading says
_INEXACT_FLAGS = re.IGNORECASE | re.ASCII | re.LOCALE
_CATEGORY_TESTS = {category: re.compile(source).fullmatch for category, source in (
    (_sre.CATEGORY_DIGIT, r"\d"), (_sre.CATEGORY_NOT_DIGIT, r"\D"), (_sre.CATEGORY_SPACE, r"\s"),
    (_sre.CATEGORY_NOT_SPACE, r"\S"), (_sre.CATEGORY_WORD, r"\w"), (_sre.CATEGORY_NOT_WORD, r"\W"))}


_ATOMS = (_sre.LITERAL, _sre.NOT_LITERAL, _sre.IN)  # one-character patterns
_DISJOINT_CATEGORIES = frozenset(frozenset(pair) for pair in (
    (_sre.CATEGORY_DIGIT, _sre.CATEGORY_NOT_DIGIT), (_sre.CATEGORY_SPACE, _sre.CATEGORY_NOT_SPACE),
    (_sre.CATEGORY_WORD, _sre.CATEGORY_NOT_WORD), (_sre.CATEGORY_SPACE, _sre.CATEGORY_WORD),
    (_sre.CATEGORY_SPACE, _sre.CATEGORY_DIGIT), (_sre.CATEGORY_DIGIT, _sre.CATEGORY_NOT_WORD)))
_MAX_ENUMERATED = 1024  # a character range this small is checked character by character


def _may_match(atom, char: int) -> bool:
    """Whether the one-character pattern `atom` ((op, arg), op in _ATOMS) may match `char`
    (True when unsure)."""
    op, arg = atom
    if op is _sre.LITERAL:
        return arg == char
    if op is _sre.NOT_LITERAL:
        return arg != char
    negate = hit = False
    for kind, value in arg:
        if kind is _sre.NEGATE:
            negate = True
        elif kind is _sre.LITERAL:
            hit = hit or value == char
        elif kind is _sre.RANGE:
            hit = hit or value[0] <= char <= value[1]
        elif kind is _sre.CATEGORY and value in _CATEGORY_TESTS:
            hit = hit or _CATEGORY_TESTS[value](chr(char)) is not None
        else:
            return True
    return hit != negate


def _parts(atom) -> list[tuple[str, Any]] | None:
    """A one-character pattern as a union of ranges ("r", (low, high)) and categories
    ("k", category); None when negated or unknown."""
    op, arg = atom
    if op is _sre.LITERAL:
        return [("r", (arg, arg))]
    if op is not _sre.IN:
        return None
    parts = []
    for kind, value in arg:
        if kind is _sre.LITERAL:
            parts.append(("r", (value, value)))
        elif kind is _sre.RANGE:
            parts.append(("r", value))
        elif kind is _sre.CATEGORY and value in _CATEGORY_TESTS:
            parts.append(("k", value))
        else:  # NEGATE, or something this does not read
            return None
    return parts


def _parts_disjoint(p: tuple[str, Any], q: tuple[str, Any]) -> bool:
    if p[0] == "k" and q[0] == "k":
        return frozenset((p[1], q[1])) in _DISJOINT_CATEGORIES
    if p[0] == "k":
        p, q = q, p
    low, high = p[1]
    if q[0] == "r":
        return high < q[1][0] or q[1][1] < low
    test = _CATEGORY_TESTS[q[1]]
    return high - low < _MAX_ENUMERATED and not any(test(chr(c)) for c in range(low, high + 1))


def _disjoint(a, b) -> bool:
    """Whether the one-character patterns `a` and `b` surely match no character in common."""
    for atom, other in ((a, b), (b, a)):
        parts = _parts(atom)
        if parts is not None and all(kind == "r" for kind, _ in parts) and \
                sum(high - low + 1 for _, (low, high) in parts) <= _MAX_ENUMERATED:
            return not any(_may_match(other, c) for _, (low, high) in parts for c in range(low, high + 1))
    pa, pb = _parts(a), _parts(b)
    return pa is not None and pb is not None and all(_parts_disjoint(p, q) for p in pa for q in pb)


def _next_atoms(items, i: int, top: bool) -> list | None:
    """The one-character patterns that can match the character right after item i of the
    sequence `items`: [] when only the end of the subject can (a top-level sequence's end),
    None when unknown."""
    atoms = []
    for op, arg in items[i + 1:]:
        if op in _ATOMS:
            atoms.append((op, arg))
            return atoms
        if op in _REPEATS and len(arg[2]) == 1 and arg[2][0][0] in _ATOMS:
            atoms.append(arg[2][0])
            if arg[0] >= 1:
                return atoms
        elif op is not _sre.AT:  # anchors take no character
            return None
    return atoms if top else None


def _regex_work(items, field: str, in_repeat: bool, exact: bool, top: bool = False) -> tuple[int, int]:
    """(ways, work) for the parsed pattern `items` on a string of up to MAX_SUBJECT_LENGTH
    characters: how many ways it can end, and about how many steps a backtracking matcher
    takes to try them all (each item is tried once for every way the items before it can
    end, so the work of a sequence is the sum of its items' work times their prefix's ways).
    A repetition of one character class that what follows it cannot start in can end in
    one way only. Refuses the shapes that backtrack exponentially."""
    ways, work = 1, 0
    for i, (op, arg) in enumerate(items):
        if op in _REPEATS:
            low, high, body = arg
            if in_repeat:
                raise ElementError(field, "a repetition (or an optional part) inside a repetition "
                                          "can backtrack exponentially; refused")
            body_ways, body_work = _regex_work(body, field, high > 1, exact)
            if high > 1:
                following = _next_atoms(items, i, top) if exact and len(body) == 1 and body[0][0] in _ATOMS else None
                forced = following is not None and all(_disjoint(body[0], atom) for atom in following)
                item_ways = 1 if forced else max(1, min(high, MAX_SUBJECT_LENGTH) - low + 1)
                item_work = min(high, MAX_SUBJECT_LENGTH) * body_work
            else:  # x? or x{0}
                item_ways = body_ways + 1 if low == 0 and high == 1 else body_ways
                item_work = body_work + 1
        elif op is _sre.SUBPATTERN:
            scoped_exact = exact and not arg[1] & _INEXACT_FLAGS
            item_ways, item_work = _regex_work(arg[-1], field, in_repeat, scoped_exact)
        elif op is _sre.BRANCH:
            if in_repeat:
                raise ElementError(field, "an alternation inside a repetition can backtrack "
                                          "exponentially; refused")
            branches = [_regex_work(branch, field, in_repeat, exact) for branch in arg[1]]
            item_ways, item_work = sum(w for w, _ in branches), sum(c for _, c in branches)
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT) or op is _ATOMIC:
            body = arg[1] if op is not _ATOMIC else arg  # matched once: no ways to backtrack into
            item_ways, item_work = 1, _regex_work(body, field, in_repeat, exact)[1]
        elif op in _BACKREFS:
            raise ElementError(field, "backreferences are not supported")
        else:
            item_ways, item_work = 1, 1
        work += ways * item_work
        ways *= item_ways
        if work > MAX_REGEX_WORK:
            raise ElementError(field, "the pattern could backtrack too long: repetitions that can "
                                      "each take many lengths, one after another; simplify it")
    return ways, work


def _compile_regex(pattern: Any, field: str) -> re.Pattern:
    if type(pattern) is not str:
        raise ElementError(field, f"matches needs a regular expression string, got {describe(pattern)}")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ElementError(field, f"the pattern is {len(pattern)} characters long; at most {MAX_PATTERN_LENGTH}")
    try:
        compiled = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        raise ElementError(field, f"invalid regular expression: {exc}") from None
    _regex_work(_sre_parse.parse(pattern), field, False, not compiled.flags & _INEXACT_FLAGS, top=True)
    return compiled


# ============================================================================ ops

def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def op(target: Any, operand: Any) -> bool:
        kind = _kind(target)
        return kind in ("number", "string") and kind == _kind(operand) and compare(target, operand)
    return op


def _sized(compare: Callable[[int, int], bool]) -> Callable[[Any, Any], bool]:
    def op(target: Any, operand: int) -> bool:
        return _kind(target) in ("string", "array", "object") and compare(len(target), operand)
    return op


def _membership(items: list) -> Callable[[Any], bool]:
    """`target in items` by JSON equality: scalars through a set, arrays and objects one by one."""
    scalars = {key for key in map(_scalar_key, items) if key is not None}
    composites = [item for item in items if _scalar_key(item) is None]

    def member(target: Any) -> bool:
        key = _scalar_key(target)
        if key is not None:
            return key in scalars
        return any(json_equal(target, item) for item in composites)
    return member


def _contains(target: Any, operand: Any) -> bool:
    kind = _kind(target)
    if kind == "string":
        return type(operand) is str and operand in target
    if kind == "array":
        return any(json_equal(item, operand) for item in target)
    if kind == "object":
        return type(operand) is str and operand in target
    return False


def _check_operand(op: str, operand: Any, field: str) -> Any:
    """The operand checked (and prepared) for `op`."""
    if op in ("lt", "le", "gt", "ge"):
        if _kind(operand) not in ("number", "string"):
            raise ElementError(field, f"{op} compares with a number or a string, got {describe(operand)}")
    elif op in ("in", "not_in"):
        if type(operand) is not list:
            raise ElementError(field, f"{op} needs an array of values, got {describe(operand)}")
        return _membership(operand)
    elif op.startswith("len_"):
        if type(operand) is not int or operand < 0:
            raise ElementError(field, f"{op} needs a length (an integer >= 0), got {describe(operand)}")
    elif op == "matches":
        return _compile_regex(operand, field)
    return operand


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": json_equal,
    "ne": lambda target, operand: not json_equal(target, operand),
    "lt": _ordered(lambda a, b: a < b), "le": _ordered(lambda a, b: a <= b),
    "gt": _ordered(lambda a, b: a > b), "ge": _ordered(lambda a, b: a >= b),
    "in": lambda target, member: member(target),
    "not_in": lambda target, member: not member(target),
    "contains": _contains,
    "truthy": lambda target, _: bool(target),
    "len_eq": _sized(lambda n, m: n == m), "len_gt": _sized(lambda n, m: n > m),
    "len_lt": _sized(lambda n, m: n < m),
    "matches": lambda target, pattern: (type(target) is str and len(target) <= MAX_SUBJECT_LENGTH
                                        and pattern.fullmatch(target) is not None),
}


# ============================================================================ compiling

Predicate = Callable[[Any], bool]


def compile_predicate(predicate: Any, field: str = "test") -> Predicate:
    """Validate `predicate` (ElementError naming the bad field, e.g. `test.any[0].path`) and
    return a function value -> bool that evaluates it."""
    return _compile(predicate, field, 0, [0])


def validate(predicate: Any, field: str = "test") -> None:
    """Raise ElementError naming the bad field if `predicate` is not a valid predicate."""
    compile_predicate(predicate, field)


def evaluate(predicate: Any, value: Any, *, field: str = "test") -> bool:
    """Whether `value` passes `predicate` (validated first: ElementError if it is invalid)."""
    return compile_predicate(predicate, field)(value)


def _compile(predicate: Any, field: str, depth: int, count: list[int]) -> Predicate:
    if type(predicate) is not dict:
        raise ElementError(field, f'expected a predicate object ({{"path", "op", "value"}}, or one of '
                                  f'{one_of(COMBINATORS)}), got {describe(predicate)}')
    count[0] += 1
    if count[0] > MAX_NODES:
        raise ElementError(field, f"the predicate has more than {MAX_NODES} parts")
    combinator = next((key for key in COMBINATORS if key in predicate), None)
    if combinator is not None:
        return _compile_combinator(predicate, combinator, field, depth, count)
    for key in predicate:
        if key not in _LEAF_FIELDS:
            raise ElementError(child(field, key), f"unknown field; expected {one_of(_LEAF_FIELDS)}, "
                                                  f"or one of {one_of(COMBINATORS)} alone")
    op = predicate.get("op")
    if op is None and "op" not in predicate:
        raise ElementError(child(field, "op"), f"required; one of {one_of(OPS)}")
    if type(op) is not str or op not in OPS:
        shown = repr(op) if type(op) is str else describe(op)
        raise ElementError(child(field, "op"), f"unknown op {shown}; expected one of {one_of(OPS)}")
    get = _resolver(_parse_path(predicate.get("path", ""), child(field, "path")))
    value_field = child(field, "value")
    if op in _NO_OPERAND:
        if "value" in predicate:
            raise ElementError(value_field, f"{op} takes no value")
    elif "value" not in predicate:
        raise ElementError(value_field, f"required by {op}")
    if op == "exists":
        return lambda value: get(value) is not MISSING
    operand = _check_operand(op, predicate.get("value"), value_field)
    compare = _COMPARE[op]

    def test(value: Any) -> bool:
        target = get(value)
        return target is not MISSING and compare(target, operand)
    return test


def _compile_combinator(predicate: dict, combinator: str, field: str, depth: int,
                        count: list[int]) -> Predicate:
    for key in predicate:
        if key != combinator:
            raise ElementError(child(field, key), f"an object with {combinator!r} has no other fields")
    if depth >= MAX_DEPTH:
        raise ElementError(field, f"combinators nest deeper than {MAX_DEPTH} levels")
    where = child(field, combinator)
    body = predicate[combinator]
    if combinator == "not":
        inner = _compile(body, where, depth + 1, count)
        return lambda value: not inner(value)
    if type(body) is not list:
        raise ElementError(where, f"expected a list of predicates, got {describe(body)}")
    parts = tuple(_compile(part, child(where, i), depth + 1, count) for i, part in enumerate(body))
    if combinator == "all":
        return lambda value: all(part(value) for part in parts)
    return lambda value: any(part(value) for part in parts)
