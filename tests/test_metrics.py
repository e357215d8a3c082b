"""The node's Prometheus metrics: pfnode/ops/metrics.py.

Events in, the exposition out, parsed back with prometheus_client's own parser and
checked against what was fed in. No node, no sockets.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from pfnode.errors import ErrorCode
from pfnode.ops.metrics import BUCKETS_S, CAUSES, MAX_SERIES, Metrics, exit_cause

DOCS = Path(__file__).resolve().parent.parent / "docs" / "OBSERVABILITY.md"


def scrape(metrics: Metrics) -> dict[str, dict[tuple, float]]:
    """sample name -> {sorted label items: value}, from the text exposition."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def families(metrics: Metrics) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(metrics.render()[0].decode())}


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


# ---------------------------------------------------------------- packets

def test_packets_are_counted_by_group_and_outcome():
    m = Metrics(process=False)
    for _ in range(3):
        m.packet_done("df", "df", None, 0.001, 0.05)
    m.packet_done("df", "rm", "PF501", 0.2, 150.0)
    m.packet_done("cf", "cf", "PF408", 30.0, None)
    m.packet_done("df", None, None, 0.01, 2.0)  # forwarded, answered by a reactor
    m.packet_ended("df", "PF409")
    m.packet_ended("ed", "cancelled")
    s = scrape(m)
    assert s["pfnode_packets_total"] == {
        (("group", "cf"), ("outcome", "PF408")): 1,
        (("group", "df"), ("outcome", "PF409")): 1,
        (("group", "df"), ("outcome", "PF501")): 1,
        (("group", "df"), ("outcome", "success")): 4,
        (("group", "ed"), ("outcome", "cancelled")): 1,
    }


def test_forwarded_packets_are_hub_relays_by_outcome():
    m = Metrics(process=False)
    m.packet_done("df", None, None, 0.01, 2.0)
    m.packet_done("df", None, None, 0.02, 2.0)
    m.packet_done("cf", None, "PF504", 5.0, None)
    m.packet_done("df", "df", None, 0.01, 2.0)  # not forwarded
    m.packet_ended("df", "PF003")  # refused before the hub had it: not a relay
    s = scrape(m)
    assert s["pfnode_hub_relays_total"] == {(("outcome", "PF504"),): 1, (("outcome", "success"),): 2}
    assert value(s, "pfnode_packet_round_trip_seconds_count", lane="hub") == 3


def test_labels_a_peer_chooses_are_folded_into_other():
    """A reactor may relay any code and a group is checked elsewhere: neither can grow the
    exposition, and every packet is still counted."""
    m = Metrics(process=False)
    for i in range(200):
        m.packet_done("df", None, f"XX{i}", 0.01, None)
    m.packet_done("zz", "df", None, 0.01, None)
    m.packet_ended("zz", "PF999")
    s = scrape(m)
    assert s["pfnode_packets_total"] == {
        (("group", "df"), ("outcome", "other")): 200,
        (("group", "other"), ("outcome", "success")): 1,
        (("group", "other"), ("outcome", "other")): 1,
    }
    assert s["pfnode_hub_relays_total"] == {(("outcome", "other"),): 200}


def test_an_error_code_member_is_counted_by_its_value():
    m = Metrics(process=False)
    m.packet_done("df", "df", ErrorCode.DEADLINE_EXCEEDED, 0.1, None)
    m.packet_done("df", "df", "PF408", 0.1, None)
    m.packet_ended("df", ErrorCode.OVERLOADED)
    m.frame_rejected(ErrorCode.TOO_LARGE)
    s = scrape(m)
    assert s["pfnode_packets_total"] == {(("group", "df"), ("outcome", "PF004")): 1,
                                         (("group", "df"), ("outcome", "PF408")): 2}
    assert s["pfnode_rejected_frames_total"] == {(("code", "PF413"),): 1}


# ---------------------------------------------------------------- histograms

