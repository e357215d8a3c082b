"""What this machine can take: psutil readings and the lane sizes they suggest.

`read_capacity` reads; `recommend` and `autoscale_step` are pure functions of the
readings, so their rules are unit-tested without a machine of a given size.
"""
from __future__ import annotations

import dataclasses
import os

import psutil

MIB = 1024 * 1024
MEMORY_HEADROOM = 0.8  # plan with at most this share of the available memory
DEFAULT_WORKER_MB = 64.0  # a worker's RSS when none has been measured yet


@dataclasses.dataclass(frozen=True)
class Capacity:
    physical_cores: int
    logical_cores: int
    usable_cores: int  # cores this process may run on (affinity, containers)
    load_1m: float
    memory_total_mb: float
    memory_available_mb: float
    worker_rss_mb: dict[int, float]  # pid -> resident set size

    @property
    def mean_worker_mb(self) -> float:
        sizes = list(self.worker_rss_mb.values())
        return sum(sizes) / len(sizes) if sizes else DEFAULT_WORKER_MB

    def to_dict(self) -> dict:
        return {"physical_cores": self.physical_cores, "logical_cores": self.logical_cores,
                "usable_cores": self.usable_cores, "load_1m": round(self.load_1m, 2),
                "memory_total_mb": round(self.memory_total_mb, 1),
                "memory_available_mb": round(self.memory_available_mb, 1),
                "worker_rss_mb": {str(pid): round(mb, 1) for pid, mb in self.worker_rss_mb.items()},
                "mean_worker_mb": round(self.mean_worker_mb, 1)}


def read_capacity(worker_pids: list[int] = ()) -> Capacity:
    rss = {}
    for pid in worker_pids:
        try:
            rss[pid] = psutil.Process(pid).memory_info().rss / MIB
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    memory = psutil.virtual_memory()
    logical = psutil.cpu_count(logical=True) or 1
    return Capacity(
        physical_cores=psutil.cpu_count(logical=False) or logical,
        logical_cores=logical,
        usable_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical,
        load_1m=os.getloadavg()[0],
        memory_total_mb=memory.total / MIB,
        memory_available_mb=memory.available / MIB,
        worker_rss_mb=rss,
    )


def process_usage(pids: list[int]) -> dict[int, dict[str, float]]:
    """pid -> its `cpu_s` (CPU seconds used so far, user and system), `rss_bytes` and
    `started` (a Unix time), for the processes still there. The dashboard turns successive
    CPU seconds into a share of a core."""
    usage = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                times = process.cpu_times()
                usage[pid] = {"cpu_s": round(times.user + times.system, 3),
                              "rss_bytes": process.memory_info().rss, "started": process.create_time()}
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return usage


def recommend(cap: Capacity, *, rm_memory_limit_mb: int, current: dict[str, int],
              df_max_workers: int) -> dict[str, int]:
    """Lane sizes for this machine.

    - df: one worker per usable core, as memory allows (each new worker costs about
      the mean RSS of the current ones), at most `df_max_workers`.
    - cf: always one (sequential by definition).
    - ed: one reserved worker; two on machines with 8 or more usable cores.
    - rm: as many workers as half the available memory holds at their cap, at most a
      quarter of the cores, at least one.
    """
    per_worker = max(cap.mean_worker_mb, 1.0)
    existing_mb = per_worker * sum(current.values())
    budget_mb = cap.memory_available_mb * MEMORY_HEADROOM + existing_mb
    df_by_memory = int(budget_mb // per_worker) - current.get("cf", 1) - current.get("ed", 1) - current.get("rm", 1)
    df = max(1, min(cap.usable_cores, df_by_memory, df_max_workers))
    rm_by_memory = int(cap.memory_available_mb * 0.5 // max(rm_memory_limit_mb, 1))
    rm = max(1, min(max(1, cap.usable_cores // 4), rm_by_memory))
    return {"cf": 1, "df": df, "ed": 2 if cap.usable_cores >= 8 else 1, "rm": rm}


def autoscale_step(*, size: int, queued: int, busy: int, idle_s: float, prefetch: int,
                   min_size: int, max_size: int, recommended: int, idle_after_s: float = 10.0) -> int:
    """One autoscaling decision for a lane: +1, -1 or 0 workers.

    Grow when every worker is busy and the queue holds more than a full prefetch for each
    (there is work no worker can take), while under both max_size and what the machine
    is recommended to carry. Shrink when the lane has been idle for idle_after_s.
    """
    if size < min_size:
        return 1
    if size > max_size:
        return -1
    if busy >= size and queued > size * prefetch and size < min(max_size, max(recommended, min_size)):
        return 1
    if queued == 0 and busy == 0 and idle_s >= idle_after_s and size > min_size:
        return -1
    return 0
