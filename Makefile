# Every target creates or refreshes .venv itself, so each works on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: run test bench venv clean interop-deps

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The TypeScript interop peer needs Node.js and the ws package from npm.
interop-deps:
	cd tests/interop/ts && npm install --no-audit --no-fund --silent

run: venv
	$(VENV)/bin/pfnode serve $(ARGS)

# The whole suite on the default transport (picows), then every suite that talks to a
# node over a socket once more on the websockets transport: behaviour must be identical.
WIRE_TESTS := tests/test_e2e.py tests/test_faults.py tests/test_cli.py tests/test_lanes.py tests/test_ndarray.py tests/test_interop_ts.py

test: venv interop-deps
	$(PY) -m pytest $(ARGS)
	PFNODE_TRANSPORT=websockets $(PY) -m pytest $(WIRE_TESTS) $(ARGS)

bench: venv
	$(PY) bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) tests/interop/ts/node_modules bench/results