def test_round_trip_histogram_buckets_and_sum_per_lane():
    m = Metrics(process=False)
    rtts = [0.00003, 0.0004, 0.0004, 0.001, 0.07, 3.0, 400.0]  # 0.001: on a bound, counted in it (le)
    for rtt in rtts:
        m.packet_done("df", "df", None, rtt, 0.05)
    m.packet_done("ed", "ed", None, 0.0002, 0.01)
    s = scrape(m)
    buckets = s["pfnode_packet_round_trip_seconds_bucket"]
    for bound in BUCKETS_S:
        expected = sum(1 for r in rtts if r <= bound)
        assert buckets[(("lane", "df"), ("le", repr(bound)))] == expected, bound
    assert buckets[(("lane", "df"), ("le", "+Inf"))] == len(rtts)
    assert value(s, "pfnode_packet_round_trip_seconds_count", lane="df") == len(rtts)
    assert value(s, "pfnode_packet_round_trip_seconds_sum", lane="df") == pytest.approx(sum(rtts))
    assert value(s, "pfnode_packet_round_trip_seconds_count", lane="ed") == 1
    assert value(s, "pfnode_packet_round_trip_seconds_bucket", lane="ed", le="0.0001") == 0
    assert value(s, "pfnode_packet_round_trip_seconds_bucket", lane="ed", le="0.00025") == 1


def test_the_dashboards_reads_by_group_and_restarts_by_lane():
    """Per group, across lanes (hub-relayed and untimed packets too): the counts, and the
    round-trip buckets (per bucket, not cumulative: the page diffs two reads)."""
    m = Metrics(process=False)
    for rtt in (0.00003, 0.0004, 0.0004, 400.0):
        m.packet_done("df", "df", None, rtt, 0.05)
    m.packet_done("df", None, "PF504", 0.002, None)  # relayed by the hub
    m.packet_done("co", "hosted", None, 0.0002, None)
    m.packet_ended("df", "cancelled")
    m.packet_refused("df", "PF004")
    m.worker_restart("df", "crash")
    m.worker_restart("df", "crash")
    m.worker_restart("rm", "memory")
    groups = m.by_group()
    assert {g: (v["ok"], v["failed"], v["cancelled"]) for g, v in groups.items()} == {"df": (4, 2, 1), "co": (1, 0, 0)}
    df = groups["df"]["rtt"]
    assert len(df) == len(BUCKETS_S) + 1 and sum(df) == 5 and df[-1] == 1  # 400 s: past the last bound
    assert df[BUCKETS_S.index(0.0005)] == 2 and df[BUCKETS_S.index(0.0025)] == 1
    assert m.restarts() == {"df": {"crash": 2}, "rm": {"memory": 1}}


def test_run_histogram_is_in_seconds_and_skips_packets_that_never_ran():
    m = Metrics(process=False)
    runs_ms = [0.02, 1.0, 1.0, 150.0]  # 1.0 ms: on the 0.001 s bound
    for run_ms in runs_ms:
        m.packet_done("df", "df", None, 0.5, run_ms)
    m.packet_done("df", "df", "PF408", 30.0, None)  # expired while queued
    m.packet_done("df", "df", "PF502", 1.0, 0.0)  # a worker died: the node reports no run time
    s = scrape(m)
    assert value(s, "pfnode_packet_run_seconds_count", lane="df") == 4
    assert value(s, "pfnode_packet_run_seconds_sum", lane="df") == pytest.approx(sum(runs_ms) / 1000)
    assert value(s, "pfnode_packet_run_seconds_bucket", lane="df", le="2.5e-05") == 1
    assert value(s, "pfnode_packet_run_seconds_bucket", lane="df", le="0.001") == 3
    assert value(s, "pfnode_packet_run_seconds_bucket", lane="df", le="0.1") == 3
    assert value(s, "pfnode_packet_run_seconds_bucket", lane="df", le="0.25") == 4
    assert value(s, "pfnode_packet_round_trip_seconds_count", lane="df") == 6


def test_untimed_packets_have_no_histogram_and_an_empty_node_exposes_empty_families():
    m = Metrics(process=False)
    m.packet_ended("df", "PF004")
    s = scrape(m)
    assert "pfnode_packet_round_trip_seconds_count" not in s
    fams = families(m)
    assert fams["pfnode_packet_round_trip_seconds"].type == "histogram"
    assert fams["pfnode_packet_round_trip_seconds"].samples == []


