"""Fixtures for the Helm chart tests: helm from the control-plane cache, with and without a cluster.

Every test here is marked `cluster`, so the binaries (kubectl, helm) are built or found right after
collection (tests/support/cluster_fixtures.py); rendering tests use only helm, the rest the shared
`local_cluster`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cluster import LocalCluster, ensure_binaries
from tests.support.cluster_fixtures import BIN_DIR, BUILD_ERROR
from tests.support.helm import Helm


@pytest.fixture(scope="session")
def chart_bin_dir(request: pytest.FixtureRequest) -> Path:
    """The directory with the cached kubectl and helm."""
    if BUILD_ERROR in request.config.stash:
        pytest.fail(f"building the control plane failed: {request.config.stash[BUILD_ERROR]}")
    return request.config.stash.get(BIN_DIR, None) or ensure_binaries()


@pytest.fixture(scope="session")
def helm(chart_bin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm without a cluster (lint, template, client-side dry runs)."""
    return Helm(chart_bin_dir, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="session")
def cluster_helm(helm: Helm, local_cluster: LocalCluster) -> Helm:
    """helm talking to the local control plane as its admin."""
    return helm.with_kubeconfig(local_cluster.kubeconfig)
