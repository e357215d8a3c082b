"""Tests of the sans-I/O protocol core: pfnode/core/protocol.py.

Plain synchronous tests: strings and bytes in, Message / Rejected out.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import orjson
import pytest

from pfnode.errors import ErrorCode
from pfnode.core.protocol import (MAX_SEQ, Message, Packet, Rejected, Result, decode, encode_error,
                                  encode_failure, encode_heartbeat, encode_json, encode_message,
                                  encode_result, encode_submit, encode_success_raw)

UUID = "550e8400-e29b-41d4-a716-446655440000"

# The spec's two packet examples, verbatim.
MINIMAL_PACKET = {
    "version": "1.0",
    "id": UUID,
    "group": "df",
    "element": "tr",
    "data": "any-json-value",
    "priority": 5,
}
EXTENDED_PACKET = {
    **MINIMAL_PACKET,
    "timeout_ms": 30000,
    "dependencies": ["packet-id-1"],
    "metadata": {"custom": "fields"},
}

_MISSING = object()


def packet(**changes) -> dict:
    """The minimal packet with fields replaced; a value of _MISSING removes the field."""
    pkt = dict(MINIMAL_PACKET)
    for key, value in changes.items():
        if value is _MISSING:
            pkt.pop(key, None)
        else:
            pkt[key] = value
    return pkt


def frame(mtype="submit", seq=1, payload=_MISSING, **extra) -> bytes:
    obj = {"type": mtype, "seq": seq}
    if payload is not _MISSING:
        obj["payload"] = payload
    obj.update(extra)
    return orjson.dumps(obj)


def submit(seq=1, **changes) -> bytes:
    return frame("submit", seq, packet(**changes))


def assert_error_reply(rejected: Rejected, code: str, seq: int) -> dict:
    """The Rejected has `code` and `seq`, and its reply is a valid error frame saying so."""
    assert isinstance(rejected, Rejected), rejected
    assert rejected.code == code
    assert rejected.seq == seq
    reply = orjson.loads(rejected.reply)
    assert isinstance(reply, dict)
    assert set(reply) == {"type", "seq", "payload"}
    assert reply["type"] == "error"
    assert reply["seq"] == seq
    assert reply["payload"]["code"] == code
    assert isinstance(reply["payload"]["message"], str) and reply["payload"]["message"]
    assert reply["payload"]["message"] == rejected.message
    return reply["payload"]


# ============================================================================ valid submit frames

def test_minimal_packet_from_the_spec():
    msg = decode(frame("submit", 12345, MINIMAL_PACKET))
    assert isinstance(msg, Message)
    assert msg.type == "submit"
    assert msg.seq == 12345
    assert msg.payload == Packet(id=UUID, group="df", element="tr", data="any-json-value",
                                 priority=5, timeout_ms=None, dependencies=None, metadata=None,
                                 version="1.0")
    assert msg.payload.key == "df:tr"


def test_extended_packet_from_the_spec():
    msg = decode(frame("submit", 7, EXTENDED_PACKET))
    assert isinstance(msg, Message)
    pkt = msg.payload
    assert pkt.timeout_ms == 30000
    assert pkt.dependencies == ("packet-id-1",)
    assert pkt.metadata == {"custom": "fields"}
    assert (pkt.id, pkt.group, pkt.element, pkt.data, pkt.priority) == (
        UUID, "df", "tr", "any-json-value", 5)


def test_elixir_style_nulls_are_accepted():
    """Jason encodes absent optional struct fields as null, and sorts the keys."""
    elixir = orjson.dumps(
        {"type": "submit", "seq": 3,
         "payload": {**MINIMAL_PACKET, "data": None, "timeout_ms": None,
                     "dependencies": None, "metadata": None}},
        option=orjson.OPT_SORT_KEYS)
    assert elixir.startswith(b'{"payload":')
    msg = decode(elixir)
    assert isinstance(msg, Message)
    pkt = msg.payload
    assert pkt.data is None
    assert pkt.timeout_ms is None
    assert pkt.dependencies is None
    assert pkt.metadata is None
    assert msg.seq == 3


@pytest.mark.parametrize("priority", [_MISSING, None])
def test_priority_defaults_to_5(priority):
    msg = decode(submit(priority=priority))
    assert isinstance(msg, Message)
    assert msg.payload.priority == 5


@pytest.mark.parametrize("priority", [1, 2, 9, 10])
def test_priority_in_range_is_kept(priority):
    msg = decode(submit(priority=priority))
    assert isinstance(msg, Message)
    assert msg.payload.priority == priority


def test_absent_data_is_null():
    msg = decode(submit(data=_MISSING))
    assert isinstance(msg, Message)
    assert msg.payload.data is None


@pytest.mark.parametrize("data", [
    0, -1.5, True, False, "", "héllo ✓", [], [1, [2, [3]]], {}, {"items": [1, 2, 3, 4, 5]},
    {"nested": {"deep": [None, {"x": "y"}]}},
])
def test_any_json_data_passes_through(data):
    msg = decode(submit(data=data))
    assert isinstance(msg, Message)
    assert msg.payload.data == data
    assert type(msg.payload.data) is type(data)


@pytest.mark.parametrize("kind", ["str", "bytes", "bytearray", "memoryview"])
def test_decode_accepts_str_and_bytes(kind):
    raw = frame("submit", 9, EXTENDED_PACKET)
    if kind == "str":
        raw = raw.decode()
    elif kind == "bytearray":
        raw = bytearray(raw)
    elif kind == "memoryview":
        raw = memoryview(raw)
    msg = decode(raw)
    assert isinstance(msg, Message)
    assert msg.seq == 9
    assert msg.payload.dependencies == ("packet-id-1",)


def test_edge_values_that_are_still_valid():
    pid = "i" * 256
    element = "e" * 64
    msg = decode(submit(id=pid, element=element, timeout_ms=1, dependencies=[]),
                 max_timeout_ms=1)
    assert isinstance(msg, Message)
    assert msg.payload.id == pid
    assert msg.payload.element == element
    assert msg.payload.timeout_ms == 1
    assert msg.payload.dependencies == ()


@pytest.mark.parametrize("element", ["transform", "process_data", "a.b-c_D9", "0"])
def test_element_charset(element):
    msg = decode(submit(element=element))
    assert isinstance(msg, Message)
    assert msg.payload.key == f"df:{element}"


@pytest.mark.parametrize("group", ["cf", "df", "ed", "co", "mc", "rm"])
def test_all_six_groups_accepted(group):
    msg = decode(submit(group=group))
    assert isinstance(msg, Message)
    assert msg.payload.group == group


@pytest.mark.parametrize("seq", [0, 1, MAX_SEQ])
def test_seq_bounds_accepted(seq):
    msg = decode(submit(seq=seq))
    assert isinstance(msg, Message)
    assert msg.seq == seq


@pytest.mark.parametrize("timeout_ms, expected", [(30000.0, 30000), (1.0, 1), (5e3, 5000)])
def test_integral_float_timeout_is_accepted_as_int(timeout_ms, expected):
    msg = decode(submit(timeout_ms=timeout_ms), max_timeout_ms=60_000)
    assert isinstance(msg, Message)
    assert msg.payload.timeout_ms == expected
    assert type(msg.payload.timeout_ms) is int


def test_timeout_equal_to_the_maximum_is_accepted():
    msg = decode(submit(timeout_ms=60_000), max_timeout_ms=60_000)
    assert isinstance(msg, Message)
    assert msg.payload.timeout_ms == 60_000


def test_large_timeout_accepted_without_a_maximum():
    msg = decode(submit(timeout_ms=10**12))
    assert isinstance(msg, Message)
    assert msg.payload.timeout_ms == 10**12


# ============================================================================ PF400 rejections

@pytest.mark.parametrize("raw", [
    b"", b"{", b"not json", b"{'seq': 1}", b'{"type":"submit",}', b"\xff\xfe\x00",
    "", "{", "nope", '{"seq": 1, "type": "heartbeat"', "NaN",
])
def test_not_json_is_pf400_seq_0(raw):
    assert_error_reply(decode(raw), "PF400", 0)


@pytest.mark.parametrize("raw", [b"[]", b'[{"type":"heartbeat","seq":1}]', b"42", b'"str"',
                                 b"null", b"true", b"1.5"])
def test_not_an_object_is_pf400_seq_0(raw):
    assert_error_reply(decode(raw), "PF400", 0)


@pytest.mark.parametrize("seq", [_MISSING, None, "1", -1, True, False, 1.5, 1.0, [1], {"n": 1},
                                 MAX_SEQ + 1, 2**63])
def test_bad_seq_is_pf400_seq_0(seq):
    obj = {"type": "heartbeat", "payload": {}}
    if seq is not _MISSING:
        obj["seq"] = seq
    rejected = decode(orjson.dumps(obj))
    payload = assert_error_reply(rejected, "PF400", 0)
    assert "seq" in payload["message"]


@pytest.mark.parametrize("mtype", [_MISSING, None, "", "submitt", "SUBMIT", "ping", 1, 1.5, True])
def test_unknown_type_is_pf400_echoing_seq(mtype):
    obj = {"seq": 41, "payload": {}}
    if mtype is not _MISSING:
        obj["type"] = mtype
    payload = assert_error_reply(decode(orjson.dumps(obj)), "PF400", 41)
    assert "type" in payload["message"]



@pytest.mark.parametrize("mtype", [["submit"], {"submit": 1}, []], ids=["list", "object", "empty"])
def test_container_type_is_pf400_not_an_exception(mtype):
    raw = orjson.dumps({"type": mtype, "seq": 41, "payload": {}})
    assert_error_reply(decode(raw), "PF400", 41)


@pytest.mark.parametrize("group", [["df"], {"df": 1}], ids=["list", "object"])
def test_container_group_is_pf002_not_an_exception(group):
    rejected = decode(submit(seq=42, id="pid", group=group))
    assert_error_reply(rejected, "PF002", 42)
    assert rejected.packet_id == "pid"


@pytest.mark.parametrize("mtype", ["heartbeat", "error"])
@pytest.mark.parametrize("bad_payload", [[1, 2], "x", 5, True, 0.5])
def test_non_object_heartbeat_or_error_payload_is_pf400(mtype, bad_payload):
    assert_error_reply(decode(frame(mtype, 17, bad_payload)), "PF400", 17)


# ============================================================================ PF002 rejections

PF002_CASES = {
    # version
    "version 2.0": dict(version="2.0"),
    "version number": dict(version=1.0),
    "version missing": dict(version=_MISSING),
    "version null": dict(version=None),
    # id
    "id missing": dict(id=_MISSING),
    "id null": dict(id=None),
    "id empty": dict(id=""),
    "id number": dict(id=5),
    "id too long": dict(id="x" * 257),
    # group
    "group unknown": dict(group="xx"),
    "group uppercase": dict(group="DF"),
    "group missing": dict(group=_MISSING),
    "group number": dict(group=1),
    # element
    "element empty": dict(element=""),
    "element space": dict(element="has space"),
    "element colon": dict(element="df:tr"),
    "element slash": dict(element="a/b"),
    "element too long": dict(element="e" * 65),
    "element number": dict(element=5),
    "element missing": dict(element=_MISSING),
    "element null": dict(element=None),
    # priority
    "priority 0": dict(priority=0),
    "priority 11": dict(priority=11),
    "priority negative": dict(priority=-1),
    "priority true": dict(priority=True),
    "priority false": dict(priority=False),
    "priority string": dict(priority="5"),
    "priority fraction": dict(priority=5.5),
    "priority list": dict(priority=[5]),
    # timeout_ms
    "timeout 0": dict(timeout_ms=0),
    "timeout 0.0": dict(timeout_ms=0.0),
    "timeout negative": dict(timeout_ms=-5),
    "timeout true": dict(timeout_ms=True),
    "timeout false": dict(timeout_ms=False),
    "timeout string": dict(timeout_ms="1000"),
    "timeout fraction": dict(timeout_ms=1.5),
    "timeout list": dict(timeout_ms=[1000]),
    "timeout object": dict(timeout_ms={"ms": 1000}),
    "timeout over max": dict(timeout_ms=60_001),
    "timeout float over max": dict(timeout_ms=120_000.0),
    # dependencies
    "deps string": dict(dependencies="packet-id-1"),
    "deps object": dict(dependencies={"a": 1}),
    "deps numbers": dict(dependencies=[1, 2]),
    "deps null item": dict(dependencies=[None]),
    "deps empty id": dict(dependencies=[""]),
    "deps id too long": dict(dependencies=["x" * 257]),
    "deps too many": dict(dependencies=[f"p{i}" for i in range(1025)]),
    "deps mixed": dict(dependencies=["ok", 3]),
    # metadata
    "metadata string": dict(metadata="x"),
    "metadata list": dict(metadata=[1]),
    "metadata number": dict(metadata=5),
    "metadata true": dict(metadata=True),
}


@pytest.mark.parametrize("changes", list(PF002_CASES.values()), ids=list(PF002_CASES))
def test_invalid_packet_is_pf002_echoing_seq(changes):
    rejected = decode(submit(seq=23, **changes), max_timeout_ms=60_000)
    assert_error_reply(rejected, "PF002", 23)


@pytest.mark.parametrize("field, changes", [
    ("version", dict(version="2.0")),
    ("group", dict(group="xx")),
    ("element", dict(element="bad element")),
    ("priority", dict(priority=11)),
    ("timeout_ms", dict(timeout_ms=-1)),
    ("dependencies", dict(dependencies="nope")),
    ("metadata", dict(metadata=[1])),
])
def test_pf002_message_names_the_field_and_carries_the_packet_id(field, changes):
    rejected = decode(submit(seq=5, id="client-id-1", **changes))
    payload = assert_error_reply(rejected, "PF002", 5)
    assert field in payload["message"]
    assert rejected.packet_id == "client-id-1"
    assert payload["packet_id"] == "client-id-1"


@pytest.mark.parametrize("pid", [_MISSING, None, 5, ["id"], {"id": "x"}])
def test_pf002_without_a_readable_id_has_no_packet_id(pid):
    rejected = decode(submit(seq=6, id=pid))
    payload = assert_error_reply(rejected, "PF002", 6)
    assert rejected.packet_id is None
    assert "packet_id" not in payload


def test_timeout_over_max_message_mentions_the_maximum():
    rejected = decode(submit(timeout_ms=90_000), max_timeout_ms=60_000)
    payload = assert_error_reply(rejected, "PF002", 1)
    assert "60000" in payload["message"]


@pytest.mark.parametrize("payload", [_MISSING, None, "packet", 5, [MINIMAL_PACKET]])
def test_submit_payload_not_an_object_is_pf002(payload):
    rejected = decode(frame("submit", 8, payload))
    reply = assert_error_reply(rejected, "PF002", 8)
    assert "packet_id" not in reply


# ============================================================================ PF413 oversized frames

def big_packet(size: int = 4000) -> dict:
    return packet(data="x" * size)


@pytest.mark.parametrize("as_str", [False, True], ids=["bytes", "str"])
def test_oversized_typescript_order_recovers_seq_from_the_head(as_str):
    # JSON.stringify({type, seq, payload}) keeps insertion order: type, seq, payload.
    raw = orjson.dumps({"type": "submit", "seq": 4242, "payload": big_packet()})
    assert raw.startswith(b'{"type":"submit","seq":4242,')
    rejected = decode(raw.decode() if as_str else raw, max_frame_bytes=1000)
    payload = assert_error_reply(rejected, "PF413", 4242)
    assert "1000" in payload["message"]


@pytest.mark.parametrize("as_str", [False, True], ids=["bytes", "str"])
def test_oversized_elixir_sorted_order_recovers_seq_from_the_tail(as_str):
    raw = orjson.dumps({"type": "submit", "seq": 9001, "payload": big_packet()},
                       option=orjson.OPT_SORT_KEYS)
    assert raw.startswith(b'{"payload":')
    assert raw.endswith(b'"seq":9001,"type":"submit"}')
    rejected = decode(raw.decode() if as_str else raw, max_frame_bytes=1000)
    assert_error_reply(rejected, "PF413", 9001)


@pytest.mark.parametrize("as_str", [False, True], ids=["bytes", "str"])
def test_oversized_without_seq_answers_seq_0(as_str):
    raw = orjson.dumps({"type": "submit", "payload": big_packet()})
    rejected = decode(raw.decode() if as_str else raw, max_frame_bytes=1000)
    assert_error_reply(rejected, "PF413", 0)


def test_oversized_garbage_answers_seq_0():
    assert_error_reply(decode(b"\x00" * 5000, max_frame_bytes=100), "PF413", 0)


def test_oversized_seq_beyond_max_seq_is_not_echoed():
    raw = (b'{"type":"submit","seq":' + str(MAX_SEQ + 1).encode()
           + b',"payload":"' + b"x" * 2000 + b'"}')
    rejected = decode(raw, max_frame_bytes=100)
    assert_error_reply(rejected, "PF413", 0)


def test_frame_size_limit_boundary():
    raw = submit(seq=2)
    exact = decode(raw, max_frame_bytes=len(raw))
    assert isinstance(exact, Message)
    assert exact.seq == 2
    over = decode(raw, max_frame_bytes=len(raw) - 1)
    assert_error_reply(over, "PF413", 2)


def test_size_limit_is_checked_before_parsing():
    """An oversized frame is PF413 even if it is not valid JSON."""
    raw = b'{"type":"submit","seq":12,' + b"!" * 500
    assert_error_reply(decode(raw, max_frame_bytes=100), "PF413", 12)
    assert_error_reply(decode(raw), "PF400", 0)


def test_str_frame_limit_counts_utf8_bytes():
    raw = orjson.dumps({"type": "submit", "seq": 3, "payload": packet(data="é" * 600)}).decode()
    limit = len(raw) + 10  # more than the characters, less than the UTF-8 bytes
    assert len(raw.encode()) > limit
    assert_error_reply(decode(raw, max_frame_bytes=limit), "PF413", 3)


def test_oversized_elixir_frame_with_seq_inside_data_echoes_the_frame_seq():
    data = [{"seq": 7, "reading": "x" * 100} for _ in range(50)]
    raw = orjson.dumps({"type": "submit", "seq": 42, "payload": packet(data=data)},
                       option=orjson.OPT_SORT_KEYS)
    assert raw.endswith(b'"seq":42,"type":"submit"}')
    assert_error_reply(decode(raw, max_frame_bytes=1000), "PF413", 42)


def test_oversized_str_with_lone_surrogate_does_not_raise():
    raw = '{"type":"submit","seq":5,"payload":"\ud800' + "x" * 200 + '"}'
    payload = assert_error_reply(decode(raw), "PF400", 5)  # under no limit: not UTF-8
    assert payload["message"].startswith("frame is not valid UTF-8")
    result = decode(raw, max_frame_bytes=50)
    assert isinstance(result, Rejected)
    assert result.code == "PF413"


# ============================================================================ result frames

def test_success_result_frame():
    msg = decode(frame("result", 0, {"packet_id": "p1", "status": "success",
                                     "data": {"x": [1, 2]}, "duration_ms": 2}))
    assert isinstance(msg, Message)
    assert msg.type == "result"
    assert msg.seq == 0
    res = msg.payload
    assert isinstance(res, Result)
    assert res.ok
    assert res.packet_id == "p1"
    assert res.data == {"x": [1, 2]}
    assert res.error is None
    assert res.error_code is None
    assert res.duration_ms == 2


def test_error_result_frame():
    msg = decode(frame("result", 14, {"packet_id": "p2", "status": "error",
                                      "error": {"code": "PF500", "message": "boom"},
                                      "duration_ms": 1.5}))
    assert isinstance(msg, Message)
    res = msg.payload
    assert not res.ok
    assert res.error_code == "PF500"
    assert res.error == {"code": "PF500", "message": "boom"}
    assert res.duration_ms == 1.5
    assert msg.seq == 14


def test_elixir_result_with_nulls():
    success = decode(orjson.dumps(
        {"type": "result", "seq": 0,
         "payload": {"packet_id": "p", "status": "success", "data": None, "error": None,
                     "duration_ms": 2}}, option=orjson.OPT_SORT_KEYS))
    assert isinstance(success, Message)
    assert success.payload.ok and success.payload.data is None and success.payload.error is None
    failure = decode(orjson.dumps(
        {"type": "result", "seq": 0,
         "payload": {"packet_id": "p", "status": "error", "data": None,
                     "error": {"code": "PF001", "message": "No handler for df:x"},
                     "duration_ms": 0}}, option=orjson.OPT_SORT_KEYS))
    assert isinstance(failure, Message)
    assert failure.payload.error_code == "PF001"


def test_error_result_without_message_gets_an_empty_message():
    msg = decode(frame("result", 1, {"packet_id": "p", "status": "error",
                                     "error": {"code": "PF500"}, "duration_ms": 0}))
    assert isinstance(msg, Message)
    assert msg.payload.error == {"code": "PF500", "message": ""}


@pytest.mark.parametrize("duration", [None, _MISSING])
def test_null_or_missing_duration_is_zero(duration):
    payload = {"packet_id": "p", "status": "success", "data": 1}
    if duration is not _MISSING:
        payload["duration_ms"] = duration
    msg = decode(frame("result", 1, payload))
    assert isinstance(msg, Message)
    assert msg.payload.duration_ms == 0


BAD_RESULTS = {
    "not an object": [1, 2],
    "null payload": None,
    "missing packet_id": {"status": "success", "duration_ms": 0},
    "empty packet_id": {"packet_id": "", "status": "success", "duration_ms": 0},
    "numeric packet_id": {"packet_id": 5, "status": "success", "duration_ms": 0},
    "bad status": {"packet_id": "p", "status": "ok", "duration_ms": 0},
    "missing status": {"packet_id": "p", "duration_ms": 0},
    "error without error": {"packet_id": "p", "status": "error", "duration_ms": 0},
    "error null error": {"packet_id": "p", "status": "error", "error": None, "duration_ms": 0},
    "error missing code": {"packet_id": "p", "status": "error",
                           "error": {"message": "m"}, "duration_ms": 0},
    "error numeric code": {"packet_id": "p", "status": "error",
                           "error": {"code": 500, "message": "m"}, "duration_ms": 0},
    "error as string": {"packet_id": "p", "status": "error", "error": "PF500", "duration_ms": 0},
    "string duration": {"packet_id": "p", "status": "success", "duration_ms": "5"},
    "bool duration": {"packet_id": "p", "status": "success", "duration_ms": True},
}


@pytest.mark.parametrize("payload", list(BAD_RESULTS.values()), ids=list(BAD_RESULTS))
def test_bad_result_is_pf400_echoing_seq(payload):
    assert_error_reply(decode(frame("result", 31, payload)), "PF400", 31)


# ============================================================================ heartbeat / error frames

def test_heartbeat_frame_accepted():
    msg = decode(frame("heartbeat", 12, {"timestamp": 1_700_000_000_000}))
    assert msg == Message("heartbeat", 12, {"timestamp": 1_700_000_000_000})


@pytest.mark.parametrize("payload", [None, _MISSING])
def test_heartbeat_with_null_or_no_payload(payload):
    msg = decode(frame("heartbeat", 3, payload))
    assert isinstance(msg, Message)
    assert msg.type == "heartbeat"
    assert msg.payload == {}


def test_error_frame_accepted():
    msg = decode(frame("error", 99, {"code": "PF002", "message": "bad", "packet_id": "p"}))
    assert isinstance(msg, Message)
    assert msg.type == "error"
    assert msg.seq == 99
    assert msg.payload == {"code": "PF002", "message": "bad", "packet_id": "p"}


def test_unknown_top_level_keys_are_ignored():
    msg = decode(frame("heartbeat", 4, {"timestamp": 1}, extra="ignored"))
    assert isinstance(msg, Message)
    assert msg.payload == {"timestamp": 1}


# ============================================================================ encoders

@pytest.mark.parametrize("data_json, data", [
    (b'"HELLO WORLD"', "HELLO WORLD"),
    (b"30", 30),
    (b"null", None),
    (b'{"valid":true}', {"valid": True}),
    (b"[[19.0,22.0],[43.0,50.0]]", [[19.0, 22.0], [43.0, 50.0]]),
])
def test_encode_success_raw_splices_data_into_the_result_shape(data_json, data):
    raw = encode_success_raw(77, UUID, data_json, 1.23456)
    assert data_json in raw  # spliced verbatim, not re-encoded
    obj = orjson.loads(raw)
    assert obj["type"] == "result"
    assert obj["seq"] == 77
    # The spec's Result: packet_id, status, data, duration_ms (no error on success).
    assert set(obj["payload"]) == {"packet_id", "status", "data", "duration_ms"}
    assert obj["payload"]["packet_id"] == UUID
    assert obj["payload"]["status"] == "success"
    assert obj["payload"]["data"] == data
    assert obj["payload"]["duration_ms"] == pytest.approx(1.23456, abs=1e-3)
    msg = decode(raw)  # and a peer (or our own client) accepts it
    assert isinstance(msg, Message)
    assert msg.payload == Result(UUID, "success", data, None, obj["payload"]["duration_ms"])


def test_encode_success_raw_escapes_the_packet_id():
    pid = 'quote" back\\slash ✓ \n'
    obj = orjson.loads(encode_success_raw(1, pid, b"1", 0))
    assert obj["payload"]["packet_id"] == pid


@pytest.mark.parametrize("code", ["PF500", ErrorCode.DEADLINE_EXCEEDED])
def test_encode_failure(code):
    raw = encode_failure(5, "pid-1", code, "ValueError: boom", 2.5)
    obj = orjson.loads(raw)
    expected_code = code.value if isinstance(code, ErrorCode) else code
    assert obj == {"type": "result", "seq": 5,
                   "payload": {"packet_id": "pid-1", "status": "error",
                               "error": {"code": expected_code, "message": "ValueError: boom"},
                               "duration_ms": 2.5}}
    msg = decode(raw)
    assert isinstance(msg, Message)
    assert msg.payload.error_code == expected_code
    assert not msg.payload.ok


def test_encode_failure_default_duration_is_zero():
    obj = orjson.loads(encode_failure(1, "p", "PF001", "No handler for df:x"))
    assert obj["payload"]["duration_ms"] == 0


def test_encode_error_without_packet_id():
    obj = orjson.loads(encode_error(8, ErrorCode.MALFORMED_FRAME, "bad frame"))
    assert obj == {"type": "error", "seq": 8, "payload": {"code": "PF400", "message": "bad frame"}}


def test_encode_error_with_packet_id():
    obj = orjson.loads(encode_error(8, "PF002", "bad packet", "pid-9"))
    assert obj == {"type": "error", "seq": 8,
                   "payload": {"code": "PF002", "message": "bad packet", "packet_id": "pid-9"}}
    msg = decode(encode_error(8, "PF002", "bad packet", "pid-9"))
    assert isinstance(msg, Message) and msg.type == "error"


def test_encode_heartbeat_round_trips():
    raw = encode_heartbeat(21, {"timestamp": 123, "status": {"workers": 2}})
    assert orjson.loads(raw) == {"type": "heartbeat", "seq": 21,
                                 "payload": {"timestamp": 123, "status": {"workers": 2}}}
    assert decode(raw) == Message("heartbeat", 21, {"timestamp": 123, "status": {"workers": 2}})


@pytest.mark.parametrize("pkt", [
    Packet(id=UUID, group="df", element="tr", data="any-json-value"),
    Packet(id="p-2", group="cf", element="validate", data=None, priority=10),
    Packet(id="p-3", group="ed", element="notify_users",
           data={"message": "System maintenance in 10 minutes"}, priority=9, timeout_ms=30000,
           dependencies=("packet-id-1", "packet-id-2"), metadata={"custom": "fields"}),
    Packet(id="ü-4", group="rm", element="cache", data=[1, 2.5, "ü", None, {"k": []}],
           priority=1, dependencies=(), metadata={}),
])
def test_encode_submit_round_trips_through_decode(pkt):
    raw = encode_submit(1234, pkt)
    msg = decode(raw, max_frame_bytes=1 << 20, max_timeout_ms=60_000)
    assert isinstance(msg, Message)
    assert msg.type == "submit"
    assert msg.seq == 1234
    assert msg.payload == pkt


def test_encode_submit_omits_absent_optionals():
    wire = orjson.loads(encode_submit(1, Packet(id="p", group="df", element="tr", data=1)))
    assert wire["payload"] == {"version": "1.0", "id": "p", "group": "df", "element": "tr",
                               "data": 1, "priority": 5}


def test_encode_result_round_trips_through_decode():
    for res in (Result("p", "success", {"a": 1}, None, 3.5),
                Result("p", "error", None, {"code": "PF408", "message": "deadline"}, 1)):
        msg = decode(encode_result(6, res))
        assert isinstance(msg, Message)
        assert msg.payload == res


def test_numpy_values_encode():
    arr = np.arange(6, dtype=np.float64).reshape(2, 3)
    assert orjson.loads(encode_json(arr)) == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert orjson.loads(encode_json(np.float64(2.5))) == 2.5
    assert orjson.loads(encode_json(np.int64(7))) == 7
    assert orjson.loads(encode_json({"v": np.array([1, 2], dtype=np.int32)})) == {"v": [1, 2]}
    raw = encode_message("result", 1, {"packet_id": "p", "status": "success",
                                       "data": np.array([1.5, 2.5]), "duration_ms": 0})
    msg = decode(raw)
    assert isinstance(msg, Message)
    assert msg.payload.data == [1.5, 2.5]
    pkt = Packet(id="p", group="df", element="fft", data=np.array([1.0, 0.0, -1.0]))
    decoded = decode(encode_submit(2, pkt))
    assert isinstance(decoded, Message)
    assert decoded.payload.data == [1.0, 0.0, -1.0]


# ============================================================================ property-style

def _random_json(rng: random.Random, depth: int = 0):
    choice = rng.randrange(9 if depth < 4 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, 1, -1, 5, 10, 11, MAX_SEQ, MAX_SEQ + 1, 2**63 - 1,
                           rng.randint(-10**6, 10**6)])
    if choice == 3:
        return rng.choice([0.0, 1.0, -0.5, 1e300, rng.uniform(-1e6, 1e6)])
    if choice in (4, 5):
        return rng.choice(["", "1.0", "submit", "result", "error", "heartbeat", "df", "tr",
                           "x" * rng.randrange(300), "ü✓\u0000", "seq"])
    if choice == 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["type", "seq", "payload", "version", "id", "group", "element", "data", "priority",
            "timeout_ms", "dependencies", "metadata", "packet_id", "status", "error",
            "duration_ms", "code", "message", "other"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


def _mutated_frame(rng: random.Random):
    """A mostly-valid frame with one or two fields replaced by random values."""
    base = rng.choice([
        {"type": "submit", "seq": 1, "payload": dict(EXTENDED_PACKET)},
        {"type": "result", "seq": 0, "payload": {"packet_id": "p", "status": "error",
                                                 "error": {"code": "PF500", "message": "m"},
                                                 "duration_ms": 1}},
        {"type": "heartbeat", "seq": 2, "payload": {"timestamp": 1}},
        {"type": "error", "seq": 3, "payload": {"code": "PF400", "message": "m"}},
    ])
    for _ in range(rng.randrange(1, 3)):
        target = base if rng.random() < 0.3 or not isinstance(base.get("payload"), dict) \
            else base["payload"]
        key = rng.choice(list(target) + ["extra"])
        if rng.random() < 0.2:
            target.pop(key, None)
        else:
            target[key] = _random_json(rng)
    return base


def _check_decoded(result, raw) -> None:
    assert isinstance(result, (Message, Rejected)), (raw, result)
    if isinstance(result, Rejected):
        reply = orjson.loads(result.reply)
        assert reply["type"] == "error"
        assert reply["seq"] == result.seq
        assert 0 <= result.seq <= MAX_SEQ
        assert reply["payload"]["code"] == result.code
        assert result.code in {c.value for c in ErrorCode}
    else:
        assert result.type in {"submit", "result", "heartbeat", "error"}
        if result.type == "submit":
            assert isinstance(result.payload, Packet)
            assert 1 <= result.payload.priority <= 10
        elif result.type == "result":
            assert isinstance(result.payload, Result)
        else:
            assert isinstance(result.payload, dict)


def _random_frames(seed: int, count: int):
    rng = random.Random(seed)
    for i in range(count):
        kind = ("bytes", "json", "mutated")[i % 3]
        if kind == "bytes":
            raw = rng.randbytes(rng.randrange(0, 400))
            if rng.random() < 0.5:  # give some of them a plausible start
                raw = b'{"type":"submit","seq":' + raw
        elif kind == "json":
            raw = orjson.dumps(_random_json(rng))
        else:
            raw = orjson.dumps(_mutated_frame(rng),
                               option=orjson.OPT_SORT_KEYS if rng.random() < 0.5 else 0)
        if rng.random() < 0.5:
            try:
                raw = raw.decode()
            except UnicodeDecodeError:
                pass
        limit = rng.choice([None, None, 64, 256, 1 << 20])
        max_timeout = rng.choice([None, 1000, 86_400_000])
        yield kind, raw, limit, max_timeout


def test_decode_never_raises_on_random_input():
    """~600 random frames (bytes, JSON values, mutated valid frames, containers where strings belong)."""
    kinds = {"bytes": 0, "json": 0, "mutated": 0}
    accepted = 0
    for kind, raw, limit, max_timeout in _random_frames(20240601, 600):
        kinds[kind] += 1
        result = decode(raw, max_frame_bytes=limit, max_timeout_ms=max_timeout)
        _check_decoded(result, raw)
        accepted += isinstance(result, Message)
    assert all(count >= 150 for count in kinds.values()), kinds
    assert accepted >= 20  # the mutated frames reach the deeper validation paths




# ============================================================================ raw data (the front's path)

@pytest.mark.parametrize("data", [None, 1, "text", [1, 2.5, None], {"nested": {"x": [True, "]}\""]}}])
def test_raw_data_decoding_keeps_data_as_json_text_and_agrees_with_full_decoding(data):
    from pfnode.core.protocol import RawJSON

    frame = orjson.dumps({"type": "submit", "seq": 12, "payload": {
        "version": "1.0", "id": "raw-1", "group": "df", "element": "noop", "data": data,
        "priority": 7, "timeout_ms": None, "metadata": {"data": "not this one"}}})
    lazy = decode(frame, raw_data=True)
    full = decode(frame)
    assert isinstance(lazy.payload.data, RawJSON)
    assert orjson.loads(memoryview(lazy.payload.data)) == data
    assert lazy.payload.metadata == {"data": "not this one"}
    assert (lazy.seq, lazy.payload.id, lazy.payload.priority) == (full.seq, full.payload.id, full.payload.priority)


def test_raw_data_decoding_of_absent_data_and_elixir_key_order():
    elixir = orjson.dumps({"payload": {"data": [3, 2], "dependencies": None, "element": "noop",
                                       "group": "df", "id": "ex", "metadata": None, "priority": 5,
                                       "timeout_ms": None, "version": "1.0"}, "seq": 4, "type": "submit"})
    msg = decode(elixir, raw_data=True)
    assert bytes(msg.payload.data) == b"[3,2]" and msg.seq == 4
    absent = orjson.dumps({"type": "submit", "seq": 5, "payload": {"version": "1.0", "id": "n",
                                                                   "group": "cf", "element": "validate"}})
    assert bytes(decode(absent, raw_data=True).payload.data) == b"null"


@pytest.mark.parametrize("frame, code", [
    (b'{"type":"submit","seq":1,"payload":{"version":"1.0","id":"a","group":"df","element":"x","data":[1,2,,3]}}', "PF400"),
    (b'{"type":"submit","seq":1,"payload":[1]}', "PF002"),
    (b'{"type":"submit","seq":1,"payload":{"version":"2.0","id":"a","group":"df","element":"x"}}', "PF002"),
    (b'{"type":"submit","seq":-1,"payload":{}}', "PF400"),
    (b'[1]', "PF400"),
])
def test_raw_data_decoding_rejects_exactly_like_full_decoding(frame, code):
    lazy, full = decode(frame, raw_data=True), decode(frame)
    assert isinstance(lazy, Rejected) and lazy.code == code
    assert (lazy.seq, lazy.code, lazy.message) == (full.seq, full.code, full.message)


@pytest.mark.parametrize("data", [None, 0, "HELLO WORLD", [1.5, {"a": [None, "}]"]}]])
def test_raw_data_decoding_of_a_result_keeps_its_data_as_json_text(data):
    from pfnode.core.protocol import RawJSON

    # Elixir key order (sorted: "type" last) and nulls, as the spec's Elixir reactor sends
    elixir = orjson.dumps({"type": "result", "seq": 0, "payload": {
        "packet_id": "r-1", "status": "success", "data": data, "error": None, "duration_ms": 2}},
        option=orjson.OPT_SORT_KEYS)
    lazy, full = decode(elixir, raw_data=True), decode(elixir)
    assert isinstance(lazy.payload.data, RawJSON)
    assert orjson.loads(memoryview(lazy.payload.data)) == data == full.payload.data
    assert (lazy.seq, lazy.payload.packet_id, lazy.payload.status, lazy.payload.duration_ms) == (0, "r-1", "success", 2)
    relayed = encode_success_raw(9, "r-1", bytes(lazy.payload.data), lazy.payload.duration_ms)
    assert orjson.loads(relayed)["payload"]["data"] == data


@pytest.mark.parametrize("payload", list(BAD_RESULTS.values()), ids=list(BAD_RESULTS))
def test_raw_data_decoding_rejects_bad_results_exactly_like_full_decoding(payload):
    text = frame("result", 31, payload)
    lazy, full = decode(text, raw_data=True), decode(text)
    assert isinstance(lazy, Rejected)
    assert (lazy.seq, lazy.code, lazy.message) == (full.seq, full.code, full.message)


# ============================================================================ regressions: decode raised

ISSUE_REPRO = (b'{"type":"submit","seq":1,"payload":{"version":"1.0","id":"a","group":"df",'
               b'"element":"noop","priority":100000000000000000000000000000}}')


def nested(depth: int, leaf: Any = 1) -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def nested_json(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


def submit_with_raw_field(field: str, value_json: bytes, seq: int = 1) -> bytes:
    """A valid df:noop submit whose `field` is replaced by the given JSON text."""
    fields = {"version": b'"1.0"', "id": b'"a"', "group": b'"df"', "element": b'"noop"', "priority": b"5"}
    fields[field] = value_json
    body = b",".join(b'"%s":%s' % (k.encode(), v) for k, v in fields.items())
    return b'{"type":"submit","seq":%d,"payload":{%s}}' % (seq, body)


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
def test_issue_repro_priority_beyond_64_bits_is_pf002(raw_data):
    """It raised TypeError (orjson cannot write the integer msgspec read) in _show."""
    rejected = decode(ISSUE_REPRO, raw_data=raw_data)
    payload = assert_error_reply(rejected, "PF002", 1)
    assert "priority" in payload["message"]
    assert rejected.packet_id == "a"


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
@pytest.mark.parametrize("field", ["version", "id", "group", "element", "priority"])
@pytest.mark.parametrize("number", [b"100000000000000000000000000000", b"-100000000000000000000000000000",
                                    b"18446744073709551616", b"-9223372036854775809"])
def test_integer_beyond_64_bits_in_a_packet_field_is_pf002(raw_data, field, number):
    rejected = decode(submit_with_raw_field(field, number, seq=3), raw_data=raw_data)
    payload = assert_error_reply(rejected, "PF002", 3)
    assert field in payload["message"]
    assert rejected == decode(submit_with_raw_field(field, number, seq=3), raw_data=not raw_data)


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
@pytest.mark.parametrize("field", ["version", "id", "group", "element", "priority"])
def test_integer_beyond_the_double_range_is_pf400_not_json(raw_data, field):
    """orjson refuses a number it would read as infinity; msgspec reads it as an int:
    the answer must not depend on the path."""
    rejected = decode(submit_with_raw_field(field, b"1" + b"0" * 400, seq=3), raw_data=raw_data)
    assert_error_reply(rejected, "PF400", 0)


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
@pytest.mark.parametrize("depth", [300, 600, 1000])
@pytest.mark.parametrize("field", ["version", "id", "group", "element", "priority"])
def test_deep_array_in_a_packet_field_is_pf002(raw_data, depth, field):
    """It raised TypeError (orjson writes at most 254 levels) in _show."""
    rejected = decode(submit_with_raw_field(field, nested_json(depth), seq=4), raw_data=raw_data)
    payload = assert_error_reply(rejected, "PF002", 4)
    assert field in payload["message"]


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
@pytest.mark.parametrize("depth", [300, 600])
def test_deep_array_as_seq_is_pf400_seq_0(raw_data, depth):
    raw = b'{"type":"submit","seq":' + nested_json(depth) + b',"payload":{}}'
    payload = assert_error_reply(decode(raw, raw_data=raw_data), "PF400", 0)
    assert "seq" in payload["message"]


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
@pytest.mark.parametrize("field", ["data", "id", "seq", "metadata"])
def test_10000_deep_nesting_is_pf400(raw_data, field):
    """msgspec raised RecursionError (not a MsgspecError) on the raw_data path."""
    deep = nested_json(10_000)
    if field == "seq":
        raw = b'{"type":"submit","seq":' + deep + b',"payload":{}}'
    else:
        raw = submit_with_raw_field(field, deep, seq=6)
    rejected = decode(raw, raw_data=raw_data)
    assert isinstance(rejected, Rejected) and rejected.code == "PF400"
    assert orjson.loads(rejected.reply)["type"] == "error"


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
def test_result_packet_id_beyond_64_bits_is_pf400(raw_data):
    raw = b'{"type":"result","seq":2,"payload":{"packet_id":100000000000000000000000000000,"status":"success"}}'
    assert_error_reply(decode(raw, raw_data=raw_data), "PF400", 2)


@pytest.mark.parametrize("value", [10**29, -10**29, 2**64, 10**4000, nested(300), nested(1000),
                                   [10**29], {"k": nested(400)}, "x" * 10_000, 1.5, True, None])
def test_show_never_raises_and_stays_short(value):
    from pfnode.core.protocol import _show

    text = _show(value)
    assert isinstance(text, str) and 0 < len(text) <= 63


# ============================================================================ invalid UTF-8: one rule

INVALID_UTF8 = {
    "invalid start byte": b"\xff",
    "lone continuation byte": b"\x80",
    "overlong NUL": b"\xc0\x80",
    "encoded surrogate": b"\xed\xa0\x80",
    "truncated sequence": b"\xe2\x82",
    "beyond U+10FFFF": b"\xf4\x90\x80\x80",
}


def _with_bad_bytes(bad: bytes, where: str) -> bytes:
    pkt = {"version": "1.0", "id": "utf-1", "group": "df", "element": "noop", "data": "@DATA@",
           "priority": 5, "metadata": {"k": "@META@"}}
    raw = orjson.dumps({"type": "submit", "seq": 77, "extra": "@EXTRA@", "payload": pkt})
    raw = raw.replace(b'"@EXTRA@"', b'{"@KEY@":"@EXTRA@"}')
    marker = {"data": b"@DATA@", "metadata": b"@META@", "unknown field": b"@EXTRA@",
              "key": b"@KEY@", "id": b"utf-1"}[where]
    return raw.replace(marker, b"a" + bad + b"z")


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
@pytest.mark.parametrize("where", ["data", "metadata", "unknown field", "key", "id"])
@pytest.mark.parametrize("bad", list(INVALID_UTF8.values()), ids=list(INVALID_UTF8))
def test_invalid_utf8_anywhere_is_pf400_with_the_frames_seq(raw_data, where, bad):
    raw = _with_bad_bytes(bad, where)
    with pytest.raises(UnicodeDecodeError):
        raw.decode()
    rejected = decode(raw, raw_data=raw_data, max_frame_bytes=1 << 20)
    payload = assert_error_reply(rejected, "PF400", 77)
    assert payload["message"].startswith("frame is not valid UTF-8")
    assert rejected.type == "submit"
    if where == "id":  # the id itself is unreadable: none is claimed
        assert rejected.packet_id is None and "packet_id" not in payload
    else:
        assert rejected.packet_id == payload["packet_id"] == "utf-1"


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
def test_str_frame_with_a_lone_surrogate_is_pf400_not_utf8(raw_data):
    raw = orjson.dumps({"type": "submit", "seq": 8, "payload": packet(id="s-1", data="@")}).decode()
    raw = raw.replace('"@"', '"\udc80"')
    rejected = decode(raw, raw_data=raw_data)
    payload = assert_error_reply(rejected, "PF400", 8)
    where = raw.index("\udc80")
    assert payload["message"] == f"frame is not valid UTF-8: lone surrogate U+DC80 at character {where}"
    assert (rejected.type, rejected.packet_id) == ("submit", "s-1")


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
def test_result_with_invalid_utf8_in_its_raw_data_names_its_packet(raw_data):
    """The lazy path kept data as msgspec.Raw without checking its UTF-8, so the hub would have
    relayed invalid UTF-8 to the submitter: now the frame is refused, and the Rejected says
    which forwarded packet the unreadable result was for (the node may answer it PF502)."""
    raw = (b'{"type":"result","seq":0,"payload":{"packet_id":"fwd-9","status":"success",'
           b'"data":"caf\xe9","duration_ms":1.5}}')
    rejected = decode(raw, raw_data=raw_data)
    payload = assert_error_reply(rejected, "PF400", 0)
    assert payload["message"].startswith("frame is not valid UTF-8: invalid continuation byte, byte 0xe9")
    assert (rejected.type, rejected.packet_id) == ("result", "fwd-9")
    assert "packet_id" not in payload  # the reply names a packet only for a refused submit


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
def test_invalid_utf8_outside_strings_is_pf400_seq_0(raw_data):
    raw = b'{"type":"submit","seq":3,\xff"payload":{}}'
    rejected = decode(raw, raw_data=raw_data)
    assert_error_reply(rejected, "PF400", 0)
    assert rejected.type is None and rejected.packet_id is None


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
@pytest.mark.parametrize("as_str", [False, True], ids=["bytes", "str"])
def test_valid_non_ascii_is_accepted(raw_data, as_str):
    raw = orjson.dumps({"type": "submit", "seq": 4, "payload": packet(
        id="ü-✓-😀", data={"é": "日本語 😀", "n": [1, "\u0000"]}, metadata={"ключ": "значение"})})
    msg = decode(raw.decode() if as_str else raw, raw_data=raw_data)
    assert isinstance(msg, Message), msg
    assert msg.payload.id == "ü-✓-😀" and msg.payload.metadata == {"ключ": "значение"}
    data = orjson.loads(memoryview(msg.payload.data)) if raw_data else msg.payload.data
    assert data == {"é": "日本語 😀", "n": [1, "\u0000"]}


def test_rejected_names_the_type_and_packet_of_the_frame():
    bad_submit = decode(submit(seq=3, id="p-3", priority=0))
    assert (bad_submit.type, bad_submit.packet_id) == ("submit", "p-3")
    bad_seq = decode(frame("submit", -1, packet(id="p-4")))
    assert (bad_seq.seq, bad_seq.type, bad_seq.packet_id) == (0, "submit", "p-4")
    assert orjson.loads(bad_seq.reply)["payload"]["packet_id"] == "p-4"
    bad_result = decode(frame("result", 5, {"packet_id": "r-5", "status": "maybe"}), raw_data=True)
    assert (bad_result.type, bad_result.packet_id) == ("result", "r-5")
    assert "packet_id" not in orjson.loads(bad_result.reply)["payload"]
    bad_error = decode(frame("error", 6, ["PF500"]))
    assert (bad_error.type, bad_error.packet_id) == ("error", None)
    unknown = decode(frame("ping", 7, {"id": "x"}))
    assert (unknown.type, unknown.packet_id) == (None, None)
    not_json = decode(b"{")
    assert (not_json.type, not_json.packet_id) == (None, None)


# ============================================================================ nesting depth

def _deep_submit(depth: int, seq: int = 21, sort_keys: bool = False) -> bytes:
    """A df:noop submit whose data is an array nested `depth` levels deep."""
    raw = orjson.dumps({"type": "submit", "seq": seq, "payload": packet(id="deep-1", data="@")},
                       option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    return raw.replace(b'"@"', nested_json(depth))


def test_orjson_depth_limit_is_the_documented_one():
    """MAX_NESTING and the message protocol.py recognises are orjson's: pinned here."""
    from pfnode.core.protocol import MAX_NESTING

    orjson.loads(nested_json(MAX_NESTING - 1))  # nested_json(n) nests n + 0 arrays around 1
    with pytest.raises(orjson.JSONDecodeError, match="depth limit exceeded"):
        orjson.loads(nested_json(MAX_NESTING + 1))


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
@pytest.mark.parametrize("sort_keys", [False, True], ids=["typescript order", "elixir order"])
@pytest.mark.parametrize("depth", [1100, 10_000, 100_000])
def test_frame_nested_too_deep_is_pf400_with_its_seq_and_type(raw_data, sort_keys, depth):
    raw = _deep_submit(depth, seq=4321, sort_keys=sort_keys)
    rejected = decode(raw, raw_data=raw_data, max_frame_bytes=1 << 20)
    payload = assert_error_reply(rejected, "PF400", 4321)
    assert payload["message"] == "frame nests deeper than 1024 levels"
    assert rejected.type == "submit"


