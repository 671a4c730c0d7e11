# guaita — two commands on a fresh machine: `make demo` (the main job) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench deb lambda model lock clean

setup: $(STAMP)

# System packages (Mosquitto for the broker tests, dpkg
# tools for the .deb), then one venv with every extra: edge, train and dev, at the versions
# constraints.txt pins (the ones the tests and benchmarks were last run with).
$(STAMP): pyproject.toml constraints.txt
	bash deploy/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[edge,train,dev]'
	touch $@

# Rewrite constraints.txt from the newest releases pyproject.toml admits (a throwaway venv;
# its header comment is kept). Then `make test` and `make bench` before committing it.
lock:
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install --quiet --upgrade pip
	build/lock-venv/bin/pip install --quiet -e '.[edge,train,dev]'
	{ grep '^#' constraints.txt; build/lock-venv/bin/pip freeze --exclude-editable \
	    | grep -v '^guaita'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf build/lock-venv

# A simulated AllSky night played into a watched folder, through the daemon, with the shipped
# model; prints the detections and a summary. No broker needed.
demo: setup
	$(BIN)/guaita demo

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q

test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check edge training cloud tests || true

bench: setup
	$(BIN)/python -m bench

deb: setup
	bash deploy/build_deb.sh --out dist

# The ingest and daily-page Lambda package (cloud/ + the event schema, nothing else).
lambda: setup
	$(BIN)/python -m cloud.build_lambda --output build/lambda.zip

# Retrain the shipped model (2-core CPU here: about 4 h; docs/training.md has each step's
# time: the network about an hour, the trail classifier's candidates and members about an
# hour, the held-out checks another; a GPU box: well under an hour).
model: setup
	bash training/recipes/shipped_model.sh

clean:
	rm -rf $(VENV) build dist *.egg-info demo-out .pytest_cache .ruff_cache
