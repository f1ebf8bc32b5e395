# usage-stream: `make install`, `make demo`, `make test`, `make bench`, `make lint`.
# Installation is idempotent: the virtualenv is made once, pip runs again only when one of
# the three pyproject.toml files changes, and the Kafka jars are fetched once per version
# into the cache (USAGE_CACHE_DIR, default ~/.cache/usage-stream), shared by every clone.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP_STAMP := $(VENV)/.pip-installed
PYTEST_FLAGS ?= -p no:cacheprovider
MYPY_TARGETS ?= processor schemas usage_client
PY_SOURCES := processor schemas usage_client tests tools

.PHONY: help install demo test unit integration lint format bench schemas stack-up stack-down \
        stack-status stack-env clean debian-tools

help:
	@echo "make install       virtualenv, the three packages (editable, with dev tools), Kafka jars,"
	@echo "                   redis-server, promtool + prometheus, kubectl (Debian packages),"
	@echo "                   the TypeScript client's node_modules"
	@echo "make demo          local stack + worker + simulated agents, live rollups and alerts"
	@echo "make test          every test, the integration ones against the real Kafka and Redis"
	@echo "make lint          ruff check, ruff format --check, mypy"
	@echo "make bench         raw aiokafka ceiling vs full pipeline, with latency percentiles"
	@echo "make schemas       regenerate the JSON Schema files under schemas/"
	@echo "make stack-up      start the local Kafka + Redis (make stack-down stops them)"
	@echo "make clean         remove the virtualenv, caches and the local stack's state"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Three distributions, each with its pyproject.toml: usage-stream-schemas (schemas/),
# usage-stream-client (usage_client/) and usage-stream (the root). All three editable in
# one pip command, so pip resolves the root's pins on the other two to these local paths
# instead of looking them up in the package registry.
DIST_PYPROJECTS := pyproject.toml schemas/pyproject.toml usage_client/pyproject.toml

$(PIP_STAMP): $(DIST_PYPROJECTS) | $(BIN)/python
	$(BIN)/python -m pip install -q -e ./schemas -e ./usage_client -e '.[dev]'
	@touch $@

TS_CLIENT := clients/typescript
TS_STAMP := $(TS_CLIENT)/node_modules/.package-lock.json

$(TS_STAMP): $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund --loglevel=error

# Operator tools the tests use: promtool and prometheus (the alerting rules and the
# dashboard's queries are tested against them), kubectl (the manifests are rendered).
DEB_TOOLS := prometheus:promtool kubernetes-client:kubectl

debian-tools:
	@missing=""; for pair in $(DEB_TOOLS); do \
	  command -v "$${pair#*:}" >/dev/null || missing="$$missing $${pair%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

install: $(PIP_STAMP) $(TS_STAMP) debian-tools
	$(BIN)/usage-stream stack install

demo: install
	$(BIN)/usage-stream demo $(DEMO_ARGS)

test: install
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest $(PYTEST_FLAGS)

unit: $(PIP_STAMP)
	$(BIN)/pytest $(PYTEST_FLAGS) -m 'not integration'

integration: install
	$(BIN)/pytest $(PYTEST_FLAGS) -m integration

lint: $(PIP_STAMP)
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/mypy $(MYPY_TARGETS)

format: $(PIP_STAMP)
	$(BIN)/ruff check --fix $(PY_SOURCES)
	$(BIN)/ruff format $(PY_SOURCES)

bench: install
	$(BIN)/usage-stream bench
	$(BIN)/usage-stream bench --reads

schemas: $(PIP_STAMP)
	$(BIN)/usage-stream schemas export

stack-up: install
	$(BIN)/usage-stream stack up

stack-down: $(PIP_STAMP)
	$(BIN)/usage-stream stack down

stack-status: $(PIP_STAMP)
	$(BIN)/usage-stream stack status

stack-env: $(PIP_STAMP)
	@$(BIN)/usage-stream stack env

clean:
	-@if [ -x $(BIN)/usage-stream ]; then $(BIN)/usage-stream stack down; fi
	rm -rf $(VENV) .usage-stack .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name '*.egg-info' -type d -prune -exec rm -rf {} +
