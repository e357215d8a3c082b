"""The node's log lines: pfnode/ops/logs.py.

Lines are captured from a logger into a string and parsed back; the rate limiter runs
on a fake clock.
"""
from __future__ import annotations

import datetime
import io
import logging
import re

import orjson
import pytest

from pfnode.ops import logs
from pfnode.core.clock import FakeClock


@pytest.fixture
def root_logging():
    """configure() replaces the root logger's handlers: put them back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in ("websockets", "picows")})
    yield root
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


class Captured:
    """A logger of its own whose lines go, as JSON, to a string."""

    def __init__(self, name: str, level: int = logging.DEBUG) -> None:
        self.stream = io.StringIO()
        handler = logging.StreamHandler(self.stream)
        handler.setFormatter(logs.JsonFormatter())
        self.log = logging.getLogger(name)
        self.log.handlers[:] = [handler]
        self.log.propagate = False
        self.log.setLevel(level)

    def lines(self) -> list[dict]:
        return [orjson.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def captured(request):
    c = Captured(f"pfnode.test.{request.node.name}")
    yield c
    c.log.handlers.clear()


# ---------------------------------------------------------------- formats

def test_a_json_line_has_the_standard_fields_and_the_extra_ones(captured):
    captured.log.info("worker %s started", 42, extra={"event": "x", "pid": 42, "lane": "df",
                                                      "before": {"df": 2}, "after": {1: 3}})
    (line,) = captured.lines()
    assert line["level"] == "INFO"
    assert line["logger"] == captured.log.name
    assert line["msg"] == "worker 42 started"
    assert line["event"] == "x" and line["pid"] == 42 and line["lane"] == "df"
    assert line["before"] == {"df": 2} and line["after"] == {"1": 3}
    assert line["ts"].endswith("Z")
    ts = datetime.datetime.fromisoformat(line["ts"])
    assert ts.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - ts).total_seconds()) < 60
    assert not {"args", "levelno", "pathname", "process", "thread", "created"} & set(line)


def test_a_json_line_carries_the_traceback_and_survives_values_json_cannot_hold(captured):
    class Opaque:
        def __repr__(self):
            return "<opaque>"

    try:
        raise ValueError("boom")
    except ValueError:
        captured.log.exception("front: internal error %s", "E000001", extra={"incident": "E000001",
                                                                              "thing": Opaque()})
    (line,) = captured.lines()
    assert line["level"] == "ERROR" and line["incident"] == "E000001"
    assert line["thing"] == "<opaque>"
    assert line["exc"].startswith("Traceback") and "ValueError: boom" in line["exc"]
    assert "\n" not in captured.stream.getvalue().rstrip("\n")  # one line, whatever the traceback


def test_configure_text_keeps_the_old_format(root_logging):
    stream = io.StringIO()
    logs.configure("INFO", "text", stream)
    logging.getLogger("pfnode.front").info("front: serving %s", "ws://x")
    logging.getLogger("pfnode.front").debug("not shown")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO front: serving ws://x\n", stream.getvalue())


def test_configure_json_replaces_the_handlers_and_quiets_the_libraries(root_logging):
    first, second = io.StringIO(), io.StringIO()
    logs.configure("DEBUG", "json", first)
    logs.configure("WARNING", "json", second)  # the second call replaces the first handler
    logging.getLogger("pfnode.pool").warning("pool: hello", extra={"event": "e"})
    logging.getLogger("pfnode.pool").info("below the level")
    logging.getLogger("picows").warning("buffer over its high mark")
    assert first.getvalue() == ""
    (line,) = [orjson.loads(x) for x in second.getvalue().splitlines()]
    assert (line["msg"], line["level"], line["event"]) == ("pool: hello", "WARNING", "e")
    assert logging.getLogger("picows").level == logging.ERROR


def test_configure_refuses_an_unknown_format(root_logging):
    with pytest.raises(ValueError, match="json"):
        logs.configure("INFO", "yaml")


# ---------------------------------------------------------------- the rate limiter

def test_the_limiter_allows_n_per_window_then_reports_the_rest_once():
    clock = FakeClock()
    limiter = logs.RateLimiter(3, 10.0, clock=clock)
    assert [limiter.allow("df:x") for _ in range(5)] == [True, True, True, False, False]
    assert limiter.flush() == []  # the window is still open
    clock.advance(9.9)
    assert limiter.allow("df:x") is False
    clock.advance(0.1)
    assert limiter.flush() == [("df:x", 3)]
    assert limiter.flush() == []  # once
    assert limiter.allow("df:x") is True  # a new window


def test_the_limiter_counts_a_closed_window_even_when_the_next_event_opens_one_first():
    clock = FakeClock()
    limiter = logs.RateLimiter(1, 10.0, clock=clock)
    assert [limiter.allow("k") for _ in range(4)] == [True, False, False, False]
    clock.advance(15)
    assert limiter.allow("k") is True  # a new window; the old one's 3 are due
    assert limiter.allow("k") is False
    assert limiter.flush() == [("k", 3)]
    clock.advance(10)
    assert limiter.flush() == [("k", 1)]


def test_the_limiter_keeps_keys_apart_and_forgets_the_oldest_past_max_keys():
    clock = FakeClock()
    limiter = logs.RateLimiter(1, 60.0, clock=clock, max_keys=2)
    assert [limiter.allow("a"), limiter.allow("a"), limiter.allow("b"), limiter.allow("b")] == [True, False, True, False]
    assert limiter.allow("c") is True  # "a" is forgotten, its suppressed line still reported
    assert sorted(limiter.flush()) == [("a", 1)]
    assert limiter.allow("a") is True  # forgotten: a fresh window
    clock.advance(60)
    assert sorted(limiter.flush()) == [("b", 1)]


def test_the_limiter_as_a_logging_filter(captured):
    clock = FakeClock()
    captured.log.addFilter(logs.RateLimitFilter(logs.RateLimiter(2, 5.0, clock=clock)))
    for i in range(4):
        captured.log.warning("handler error %d", i, extra={"rate_key": "df:x"})
        captured.log.warning("unrelated %d", i)
    clock.advance(5)
    captured.log.warning("handler error again", extra={"rate_key": "df:x"})
    assert [line["msg"] for line in captured.lines()] == [
        "handler error 0", "unrelated 0", "handler error 1", "unrelated 1", "unrelated 2", "unrelated 3",
        "handler error again"]


def test_log_suppressed_writes_one_line_per_key(captured):
    clock = FakeClock()
    limiter = logs.RateLimiter(1, 60.0, clock=clock)
    for key, n in (("df:x", 5), ("df:y", 2)):
        for _ in range(n):
            limiter.allow(key)
    assert logs.log_suppressed(captured.log, limiter, "handler errors") == 0
    clock.advance(60)
    assert logs.log_suppressed(captured.log, limiter, "handler errors") == 2
    lines = sorted(captured.lines(), key=lambda line: line["key"])
    assert [(line["event"], line["key"], line["count"], line["of"]) for line in lines] == [
        ("suppressed", "df:x", 4, "handler errors"), ("suppressed", "df:y", 1, "handler errors")]
    assert lines[0]["msg"] == "handler errors of df:x: 4 more suppressed (at most 1 per 60 s)"


# ---------------------------------------------------------------- the event lines

def test_handler_errors_are_rate_limited_per_key_with_the_traceback_at_warning(captured):
    limiter = logs.RateLimiter(2, 60.0, clock=FakeClock())
    tb = "Traceback (most recent call last):\n  File \"h.py\", line 3\nValueError: bad\n"
    shown = [logs.handler_error(captured.log, limiter, key="df:x", packet_id=f"p{i}", code="PF500",
                                message="ValueError: bad", lane="df", pid=7, traceback=tb) for i in range(4)]
    shown.append(logs.handler_error(captured.log, limiter, key="df:y", packet_id="q", code="PF501",
                                    message="df:y exceeded its memory limit", lane="rm", pid=8))
    assert shown == [True, True, False, False, True]
    lines = captured.lines()
    errors = [line for line in lines if line["event"] == "handler_error"]
    assert [(e["key"], e["packet_id"], e["code"], e["level"]) for e in errors] == [
        ("df:x", "p0", "PF500", "WARNING"), ("df:x", "p1", "PF500", "WARNING"), ("df:y", "q", "PF501", "WARNING")]
    assert errors[0]["lane"] == "df" and errors[0]["pid"] == 7 and errors[0]["error"] == "ValueError: bad"
    assert errors[0]["msg"] == "handler error: df:x packet p0: PF500 ValueError: bad"
    tracebacks = [line for line in lines if line["event"] == "handler_traceback"]
    assert [(t["packet_id"], t["level"]) for t in tracebacks] == [("p0", "WARNING"), ("p1", "WARNING")]
    assert tracebacks[0]["msg"].endswith("ValueError: bad")


def test_the_traceback_is_shown_at_the_default_level(captured):
    captured.log.setLevel(logging.INFO)
    logs.handler_error(captured.log, None, key="df:x", packet_id="p", code="PF500", message="boom",
                       traceback="Traceback ...")
    assert [line["event"] for line in captured.lines()] == ["handler_error", "handler_traceback"]


def test_a_node_logs_where_a_handler_raised_at_warning(fresh_node):
    """The worker sends the handler's traceback with its PF500; the node logs it (at the
    default level, INFO) under the handler errors' rate limit."""
    from tests.e2e_util import Raw, packet, run

    n = fresh_node("--log-format", "json", workers=1)

    async def go():
        async with Raw(n.endpoint) as raw:
            await raw.submit(1, packet("boom", "x"))
            return await raw.recv()
    assert run(go())["payload"]["error"]["code"] == "PF500"
    lines = [orjson.loads(line) for line in n.log().splitlines() if line.startswith("{")]
    [shown] = [line for line in lines if line.get("event") == "handler_traceback"]
    assert shown["level"] == "WARNING" and shown["key"] == "df:boom"
    assert "handlers_testing.py" in shown["msg"] and "in boom" in shown["msg"]
    assert shown["msg"].rstrip().endswith("ValueError: boom: x")
    assert "run_task" not in shown["msg"]  # from the handler down, not the worker's frames