def test_frame_nesting_limit_boundary():
    """The frame is level 1, its payload 2, the data array 3: data may nest 1022 levels."""
    assert isinstance(decode(_deep_submit(1022)), Message)
    assert_error_reply(decode(_deep_submit(1023)), "PF400", 21)


@pytest.mark.parametrize("depth", [254, 500, 1000, 1022])
def test_raw_data_never_returns_data_that_is_not_raw_json(depth):
    """Past msgspec's recursion the general path reads the frame: its data must still be
    RawJSON (the front relays and forwards it as such); one deeper than orjson writes is
    refused instead (PF002), never returned as Python objects."""
    from pfnode.core.protocol import RawJSON

    result = decode(_deep_submit(depth), raw_data=True)
    if isinstance(result, Message):
        assert type(result.payload.data) is RawJSON
        assert orjson.loads(memoryview(result.payload.data)) == nested(depth)
    else:
        payload = assert_error_reply(result, "PF002", 21)
        assert "data nests too deep" in payload["message"] and depth > 254


def test_raw_data_with_a_repeated_type_key_still_returns_raw_json():
    """msgspec refuses a repeated tag, orjson keeps the last: the general path accepts it."""
    from pfnode.core.protocol import RawJSON

    raw = (b'{"type":"heartbeat","seq":3,"payload":{"version":"1.0","id":"t","group":"df",'
           b'"element":"noop","data":{"a":[1,2]}},"type":"submit"}')
    msg = decode(raw, raw_data=True)
    assert isinstance(msg, Message) and msg.type == "submit"
    assert type(msg.payload.data) is RawJSON and orjson.loads(memoryview(msg.payload.data)) == {"a": [1, 2]}
    result = (b'{"type":"error","seq":3,"payload":{"packet_id":"r","status":"success",'
              b'"data":[1],"duration_ms":1},"type":"result"}')
    msg = decode(result, raw_data=True)
    assert type(msg.payload.data) is RawJSON and bytes(msg.payload.data) == b"[1]"


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
def test_metadata_nests_at_most_128_levels(raw_data):
    from pfnode.core.protocol import MAX_OBJECT_NESTING

    ok = decode(submit(metadata={"a": nested(MAX_OBJECT_NESTING - 2, {})}), raw_data=raw_data)
    assert isinstance(ok, Message), ok
    deep = decode(submit(seq=9, id="m-1", metadata={"a": nested(MAX_OBJECT_NESTING - 1, {})}), raw_data=raw_data)
    payload = assert_error_reply(deep, "PF002", 9)
    assert payload["message"] == "metadata nests deeper than 128 levels"
    assert payload["packet_id"] == "m-1"


