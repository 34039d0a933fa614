# Developer and CI entry points; each target creates the virtualenv when it is missing.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test check fmt bench mock-upstream clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=25.1"
	$(BIN)/python -m pip install --quiet -e . --group dev
	touch $(STAMP)

## run: the gateway on its embedded defaults (demo mode) on http://127.0.0.1:8080
run: $(STAMP)
	$(BIN)/sluicegate serve

## test: the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest

## check: lint, format check and type check
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## bench: the overhead benchmark (gateway vs direct to the fake upstream); needs wrk
bench: $(STAMP)
	$(BIN)/python bench/run.py

mock-upstream: $(STAMP)
	$(BIN)/sluicegate mock-upstream

clean:
	rm -rf $(VENV) .sluicegate .mypy_cache .ruff_cache
