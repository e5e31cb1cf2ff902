# Local Kubernetes cluster with a real node (containerd + kubelet) for development
# (see docs/local-cluster.md).
# Included from the top-level Makefile, which defines PY, CACHE_DIR and the `install` target.
CLUSTER_DIR ?= .cluster

.PHONY: cluster-build
cluster-build: ## Build etcd, the Kubernetes binaries (kubelet too), the pause binary, kubectl, helm once (cached)
	AGENTSESSION_CACHE=$(CACHE_DIR) hack/build-control-plane.sh

.PHONY: cluster-up
cluster-up: install ## Start the control plane and the real node (root); kubeconfig in .cluster/kubeconfig
	AGENTSESSION_CACHE=$(CACHE_DIR) $(PY) -m tests.support.cluster up --dir $(CLUSTER_DIR)

.PHONY: cluster-down
cluster-down: ## Stop everything cluster-up started: every container, the node, the control plane
	@if [ -x $(PY) ]; then $(PY) -m tests.support.cluster down --dir $(CLUSTER_DIR); \
	else echo "No $(PY): nothing to stop"; fi
