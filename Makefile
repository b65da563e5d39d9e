# make run   - install what is missing, then run Redis, a worker and the API on http://127.0.0.1:8000
# make test  - install what is missing, then lint, type-check and run every test
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the CPU build on a machine without a GPU; set TORCH_SPEC / PIP_TORCH_ARGS for another build
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=

.PHONY: run test install lint bench

run: $(VENV)/.installed
	./scripts/run-local.sh

test: $(VENV)/.installed lint
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	PYTHON=$(PYTHON) ./scripts/install-system-deps.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[api,worker,dev]"
	touch $@

bench: $(VENV)/.installed
	./scripts/install-system-deps.sh wrk
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python -m bench.run
