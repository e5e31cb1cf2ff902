"""Fixtures for tests on the local cluster: control plane, the real node, namespaces, SA tokens.

A pytest plugin (registered in tests/conftest.py) so tests/cluster, tests/e2e and tests/chart share
one control plane and one node (containerd + kubelet) per run. Right after collection, outside
pytest-timeout's per-test budget, the control-plane binaries are built (or found in the cache)
while both project images build next to them, so `make test` works on a fresh machine.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.support.cluster import ClusterError, LocalCluster, _die_with_parent, ensure_binaries
from tests.support.node import IMAGES_SCRIPT, LocalNode

BIN_DIR = pytest.StashKey[Path]()
BUILD_ERROR = pytest.StashKey[str]()


NODE_FIXTURES = frozenset({"node", "runner_image", "operator_image"})


def _needs_cluster(session: pytest.Session) -> bool:
    return any(item.get_closest_marker("cluster") for item in session.items)


def _needs_node(session: pytest.Session) -> bool:
    return any(NODE_FIXTURES & set(getattr(item, "fixturenames", ())) for item in session.items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries and (for tests on the node) the images before the first cluster test
    runs (no-ops when warm). Tests of the control plane alone need no image."""
    if not _needs_cluster(session):
        return
    if not _needs_node(session):
        try:
            session.config.stash[BIN_DIR] = ensure_binaries()
        except ClusterError as error:
            session.config.stash[BUILD_ERROR] = str(error)
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    uncaptured = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with uncaptured:
        # The image build is mostly downloads and disk; the Go build is CPU: run them together.
        images = subprocess.Popen(
            [sys.executable, str(IMAGES_SCRIPT), "build"],
            stdout=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # a killed test run leaves no build behind
        )
        try:
            session.config.stash[BIN_DIR] = ensure_binaries()
        except ClusterError as error:
            session.config.stash[BUILD_ERROR] = str(error)
        if images.wait() != 0:
            session.config.stash[BUILD_ERROR] = "hack/images.py build failed (output above)"


@pytest.fixture(scope="session")
def local_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """The running control plane with our CRDs installed (admin kubeconfig: `.kubeconfig`)."""
    if BUILD_ERROR in request.config.stash:
        pytest.fail(f"building the local cluster failed: {request.config.stash[BUILD_ERROR]}")
    bin_dir = request.config.stash.get(BIN_DIR, None) or ensure_binaries()
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), bin_dir=bin_dir)
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def own_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """A second control plane, no node, that tests may restart (`restart_apiserver()`) without
    disturbing anyone else's, and that keeps an audit log of every write (`audit_events()`)."""
    if BUILD_ERROR in request.config.stash:
        pytest.fail(f"building the local cluster failed: {request.config.stash[BUILD_ERROR]}")
    bin_dir = request.config.stash.get(BIN_DIR, None) or ensure_binaries()
    cluster = LocalCluster(tmp_path_factory.mktemp("own-cluster"), bin_dir=bin_dir, audit=True)
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def node(local_cluster: LocalCluster) -> Iterator[LocalNode]:
    """The real node `localhost` (containerd + kubelet) with both project images imported."""
    assert local_cluster.bin_dir is not None
    local_node = LocalNode(
        local_cluster.kubeconfig,
        bin_dir=local_cluster.bin_dir,
        client_ca_file=local_cluster.kubelet_client_ca,
        logs_dir=local_cluster.logs_dir,
    )
    with local_node:
        yield local_node


@pytest.fixture(scope="session")
def runner_image(node: LocalNode) -> str:
    """The runner image as containerd on the node has it (built from runner-image/Dockerfile)."""
    return node.images["runner"]


@pytest.fixture(scope="session")
def operator_image(node: LocalNode) -> str:
    """The operator image as containerd on the node has it (built from operator/Dockerfile)."""
    return node.images["operator"]


@pytest.fixture(scope="session")
def core(local_cluster: LocalCluster) -> Iterator[client.CoreV1Api]:
    """CoreV1Api with admin rights."""
    api_client = local_cluster.api_client()
    yield client.CoreV1Api(api_client)
    api_client.close()


@pytest.fixture
def namespace(local_cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace, deleted after the test.

    Without a Pod Security label: pods on the local node need hostNetwork (there is no pod
    network), which `baseline` and `restricted` refuse. The production pod shape is proven
    against `restricted` separately (restricted_namespace).
    """
    name = local_cluster.create_namespace(labels={})
    yield name
    local_cluster.delete_namespace(name)


@pytest.fixture
def restricted_namespace(local_cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace labelled `pod-security.kubernetes.io/enforce=restricted`."""
    name = local_cluster.create_namespace("restricted")
    yield name
    local_cluster.delete_namespace(name)


@pytest.fixture
def sa_kubeconfig(local_cluster: LocalCluster, tmp_path: Path) -> Callable[[str, str], Path]:
    """`sa_kubeconfig(namespace, service_account) -> kubeconfig path` with a TokenRequest token.

    The ServiceAccount is created if missing; grant it a Role first to run code under exactly it.
    """

    def make(namespace: str, service_account: str) -> Path:
        path = tmp_path / f"{namespace}.{service_account}.kubeconfig"
        return local_cluster.service_account_kubeconfig(namespace, service_account, path)

    return make


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the control-plane and node log tails to the report of a failed cluster test."""
    report = yield
    if report.failed:
        for name in ("local_cluster", "own_cluster"):
            cluster = getattr(item, "funcargs", {}).get(name)
            if isinstance(cluster, LocalCluster):
                report.sections.append((f"{name} logs", cluster.log_tails(30)))
    return report
