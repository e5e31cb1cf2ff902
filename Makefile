# agentsession-operator: developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Tools and caches live outside the repository so a clean clone stays clean and a warm machine
# pays nothing twice.
CACHE_DIR ?= $(HOME)/.cache/agentsession-operator
TOOLS_VENV := $(CACHE_DIR)/tools
UV := $(TOOLS_VENV)/bin/uv
UV_VERSION := 0.13.8
export UV_CACHE_DIR ?= $(CACHE_DIR)/uv
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

include hack/cluster.mk

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*?## "} /^[a-zA-Z0-9_-]+:.*?## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(UV):
	@echo ">> Installing uv $(UV_VERSION) into $(TOOLS_VENV)"
	python3 -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

.PHONY: install
install: $(UV) ## Create .venv with both images' extras and the dev tools (uv.lock pinned)
	$(UV) sync --all-extras --locked

# Local "pods" (the node agent runs them as processes, as a non-root UID) need a Python that UID
# can reach: the system's, not one under /root. This venv stands in for the runner image.
RUNNER_VENV := .venv-runner
SYSTEM_PYTHON ?= /usr/bin/python3.11

.PHONY: runner-env
runner-env: install ## The runner's environment for local pods (like the runner image, from uv.lock)
	@test -x $(SYSTEM_PYTHON) || { echo "runner-env needs $(SYSTEM_PYTHON) (apt-get install python3.11-venv)"; exit 1; }
	@test -x $(RUNNER_VENV)/bin/python || $(UV) venv -q --python $(SYSTEM_PYTHON) $(RUNNER_VENV)
	$(UV) export -q --frozen --no-dev --no-emit-project --extra runner -o $(RUNNER_VENV)/requirements.txt
	$(UV) pip install -q --python $(RUNNER_VENV)/bin/python -r $(RUNNER_VENV)/requirements.txt
	$(UV) pip install -q --python $(RUNNER_VENV)/bin/python --no-deps -e .

.PHONY: lint
lint: install ## ruff, ruff format --check, mypy, import-linter
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

.PHONY: fmt
fmt: install ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

.PHONY: manifests
manifests: install ## Regenerate crds/ and the chart's CRD template from the pydantic models
	$(PY) -m agentsession_operator.models.crd --write crds/
	$(PY) -m agentsession_operator.models.crd_chart --write charts/agentsession-operator/templates/crds/

.PHONY: test
test: lint runner-env ## Set up everything and run the whole test suite (lint, unit, integration, e2e)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

.PHONY: bench
bench: install ## Run the benchmarks and print their figures
	$(PY) bench/bench_store.py
	$(PY) bench/bench_runner.py
	$(PY) bench/bench_operator.py

.PHONY: demo
demo: install runner-env ## The main job: local control plane + operator, run examples/hello.yaml (real API with ANTHROPIC_API_KEY)
	$(PY) hack/demo.py $(if $(KEEP),--keep)

.PHONY: demo-down
demo-down: ## Stop a demo left running with `make demo KEEP=1`
	$(PY) hack/demo.py down

.PHONY: demo-runner
demo-runner: install ## One session through the runner alone (no cluster): file store, scripted or real API
	$(PY) hack/demo_runner.py

IMAGE_REGISTRY ?= ghcr.io/agentsession
IMAGE_TAG ?= dev
OPERATOR_IMAGE := $(IMAGE_REGISTRY)/agentsession-operator:$(IMAGE_TAG)
RUNNER_IMAGE := $(IMAGE_REGISTRY)/agentsession-runner:$(IMAGE_TAG)

.PHONY: images
images: ## Build the operator and runner images (needs Docker; not run by CI here)
	docker build -f operator/Dockerfile -t $(OPERATOR_IMAGE) .
	docker build -f runner-image/Dockerfile -t $(RUNNER_IMAGE) .

.PHONY: kind-e2e
kind-e2e: install ## Install path on kind (needs Docker, kind, helm): images, helm install, examples, conditions
	hack/kind-e2e.sh

.PHONY: clean
clean: ## Remove the virtualenv and local run state (caches outside the repo stay)
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
