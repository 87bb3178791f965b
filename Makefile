# kubetune: the two contract commands are `make demo` and `make test` (see README).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
PYTEST_ARGS ?=

.PHONY: help venv tools images lint typecheck unit middle integration test demo crds check-crds cluster-up cluster-down docs

help:
	@echo "make demo   - bring up the local control plane + MinIO, run the quickstart FineTuneJob end to end"
	@echo "make test   - ruff, mypy, unit and integration tests (builds tools on first run)"
	@echo "make images - build the operator and trainer images daemonless (podman + runc), cached"

# The virtualenv is keyed on pyproject.toml so dependency changes reinstall.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[trainer,dev,cli,api]'
	# the official OpenAI client for the API tests; apart, as checkov (dev) pins openai<1
	$(BIN)/pip install -q 'openai>=1.50'
	touch $@

venv: $(VENV)/.installed

tools:
	hack/build-tools all

# Operator and trainer (CUDA variant) images; `hack/images trainer-cpu` builds the CPU variant.
# Cached under ~/.cache/kubetune/containers, keyed on everything each image is built from. The
# image tests (tests/integration/test_images*.py) call hack/images themselves, so `make test`
# builds them too.
images:
	hack/images base operator trainer

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

crds: venv
	$(BIN)/python -m kubetune_api.build --write

check-crds: venv
	$(BIN)/python -m kubetune_api.build --check

unit: venv
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

# The middle tier: reconcile and leader election over a fake API server (seconds, no cluster).
middle: venv
	$(BIN)/pytest tests/middle tests/unit/test_chart_rbac.py $(PYTEST_ARGS)

integration: venv tools
	$(BIN)/pytest -m integration $(PYTEST_ARGS)

test: venv tools lint typecheck check-crds
	$(BIN)/pytest --durations=25 $(PYTEST_ARGS)

cluster-up: venv tools
	hack/cluster up

cluster-down:
	hack/cluster down

demo: venv tools
	hack/demo
