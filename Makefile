# autoparallel — every developer and CI entry point. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON := $(VENV)/bin/python
export PYTHONUNBUFFERED := 1
# Tests and the demo never reach the Hugging Face Hub: catalog ids resolve offline, others fail at once.
export HF_HUB_OFFLINE ?= 1

.PHONY: third-party-crds k8s-schemas helm chart-lint help install demo crds test test-unit test-cluster lint bench cluster-build cluster-up cluster-restart cluster-down kubeconfig kind-up

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed  ## create .venv with the package, torch and the test tools

demo: install  ## local cluster + CRD + operator, apply examples/llama70b.yaml, print `kubectl get pd` and the plan
	hack/demo.sh

crds: install  ## regenerate crds/ from the pydantic models (a test fails when they drift)
	$(PYTHON) -m autoparallel.controller.crd > crds/paralleldeployments.autoparallel.io.yaml

lint: install  ## ruff (format + lint) and mypy, all must be clean
	$(VENV)/bin/ruff format --check operator tests bench
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/mypy

test: lint  ## lint, types, then every test (unit + the real local control plane)
	$(PYTHON) -m pytest

test-unit: install  ## the pure tests only (no cluster)
	$(PYTHON) -m pytest tests/unit

bench: install  ## planner speed per catalog model, calibration error table, operator scale (docs/benchmark.md)
	$(PYTHON) -m bench.planner
	$(PYTHON) -m bench.calibration
	$(PYTHON) -m bench.operator --burst 200 --nodes 200 --steady 60 --rate 2 --image-install

cluster-build:  ## build the local control plane binaries once (cached under ~/.cache/autoparallel)
	hack/build-control-plane.sh

cluster-up:  ## start the local control plane with simulated GPU nodes (idempotent)
	hack/cluster-up.sh

cluster-restart:  ## kill -9 one component of the local control plane and start it again (COMPONENT=kube-apiserver)
	hack/cluster-up.sh --restart $(or $(COMPONENT),kube-apiserver)

cluster-down:  ## stop the local control plane and remove its state
	hack/cluster-down.sh

kind-up:  ## kind cluster + kwok + the simulated GPU nodes (needs Docker and kind; not tested on machines without Docker)
	hack/kind-up.sh

third-party-crds:  ## generate the optional integrations' CRDs (Prometheus Operator) from their Go modules, once
	hack/build-crds.sh

k8s-schemas:  ## rewrite the embedded core/v1 schemas of spec.podTemplate from k8s.io/kubernetes (after a version bump)
	python3 hack/k8s-schemas.py

helm:  ## build the helm CLI once from the Go module proxy (cached under ~/.cache/autoparallel/bin)
	hack/build-helm.sh

chart-lint: install  ## helm lint --strict, chart golden files, Argo CD health check and Dockerfile tests
	$$(hack/build-helm.sh --print-path) lint --strict charts/autoparallel-operator
	$(PYTHON) -m pytest tests/unit/test_chart.py tests/unit/test_argocd_health.py tests/unit/test_dockerfile.py

kubeconfig:  ## print the path of the local cluster's kubeconfig
	@hack/cluster-up.sh --print-kubeconfig-path