@pytest.mark.parametrize("mtype", ["heartbeat", "error"])
def test_heartbeat_and_error_payloads_nest_at_most_128_levels(mtype):
    ok = decode(frame(mtype, 12, {"x": nested(126, {})}))
    assert isinstance(ok, Message)
    deep = decode(frame(mtype, 12, {"x": nested(127, {}), "packet_id": "e-1"}))
    payload = assert_error_reply(deep, "PF400", 12)
    assert payload["message"] == f"{mtype} payload nests deeper than 128 levels"
    assert deep.type == mtype and deep.packet_id == ("e-1" if mtype == "error" else None)


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
@pytest.mark.parametrize("message, shown", [
    (None, ""), (5, "5"), (True, "true"), ({"a": 1}, '{"a":1}'), ([1e300], "[1e+300]"),
])
def test_error_result_message_that_is_not_a_string_is_shown_as_json(raw_data, message, shown):
    res = decode(frame("result", 1, {"packet_id": "p", "status": "error",
                                     "error": {"code": "PF500", "message": message}}), raw_data=raw_data)
    assert res.payload.error == {"code": "PF500", "message": shown}


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
def test_error_result_message_nested_1000_levels_does_not_raise(raw_data):
    """str() of it raised RecursionError (repr recurses) in parse_result."""
    raw = (b'{"type":"result","seq":1,"payload":{"packet_id":"a","status":"error","error":'
           b'{"code":"PF500","message":' + nested_json(1015) + b'}}}')
    res = decode(raw, raw_data=raw_data)
    assert isinstance(res, Message)
    assert res.payload.error["code"] == "PF500" and len(res.payload.error["message"]) <= 203