# ---------------------------------------------------------------- counters

def test_frames_bytes_and_connections():
    m = Metrics(process=False)
    for n in (100, 250):
        m.frame_in(n)
    m.frame_out(40)
    for _ in range(3):
        m.connection_opened()
    m.connection_closed(1000)
    m.connection_closed(4408)
    m.connection_closed(None)
    m.connection_closed(3999)  # a peer's own close code
    m.connection_refused("max_connections")
    m.connection_refused("max_connections")
    m.connection_refused("unauthenticated")
    m.frame_rejected("PF400")
    m.frame_rejected("PF413")
    m.frame_rejected("PF400")
    s = scrape(m)
    assert value(s, "pfnode_received_frames_total") == 2
    assert value(s, "pfnode_received_bytes_total") == 350
    assert value(s, "pfnode_sent_frames_total") == 1
    assert value(s, "pfnode_sent_bytes_total") == 40
    assert value(s, "pfnode_connections_opened_total") == 3
    assert s["pfnode_connections_closed_total"] == {
        (("code", "1000"),): 1, (("code", "4408"),): 1, (("code", "none"),): 1, (("code", "other"),): 1}
    assert s["pfnode_connections_refused_total"] == {
        (("reason", "max_connections"),): 2, (("reason", "unauthenticated"),): 1}
    assert s["pfnode_rejected_frames_total"] == {(("code", "PF400"),): 2, (("code", "PF413"),): 1}


def test_worker_restarts_auth_failures_admin_actions_internal_errors():
    m = Metrics(process=False)
    m.worker_restart("df", "crash")
    m.worker_restart("df", "crash")
    m.worker_restart("rm", "memory")
    m.worker_restart("df", "gremlins")
    m.auth_failure("bad_token")
    m.admin_action("mc:scale")
    m.admin_action("mc:scale", "forbidden")
    m.internal_error()
    s = scrape(m)
    assert s["pfnode_worker_restarts_total"] == {
        (("cause", "crash"), ("lane", "df")): 2, (("cause", "memory"), ("lane", "rm")): 1,
        (("cause", "other"), ("lane", "df")): 1}
    assert s["pfnode_auth_failures_total"] == {(("reason", "bad_token"),): 1}
    assert s["pfnode_admin_actions_total"] == {
        (("action", "mc:scale"), ("outcome", "ok")): 1, (("action", "mc:scale"), ("outcome", "forbidden")): 1}
    assert value(s, "pfnode_internal_errors_total") == 1


def test_a_labelled_counter_keeps_at_most_max_series_label_sets():
    m = Metrics(process=False)
    for i in range(MAX_SERIES + 10):
        m.connection_refused(f"reason{i}")
    refused = scrape(m)["pfnode_connections_refused_total"]
    assert len(refused) == MAX_SERIES + 1
    assert refused[(("reason", "other"),)] == 10
    assert sum(refused.values()) == MAX_SERIES + 10


@pytest.mark.parametrize("running, kill_reason, retired, cause", [
    (True, None, False, "crash"),
    (False, None, False, "exit"),
    (False, None, True, "memory"),
    (True, "deadline", False, "deadline"),
    (False, "protocol error", False, "protocol"),
    (False, "handler mismatch", False, "killed"),
])
def test_exit_cause(running, kill_reason, retired, cause):
    assert exit_cause(running=running, kill_reason=kill_reason, retired=retired) == cause
    assert cause in CAUSES


# ---------------------------------------------------------------- gauges from the node's state

LANES = {"cf": {"workers": 1, "target": 1, "busy": 0, "held": 0, "queued": 0},
         "df": {"workers": 4, "target": 6, "busy": 3, "held": 40, "queued": 17}}