def test_worker_exit_line(captured):
    logs.worker_exit(captured.log, lane="df", pid=4242, cause="crash", how="signal SIGSEGV", key="df:fft",
                     packet_id="abc")
    logs.worker_exit(captured.log, lane="ed", pid=4243, cause="exit", how="exit status 1")
    first, second = captured.lines()
    assert {k: first[k] for k in ("event", "lane", "pid", "cause", "how", "key", "packet_id", "level")} == {
        "event": "worker_exit", "lane": "df", "pid": 4242, "cause": "crash", "how": "signal SIGSEGV",
        "key": "df:fft", "packet_id": "abc", "level": "WARNING"}
    assert first["msg"] == ("worker exit: df worker pid 4242 ended (crash: signal SIGSEGV) while running "
                            "df:fft packet abc; replacing it")
    assert second["msg"] == "worker exit: ed worker pid 4243 ended (exit: exit status 1); replacing it"
    assert second["packet_id"] is None


def test_admin_action_line_says_who_what_before_and_after(captured):
    logs.admin_action(captured.log, who="ops-token", action="mc:scale", before={"df": 2, "rm": 1},
                      after={"df": 4, "rm": 1})
    logs.admin_action(captured.log, who="10.0.0.9:5123", action="mc:scale", outcome="forbidden",
                      detail="token lacks the admin role")
    ok, refused = captured.lines()
    assert (ok["event"], ok["who"], ok["action"], ok["outcome"], ok["level"]) == (
        "admin_action", "ops-token", "mc:scale", "ok", "INFO")
    assert ok["before"] == {"df": 2, "rm": 1} and ok["after"] == {"df": 4, "rm": 1}
    assert ok["msg"] == 'admin: mc:scale by ops-token: {"df":2,"rm":1} -> {"df":4,"rm":1}'
    assert (refused["outcome"], refused["level"]) == ("forbidden", "WARNING")
    assert refused["msg"] == "admin: mc:scale by 10.0.0.9:5123 forbidden (token lacks the admin role)"


