# Targets a newcomer can guess. Everything runs in a local virtualenv (.venv), made on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# Branch coverage of worker/ and config/ measured in the test process (make test); raise it as
# it rises, never lower it to pass.
COVERAGE_FLOOR ?= 0
# make chaos: how many runs of each scenario (tests/chaos.py).
CHAOS_RUNS ?= 20
NETFAULT_RUNS ?= 5

.PHONY: install test lint format demo bench chaos run

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## the runtime and the test and lint tools, in .venv

test: $(STAMP)  ## the whole suite (needs Redis at REDIS_URL or 127.0.0.1:6379)
	$(BIN)/python -m pytest --cov --cov-report=term --cov-fail-under=$(COVERAGE_FLOOR)

lint: $(STAMP)  ## ruff and mypy, as CI would
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: $(STAMP)  ## the whole job end to end, against the bundled FunnelFox simulator
	$(BIN)/python -m workshop.demo

bench: $(STAMP)  ## throughput side by side with Celery's ceiling and the textbook recipe
	$(BIN)/python -m bench

chaos: $(STAMP)  ## workers and Redis SIGKILLed while consuming, then cut connections: each run and the tally
	$(BIN)/python -m tests.chaos --chaos $(CHAOS_RUNS) --netfault $(NETFAULT_RUNS)

run: $(STAMP)  ## one worker, as the Procfile's worker: line runs it
	$(BIN)/celery -A worker.app worker --loglevel=INFO --without-gossip --without-mingle
