# Two-command quick start: `make demo` and `make test` each set up .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LINT := $(wildcard src tests benchmarks docs)
STAMP := $(VENV)/.installed

.PHONY: install demo test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/convattn demo

lint: $(STAMP)
	$(BIN)/ruff check $(LINT)
	$(BIN)/ruff format --check $(LINT)

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

format: $(STAMP)
	$(BIN)/ruff format $(LINT)
	$(BIN)/ruff check --fix $(LINT)

bench: $(STAMP)
	$(BIN)/python -m pip install -e ".[dev,bench]"

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
