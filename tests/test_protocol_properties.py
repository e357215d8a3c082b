"""Property tests of protocol.decode: for any str or bytes it returns, never raises, and
answers as docs/PROTOCOL.md says.

Frames are generated (tests/pf_frames.py writes what orjson cannot): valid submit, result,
heartbeat and error frames with fields replaced by values of any type, integers beyond 64
bits and beyond the double range, deep nesting, lone surrogates, invalid UTF-8 inside strings,
repeated keys, any key order; arbitrary JSON trees; arbitrary bytes and text; each decoded
with and without raw_data (the node's path) and with frame and timeout limits.

`make test` runs the `pfnode` profile (a few seconds, deterministic); HYPOTHESIS_PROFILE=fuzz
(`make fuzz`) runs many more, randomly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import sys

import orjson
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from pfnode.errors import ErrorCode
from pfnode.core.protocol import (DECODER_FAILED, MAX_SEQ, MESSAGE_TYPES, Message, Packet, RawJSON, Rejected,
                                  Result, decode, encode_failure, encode_submit_raw, encode_success_raw)
from tests.pf_frames import (
    BROKEN_TOKENS,
    DEPTHS,
    EDGE_INTS,
    INVALID_UTF8,
    NUMBER_TOKENS,
    TOO_DEEP,
    Bad,
    Obj,
    as_text,
    dump,
    is_utf8,
    nested,
    reference,
    utf8_of,
    valid_seq,
)

settings.register_profile("pfnode", max_examples=300, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz", max_examples=5_000, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "pfnode"))

GROUPS = ("cf", "df", "ed", "co", "mc", "rm")
CODES = {code.value for code in ErrorCode}
ELEMENT = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MAX_TIMEOUT_MS = 2**53 - 1  # whatever the node's maximum: documented in docs/PROTOCOL.md

# ---------------------------------------------------------------------------- strategies

WORDS = ("", "1.0", "2.0", "submit", "result", "error", "heartbeat", "df", "cf", "noop", "boom",
         "success", "PF500", "seq", "payload", "x" * 257, "ü✓😀", "\u0000", "\ufffd", '"seq":5}')
# strings of any characters but lone surrogates, and with them (not UTF-8, or a bad escape)
clean_texts = st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=12), st.sampled_from(WORDS))
texts = st.one_of(clean_texts, st.text(st.characters(exclude_categories=()), max_size=12),
                  st.sampled_from(["\ud800", "a\udfffb"]))
bad_strings = st.builds(lambda head, bad: Bad(head.encode() + bad), st.sampled_from(["", "a", "é"]),
                        st.sampled_from(INVALID_UTF8))
numbers = st.one_of(st.integers(), st.sampled_from(EDGE_INTS), st.floats(allow_nan=False, allow_infinity=False),
                    st.sampled_from(NUMBER_TOKENS))
clean_leaves = st.one_of(st.none(), st.booleans(), numbers, clean_texts)
leaves = st.one_of(clean_leaves, texts)
FIELD_NAMES = ("type", "seq", "payload", "version", "id", "group", "element", "data", "priority",
               "timeout_ms", "dependencies", "metadata", "packet_id", "status", "error", "duration_ms",
               "code", "message", "capabilities", "timestamp")
clean_keys = st.one_of(st.sampled_from(FIELD_NAMES), clean_texts)
keys = st.one_of(clean_keys, texts)
deep = st.builds(nested, st.sampled_from(DEPTHS), st.sampled_from("[{"))


def _containers(children, keys=keys):
    return st.one_of(st.lists(children, max_size=4),
                     st.lists(st.tuples(keys, children), max_size=4).map(Obj))


def _sometimes_deep(trees):
    return st.integers(0, 7).flatmap(lambda i: deep if i == 0 else trees)


# Any well-formed JSON value, valid UTF-8: what a packet's data or metadata may hold.
clean_values = _sometimes_deep(st.recursive(clean_leaves, lambda c: _containers(c, clean_keys), max_leaves=6))
# ... and with lone surrogates in its strings: what a field may hold.
json_values = _sometimes_deep(st.recursive(leaves, _containers, max_leaves=6))
# ... and what it may hold when the frame is broken or not UTF-8.
nasty_values = st.one_of(json_values, bad_strings, st.sampled_from(BROKEN_TOKENS),
                         st.recursive(st.one_of(leaves, bad_strings), _containers, max_leaves=6))
# A value for a field: mostly well-formed (of the wrong type, or out of range, or right),
# sometimes with lone surrogates, sometimes not JSON or not UTF-8.
field_values = st.integers(0, 9).flatmap(lambda i: clean_values if i < 6 else json_values if i < 8 else nasty_values)

ids = st.one_of(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40),
                st.sampled_from(["p-1", "x" * 256, "ü"]))
elements = st.from_regex(ELEMENT, fullmatch=True)


@st.composite
def packets(draw) -> list:
    fields = [("version", "1.0"), ("id", draw(ids)), ("group", draw(st.sampled_from(GROUPS))),
              ("element", draw(st.one_of(st.sampled_from(["noop", "boom", "tr"]), elements))),
              ("data", draw(clean_values))]
    optional = {"priority": st.one_of(st.none(), st.integers(1, 10)),
                "timeout_ms": st.one_of(st.none(), st.integers(1, 86_400_000), st.just(1500.0)),
                "dependencies": st.one_of(st.none(), st.lists(ids, max_size=3)),
                "metadata": st.one_of(st.none(), st.lists(st.tuples(clean_keys, clean_values), max_size=2).map(Obj))}
    for name, strategy in optional.items():
        if draw(st.booleans()):
            fields.append((name, draw(strategy)))
    return fields


@st.composite
def result_payloads(draw) -> list:
    fields = [("packet_id", draw(ids))]
    if draw(st.booleans()):
        fields += [("status", "success"), ("data", draw(clean_values))]
    else:
        fields += [("status", "error"), ("error", Obj([("code", draw(st.sampled_from(["PF500", "PF001", "X"]))),
                                                       ("message", draw(clean_values))]))]
    if draw(st.booleans()):
        fields.append(("duration_ms", draw(st.one_of(st.none(), st.integers(0, 10**6), st.floats(0, 1e6)))))
    return fields


PAYLOADS = {
    "submit": packets(),
    "result": result_payloads(),
    "heartbeat": st.one_of(st.none(), st.builds(lambda t: [("timestamp", t)], st.integers(0, 2**53))),
    "error": st.builds(lambda c, m: [("code", c), ("message", m)], st.sampled_from(["PF400", "PF002"]), clean_texts),
}


@dataclasses.dataclass
class Case:
    frame: str | bytes
    top_seqs: list  # the valid integers the frame's own object holds under "seq", in order
    max_frame_bytes: int | None
    max_timeout_ms: int | None


def _mutate(draw, pairs: list, nasty) -> list:
    """Replace, remove, repeat or add a field."""
    pairs = list(pairs)
    action = draw(st.sampled_from(["replace", "remove", "repeat", "add"]))
    if pairs and action != "add":
        i = draw(st.integers(0, len(pairs) - 1))
        if action == "replace":
            pairs[i] = (pairs[i][0], draw(nasty))
        elif action == "remove":
            del pairs[i]
        else:
            pairs.insert(draw(st.integers(0, len(pairs))), (pairs[i][0], draw(nasty)))
    else:
        pairs.append((draw(keys), draw(nasty)))
    return pairs


def _frame_of(draw, top: list) -> tuple[str | bytes, list]:
    top = draw(st.permutations(top))
    frame = dump(Obj(top), ascii_only=draw(st.booleans()))
    if draw(st.sampled_from([False] * 19 + [True])):  # cut short (Hypothesis favours small indices)
        frame = frame[:draw(st.integers(0, len(frame)))]
    if draw(st.booleans()):
        frame = as_text(frame)
    return frame, [s for key, s in top if key == "seq" and valid_seq(s) is not None]


def _limits(draw) -> tuple[int | None, int | None]:
    return (draw(st.sampled_from([None] * 7 + [64, 256, 2048])),
            draw(st.sampled_from([None, 86_400_000, 1000])))


@st.composite
def frames(draw) -> Case:
    """A valid frame of any type with up to three fields replaced, removed, repeated or added,
    at the top or in the payload."""
    mtype = draw(st.sampled_from(sorted(MESSAGE_TYPES)))
    payload = draw(PAYLOADS[mtype])
    seq = draw(st.one_of(st.integers(0, MAX_SEQ), st.sampled_from([0, 1, MAX_SEQ])))
    top = [("type", mtype), ("seq", seq)]
    for _ in range(draw(st.integers(0, 3))):
        if payload is not None and draw(st.integers(0, 3)):
            payload = _mutate(draw, payload, field_values)
        else:
            top = _mutate(draw, top, field_values)
    top.append(("payload", Obj(payload) if payload is not None else None))
    frame, seqs = _frame_of(draw, top)
    return Case(frame, seqs, *_limits(draw))


@st.composite
def one_field(draw, mtype: str, field: str) -> Case:
    """A valid `mtype` frame with `field` (of the frame, or of its payload) given any value."""
    payload = draw(PAYLOADS[mtype]) or []
    top = [("type", mtype), ("seq", draw(st.integers(0, MAX_SEQ)))]
    value = draw(field_values)
    target = top if field in ("type", "seq", "payload") else payload
    target[:] = [(k, v) for k, v in target if k != field] + [(field, value)]
    if field != "payload":
        top.append(("payload", Obj(payload)))
    frame, seqs = _frame_of(draw, top)
    return Case(frame, seqs, *_limits(draw))


@st.composite
def canonical_unparsable(draw) -> tuple[bytes, int]:
    """A submit too large or too deep to parse, written as TypeScript (seq before the payload)
    or Elixir (sorted keys: payload, seq, type) peers write it."""
    seq = draw(st.integers(0, MAX_SEQ))
    if draw(st.booleans()):  # too large
        data = "x" * draw(st.integers(3000, 6000))
    else:  # too deep (and, past 1500 levels, too large)
        data = nested(draw(st.sampled_from([1030, 1200, 5000])), draw(st.sampled_from("[{")))
    pkt = Obj([("version", "1.0"), ("id", draw(ids)), ("group", "df"), ("element", "noop"), ("data", data)])
    if draw(st.booleans()):
        top = [("type", "submit"), ("seq", seq), ("payload", pkt)]
    else:
        top = [("payload", pkt), ("seq", seq), ("type", "submit")]
    return dump(Obj(top), ascii_only=draw(st.booleans())), seq


# ---------------------------------------------------------------------------- what decode must answer

def _depth_above(value, levels: int) -> bool:
    """Whether containers nest more than `levels` deep in `value` (itself level 1)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if level + 1 > levels:
                    return True
                stack.append((child, level + 1))
    return False


