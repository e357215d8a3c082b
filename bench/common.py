"""What every part of the benchmark shares: the packet's data, the one exception, progress lines,
percentiles, the event loop a child runs, and the options both harnesses take.

Nothing here starts a process or opens a socket.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The packet's data: a small JSON object, about 100 bytes encoded (the submit frame is ~230 B).
DATA = {"sensor": "bench-01", "ts": 1718000000123, "values": [20.5, 21.25, 19.75, 22.0],
        "tags": ["lab", "north"], "ok": True}
WINDOW = 256  # packets in flight during a throughput measurement



class BenchError(Exception):
    """A measurement could not be made or gave a wrong answer: the run fails."""


_T0 = time.monotonic()
_LABEL = ["bench"]


def set_progress_label(label: str) -> None:
    _LABEL[0] = label


def elapsed_s() -> float:
    """Seconds since this process imported the benchmark."""
    return time.monotonic() - _T0


def progress(msg: str) -> None:
    print(f"[{_LABEL[0]} {elapsed_s():6.1f}s] {msg}", file=sys.stderr, flush=True)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil
    return sorted_values[int(rank) - 1]


def run_loop(main):
    """Run the coroutine function `main` on uvloop when it is importable, else asyncio."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(main())
    return uvloop.run(main())


def loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


class Options:
    """An argument parser whose counted options default to one value for a full run and
    another for --quick, and are refused under their minimum."""

    def __init__(self, doc: str, workers_help: str, packets: tuple[int, int], rtt_packets: tuple[int, int],
                 repeats: int = 3) -> None:
        """packets, rtt_packets: (full, --quick) defaults; --quick makes one repeat."""
        cores = os.cpu_count() or 1
        self.parser = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                              formatter_class=argparse.RawDescriptionHelpFormatter)
        self.counts: dict[str, tuple[float, float, float]] = {}
        self.parser.add_argument("--quick", action="store_true",
                                 help="short smoke run: fewer packets, seconds and repeats (1)")
        self.count("--packets", *packets, "packets per throughput measurement")
        self.count("--rtt-packets", *rtt_packets, "one-at-a-time round trips per RTT measurement")
        self.count("--repeats", repeats, 1, "measurements of each system; medians are reported")
        self.parser.add_argument("--workers", type=int, default=cores,
                                 help=f"{workers_help} (default: cores, {cores})")
        self.parser.add_argument("--window", type=int, default=WINDOW,
                                 help=f"packets in flight for throughput (default {WINDOW})")
        self.parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                                 help="where to write the results (default bench/results)")

    def count(self, flag: str, full: float, quick: float, help: str, kind=int, minimum: float = 1) -> None:
        quick_text = f"; --quick {quick:g}" if quick != full else ""
        self.parser.add_argument(flag, type=kind, default=None, help=f"{help} (default {full:g}{quick_text})")
        self.counts[flag.lstrip("-").replace("-", "_")] = (full, quick, minimum)

    def add(self, *names, **kwargs) -> None:
        self.parser.add_argument(*names, **kwargs)

    def parse(self, argv: list[str] | None) -> argparse.Namespace:
        args = self.parser.parse_args(argv)
        for name, (full, quick, minimum) in self.counts.items():
            if getattr(args, name) is None:
                setattr(args, name, quick if args.quick else full)
        for name in (*self.counts, "workers", "window"):
            minimum = self.counts.get(name, (0, 0, 1))[2]
            if getattr(args, name) < minimum:
                self.parser.error(f"--{name.replace('_', '-')} must be at least {minimum:g}")
        return args
