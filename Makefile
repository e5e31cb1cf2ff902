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
test: lint ## Set up everything and run the whole test suite (lint, unit, integration, e2e on the real node)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

.PHONY: bench
bench: install ## Run the benchmarks and print their figures
	$(PY) bench/bench_store.py
	$(PY) bench/bench_workspace.py
	$(PY) bench/bench_runner.py
	$(PY) bench/bench_gateway.py
	$(PY) bench/bench_operator.py
	$(PY) bench/bench_failover.py
	$(PY) bench/bench_budget.py

.PHONY: demo
demo: install ## The main job: local cluster with a real node, the chart's operator runs examples/hello.yaml (real API with ANTHROPIC_API_KEY)
	$(PY) hack/demo.py $(if $(KEEP),--keep)

.PHONY: demo-down
demo-down: ## Stop a demo left running with `make demo KEEP=1`
	$(PY) hack/demo.py down

.PHONY: demo-runner
demo-runner: install ## One session through the runner alone (no cluster): file store, scripted or real API
	$(PY) hack/demo_runner.py

# `make images`: docker where an engine answers, else buildah on a Debian base made with
# mmdebstrap (tagged -local: never push those). Cached by inputs; see hack/images.py.
# ENGINE=docker|buildah and BASE=official|local override the choice; IMAGE_REGISTRY/IMAGE_TAG
# name the docker-built images.
.PHONY: images
images: ## Build the operator and runner images (docker, or buildah without one; cached by inputs)
	python3 hack/images.py build

.PHONY: kind-e2e
kind-e2e: install ## Install path on kind (needs Docker, kind, helm): images, helm install, examples, conditions
	hack/kind-e2e.sh

.PHONY: clean
clean: ## Remove the virtualenv and local run state (caches outside the repo stay)
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
