"""Event driven (ed): topics, watchers, reactions and timers, run by the node.

Topics are names (1-256 characters); with tokens, each is its principal's, or a namespace's
its token holds (`team-a/...`: pfnode/core/names.py, docs/PROTOCOL.md "Principals and
namespaces"). An event is a JSON value published on a topic; the node keeps no history:
an event reaches the watchers and subscriptions there at the moment it is published.

- `ed:signal` {"topic", "data"} -> {"delivered": n}: `data` published on `topic`; n is
  the watchers it reached plus the reactions it started.
- `ed:watch`  {"topic", "events"?: n} -> {"events": [data...], "complete": bool}: the
  next n (default 1, at most 1000) events published on `topic` after the watch began, in
  order (`complete`: all n came); or, when the packet's deadline comes first, the events so
  far, answered a little before the deadline (a tenth of the time left, at most 100 ms),
  as a success with `complete: false`, not PF408.
- `ed:react`  {"topic", "step", "emit"?: topic, "ttl_ms"?} -> {"subscription": id,
  "topic", "expires_in_ms"}: from now on, each event on `topic` runs `step` with the
  event's data as its input (a sub-packet through the node, in the subscriber's scope and
  names, with the roles both the subscriber and the event's publisher hold: no confused
  deputy; its deadline the step's `timeout_ms`, else the node's default), and,
  with `emit`, its output is published on `emit`. Held until `ttl_ms` (default 1 h, at
  most 24 h) passes, it is cancelled, or its submitter disconnects (the last connection of
  its token, with tokens).
  {"cancel": id} -> {"cancelled": id, "runs", "failed", "dropped"}: only its submitter
  may cancel it.
  A reaction that fails is counted (`failed`, `last_error` in the node's status), never
  answered to anyone. An event that finds its subscription with 16 reactions running, or
  the node with 1024, starts none there (`dropped`); an event emitted by a reaction chain
  8 deep starts no further reactions (watchers still get it).
- `ed:timer`  {"after_ms", "step", "every_ms"?, "count"?, "emit"?} -> the step's output:
  the step runs once `after_ms` after the packet started; with `count` (1..10000) it runs
  `count` times, `every_ms` apart (at fixed times from the first; a run that overruns
  delays the next, never overlaps it), and the answer is the list of outputs; with
  `every_ms` and no `count`, it runs until the packet's deadline and the answer is the
  list of outputs so far, a little before it. The step's input is the run's number (0, 1,
  ...) unless the step has its own `data`. With `emit`, each output is also published
  there as it comes. The whole schedule must fit in the packet's deadline (else PF002
  naming the field); a failed run fails the timer with the run's code (`runs[3]: PF500 ...`).

Bounds (each over it: PF004, retry later): 10 000 watchers, holding at most 64 MiB of
events; one event's data at most 1 MiB (PF002); 10 000 subscriptions, 1 000 of one
submitter, whose steps take at most 64 MiB.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import os
from typing import Any

from ...errors import ErrorCode
from ...core.flight import Flight
from ...core.protocol import Packet, encode_json
from ..base import (ElementError, ElementFailed, answer_within_s, check_keys, need_dict, need_int, need_str,
                    node_element, optional_int, optional_ttl_ms, owner_name)
from ...core.names import qualify, shown
from ...core.shares import Shares
from .engine import ElementContext, Step, parse_step

log = logging.getLogger("pfnode.front")

MAX_TOPIC_CHARS = 256
MAX_EVENT_BYTES = 1 << 20
MAX_WATCHERS = 10_000
MAX_WATCH_EVENTS = 1000
MAX_HELD_BYTES = 64 << 20
MAX_SUBSCRIPTIONS = 10_000
MAX_SUBSCRIPTIONS_PER_OWNER = 1_000
MAX_SUBSCRIPTION_BYTES = 64 << 20
DEFAULT_TTL_MS = 3_600_000
MAX_TTL_MS = 86_400_000
MAX_REACTIONS = 1024  # reactions running at once, node-wide
MAX_REACTIONS_PER_SUBSCRIPTION = 16
MAX_CHAIN = 8  # reactions to reactions' emitted events, deep
MIN_EVERY_MS = 10
MAX_TIMER_RUNS = 10_000


class Watch:
    """One ed:watch waiting for events."""

    __slots__ = ("topic", "wanted", "events", "bytes", "future", "owner")

    def __init__(self, topic: str, wanted: int, owner: Any = None) -> None:
        self.topic = topic
        self.owner = owner
        self.wanted = wanted
        self.events: list[Any] = []
        self.bytes = 0
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()


class Subscription:
    """One ed:react: a step run on every event of a topic, until it expires."""

    def __init__(self, events: "Events", sub_id: str, topic: str, step: Step, emit: str | None,
                 owner: Any, identity: Any, node: Any, expires: float, size: int) -> None:
        self.events = events
        self.id = sub_id
        self.topic = topic
        self.step = step
        self.emit = emit
        self.owner = owner
        self.identity = identity
        self.node = node  # NodeControl
        self.expires = expires
        self.bytes = size
        self.tasks: set[asyncio.Task] = set()
        self.runs = self.failed = self.dropped = 0
        self.last_error: str | None = None
        self._numbers = itertools.count(1)

    def react(self, value: Any, depth: int, by: Any = None) -> bool:
        """Start a reaction to one event (published by principal `by`); False when a bound
        says no."""
        events = self.events
        if depth >= MAX_CHAIN or len(self.tasks) >= MAX_REACTIONS_PER_SUBSCRIPTION \
                or events.reactions >= MAX_REACTIONS:
            self.dropped += 1
            events.counters["reactions_dropped"] += 1
            return False
        task = asyncio.ensure_future(self._run(value, depth, by))
        self.tasks.add(task)
        events.reactions += 1
        task.add_done_callback(self._ended)
        return True

    def _ended(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        self.events.reactions -= 1

    async def _run(self, value: Any, depth: int, by: Any) -> None:
        node = self.node
        step = self.step
        timeout_ms = step.timeout_ms or node.default_timeout_ms
        priority = step.priority or 5
        packet = Packet(id=f"react:{self.id}#{next(self._numbers)}", group="ed", element="react",
                        priority=priority, timeout_ms=timeout_ms)
        # the reaction's own record, never admitted: its steps' parent (deadline, scope)
        parent = Flight(packet, scope=self.owner, priority=priority, timeout_ms=timeout_ms,
                        deadline=node.now() + timeout_ms / 1000)
        # No confused deputy: the step runs with the roles both the subscriber and whoever
        # published the event hold (a submit-only signaller cannot have an admin's
        # reaction run mc:* for it), in the subscriber's scope and names.
        identity = self.identity.limited_to(by) if self.identity is not None else None
        ctx = ElementContext(node, parent, identity)
        counters = self.events.counters
        try:
            output = await ctx.run(step, value, "step")
            self.runs += 1
            counters["reactions"] += 1
            if self.emit is not None:
                self.events.publish(self.emit, output, depth + 1, identity)
        except (ElementFailed, ElementError) as exc:
            self._failed(str(exc) if isinstance(exc, ElementError) else f"{exc.code} {exc.message}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("front: reaction of subscription %s failed", self.id)
            self._failed(f"{type(exc).__name__}: {exc}")
        finally:
            ctx.cancel_children()

    def _failed(self, message: str) -> None:
        self.failed += 1
        self.last_error = message[:300]
        self.events.counters["reactions_failed"] += 1

    def stats(self, now: float) -> dict[str, Any]:
        return {"topic": self.topic, "step": self.step.key, "emit": self.emit, "owner": owner_name(self.owner),
                "expires_in_ms": max(0, int((self.expires - now) * 1000)), "running": len(self.tasks),
                "runs": self.runs, "failed": self.failed, "dropped": self.dropped, "last_error": self.last_error}


class Events:
    """The node's topics: their watchers and subscriptions, bounded in count and bytes."""

    def __init__(self, clock) -> None:
        self.clock = clock
        self.watchers: dict[str, list[Watch]] = {}  # topic -> its watches, oldest first
        self.watch_count = 0
        self.watch_shares = Shares(MAX_WATCHERS, "watchers")
        self.sub_shares = Shares(MAX_SUBSCRIPTIONS, "subscriptions")
        self.held_bytes = 0  # events held by watchers until they answer
        self.subscriptions: dict[str, Subscription] = {}  # id -> subscription
        self.by_topic: dict[str, dict[str, Subscription]] = {}
        self.per_owner: collections.Counter[Any] = collections.Counter()
        self.sub_bytes = 0
        self.reactions = 0  # running now
        self.counters: collections.Counter[str] = collections.Counter()
        self._ids = itertools.count(1)

    # -- events
    def publish(self, topic: str, value: Any, depth: int = 0, by: Any = None) -> int:
        """Publish one event (`topic` a key: pfnode/core/names.py) on behalf of principal `by`;
        how many watchers and reactions it reached. ElementError when it is too large,
        ElementFailed (PF004) when watchers would hold too much."""
        size = len(encode_json(value))
        if size > MAX_EVENT_BYTES:
            raise ElementError("data", f"an event may hold at most {MAX_EVENT_BYTES} bytes of JSON, got {size}")
        watches = self.watchers.get(topic, ())
        if watches and self.held_bytes + size * len(watches) > MAX_HELD_BYTES:
            raise ElementFailed(ErrorCode.OVERLOADED, f"watchers already hold {self.held_bytes} bytes of events "
                                                      f"(limit {MAX_HELD_BYTES}); retry later")
        self.counters["signals"] += 1
        delivered = 0
        for watch in list(watches):
            watch.events.append(value)
            watch.bytes += size
            self.held_bytes += size
            delivered += 1
            if len(watch.events) >= watch.wanted:
                self._unwatch(watch)
                if not watch.future.done():
                    watch.future.set_result(None)
        subs = self.by_topic.get(topic)
        if subs:
            for sub in list(subs.values()):
                delivered += sub.react(value, depth, by)
        self.counters["delivered"] += delivered
        return delivered

    async def watch(self, topic: str, wanted: int, wait_s: float, owner: Any = None) -> Watch:
        refusal = self.watch_shares.refusal(owner)
        if refusal is not None:
            raise ElementFailed(ErrorCode.OVERLOADED, refusal)
        watch = Watch(topic, wanted, owner)
        self.watchers.setdefault(topic, []).append(watch)
        self.watch_count += 1
        self.watch_shares.add(owner)
        try:
            await asyncio.wait((watch.future,), timeout=wait_s)
        finally:
            self._unwatch(watch)
        return watch

    def _unwatch(self, watch: Watch) -> None:
        watches = self.watchers.get(watch.topic)
        if watches is None or watch not in watches:
            return
        watches.remove(watch)
        if not watches:
            del self.watchers[watch.topic]
        self.watch_count -= 1
        self.watch_shares.remove(watch.owner)
        self.held_bytes -= watch.bytes

    # -- subscriptions
    def subscribe(self, ctx, topic: str, step: Step, emit: str | None, ttl_ms: int, size: int) -> Subscription:
        owner = ctx.scope
        refusal = self.sub_shares.refusal(owner)
        if refusal is None and self.per_owner[owner] >= MAX_SUBSCRIPTIONS_PER_OWNER:
            refusal = f"you hold {MAX_SUBSCRIPTIONS_PER_OWNER} subscriptions already; cancel some first"
        if refusal is not None:
            raise ElementFailed(ErrorCode.OVERLOADED, refusal)
        if self.sub_bytes + size > MAX_SUBSCRIPTION_BYTES:
            raise ElementFailed(ErrorCode.OVERLOADED, f"subscriptions' steps already take {self.sub_bytes} bytes "
                                                      f"(limit {MAX_SUBSCRIPTION_BYTES}); retry later")
        sub_id = f"sub-{next(self._ids)}-{os.urandom(4).hex()}"
        sub = Subscription(self, sub_id, topic, step, emit, owner, ctx.identity, ctx.node,
                           self.clock() + ttl_ms / 1000, size)
        self.subscriptions[sub_id] = sub
        self.by_topic.setdefault(topic, {})[sub_id] = sub
        self.per_owner[owner] += 1
        self.sub_shares.add(owner)
        self.sub_bytes += size
        return sub

    def cancel(self, sub: Subscription, why: str = "cancelled") -> None:
        if self.subscriptions.pop(sub.id, None) is None:
            return
        subs = self.by_topic.get(sub.topic)
        if subs is not None:
            subs.pop(sub.id, None)
            if not subs:
                del self.by_topic[sub.topic]
        self.per_owner[sub.owner] -= 1
        self.sub_shares.remove(sub.owner)
        if self.per_owner[sub.owner] <= 0:
            del self.per_owner[sub.owner]
        self.sub_bytes -= sub.bytes
        self.counters[f"subscriptions_{why}"] += 1
        for task in list(sub.tasks):
            task.cancel()

    def sweep(self, now: float) -> None:
        for sub in [s for s in self.subscriptions.values() if s.expires <= now]:
            self.cancel(sub, "expired")

    def release(self, owner: Any) -> None:
        for sub in [s for s in self.subscriptions.values() if s.owner == owner]:
            self.cancel(sub, "released")

    def close(self) -> None:
        for sub in list(self.subscriptions.values()):
            self.cancel(sub, "released")

    def stats(self) -> dict[str, Any]:
        now = self.clock()
        return {"topics": len(self.watchers.keys() | self.by_topic.keys()), "watchers": self.watch_count,
                "held_bytes": self.held_bytes, "subscriptions": len(self.subscriptions),
                "subscription_bytes": self.sub_bytes, "reactions_running": self.reactions,
                "counters": dict(self.counters),
                "subscribed": {sub_id: sub.stats(now) for sub_id, sub in list(self.subscriptions.items())[:100]}}


