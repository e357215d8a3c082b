# Every target creates or refreshes .venv itself, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test bench venv native clean interop-deps

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# make bench also needs the bench extra (matplotlib, for the PNG); make test does not.
BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# The compiled hot path (setup.py, pfnode/native.py, docs/ARCHITECTURE.md): Cython compiles the
# listed modules in place. Incremental (a module is rebuilt only when its .py changed), so about a
# second when nothing did. Without a C compiler or Cython it says so and the .py modules run.
native: venv
	$(PY) setup.py -q build_ext --inplace

# The TypeScript interop peer needs Node.js and the ws package from npm.
interop-deps:
	cd tests/interop/ts && npm install --no-audit --no-fund --silent

run: native
	$(VENV)/bin/pfnode serve $(ARGS)

# The whole suite on the default transport (picows), then every suite about what crosses
# the socket once more on the websockets transport: behaviour must be identical. (The lanes',
# the CLI's and the workers' faults are about the node behind the transport: they run once,
# but for the faults that meet the link: its in-flight pause, its peer leaving, a drain.)
WIRE_FAULTS := $(addprefix tests/test_faults.py::test_,inflight_limit_applies_backpressure_and_every_packet_completes a_peer_at_its_inflight_limit_that_sends_heartbeats_is_not_dropped disconnect_drops_the_peers_queued_packets_and_frees_the_worker disconnect_drops_packets_that_had_not_started sigterm_drains_in_flight_packets_exits_0_and_leaves_no_workers)
WIRE_TESTS := tests/test_abuse.py tests/test_auth.py tests/test_e2e.py $(WIRE_FAULTS) tests/test_ndarray.py tests/test_interop_ts.py tests/test_interop_elixir.py tests/test_hub.py tests/test_dialout.py tests/test_dashboard.py

# The pure rules' suites once more with PFNODE_PURE=1: the .py modules, which stay the reference,
# must pass what the compiled ones pass (tests/test_native.py also compares the two directly).
NATIVE_PURE_TESTS := tests/test_native.py tests/test_protocol.py tests/test_protocol_properties.py \
	tests/test_scheduler.py tests/test_dispatch.py tests/test_pipe.py tests/test_shares.py tests/test_node_parts.py \
	tests/test_hub_rules.py tests/test_link.py

test: native interop-deps
	$(PY) -m pytest $(ARGS)
	PFNODE_PURE=1 $(PY) -m pytest $(NATIVE_PURE_TESTS) $(ARGS)
	PFNODE_TRANSPORT=websockets $(PY) -m pytest $(WIRE_TESTS) $(ARGS)

# Longer fuzzing than make test's: the protocol's property tests, and the compiled decode against
# its source, under Hypothesis's fuzz profile (random, 5 000 examples each), then the wire fuzz test with FUZZ_FRAMES frames
# (PFTEST_FUZZ_SEED picks another run) on each transport.
FUZZ_FRAMES ?= 200000
.PHONY: fuzz

fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/test_protocol_properties.py \
		tests/test_native.py::test_decode_compiled_and_from_source_agree_on_any_frame $(ARGS)
	PFTEST_FUZZ_FRAMES=$(FUZZ_FRAMES) $(PY) -m pytest tests/test_wire_fuzz.py $(ARGS)
	PFNODE_TRANSPORT=websockets PFTEST_FUZZ_FRAMES=$(FUZZ_FRAMES) $(PY) -m pytest tests/test_wire_fuzz.py $(ARGS)

# bench/run.py (ARGS go to it, e.g. ARGS=--quick), bench/hub.py (HUB_ARGS), bench/neighbours.py (NEIGHBOUR_ARGS:
# a victim client's latency while a noisy neighbour loads the node, issue 19), bench/dasklane.py (DASK_ARGS: the
# local pool against a Dask LocalCluster), bench/peers.py (PEERS_ARGS: pfnode beside the ProcessPoolExecutor, Ray
# and Dask; Ray only where the peers extra is installed), then the pytest-benchmark micro-benchmarks (MICRO_ARGS go
# to pytest). --quick in ARGS shortens all six: hub.py, neighbours.py, dasklane.py and peers.py get it too, and each
# micro-benchmark runs for at most 0.05 s instead of 0.5 s. Plain `pytest` never collects bench/: testpaths is tests/.
MICRO_ARGS ?=
HUB_ARGS ?=
NEIGHBOUR_ARGS ?=
DASK_ARGS ?=
PEERS_ARGS ?=
BENCH_QUICK := $(filter --quick,$(ARGS))
MICRO_MAX_TIME := $(if $(BENCH_QUICK),0.05,0.5)

bench: $(BENCH_STAMP) native
	$(PY) bench/run.py $(ARGS)
	$(PY) bench/hub.py $(BENCH_QUICK) $(HUB_ARGS)
	$(PY) bench/neighbours.py $(BENCH_QUICK) $(NEIGHBOUR_ARGS)
	$(PY) bench/dasklane.py $(BENCH_QUICK) $(DASK_ARGS)
	$(PY) bench/peers.py $(BENCH_QUICK) $(PEERS_ARGS)
	$(PY) -m pytest bench/test_micro.py --benchmark-only -q --benchmark-sort=name \
		--benchmark-max-time=$(MICRO_MAX_TIME) --benchmark-columns=min,median,mean,stddev,ops,rounds \
		--benchmark-json=bench/results/micro-latest.json $(MICRO_ARGS)

clean:
	rm -rf $(VENV) tests/interop/ts/node_modules bench/results build
	find pfnode -name '*.so' -delete -o -name '*.c' -delete