def test_connection_refused_line(captured):
    logs.connection_refused(captured.log, peer="10.0.0.9:5123", reason="max_connections",
                            detail="1000 connections already")
    (line,) = captured.lines()
    assert (line["event"], line["peer"], line["reason"], line["level"]) == (
        "connection_refused", "10.0.0.9:5123", "max_connections", "WARNING")
    assert line["msg"] == "refused a connection from 10.0.0.9:5123: max_connections (1000 connections already)"


def test_connection_refused_lines_are_rate_limited_per_reason(captured):
    clock = FakeClock()
    limiter = logs.RateLimiter(1, 60.0, clock=clock)
    for _ in range(5):
        logs.connection_refused(captured.log, peer="10.0.0.9:1", reason="tls", limiter=limiter,
                                level=logging.INFO)
    logs.connection_refused(captured.log, peer="10.0.0.9:1", reason="unauthenticated", limiter=limiter)
    assert [(line["reason"], line["level"]) for line in captured.lines()] == [("tls", "INFO"),
                                                                              ("unauthenticated", "WARNING")]
    clock.advance(60.0)
    assert logs.log_suppressed(captured.log, limiter, "refused connections") == 1
    assert captured.lines()[-1]["msg"] == "refused connections of tls: 4 more suppressed (at most 1 per 60 s)"


