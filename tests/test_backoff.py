"""The back-off after failed authentications (pfnode/node/backoff.py): a pure rule, on a fake
clock."""
from __future__ import annotations

import pytest

from pfnode.node.backoff import AuthBackoff, address_of


def fail(backoff: AuthBackoff, address: str, times: int, now: float) -> list[bool]:
    return [backoff.failed(address, now) for _ in range(times)]


def test_n_failures_within_the_window_refuse_the_address_for_the_window(clock):
    backoff = AuthBackoff(failures=3, window_s=60.0)
    assert fail(backoff, "10.0.0.9", 2, clock()) == [False, False]
    assert backoff.retry_after("10.0.0.9", clock()) == 0
    clock.advance(10.0)
    assert backoff.failed("10.0.0.9", clock()) is True  # the third within 60 s
    assert backoff.retry_after("10.0.0.9", clock()) == 60.0
    clock.advance(45.0)
    assert backoff.retry_after("10.0.0.9", clock()) == 15.0
    assert backoff.retry_after("10.0.0.10", clock()) == 0  # others are not concerned
    clock.advance(15.0)
    assert backoff.retry_after("10.0.0.9", clock()) == 0


def test_failures_spread_wider_than_the_window_never_refuse(clock):
    backoff = AuthBackoff(failures=3, window_s=60.0)
    for _ in range(10):
        assert fail(backoff, "10.0.0.9", 2, clock()) == [False, False]
        clock.advance(60.0)  # the count starts again
    assert backoff.retry_after("10.0.0.9", clock()) == 0


def test_failures_during_a_back_off_do_not_extend_it_and_counting_restarts_after(clock):
    backoff = AuthBackoff(failures=2, window_s=30.0)
    assert fail(backoff, "10.0.0.9", 2, clock()) == [False, True]
    clock.advance(20.0)
    assert fail(backoff, "10.0.0.9", 5, clock()) == [False] * 5  # requests already under way
    assert backoff.retry_after("10.0.0.9", clock()) == 10.0
    clock.advance(10.0)
    assert backoff.retry_after("10.0.0.9", clock()) == 0
    assert fail(backoff, "10.0.0.9", 2, clock()) == [False, True]  # a fresh count, a fresh back-off


def test_memory_is_bounded_forgetting_the_least_recently_failed_first(clock):
    backoff = AuthBackoff(failures=2, window_s=60.0, max_addresses=3)
    backoff.failed("a", clock())
    for address in ("b", "c", "d"):
        backoff.failed(address, clock())
    assert len(backoff) == 3
    assert backoff.failed("a", clock()) is False  # "a" was forgotten: its count began again
    assert backoff.failed("d", clock()) is True
    assert len(backoff) == 3


def test_zero_failures_turns_it_off_and_an_unknown_peer_is_never_refused(clock):
    off = AuthBackoff(failures=0, window_s=60.0)
    assert fail(off, "10.0.0.9", 100, clock()) == [False] * 100
    assert off.retry_after("10.0.0.9", clock()) == 0 and len(off) == 0
    on = AuthBackoff(failures=1, window_s=60.0)
    assert on.failed(None, clock()) is False and on.retry_after(None, clock()) == 0


@pytest.mark.parametrize("peer, address", [
    ("10.0.0.9:51234", "10.0.0.9"),
    ("2001:db8:1:2:3:4:5:6:443", "2001:db8:1:2::/64"),  # one host's /64, whatever its last bits
    ("2001:db8:1:2:ffff::1:443", "2001:db8:1:2::/64"),
    ("::ffff:10.0.0.9:443", "10.0.0.9"),
    ("::1:8443", "::/64"),
    (None, None),
    ("?", None),
])
def test_the_address_of_a_peer(peer, address):
    assert address_of(peer) == address
