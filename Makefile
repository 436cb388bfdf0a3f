# One-command set-up for a fresh machine: `make demo` runs the demo cluster,
# `make test` runs the whole suite (lint, types, tests). Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/http_hello.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench,fast,monitor]'
	$(BIN)/python bench/ipc.py
	$(BIN)/python bench/http.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
