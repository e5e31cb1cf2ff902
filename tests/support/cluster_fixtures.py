"""Fixtures for tests on the local control plane: cluster, node agent, namespaces, SA kubeconfigs.

A pytest plugin (registered in tests/conftest.py) so tests/cluster and tests/e2e share one
control plane per run. The control-plane binaries are built (or found in the
cache) once per session right after collection, outside pytest-timeout's per-test budget, so
`make test` works on a fresh machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from tests.support.cluster import ClusterError, LocalCluster, ensure_binaries
from tests.support.node_agent import NodeAgent

BIN_DIR = pytest.StashKey[Path]()
BUILD_ERROR = pytest.StashKey[str]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build the binaries before the first cluster test runs (a no-op on a cache hit)."""
    if not any(item.get_closest_marker("cluster") for item in session.items):
        return
    capture = session.config.pluginmanager.getplugin("capturemanager")
    uncaptured = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with uncaptured:
        try:
            session.config.stash[BIN_DIR] = ensure_binaries()
        except ClusterError as error:
            session.config.stash[BUILD_ERROR] = str(error)


@pytest.fixture(scope="session")
def local_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """The running control plane with our CRDs installed (admin kubeconfig: `.kubeconfig`)."""
    if BUILD_ERROR in request.config.stash:
        pytest.fail(f"building the control plane failed: {request.config.stash[BUILD_ERROR]}")
    bin_dir = request.config.stash.get(BIN_DIR, None) or ensure_binaries()
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), bin_dir=bin_dir)
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def node_agent(local_cluster: LocalCluster) -> Iterator[NodeAgent]:
    """An in-process node agent (Node `local-node`) that schedules and runs pods."""
    with NodeAgent(local_cluster.kubeconfig, "local-node", max_grace_seconds=10) as agent:
        yield agent


@pytest.fixture(scope="session")
def core(local_cluster: LocalCluster) -> Iterator[client.CoreV1Api]:
    """CoreV1Api with admin rights."""
    api_client = local_cluster.api_client()
    yield client.CoreV1Api(api_client)
    api_client.close()


@pytest.fixture
def namespace(local_cluster: LocalCluster) -> Iterator[str]:
    """A fresh namespace labelled `pod-security.kubernetes.io/enforce=restricted`, deleted after."""
    name = local_cluster.create_namespace()
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
    """Attach the control-plane log tails to the report of a failed cluster test."""
    report = yield
    if report.failed:
        cluster = getattr(item, "funcargs", {}).get("local_cluster")
        if isinstance(cluster, LocalCluster):
            report.sections.append(("control-plane logs", cluster.log_tails(30)))
    return report