# ---------------------------------------------------------------- exceptions no formatter can walk

# What uvloop, aiofastnet (picows) and asyncio's exception handler log for a client that gave
# up its TLS handshake: the exception's class for the exception, and for its "traceback" the
# class's __traceback__, a descriptor (the standard formatter raises AttributeError on it).
ODD_EXC_INFOS = [
    (ConnectionResetError, ConnectionResetError, ConnectionResetError.__traceback__),
    (ConnectionResetError, ConnectionResetError("reset"), ConnectionResetError.__traceback__),
    (None, None, None),
    (ValueError, ValueError("x"), "not a traceback"),
]


@pytest.mark.parametrize("exc_info", ODD_EXC_INFOS, ids=["class", "descriptor-tb", "nones", "str-tb"])
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_exc_info_makes_a_formatter_raise(root_logging, fmt, exc_info):
    stream = io.StringIO()
    logs.configure("INFO", fmt, stream)
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "SSL handshake failed", (), exc_info)
    text = logging.getLogger().handlers[0].format(record)  # raised AttributeError before
    assert "SSL handshake failed" in text
    if fmt == "json":
        assert orjson.loads(text)["msg"] == "SSL handshake failed"
    if exc_info[0] is ConnectionResetError:
        assert "ConnectionResetError" in text


# ---------------------------------------------------------------- secrets in URLs

@pytest.mark.parametrize("url, shown", [
    ("wss://hub.example:8443/packetflow/v1?token=s3cr3t", "wss://hub.example:8443/packetflow/v1?token=***"),
    ("ws://hub/p?a=1&token=s3cr3t&flag", "ws://hub/p?a=***&token=***&flag"),
    ("ws://user:pw@hub/p", "ws://user:***@hub/p"),
    ("ws://127.0.0.1:8443/packetflow/v1", "ws://127.0.0.1:8443/packetflow/v1"),
    ("http://[::1", "<a URL that does not parse (11 characters)>"),
])
def test_redact_url_hides_query_values_and_passwords(url, shown):
    assert logs.redact_url(url) == shown


def test_redact_text_hides_every_url_query_and_token_parameter_in_a_message():
    text = ("cannot connect to ws://hub/p?token=s3cr3t: refused; GET /p?token=other HTTP/1.1 "
            '(see "wss://x/y?token=third").')
    assert logs.redact_text(text) == ("cannot connect to ws://hub/p?token=***: refused; GET /p?token=*** "
                                      'HTTP/1.1 (see "wss://x/y?token=***").')


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_no_line_shows_a_token_in_a_url_whoever_logs_it(root_logging, fmt):
    stream = io.StringIO()
    logs.configure("INFO", fmt, stream)
    logging.getLogger("websockets.client").error("connecting to %s failed", "wss://hub/p?token=s3cr3t",
                                                 extra={"url": "ws://hub/p?token=s3cr3t"})
    assert "s3cr3t" not in stream.getvalue() and "token=***" in stream.getvalue()
    if fmt == "json":
        assert orjson.loads(stream.getvalue())["url"] == "ws://hub/p?token=***"
