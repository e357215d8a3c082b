"""The node's log lines: text or JSON (`--log-format`), the structured events, a rate limiter.

`configure(level, fmt)` sets up the root logger once, at start: "text" is the format the
node always had (`%(asctime)s %(levelname)s %(message)s`); "json" writes one object per
line with `ts` (ISO 8601, UTC), `level`, `logger`, `msg` and every field the call passed
with `extra=` (`event`, `packet_id`, `key`, `lane`, `pid`, `cause`, `who`, `before`,
`after`, `peer`, `incident`, ...), plus `exc` when it carries a traceback.

The event helpers below write the lines operators search for -- handler errors, worker
exits, admin actions, refused connections -- always with the same `event` name and
fields, so that a log query does not depend on a message's wording. Handler errors are
rate-limited per handler key (`RateLimiter`): at most N lines per interval, and then one
"N more suppressed" line (`log_suppressed`, from a periodic loop), so a handler failing
on every packet cannot flood the log or cost the front its throughput; refused
connections (a failed TLS handshake, an unknown token, ...) the same way, per reason.

Both formatters format whatever `exc_info` a record carries without raising (event loops
report some failed connections with an exception's class instead of an instance), and
`redact_url` is the one way a URL is printed: its query values and password hidden.

docs/OBSERVABILITY.md shows each line in both formats.
"""
from __future__ import annotations

import datetime
import logging
import re
import sys
import time
import types
import urllib.parse
from typing import Any, Callable, Hashable, TextIO

import orjson

