# One-command set-up for a fresh machine: `make demo` runs the demo cluster,
# `make test` runs the whole suite (lint, types, tests, the third-party servers).
# Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench clean system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,thirdparty]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/http_hello.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

# The third-party server suite starts a cluster per test: two at a time keeps it short.
pytest: $(STAMP)
	$(BIN)/python -m pytest -q --ignore=tests/thirdparty
	$(BIN)/python -m pytest -q -n 2 tests/thirdparty

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench,fast,monitor,serve]'
	$(BIN)/python bench/ipc.py
	$(BIN)/python bench/http.py

# Debian packages that some tests use when present (nginx for docs/deploy.md's recipe).
# Best effort: without root or apt-get those tests skip, naming the package.
system-deps:
	@if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-core >/dev/null) \
		|| echo "system-deps: could not install nginx-core; the nginx test will skip"; \
	else echo "system-deps: not root; the nginx test will skip (apt-get install nginx-core)"; fi

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