# ============================================================================ seq of an unparsed frame

def test_oversized_seq_of_a_nested_object_in_the_head_is_not_taken():
    """The head scan took the first "seq" before "payload", even one nested in another key."""
    raw = b'{"type":"submit","meta":{"seq":5},"seq":7,"payload":"' + b"x" * 2000 + b'"}'
    assert_error_reply(decode(raw, max_frame_bytes=100), "PF413", 7)


@pytest.mark.parametrize("seq_text", [b"12345678901234567", b"5.5", b"5e3", b"-5", b"05"])
@pytest.mark.parametrize("where", ["head", "tail"])
def test_oversized_seq_that_is_not_a_valid_integer_is_not_cut_to_one(seq_text, where):
    """The scan matched the first 16 digits of a longer number, or the 5 of 5.5."""
    filler = b'"' + b"x" * 2000 + b'"'
    if where == "head":
        raw = b'{"type":"submit","seq":' + seq_text + b',"payload":' + filler + b"}"
    else:
        raw = b'{"payload":' + filler + b',"seq":' + seq_text + b',"type":"submit"}'
    rejected = decode(raw, max_frame_bytes=100)
    assert_error_reply(rejected, "PF413", 0)
    assert rejected.type == "submit"


def test_oversized_repeated_seq_takes_the_last_as_parsing_does():
    raw = b'{"type":"submit","seq":1,"payload":"' + b"x" * 2000 + b'","seq":2}'
    assert orjson.loads(raw)["seq"] == 2
    assert_error_reply(decode(raw, max_frame_bytes=100), "PF413", 2)


