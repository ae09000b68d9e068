# Set-up and entry points. Every target installs what it needs into the checkout
# (.venv/, devnet/node_modules/) and is safe to run again: stamps skip finished steps.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The default install alone (no torch: the int8 ONNX embedder), enough for the demo.
BASE_STAMP := $(VENV)/.installed-base
DEVNET_STAMP := devnet/node_modules/.installed

.PHONY: demo test test-fast lint bench evaluate contracts clean mutate

# The main job: a devnet of 5 staked nodes shares experiences, catches an equivocating
# node and slashes it on-chain, prints what each node learned, and stops everything.
demo: $(BASE_STAMP) $(DEVNET_STAMP)
	$(VENV)/bin/fai devnet demo

# The whole test suite: lint, then pytest.
test: $(STAMP) $(DEVNET_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest

# The fast path while editing (under 2 minutes): lint, then every test not marked `slow`.
# It skips what starts Anvil, node processes or a devnet (marked by a rule in
# tests/conftest.py) and two long tests marked by hand. `make test` still runs everything.
test-fast: $(STAMP) $(DEVNET_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -m "not slow"

bench: $(STAMP) $(DEVNET_STAMP)
	$(PY) bench/codec.py --json
	$(PY) bench/baseline_drift.py --json
	$(PY) bench/fidelity.py --json
	$(PY) bench/library.py --json
	$(PY) bench/gas.py --json
	$(PY) bench/fleet.py --json
	$(PY) bench/flood.py --json
	$(PY) bench/sim.py --json
	$(PY) bench/ingest.py --json
	$(PY) bench/recall.py --json
	$(PY) bench/cutoff.py --json
	$(PY) bench/embedders.py --json
	$(PY) bench/embed_cache.py --json

# The evaluation report: the simulator grid behind docs/evaluation.md and docs/img/
# (about 25 minutes on 2 cores; finished runs are cached in bench/.evaluation-cache/).
evaluate: $(STAMP)
	$(PY) bench/evaluate.py --jobs 2

# Mutation testing of the money and data paths (docs/mutation.md): mutmut changes the gate,
# budgets, seq clock, store, repair cursors, reputation, membership, DeltaSoup's filters and
# the revert decoder one thing at a time, runs their fast tests (one worker), and prints per
# module killed / survived / equivalent. Fails below a 90% kill rate.
mutate: $(STAMP)
	$(PY) -c 'import mutmut' 2>/dev/null || $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(PY) tools/mutate.py

# Recompile the Solidity sources into contracts/artifacts (commit the result).
contracts: $(DEVNET_STAMP)
	node devnet/compile.mjs

$(BASE_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "FAI needs Python >= 3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e .
	touch $(BASE_STAMP)

# The dev extra adds the test tools and the torch backend (tests compare the two embedders).
$(STAMP): $(BASE_STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# Pinned chain tooling (Anvil, solc, OpenZeppelin) from the lockfile.
$(DEVNET_STAMP): devnet/package.json devnet/package-lock.json
	npm ci --prefix devnet --no-audit --no-fund --prefer-offline
	touch $(DEVNET_STAMP)

clean:
	rm -rf $(VENV) devnet/node_modules .pytest_cache .hypothesis .ruff_cache
