# fednas: `make run` (the federated default scenario) and `make test` (whole suite) each install what is
# missing into .venv first (scripts/install.sh: Python deps, learn2learn fix, Debian data).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fednas-installed
SCENARIO ?= simulations/federated_fashion.toml
ARGS ?=
PYTEST_ARGS ?=

.PHONY: install run run-centralised test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.txt scripts/install.sh
	bash scripts/install.sh

run: $(STAMP)
	$(VENV)/bin/fednas run $(SCENARIO) $(ARGS)

run-centralised: $(STAMP)
	$(VENV)/bin/fednas run simulations/quickstart.toml $(ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) bench/search_cost.py
	$(PY) bench/overhead.py
	$(PY) bench/federated_vs_baseline.py
	$(PY) bench/search_vs_random.py
	$(PY) bench/fedex_vs_fixed.py
	$(PY) bench/fedex_protocol.py
	$(PY) bench/privacy.py
	$(PY) bench/xdevice.py
	$(PY) bench/fewshot.py
	$(PY) bench/compression.py
	$(PY) bench/transfer.py
	$(PY) bench/soak.py

clean:
	rm -rf build .pytest_cache .ruff_cache