def test_gauges_come_from_the_state_callable_at_each_scrape():
    calls = []

    def state():
        calls.append(1)
        return {"ready": True, "draining": False, "connections": 12, "inflight": 80, "blocked": 2,
                "forwarded": 5, "parked": 1, "results_stored": 300, "reactors": 2, "lanes": LANES}

    m = Metrics(state, process=False)
    assert calls == []  # nothing is read before a scrape
    s = scrape(m)
    assert len(calls) == 1
    for name, expected in [("pfnode_ready", 1), ("pfnode_draining", 0), ("pfnode_connections", 12),
                           ("pfnode_inflight_packets", 80), ("pfnode_blocked_packets", 2),
                           ("pfnode_forwarded_packets", 5), ("pfnode_parked_packets", 1),
                           ("pfnode_result_store_entries", 300), ("pfnode_reactors", 2)]:
        assert value(s, name) == expected, name
    for key, name in [("workers", "pfnode_lane_workers"), ("target", "pfnode_lane_target_workers"),
                      ("busy", "pfnode_lane_busy_workers"), ("held", "pfnode_lane_held_packets"),
                      ("queued", "pfnode_lane_queued_packets")]:
        assert s[name] == {(("lane", lane),): values[key] for lane, values in LANES.items()}, name
    LANES["df"]["queued"] = 3
    try:
        assert value(scrape(m), "pfnode_lane_queued_packets", lane="df") == 3
    finally:
        LANES["df"]["queued"] = 17
    assert len(calls) == 2


def test_state_keys_left_out_are_not_exported():
    m = Metrics(lambda: {"connections": 2, "lanes": {"df": {"queued": 4}}}, process=False)
    s = scrape(m)
    assert value(s, "pfnode_connections") == 2
    assert s["pfnode_lane_queued_packets"] == {(("lane", "df"),): 4}
    assert "pfnode_ready" not in s and "pfnode_lane_workers" not in s


def test_a_failing_state_callable_costs_the_gauges_not_the_scrape():
    def state():
        raise RuntimeError("boom")

    m = Metrics(state, process=False)
    m.packet_done("df", "df", None, 0.001, 0.05)
    s = scrape(m)
    assert value(s, "pfnode_packets_total", group="df", outcome="success") == 1
    assert "pfnode_connections" not in s
    assert value(s, "pfnode_state_errors_total") == 1


# ---------------------------------------------------------------- the exposition

