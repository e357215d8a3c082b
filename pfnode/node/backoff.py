"""The per-address back-off after failed authentications: a pure rule on an explicit `now`
(tested with a fake clock: tests/test_backoff.py).

A client that presents no token or an unknown one (PF401 on a WebSocket, HTTP 401 on
/metrics or /status) costs the front a TLS handshake, an HTTP request, a token lookup, a
link and a log line. After `failures` such failures from one address within `window_s`,
that address is refused for `window_s` (HTTP 429 with Retry-After) before any of that
work: a wrong-token storm from one machine costs at most `failures` full attempts per
back-off period. An address is an IPv4 address or an IPv6 /64 (what one host usually
holds). At most `max_addresses` are remembered, the least recently failed forgotten first,
so a storm from many addresses costs bounded memory.
"""
from __future__ import annotations

import dataclasses
import ipaddress

MAX_ADDRESSES = 10_000


@dataclasses.dataclass
class _Record:
    window_start: float  # when its current count of failures began
    failures: int = 0
    refused_until: float = 0.0


class AuthBackoff:
    def __init__(self, failures: int, window_s: float, max_addresses: int = MAX_ADDRESSES) -> None:
        """failures: how many within window_s start a back-off (0: never); window_s: that
        window, and how long the back-off lasts."""
        if failures < 0 or window_s <= 0 or max_addresses < 1:
            raise ValueError("need failures >= 0, window_s > 0 and max_addresses >= 1")
        self.failures = failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._records: dict[str, _Record] = {}  # oldest failure first

    def __len__(self) -> int:
        return len(self._records)

    def retry_after(self, address: str | None, now: float) -> float:
        """0 when `address` may try now, else the seconds until it may."""
        record = self._records.get(address) if address is not None else None
        if record is None or record.refused_until <= now:
            return 0.0
        return record.refused_until - now

    def failed(self, address: str | None, now: float) -> bool:
        """Count one failed authentication from `address`; True when it starts a back-off."""
        if not self.failures or address is None:
            return False
        record = self._records.pop(address, None)  # back in at the end: the latest failure
        if record is None or now - record.window_start >= self.window_s:
            record = _Record(window_start=now, refused_until=record.refused_until if record else 0.0)
        record.failures += 1
        self._records[address] = record
        while len(self._records) > self.max_addresses:
            del self._records[next(iter(self._records))]
        if record.failures < self.failures or record.refused_until > now:
            return False
        record.refused_until = now + self.window_s
        record.window_start, record.failures = now, 0  # counting starts again after the back-off
        return True


def address_of(peer: str | None) -> str | None:
    """The address a peer "host:port" is counted under: its IPv4 address (an IPv4-mapped
    IPv6 one's too), or its IPv6 /64. None for a peer that is not an IP address ("?": the
    transport could not tell), which is never backed off."""
    if not peer:
        return None
    host = peer.rpartition(":")[0].strip("[]") if ":" in peer else peer
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