__all__ = ["JsonFormatter", "RateLimitFilter", "RateLimiter", "TEXT_FORMAT", "TextFormatter", "admin_action",
           "configure", "connection_refused", "format_exception", "handler_error", "log_suppressed",
           "redact_text", "redact_url", "start_failed", "worker_exit"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
FORMATS = ("text", "json")
# LogRecord's own attributes: everything else on a record came from `extra=`
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
# libraries whose routine lines are not ours to show (picows warns each time a slow
# reader's buffer crosses its high mark, which the node handles by pausing that peer)
_QUIET = {"websockets": logging.WARNING, "picows": logging.ERROR}


def format_exception(exc_info: Any) -> str:
    """A record's `exc_info` as text, never raising: event loops report some connections that
    failed early with an exception's class for the exception (and the class's `__traceback__`
    descriptor for its traceback), which the standard formatter cannot walk."""
    try:
        etype, value, tb = exc_info
        if isinstance(value, type) and issubclass(value, BaseException):
            etype, value = value, None  # a class, not an instance: no message, no traceback
        if value is None:
            return getattr(etype, "__name__", repr(etype))
        if not isinstance(tb, types.TracebackType):
            tb = None
        return logging.Formatter.formatException(_PLAIN, (type(value), value, tb))
    except Exception as exc:  # a formatter must never raise: the line would be lost
        return f"(exception info that could not be formatted: {exc_info!r}: {exc!r})"


class TextFormatter(logging.Formatter):
    """The text format (TEXT_FORMAT), with `format_exception` for tracebacks; every URL in a
    line is redacted (`redact_text`), whoever wrote it (a library's line too)."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))

    def formatException(self, ei) -> str:
        return format_exception(ei)


_PLAIN = logging.Formatter()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the record's `extra=` fields,
    and `exc` (the formatted traceback) when there is one; URLs redacted as in text."""

    def formatException(self, ei) -> str:
        return format_exception(ei)

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
                          .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRS:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return redact_text(orjson.dumps(line, default=repr, option=orjson.OPT_NON_STR_KEYS).decode())


def configure(level: str | int = "INFO", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Send every log line to `stream` (stderr) in `fmt` ("text" or "json") at `level` and
    above, replacing the root logger's handlers; quiets the WebSocket libraries' routine
    lines. Returns the handler."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(quiet)
    return handler


class RateLimiter:
    """At most `per_interval` events per key in each window of `interval_s` (a window
    starts at a key's first event after the last one closed). The rest are counted, and
    `flush` hands out the counts of windows that have closed, once each.

        if limiter.allow(key):
            log.warning(...)
        ...
        log_suppressed(log, limiter, "handler errors")   # from a periodic loop

    Keys are the caller's (a handler key, a peer class); at most `max_keys` are kept (the
    oldest is forgotten first, its pending count still reported)."""

    def __init__(self, per_interval: int = 5, interval_s: float = 60.0, *,
                 clock: Callable[[], float] = time.monotonic, max_keys: int = 1024) -> None:
        if per_interval < 1 or interval_s <= 0:
            raise ValueError("need per_interval >= 1 and interval_s > 0")
        self.per_interval = per_interval
        self.interval_s = interval_s
        self.clock = clock
        self.max_keys = max_keys
        self._windows: dict[Hashable, list] = {}  # key -> [start, allowed, suppressed]
        self._suppressing: set[Hashable] = set()  # keys whose open window has suppressed some
        self._due: dict[Hashable, int] = {}  # closed windows' suppressed counts, not yet flushed

    def allow(self, key: Hashable) -> bool:
        now = self.clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.interval_s:
            if window is not None:
                self._close(key, window)
            elif len(self._windows) >= self.max_keys:
                oldest = next(iter(self._windows))
                self._close(oldest, self._windows.pop(oldest))
            self._windows[key] = [now, 1, 0]
            return True
        if window[1] < self.per_interval:
            window[1] += 1
            return True
        window[2] += 1
        self._suppressing.add(key)
        return False

    def _close(self, key: Hashable, window: list) -> None:
        if window[2]:
            self._due[key] = self._due.get(key, 0) + window[2]
            window[2] = 0
        self._suppressing.discard(key)

    def flush(self) -> list[tuple[Hashable, int]]:
        """(key, count) for every window that has closed with lines suppressed, once each."""
        now = self.clock()
        for key in [k for k in self._suppressing if now - self._windows[k][0] >= self.interval_s]:
            self._close(key, self._windows[key])
        due, self._due = self._due, {}
        return list(due.items())


class RateLimitFilter(logging.Filter):
    """RateLimiter as a logging filter: a record logged with `extra={"rate_key": k}` passes
    only while the limiter allows k; records without a rate_key always pass."""

    def __init__(self, limiter: RateLimiter) -> None:
        super().__init__()
        self.limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(record, "rate_key", None)
        return key is None or self.limiter.allow(key)


def log_suppressed(log: logging.Logger, limiter: RateLimiter, what: str) -> int:
    """One line per key whose lines the limiter suppressed in a window now closed ("N
    more suppressed"); returns how many lines that was. Call it from a periodic loop."""
    pending = limiter.flush()
    for key, count in pending:
        log.warning("%s of %s: %d more suppressed (at most %d per %g s)", what, key, count,
                    limiter.per_interval, limiter.interval_s,
                    extra={"event": "suppressed", "of": what, "key": str(key), "count": count})
    return len(pending)


# ---------------------------------------------------------------------- the event lines
def handler_error(log: logging.Logger, limiter: RateLimiter | None, *, key: str, packet_id: str,
                  code: str, message: str, lane: str | None = None, pid: int | None = None,
                  traceback: str | None = None) -> bool:
    """A handler raised (PF500) or went over its memory cap (PF501): a warning, rate-limited
    per handler key, and its traceback (when there is one) as a second warning under the same
    limit. False when the limiter suppressed them."""
    if limiter is not None and not limiter.allow(key):
        return False
    fields = {"event": "handler_error", "key": key, "packet_id": packet_id, "code": code,
              "lane": lane, "pid": pid}
    log.warning("handler error: %s packet %s: %s %s", key, packet_id, code, message,
                extra={**fields, "error": message})
    if traceback:
        log.warning("traceback of %s packet %s:\n%s", key, packet_id, traceback.rstrip(),
                    extra={**fields, "event": "handler_traceback"})
    return True


def worker_exit(log: logging.Logger, *, lane: str, pid: int | None, cause: str, how: str,
                key: str | None = None, packet_id: str | None = None) -> None:
    """A worker ended unplanned and is being replaced: `cause` as in
    pfnode.metrics.exit_cause, `how` its exit status in words ("signal SIGKILL"), and the
    packet it was running, if any."""
    running = f" while running {key} packet {packet_id}" if packet_id is not None else ""
    log.warning("worker exit: %s worker pid %s ended (%s: %s)%s; replacing it", lane, pid, cause, how,
                running, extra={"event": "worker_exit", "lane": lane, "pid": pid, "cause": cause,
                                "how": how, "key": key, "packet_id": packet_id})


def admin_action(log: logging.Logger, *, who: str, action: str, before: Any = None, after: Any = None,
                 outcome: str = "ok", detail: str = "") -> None:
    """An admin action (`mc:scale`, ...): who asked (the token's name, else the peer), what,
    the state before and after (any JSON value), and how it went (ok, invalid, failed,
    forbidden)."""
    change = f": {_short(before)} -> {_short(after)}" if outcome == "ok" else f" {outcome}"
    log.log(logging.INFO if outcome == "ok" else logging.WARNING, "admin: %s by %s%s%s", action, who,
            change, f" ({detail})" if detail else "",
            extra={"event": "admin_action", "who": who, "action": action, "before": before,
                   "after": after, "outcome": outcome, "detail": detail or None})


def connection_refused(log: logging.Logger, *, peer: str | None, reason: str, detail: str = "",
                       limiter: RateLimiter | None = None, level: int = logging.WARNING) -> bool:
    """A connection refused before the WebSocket handshake completed: `reason` the word
    pfnode_connections_refused_total counts it under, `detail` the specifics. With a
    `limiter`, rate-limited per reason (its `log_suppressed` line says how many were left
    out). False when the limiter suppressed it."""
    if limiter is not None and not limiter.allow(reason):
        return False
    log.log(level, "refused a connection from %s: %s%s", peer or "?", reason, f" ({detail})" if detail else "",
            extra={"event": "connection_refused", "peer": peer, "reason": reason, "detail": detail or None})
    return True


# ---------------------------------------------------------------------- secrets
REDACTED = "***"
# a URL ends at a space, a quote, an angle bracket or a backslash (a JSON line's escapes stay whole)
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>\\]+")
_TOKEN_PARAM = re.compile(r"([?&;]token=)[^&\s'\"<>\\]*?(?=[.,:;!?)\]}]*(?:[&\s'\"<>\\]|$))", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` as it may be printed: each query value and a password in it replaced by `***`
    (`wss://hub:8443/packetflow/v1?token=***`). Every log line and error message that
    shows a URL goes through here, so a token given as `?token=` never reaches a log."""
    try:
        parts = urllib.parse.urlsplit(url)
        query = "&".join(f"{name}={REDACTED}" if sep else name
                         for name, sep, _ in (field.partition("=") for field in parts.query.split("&") if field))
        netloc = parts.netloc
        if "@" in netloc:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:{REDACTED}@{host}" if ":" in user else netloc
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:  # not a URL that parses: show none of it
        return f"<a URL that does not parse ({len(url)} characters)>"


def redact_text(text: str) -> str:
    """`text` (an exception's message, say) with every URL in it redacted (`redact_url`) and
    any `token=` parameter hidden, URL or not."""
    def one(match: re.Match) -> str:
        url = match.group(0)
        kept = url.rstrip(".,:;!?)]}")  # the sentence's punctuation after the URL stays
        return redact_url(kept) + url[len(kept):]

    return _TOKEN_PARAM.sub(rf"\1{REDACTED}", _URL.sub(one, text))


def start_failed(log: logging.Logger, message: str) -> None:
    """The node could not start (a handler module that cannot be imported, the port in use, a
    TLS file missing): the one line it writes before it exits with status 2."""
    log.error("pfnode: %s", message, extra={"event": "start_failed", "error": message})


def _short(value: Any, limit: int = 200) -> str:
    text = orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= limit else text[:limit - 1] + "…"