def _raw_json_ok(data) -> None:
    """RawJSON is valid UTF-8 JSON; orjson may only refuse a number beyond the double range."""
    assert type(data) is RawJSON
    bytes(data).decode("utf-8")
    try:
        orjson.loads(memoryview(data))
    except orjson.JSONDecodeError as exc:
        assert "number is infinity" in str(exc), (bytes(data), exc)


def _orjson_error(frame: str | bytes) -> str:
    try:
        orjson.loads(utf8_of(frame).decode("utf-8", "replace"))
    except orjson.JSONDecodeError as exc:
        return str(exc)
    return ""


def check_rejected(r: Rejected) -> None:
    assert r.message != DECODER_FAILED, "a check raised: see the log"
    assert r.code in CODES
    assert r.type is None or r.type in MESSAGE_TYPES
    assert r.packet_id is None or (type(r.packet_id) is str and r.type is not None)
    reply = orjson.loads(r.reply)
    assert set(reply) == {"type", "seq", "payload"} and reply["type"] == "error"
    assert reply["seq"] == r.seq and 0 <= r.seq <= MAX_SEQ
    payload = reply["payload"]
    assert payload["code"] == r.code and payload["message"] == r.message
    assert isinstance(r.message, str) and r.message
    if r.type == "submit" and r.packet_id is not None:
        assert payload["packet_id"] == r.packet_id
    else:
        assert "packet_id" not in payload