# ============================================================================ integers beyond 64 bits

@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
@pytest.mark.parametrize("max_timeout_ms", [None, 86_400_000])
@pytest.mark.parametrize("timeout", [b"100000000000000000000000000000", b"9007199254740992", b"1e300", b"1e16"])
def test_timeout_ms_beyond_a_safe_integer_is_pf002(raw_data, max_timeout_ms, timeout):
    """Without a node maximum it was accepted, and the node could not write it on (forwarded
    packets carry their time left): orjson raises on integers beyond 64 bits."""
    rejected = decode(submit_with_raw_field("timeout_ms", timeout, seq=5), raw_data=raw_data,
                      max_timeout_ms=max_timeout_ms)
    payload = assert_error_reply(rejected, "PF002", 5)
    assert "timeout_ms" in payload["message"] and "maximum" in payload["message"]


def test_timeout_ms_of_the_largest_safe_integer_is_accepted_without_a_node_maximum():
    from pfnode.core.protocol import MAX_TIMEOUT_MS, encode_submit

    msg = decode(submit(timeout_ms=MAX_TIMEOUT_MS))
    assert msg.payload.timeout_ms == MAX_TIMEOUT_MS
    encode_submit(1, msg.payload)  # the node can write it on


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
@pytest.mark.parametrize("number", [b"100000000000000000000000000000", b"-100000000000000000000000000000",
                                    b"18446744073709551616"])
