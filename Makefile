# pgqueue developer commands. Everything runs from the project's own venv,
# created on first use: a fresh machine needs only Python 3.11+.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed

.PHONY: demo demo-procrastinate test lint bench soak chaos venv clean stop-db

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

## Run the example jobs through a worker on an embedded PostgreSQL (Ctrl-C stops).
demo: $(STAMP)
	$(BIN)/pgqueue demo

## The example procrastinate app run by `procrastinate worker`, followed through pgqueue's
## bridge, API and dashboard (docs/procrastinate.md; Ctrl-C stops).
demo-procrastinate: $(STAMP)
	$(BIN)/pgqueue demo --procrastinate

## The whole test suite (server: PGQUEUE_TEST_DSN, else a testcontainers container when a
## Docker engine answers, else embedded PostgreSQL; see the README's "Tests").
test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

$(BENCH_STAMP): $(STAMP)
	PYTHONWARNINGS=ignore $(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $(BENCH_STAMP)

## pgqueue beside PgQueuer and procrastinate (installed into the venv) and raw SQL
## (see docs/performance.md). PGQUEUE_DSN picks the server; BENCH_ARGS="--quick" etc.
bench: $(BENCH_STAMP)
	$(BIN)/pgqueue bench $(BENCH_ARGS)

## Long-running soak tests, kept out of `make test`.
soak: $(STAMP)
	$(BIN)/pytest -m soak -o addopts="" tests

## The fault-injection scenarios, long versions included (real worker processes).
chaos: $(STAMP)
	$(BIN)/pytest -o addopts="" tests/chaos

stop-db: $(STAMP)
	$(BIN)/pgqueue embedded stop

clean: stop-db
	rm -rf .pgqueue $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
