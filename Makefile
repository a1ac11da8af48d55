# Targets a newcomer can guess. Everything runs in a local virtualenv (.venv), made on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install test lint format demo bench run

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## the runtime and the test and lint tools, in .venv

test: $(STAMP)  ## the whole suite (needs Redis at REDIS_URL or 127.0.0.1:6379)
	$(BIN)/python -m pytest

lint: $(STAMP)  ## ruff and mypy, as CI would
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: $(STAMP)  ## the whole job end to end, against the bundled FunnelFox simulator
	$(BIN)/python -m workshop.demo

# make bench BENCH_QUICK=1 for a short run; BENCH_ARGS for anything else (python -m bench --help).
bench: $(STAMP)  ## bulk beside the references and the no-broker floor, then the live path at fixed rates
	$(BIN)/python -m bench $(BENCH_ARGS)

run: $(STAMP)  ## one worker, as the Procfile's worker: line runs it
	$(BIN)/celery -A worker.app worker --loglevel=INFO --without-gossip --without-mingle
