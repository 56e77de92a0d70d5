SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
CLUSTER_DIR := .cluster
PYTEST_ARGS ?=

.PHONY: help venv deps cluster-bins realnode-bins helm cluster-up cluster-down demo install crds chart-files image test lint bench-peer

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# --- Python environment ---------------------------------------------------------

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed ## create .venv with the package and its test extras

deps: ## install missing Debian packages (openssl, python3-venv, prometheus, ...)
	hack/ensure-deps.sh

# --- local Kubernetes control plane (etcd, kube-apiserver, KCM, scheduler, kwok) ---

cluster-bins: ## build (once, cached in ~/.cache/canary-operator) the control-plane binaries
	hack/cluster/build.sh >/dev/null

realnode-bins: ## build (once, cached) the real node's binaries, Traefik and test images (root)
	hack/realnode/deps.sh
	hack/realnode/build.sh >/dev/null
	hack/realnode/traefik.sh >/dev/null
	hack/realnode/images/build.sh >/dev/null

helm: ## build (once, cached in ~/.cache/canary-operator) helm from its Go module
	hack/helm.sh >/dev/null

# NODES=real adds one real node (containerd, kubelet, kube-proxy, CoreDNS; root):
# hack/realnode/up.sh. Its pods need a toleration of realnode=true:NoSchedule.
NODES ?= kwok
cluster-up: ## start a dev cluster in .cluster/ (then: . .cluster/env); NODES=real adds a real node
	hack/cluster/up.sh $(CLUSTER_DIR)
	@if [ "$(NODES)" = real ]; then hack/realnode/up.sh $(CLUSTER_DIR); fi

cluster-down: ## stop the dev cluster (and its real node) and remove .cluster/
	hack/cluster/down.sh $(CLUSTER_DIR)

# --- the operator ----------------------------------------------------------------------

demo: deps $(VENV)/.installed ## local cluster + operator + the seed rollout, shown live
	hack/demo.sh

install: ## apply the CRD and the aggregated roles to the current cluster (KUBECONFIG)
	kubectl apply --server-side --force-conflicts -k manifests/crds

crds: $(VENV)/.installed ## regenerate crds/ from the pydantic models (and the chart's copy)
	$(VENV)/bin/python -m canary_operator.api.crd crds/canaryrollouts.yaml
	$(MAKE) --no-print-directory chart-files

# Helm cannot read files outside the chart: it carries copies (a test compares them).
chart-files: ## copy the CRD, the alert rules and the dashboard into charts/canary-operator/files
	cp crds/canaryrollouts.yaml manifests/monitoring/rules/canary-operator.rules.yaml \
	  manifests/monitoring/dashboards/canary-operator.json charts/canary-operator/files/

# The OCI image, without a daemon or a registry base image (root: mmdebstrap, umoci).
image: deps $(VENV)/.installed ## build the image archive (cached in ~/.cache/canary-operator/image)
	PYTHON=$(VENV)/bin/python hack/image/build.sh

# --- checks ---------------------------------------------------------------------------

# The cluster fixture starts (and always stops) its own cluster, or uses the one
# named by CANARY_TEST_KUBECONFIG. Building the binaries first keeps a cold build
# (tens of minutes) out of the tests' timeouts.
test: deps $(VENV)/.installed ## run the whole suite (tests/ and e2e/)
	@# The control plane first: every cluster test needs it. helm, the image, the real
	@# node's parts (as root) and Traefik build in the background while the other tests
	@# run (tests/harness/prebuild.py); the tests that need them run last.
	@if [ "$$(id -u)" = 0 ]; then hack/realnode/deps.sh; fi
	@if [ -z "$${CANARY_TEST_KUBECONFIG:-}" ]; then hack/cluster/build.sh >/dev/null; fi
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.installed ## ruff check, ruff format --check, mypy, the layering test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit/test_layering.py

# --- benchmarks (by hand; they print figures, they assert nothing) -------------------

bench-peer: deps $(VENV)/.installed ## canary-operator vs Argo Rollouts (built from its Go module), side by side
	@hack/cluster/build.sh >/dev/null
	hack/peer/argo-rollouts.sh >/dev/null
	$(VENV)/bin/python bench/bench_peer.py $(BENCH_ARGS)

# Holds /tmp/canary-bench.lock while it runs, so that no other benchmark shares the machine.
.PHONY: bench-scale
bench-scale: deps $(VENV)/.installed ## 1,000 and 10,000 rollouts: RSS, restart, handoff, requests; Argo Rollouts beside
	@hack/cluster/build.sh >/dev/null
	hack/peer/argo-rollouts.sh >/dev/null
	flock /tmp/canary-bench.lock $(VENV)/bin/python bench/bench_scale.py $(BENCH_ARGS)

# The real node needs root (docs/realnode.md); holds /tmp/canary-bench.lock while it runs.
.PHONY: bench-undo
bench-undo: deps $(VENV)/.installed ## kubectl canary undo on the real node: seconds to 100 % of requests on the previous version
	@hack/cluster/build.sh >/dev/null
	hack/realnode/deps.sh
	hack/realnode/build.sh >/dev/null
	hack/realnode/images/build.sh >/dev/null
	flock /tmp/canary-bench.lock $(VENV)/bin/python bench/bench_undo.py $(BENCH_ARGS)
