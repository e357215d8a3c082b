"""Capacity readings and the rules that turn them into lane sizes: pfnode/pool/capacity.py."""
from __future__ import annotations

import os

from pfnode.pool.capacity import Capacity, autoscale_step, read_capacity, recommend


def machine(cores=16, available_mb=64_000.0, rss=None) -> Capacity:
    return Capacity(physical_cores=cores, logical_cores=cores, usable_cores=cores, load_1m=0.0,
                    memory_total_mb=available_mb * 2, memory_available_mb=available_mb,
                    worker_rss_mb=rss if rss is not None else {1: 60.0, 2: 60.0})


CURRENT = {"cf": 1, "df": 2, "ed": 1, "rm": 1}


def test_read_capacity_reads_this_machine():
    cap = read_capacity([os.getpid()])
    assert cap.logical_cores >= 1 and 1 <= cap.usable_cores <= cap.logical_cores
    assert 0 < cap.memory_available_mb <= cap.memory_total_mb
    assert cap.worker_rss_mb[os.getpid()] > 1
    assert read_capacity([2**22 + 12345]).worker_rss_mb == {}  # a pid that is gone is skipped


def test_df_follows_usable_cores_when_memory_is_plenty():
    advice = recommend(machine(cores=16), rm_memory_limit_mb=1024, current=CURRENT, df_max_workers=64)
    assert advice["df"] == 16 and advice["cf"] == 1 and advice["ed"] == 2
    assert recommend(machine(cores=2), rm_memory_limit_mb=1024, current=CURRENT,
                     df_max_workers=64)["ed"] == 1


def test_df_is_capped_by_memory_and_by_the_maximum():
    tight = machine(cores=16, available_mb=400.0, rss={1: 100.0})
    advice = recommend(tight, rm_memory_limit_mb=1024, current=CURRENT, df_max_workers=64)
    assert 1 <= advice["df"] < 16
    assert recommend(machine(cores=16), rm_memory_limit_mb=1024, current=CURRENT,
                     df_max_workers=4)["df"] == 4


def test_rm_follows_memory_at_its_cap():
    assert recommend(machine(cores=16, available_mb=64_000), rm_memory_limit_mb=1024,
                     current=CURRENT, df_max_workers=64)["rm"] == 4  # a quarter of the cores
    assert recommend(machine(cores=16, available_mb=3_000), rm_memory_limit_mb=1024,
                     current=CURRENT, df_max_workers=64)["rm"] == 1


def step(**kw):
    args = dict(size=2, queued=0, busy=0, idle_s=0.0, prefetch=4, min_size=1, max_size=8, recommended=8)
    args.update(kw)
    return autoscale_step(**args)


def test_autoscale_grows_only_when_work_waits_behind_busy_workers():
    assert step(busy=2, queued=9) == 1
    assert step(busy=2, queued=8) == 0  # the prefetch windows can still take it
    assert step(busy=1, queued=100) == 0  # an idle worker exists
    assert step(size=8, busy=8, queued=100) == 0  # at the maximum
    assert step(size=3, busy=3, queued=100, recommended=3) == 0  # the machine is full


def test_autoscale_shrinks_after_idling_and_respects_bounds():
    assert step(idle_s=11.0) == -1
    assert step(idle_s=5.0) == 0
    assert step(size=1, idle_s=60.0) == 0
    assert step(size=0) == 1
    assert step(size=9) == -1


def test_df_lane_size_left_to_capacity_follows_the_recommendation():
    from pfnode.pool.pool import lane_specs
    from pfnode.settings import Settings

    settings = Settings(ed_workers=1, rm_workers=1)
    assert settings.workers is None
    expected = recommend(read_capacity(), rm_memory_limit_mb=settings.rm_memory_limit_mb,
                         current={"cf": 1, "ed": 1, "rm": 1}, df_max_workers=settings.df_max_workers)["df"]
    assert lane_specs(settings)["df"].size == expected >= 1
    assert lane_specs(Settings(workers=3))["df"].size == 3