def test_names_types_and_label_sets():
    m = Metrics(lambda: {"ready": True, "connections": 1, "lanes": LANES}, info={"version": "0.1.0"},
                process=False)
    m.packet_done("df", "df", "PF500", 0.001, 0.5)
    m.packet_done("df", None, None, 0.001, 0.5)
    m.packet_ended("df", "PF409")
    m.connection_closed(1000)
    m.connection_refused("max_connections")
    m.frame_rejected("PF400")
    m.worker_restart("df", "crash")
    m.auth_failure("bad_token")
    m.admin_action("mc:scale")
    allowed = {"group", "outcome", "lane", "le", "code", "reason", "cause", "action", "version"}
    for family in families(m).values():
        assert family.name.startswith("pfnode_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        for sample in family.samples:
            assert set(sample.labels) <= allowed, (sample.name, sample.labels)
    fams = families(m)
    assert fams["pfnode_packet_round_trip_seconds"].type == "histogram"
    assert fams["pfnode_lane_queued_packets"].type == "gauge"
    assert fams["pfnode_packets"].type == "counter"
    assert [s.labels for s in fams["pfnode_info"].samples] == [{"version": "0.1.0"}]


def test_openmetrics_when_the_scraper_asks_for_it():
    m = Metrics(process=False)
    m.packet_done("df", "df", None, 0.001, 0.5)
    body, content_type = m.render("application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    parsed = {f.name: f for f in parse_openmetrics(body.decode())}
    assert [s.value for s in parsed["pfnode_packets"].samples if s.name == "pfnode_packets_total"] == [1]
    assert parsed["pfnode_packet_round_trip_seconds"].type == "histogram"


def test_process_metrics_of_the_front_are_included_unless_turned_off():
    with_process = scrape(Metrics())
    assert "python_info" in with_process
    if Path("/proc/self/stat").exists():
        assert "process_cpu_seconds_total" in with_process
    assert not {"process_cpu_seconds_total", "python_info"} & set(scrape(Metrics(process=False)))


DASK_STATE = {"state": "ready", "workers": 2, "threads": 4, "window": 8, "on_cluster": 3, "running": 2,
              "queued": 5, "counters": {"submitted": 9, "reclaimed": 1, "expired": 2, "dependencies_on_cluster": 4}}


def test_the_dask_lane_is_exported_with_fixed_labels_only():
    m = Metrics(lambda: {"dask": DASK_STATE}, process=False)
    text = m.render()[0].decode()
    lines = [line for line in text.splitlines() if line.startswith("pfnode_dask_")]
    assert 'pfnode_dask_state{state="ready"} 1.0' in lines and 'pfnode_dask_state{state="unreachable"} 0.0' in lines
    assert "pfnode_dask_workers 2.0" in lines and "pfnode_dask_queued_packets 5.0" in lines
    assert 'pfnode_dask_tasks_total{event="reclaimed"} 1.0' in lines
    assert 'pfnode_dask_tasks_total{event="worker_lost"} 0.0' in lines  # every event, counted or not
    assert "dependencies_on_cluster" not in text  # only the known events: the label set is fixed
    assert not [line for line in text.splitlines() if line.startswith("pfnode_dask_")
                and "{" not in line and line.split()[0] not in {
                    "pfnode_dask_workers", "pfnode_dask_threads", "pfnode_dask_window",
                    "pfnode_dask_packets_on_cluster", "pfnode_dask_packets_running", "pfnode_dask_queued_packets"}]
    assert "pfnode_dask" not in Metrics(lambda: {"ready": True}, process=False).render()[0].decode()


def test_every_metric_is_documented_and_every_documented_metric_exists():
    """docs/OBSERVABILITY.md's metric table names exactly the pfnode_* families."""
    m = Metrics(lambda: {k: 1 for k in ("ready", "draining", "connections", "inflight", "blocked",
                                         "forwarded", "parked", "results_stored", "reactors")}
                | {"lanes": LANES, "elements": {"buffers": (1, 8)}, "dask": DASK_STATE},
                info={"version": "0.1.0"}, process=False)
    exposed = set()
    for family in m.collect():
        exposed.add(family.name + ("_total" if family.type == "counter" else ""))
    documented = set(re.findall(r"^\| `(pfnode_\w+)`", DOCS.read_text(), flags=re.M))
    assert exposed == documented


# ---------------------------------------------------------------- on both transports, end to end

async def _three_closes(endpoint: str) -> None:
    """A clean close (1000), a close with the peer's own code (4000: "other"), and a
    connection dropped without a close frame (1006), each after a packet."""
    from websockets.asyncio.client import connect

    from tests.e2e_util import Raw

    async with Raw(endpoint) as raw:
        await raw.roundtrip("transform", "clean")
    async with Raw(endpoint) as raw:
        await raw.roundtrip("transform", "own code")
        await raw.ws.close(4000, "bye")
    ws = await connect(endpoint, compression=None)
    await ws.send('{"type": "heartbeat", "seq": 1, "payload": {}}')
    await ws.recv()
    ws.transport.abort()


def _closes(node) -> dict[str, float]:
    from tests.e2e_util import http_get

    _, _, body = http_get(node.http, "/metrics")
    return {s.labels["code"]: s.value for f in text_string_to_metric_families(body.decode())
            if f.name == "pfnode_connections_closed" for s in f.samples if s.name.endswith("_total")}


def test_the_same_close_is_counted_the_same_on_both_transports(fresh_node):
    from tests.e2e_util import run, wait_until

    counted = {}
    for transport in ("picows", "websockets"):
        node = fresh_node("--transport", transport, "--ed-workers", "0", "--rm-workers", "0", workers=1)
        run(_three_closes(node.endpoint))
        counted[transport] = wait_until(lambda: (c := _closes(node)) and sum(c.values()) >= 3 and c,
                                        what=f"three closes counted on {transport}")
    assert counted["picows"] == counted["websockets"] == {"1000": 1, "other": 1, "1006": 1}, counted