def _topic(ctx, value: Any, field: str = "topic") -> str:
    """A topic's key: the name checked, then its principal's (pfnode/core/names.py)."""
    return qualify(need_str(value, field, max_chars=MAX_TOPIC_CHARS), ctx.identity)


@node_element("ed:signal")
async def signal(ctx, data: Any) -> Any:
    """Publish an event on a topic."""
    data = need_dict(data, "data")
    check_keys(data, "", {"topic", "data"})
    topic = _topic(ctx, data.get("topic"))
    return {"delivered": ctx.node.resources.events.publish(topic, data.get("data"), 0, ctx.identity)}


@node_element("ed:watch")
async def watch(ctx, data: Any) -> Any:
    """Wait for the next events on a topic (what came by the deadline, else)."""
    data = need_dict(data, "data")
    check_keys(data, "", {"topic", "events"})
    topic = _topic(ctx, data.get("topic"))
    wanted = optional_int(data, "events", "events", low=1, high=MAX_WATCH_EVENTS) or 1
    done = await ctx.node.resources.events.watch(topic, wanted, answer_within_s(ctx), ctx.scope)
    return {"events": done.events, "complete": len(done.events) >= wanted}


@node_element("ed:react")
async def react(ctx, data: Any) -> Any:
    """Run a step on every event of a topic (a subscription), or cancel one."""
    data = need_dict(data, "data")
    events = ctx.node.resources.events
    if "cancel" in data:
        check_keys(data, "", {"cancel"})
        sub_id = need_str(data.get("cancel"), "cancel")
        sub = events.subscriptions.get(sub_id)
        if sub is None or sub.owner != ctx.scope:
            raise ElementError("cancel", f"no subscription {sub_id!r} of yours (expired, cancelled, or "
                                         f"another's)"[:300])
        events.cancel(sub)
        return {"cancelled": sub_id, "runs": sub.runs, "failed": sub.failed, "dropped": sub.dropped}
    check_keys(data, "", {"topic", "step", "emit", "ttl_ms"})
    topic = _topic(ctx, data.get("topic"))
    step = parse_step(data.get("step"), "step")
    emit = _topic(ctx, data["emit"], "emit") if data.get("emit") is not None else None
    ttl_ms = optional_ttl_ms(data, "ttl_ms", DEFAULT_TTL_MS, MAX_TTL_MS)
    sub = events.subscribe(ctx, topic, step, emit, ttl_ms, len(encode_json(data["step"])))
    return {"subscription": sub.id, "topic": shown(topic), "expires_in_ms": ttl_ms}