def test_integer_beyond_64_bits_in_metadata_is_read_as_without_raw_data(raw_data, number):
    """msgspec read it exactly on the raw_data path, and the hub could not forward the packet."""
    from pfnode.core.protocol import encode_submit_raw

    raw = submit_with_raw_field("priority", b'5,"metadata":{"n":' + number + b',"k":[' + number + b"]}")
    msg = decode(raw, raw_data=raw_data)
    assert isinstance(msg, Message), msg
    assert msg.payload.metadata == {"n": float(number), "k": [float(number)]}
    assert msg.payload.metadata == decode(raw, raw_data=not raw_data).payload.metadata
    encode_submit_raw(1, msg.payload, 1000)  # what the hub sends a reactor


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
def test_number_beyond_the_double_range_in_metadata_is_pf400_not_json(raw_data):
    raw = submit_with_raw_field("priority", b'5,"metadata":{"n":1' + b"0" * 400 + b"}")
    assert_error_reply(decode(raw, raw_data=raw_data), "PF400", 0)


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
@pytest.mark.parametrize("number", [b"100000000000000000000000000000", b"-18446744073709551617"])
def test_result_duration_beyond_64_bits_is_read_as_a_float(raw_data, number):
    """msgspec read it exactly; the hub's relayed result (orjson) then raised TypeError."""
    raw = (b'{"type":"result","seq":0,"payload":{"packet_id":"p","status":"success","data":1,'
           b'"duration_ms":' + number + b"}}")
    msg = decode(raw, raw_data=raw_data)
    assert msg.payload.duration_ms == float(number) and type(msg.payload.duration_ms) is float
    relayed = encode_success_raw(3, "p", b"1", msg.payload.duration_ms)
    assert orjson.loads(relayed)["payload"]["duration_ms"] == float(number)


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
def test_result_duration_beyond_the_double_range_is_pf400_not_json(raw_data):
    raw = (b'{"type":"result","seq":4,"payload":{"packet_id":"p","status":"success",'
           b'"duration_ms":1' + b"0" * 400 + b"}}")
    assert_error_reply(decode(raw, raw_data=raw_data), "PF400", 0)


