"""Tests of the queue ordering rules: pfnode/scheduler.py."""
from __future__ import annotations

import random

import pytest

from pfnode.scheduler import PriorityFifo


def drain(queue: PriorityFifo) -> list:
    out = []
    while queue:
        out.append(queue.pop())
    return out


def test_empty_queue():
    q = PriorityFifo()
    assert len(q) == 0
    assert not q
    with pytest.raises(IndexError):
        q.pop()


def test_len_and_bool_follow_push_and_pop():
    q = PriorityFifo()
    q.push("a", 5)
    assert len(q) == 1 and q
    q.push("b", 5)
    assert len(q) == 2
    q.pop()
    assert len(q) == 1 and q
    q.pop()
    assert len(q) == 0 and not q


def test_higher_priority_first():
    q = PriorityFifo()
    for name, prio in [("p1", 1), ("p10", 10), ("p5", 5), ("p7", 7), ("p2", 2)]:
        q.push(name, prio)
    assert drain(q) == ["p10", "p7", "p5", "p2", "p1"]


def test_fifo_within_a_priority():
    q = PriorityFifo()
    for i in range(20):
        q.push(f"t{i}", 5)
    assert drain(q) == [f"t{i}" for i in range(20)]


def test_mixed_priorities_keep_fifo_inside_each():
    q = PriorityFifo()
    pushes = [("a", 3), ("b", 9), ("c", 3), ("d", 9), ("e", 1), ("f", 3), ("g", 9)]
    for name, prio in pushes:
        q.push(name, prio)
    assert drain(q) == ["b", "d", "g", "a", "c", "f", "e"]


def test_interleaved_push_and_pop():
    q = PriorityFifo()
    q.push("low1", 1)
    q.push("mid1", 5)
    assert q.pop() == "mid1"
    q.push("high", 10)
    q.push("mid2", 5)
    assert q.pop() == "high"
    assert q.pop() == "mid2"
    assert q.pop() == "low1"
    assert not q


def test_push_returns_increasing_arrivals():
    q = PriorityFifo()
    arrivals = [q.push(i, 5) for i in range(5)]
    assert arrivals == sorted(arrivals)
    assert len(set(arrivals)) == 5


def test_requeue_with_original_arrival_goes_back_to_its_place():
    q = PriorityFifo()
    first = q.push("first", 5)
    q.push("second", 5)
    q.push("third", 5)
    assert q.pop() == "first"
    q.push("fourth", 5)  # arrives while "first" is out (e.g. dispatched to a dead worker)
    q.push("first", 5, arrival=first)  # requeued: must go before everything that came later
    assert drain(q) == ["first", "second", "third", "fourth"]


def test_requeue_without_arrival_goes_to_the_back():
    q = PriorityFifo()
    q.push("first", 5)
    q.push("second", 5)
    assert q.pop() == "first"
    q.push("first", 5)
    assert drain(q) == ["second", "first"]


def test_requeue_keeps_priority_order():
    q = PriorityFifo()
    arrival = q.push("old-low", 2)
    assert q.pop() == "old-low"
    q.push("new-high", 8)
    q.push("old-low", 2, arrival=arrival)
    assert drain(q) == ["new-high", "old-low"]


def test_next_arrival_reserves_a_place():
    q = PriorityFifo()
    reserved = q.next_arrival()
    q.push("later", 5)
    q.push("reserved", 5, arrival=reserved)
    assert drain(q) == ["reserved", "later"]


def test_items_need_not_be_comparable():
    """Unique arrivals mean items themselves are never compared."""
    q = PriorityFifo()
    items = [object() for _ in range(10)]
    for item in items:
        q.push(item, 5)
    q.push({"a": 1}, 5)
    assert drain(q)[:10] == items


def test_random_order_matches_a_stable_sort():
    rng = random.Random(1234)
    q = PriorityFifo()
    pushed = []
    for i in range(500):
        prio = rng.randint(1, 10)
        q.push(i, prio)
        pushed.append((i, prio))
    expected = [i for i, _ in sorted(pushed, key=lambda ip: -ip[1])]  # sort is stable
    assert drain(q) == expected