def check_message(m: Message, ref: dict, raw_data: bool, max_timeout_ms: int | None) -> None:
    """An accepted frame obeys the documented rules (docs/PROTOCOL.md, restated here)."""
    assert m.type == ref["type"] and m.seq == ref["seq"] and valid_seq(m.seq) is not None
    p = m.payload
    if m.type == "submit":
        assert type(p) is Packet and p.version == "1.0"
        assert type(p.id) is str and 0 < len(p.id) <= 256 and p.id == ref["payload"]["id"]
        p.id.encode()
        assert p.group in GROUPS and type(p.element) is str and ELEMENT.fullmatch(p.element)
        assert type(p.priority) is int and 1 <= p.priority <= 10
        limit = MAX_TIMEOUT_MS if max_timeout_ms is None else min(max_timeout_ms, MAX_TIMEOUT_MS)
        assert p.timeout_ms is None or (type(p.timeout_ms) is int and 0 < p.timeout_ms <= limit)
        assert p.dependencies is None or (type(p.dependencies) is tuple and len(p.dependencies) <= 1024 and all(
            type(d) is str and 0 < len(d) <= 256 for d in p.dependencies))
        assert p.metadata is None or (type(p.metadata) is dict and not _depth_above(p.metadata, 128))
        if raw_data:
            _raw_json_ok(p.data)
            encode_submit_raw(m.seq, p, p.timeout_ms or 1000)  # the hub can forward it
        orjson.dumps(p.metadata)
    elif m.type == "result":
        assert type(p) is Result and type(p.packet_id) is str and p.packet_id
        assert p.status in ("success", "error")
        assert type(p.duration_ms) in (int, float) and math.isfinite(p.duration_ms)
        if p.ok:
            assert p.error is None
            if raw_data:
                _raw_json_ok(p.data)
                encode_success_raw(m.seq, p.packet_id, bytes(p.data), p.duration_ms)  # relayed
        else:
            assert set(p.error) == {"code", "message"} and all(type(v) is str for v in p.error.values())
            encode_failure(m.seq, p.packet_id, p.error["code"], p.error["message"], p.duration_ms)
    else:
        assert type(p) is dict and not _depth_above(p, 128)
        orjson.dumps(p)