@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
def test_error_result_read_by_orjson_on_both_paths(raw_data):
    raw = (b'{"type":"result","seq":1,"payload":{"packet_id":"p","status":"error","error":'
           b'{"code":"PF500","message":100000000000000000000000000000},"duration_ms":1}}')
    msg = decode(raw, raw_data=raw_data)
    assert msg.payload.error == {"code": "PF500", "message": "1e+29"}


# ============================================================================ the last line of defence

@pytest.mark.parametrize("raw_data", [False, True], ids=["full", "raw_data"])
def test_a_check_that_raises_is_answered_pf500_and_logged(raw_data, monkeypatch, caplog):
    """Should a bug make a check raise, decode still returns: the front must not close the
    connection (1011) and lose its in-flight packets over one frame."""
    import pfnode.core.protocol as protocol

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(protocol, "parse_packet", broken)
    monkeypatch.setattr(protocol, "_packet_of_wire", broken)  # the raw_data path's own checks
    rejected = decode(submit(seq=8), raw_data=raw_data)
    payload = assert_error_reply(rejected, "PF500", 0)
    assert payload["message"] == protocol.DECODER_FAILED
    assert "decoding a frame raised" in caplog.text and "KeyError: 'a bug'" in caplog.text


def test_oversized_seq_cut_by_the_end_of_the_head_is_not_read():
    """The head scan read the digits before the cut: 123 of 12345."""
    head = b'{"type":"submit","pad":"' + b"x" * 221 + b'","seq":'
    raw = head + b"123" + b"45" + b',"payload":"' + b"y" * 2000 + b'"}'
    assert len(head) + 3 == 256
    assert_error_reply(decode(raw, max_frame_bytes=100), "PF413", 0)
    truncated = b'{"type":"submit","seq":12345'
    assert_error_reply(decode(truncated, max_frame_bytes=10), "PF413", 0)
