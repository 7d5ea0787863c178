# `make dev` and `make test` set everything up on a fresh machine (Python 3.11+).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: dev test bench

dev: $(VENV)/.installed
	$(BIN)/conveyor dev

test: $(VENV)/.installed
	$(BIN)/pytest

bench: $(VENV)/.installed
	$(BIN)/python bench/worker_throughput.py

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# chalice 1.34 requires pip<26.3
	$(BIN)/pip install --quiet --disable-pip-version-check "pip<26.3"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[console,local,dev]"
	touch $@