@contextlib.contextmanager
def node_recursion_limit():
    """Python's default recursion limit, as in the node: Hypothesis raises it (to ~2000) while
    a test runs, and msgspec's raw_data path recurses as deep as the limit lets it (with the
    default, not as deep as orjson's 1024 levels; see docs/PROTOCOL.md)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def node_decode(case: Case, raw_data: bool) -> Rejected | Message:
    with node_recursion_limit():
        return decode(case.frame, max_frame_bytes=case.max_frame_bytes, max_timeout_ms=case.max_timeout_ms,
                      raw_data=raw_data)


def check(case: Case, raw_data: bool) -> Rejected | Message:
    result = node_decode(case, raw_data)
    assert isinstance(result, (Message, Rejected)), result
    size = len(utf8_of(case.frame))
    oversized = case.max_frame_bytes is not None and size > case.max_frame_bytes
    ref = reference(case.frame)
    if isinstance(result, Message):
        event(f"accepted {result.type}")
        assert not oversized and is_utf8(case.frame)
        if not isinstance(ref, dict):  # only a number orjson reads as infinity, where msgspec skips it
            assert raw_data and "number is infinity" in _orjson_error(case.frame)
            return result
        check_message(result, ref, raw_data, case.max_timeout_ms)
        return result
    event(f"rejected {result.code}")
    check_rejected(result)
    if oversized:
        assert result.code == "PF413"
    elif not is_utf8(case.frame):
        assert result.code == "PF400" and result.message.startswith("frame is not valid UTF-8")
    elif not isinstance(ref, dict):
        assert result.code == "PF400"
        assert ref is TOO_DEEP or result.type is None
    # seq: the frame's own when it is valid, else 0; a frame that cannot be parsed is read by a
    # scan of its head and tail (which may miss it, never invents one)
    if oversized or ref is TOO_DEEP:
        assert result.seq == 0 or case.top_seqs is None or result.seq in case.top_seqs
    elif isinstance(ref, dict):
        assert result.seq == (valid_seq(ref.get("seq")) or 0)
        mtype = ref.get("type")
        known = mtype if isinstance(mtype, str) and mtype in MESSAGE_TYPES else None
        assert result.type == known
    else:
        assert result.seq == 0
    return result


def check_paths_agree(case: Case) -> None:
    """raw_data (the node's path) and full decoding give the same answer, but for the two
    documented differences."""
    lazy, full = check(case, raw_data=True), check(case, raw_data=False)
    if isinstance(lazy, Rejected) and isinstance(full, Rejected):
        assert (lazy.seq, lazy.code, lazy.message, lazy.type, lazy.packet_id) == \
               (full.seq, full.code, full.message, full.type, full.packet_id)
    elif isinstance(lazy, Message) and isinstance(full, Message):
        assert (lazy.type, lazy.seq) == (full.type, full.seq)
        if lazy.type in ("submit", "result"):
            assert dataclasses.replace(lazy.payload, data=None) == dataclasses.replace(full.payload, data=None)
            if type(lazy.payload.data) is RawJSON:
                assert orjson.loads(memoryview(lazy.payload.data)) == full.payload.data
        else:
            assert lazy.payload == full.payload
    elif isinstance(lazy, Message):  # msgspec does not read numbers in data or unknown fields
        assert "number is infinity" in full.message
    else:  # data nested past msgspec's recursion and orjson's writing (about 250-1020 levels)
        assert "data nests too deep" in lazy.message


# ---------------------------------------------------------------------------- properties

@given(frames())
def test_any_frame(case):
    check_paths_agree(case)


FIELDS = (*[("submit", f) for f in ("type", "seq", "payload", "version", "id", "group", "element", "data",
                                    "priority", "timeout_ms", "dependencies", "metadata")],
          *[("result", f) for f in ("payload", "packet_id", "status", "data", "error", "duration_ms")],
          ("heartbeat", "payload"), ("heartbeat", "timestamp"), ("heartbeat", "capabilities"),
          ("error", "payload"), ("error", "code"), ("error", "message"), ("error", "packet_id"))


@given(st.sampled_from(FIELDS).flatmap(lambda field: st.tuples(st.just(field), one_field(*field))))
def test_any_value_in_each_field(field_and_case):
    (mtype, field), case = field_and_case
    event(f"field {mtype}.{field}")
    check_paths_agree(case)
    ref = reference(case.frame)
    result = node_decode(case, raw_data=True)
    if isinstance(result, Rejected) and isinstance(ref, dict) and result.code != "PF413" and is_utf8(case.frame):
        if mtype == "submit" and field not in ("type", "seq"):
            assert result.code == "PF002"  # a packet the node cannot accept, in a readable frame
            packet_id = ref["payload"].get("id") if isinstance(ref.get("payload"), dict) else None
            assert result.packet_id == (packet_id if isinstance(packet_id, str) else None)
        elif mtype != "submit":
            assert result.code == "PF400"


@given(st.one_of(json_values, nasty_values), st.booleans(), st.booleans())
def test_any_json_value_as_a_frame(value, ascii_only, as_str):
    frame = dump(value, ascii_only)
    check_paths_agree(Case(as_text(frame) if as_str else frame, None, None, None))


@given(st.one_of(st.binary(max_size=300), st.text(st.characters(exclude_categories=()), max_size=100),
                 st.builds(lambda b: b'{"type":"submit","seq":1,' + b, st.binary(max_size=100))),
       st.sampled_from([None, 16, 128]))
def test_any_bytes_or_text(frame, limit):
    check_paths_agree(Case(frame, None, limit, None))


@given(canonical_unparsable(), st.booleans())
def test_a_frame_too_large_or_too_deep_is_answered_with_its_seq(case, raw_data):
    frame, seq = case
    too_large = len(frame) > 3000
    result = node_decode(Case(frame, [seq], 3000 if too_large else None, None), raw_data)
    assert isinstance(result, Rejected) and result.seq == seq and result.type == "submit", result
    check_rejected(result)
    assert result.code == ("PF413" if too_large else "PF400")


@st.composite
def unmutated_frames(draw) -> Case:
    mtype = draw(st.sampled_from(sorted(MESSAGE_TYPES)))
    payload = draw(PAYLOADS[mtype])
    top = [("type", mtype), ("seq", draw(st.integers(0, MAX_SEQ))), ("payload", Obj(payload) if payload else None)]
    frame, seqs = _frame_of(draw, top)
    return Case(utf8_of(frame), seqs, *_limits(draw))


@given(unmutated_frames(), st.sampled_from(INVALID_UTF8), st.data())
def test_invalid_utf8_in_any_string_is_pf400_with_the_frames_seq(case, bad, data):
    """The bytes go just after a quote: into a key or a string value (or, after a closing
    quote, between tokens: then the frame is not JSON either, and its seq is not read)."""
    quotes = [i for i, byte in enumerate(case.frame) if byte == ord('"')]
    assume(quotes)
    at = data.draw(st.sampled_from(quotes)) + 1
    frame = case.frame[:at] + bad + case.frame[at:]
    as_str = data.draw(st.booleans())
    case = Case(as_text(frame) if as_str else frame, case.top_seqs, case.max_frame_bytes, case.max_timeout_ms)
    result = check(case, raw_data=True)
    assert isinstance(result, Rejected)
    if result.code != "PF413":
        assert result.message.startswith("frame is not valid UTF-8")