@node_element("ed:timer")
async def timer(ctx, data: Any) -> Any:
    """Run a step after a delay, or on a schedule; its output(s)."""
    data = need_dict(data, "data")
    check_keys(data, "", {"after_ms", "step", "every_ms", "count", "emit"})
    after_ms = need_int(data.get("after_ms"), "after_ms", low=0)
    step = parse_step(data.get("step"), "step")
    every_ms = optional_int(data, "every_ms", "every_ms", low=MIN_EVERY_MS)
    count = optional_int(data, "count", "count", low=1, high=MAX_TIMER_RUNS)
    emit = _topic(ctx, data["emit"], "emit") if data.get("emit") is not None else None
    if count is not None and count > 1 and every_ms is None:
        raise ElementError("every_ms", "is required with a count above 1")
    remaining_ms = ctx.remaining_s() * 1000
    last_ms = after_ms + ((count or 1) - 1) * (every_ms or 0)
    if last_ms >= remaining_ms:
        field = "count" if count is not None and count > 1 else "after_ms"
        raise ElementError(field, f"the last run would start {last_ms} ms from now, after the packet's "
                                  f"deadline ({int(remaining_ms)} ms left)")
    clock = ctx.node.now
    started = clock()
    answer_by = started + answer_within_s(ctx)
    open_ended = every_ms is not None and count is None
    runs = count or (MAX_TIMER_RUNS if open_ended else 1)
    outputs = []
    for i in range(runs):
        at = started + (after_ms + i * (every_ms or 0)) / 1000
        if open_ended and at >= answer_by:
            break
        delay = at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if open_ended:
            try:
                output = await asyncio.wait_for(ctx.run(step, i, f"runs[{i}]"), max(0.0, answer_by - clock()))
            except asyncio.TimeoutError:
                break  # the deadline is near: answer with the outputs so far
        else:
            output = await ctx.run(step, i, f"runs[{i}]")
        outputs.append(output)
        if emit is not None:
            ctx.node.resources.events.publish(emit, output, 0, ctx.identity)
    return outputs if count is not None or open_ended else outputs[0]
