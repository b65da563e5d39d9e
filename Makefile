# make run   - install what is missing, then run Redis, a worker and the API on http://127.0.0.1:8000
# make test  - install what is missing, then lint, type-check and run every test
# make images-test - build every image, run the compose stack with podman and check it (root; ~10 min here)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the CPU build on a machine without a GPU; set TORCH_SPEC / PIP_TORCH_ARGS for another build
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=

.PHONY: run test install lint bench lock infinity-venv images-test

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

# Infinity 0.0.78, the rerank benchmark's peer, in its own venv (its pins conflict with ours), on the same CPU torch
infinity-venv:
	test -x .venv-infinity/bin/python || $(PYTHON) -m venv .venv-infinity
	echo "torch==2.13.0" > .venv-infinity/torch-constraint.txt
	.venv-infinity/bin/pip install -q $(PIP_TORCH_ARGS) -c .venv-infinity/torch-constraint.txt "$(TORCH_SPEC)" \
		"infinity-emb[server,torch]==0.0.78"

# every image built from its Dockerfile, docker-compose.yml run with podman-compose and checked (scripts/images-test.sh)
images-test: $(VENV)/.installed
	./scripts/images-test.sh

# the images' locked dependencies (deploy/*.lock), for the Python the images run (python:3.11-slim: 3.11);
# TORCH_INDEX_URL: where the worker image's torch comes from (default: PyPI's CUDA 13 build; the CPU image takes
# the same lock less its CUDA lines, and torch's CPU build)
IMAGE_PYTHON := 3.11
TORCH_INDEX_URL ?=
lock: $(VENV)/.installed
	$(BIN)/pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra api --python-version $(IMAGE_PYTHON) --python-platform x86_64-manylinux_2_28 \
		-o deploy/api.lock -q
	echo "torch==2.13.0" > $(VENV)/torch-constraint.txt
	$(BIN)/uv pip compile pyproject.toml --extra worker --python-version $(IMAGE_PYTHON) --python-platform x86_64-manylinux_2_28 \
		-c $(VENV)/torch-constraint.txt $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL) --index-strategy unsafe-best-match) \
		-o deploy/worker.lock -q
