# Two commands a user needs: `make serve` and `make check` (see README.md); `make bench` compares.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: serve check lint test bench clean

serve: $(VENV)/.installed
	$(BIN)/servio-bridge serve

check: $(VENV)/.installed-test lint test

lint: $(VENV)/.installed-test
	$(BIN)/ruff format --check bridge tests examples bench
	$(BIN)/ruff check bridge tests examples bench
	$(BIN)/mypy --strict bridge

test: $(VENV)/.installed-test
	$(BIN)/pytest

# The side-by-side benchmark of docs/benchmarks.md (a few minutes; not part of `make check`).
bench: $(VENV)/.installed-test
	$(BIN)/python bench/compare.py $(BENCH_ARGS)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) spool .pytest_cache .mypy_cache .ruff_cache
