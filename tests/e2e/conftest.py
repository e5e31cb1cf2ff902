"""Fixtures for end-to-end tests: the operator process on the local control plane.

The operator runs as its console script under a ServiceAccount token bound to exactly the
ClusterRole in config/rbac/operator.yaml; its runner pods run through the node agent (the real
`agent-runner` and `claude` CLI), talk to the scripted Messages API and to moto's S3 server.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.support import scripted_api as sa
from tests.support.cluster import LocalCluster, wait_for
from tests.support.runner_harness import TEST_API_KEY
from tests.support.s3server import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    MotoServer,
    S3Bucket,
    free_port,
)

REPO = Path(__file__).resolve().parents[2]
RBAC = REPO / "config" / "rbac" / "operator.yaml"
OPERATOR_NAMESPACE = "agentsession-system"
OPERATOR_BIN = str(Path(sys.executable).parent / "agentsession-operator")
ALLOWED_IMAGE_PREFIX = "registry.example/allowed/"


@pytest.fixture(scope="session")
def scripted_api() -> Iterator[sa.ScriptedAPI]:
    """One scripted API for every runner pod; tests route replies by a marker in their prompt."""
    with sa.ScriptedAPI(default=sa.text("(no script for this prompt)")) as api:
        yield api


@pytest.fixture(scope="session")
def e2e_bucket(s3_server: MotoServer) -> S3Bucket:
    return s3_server.create_bucket("agentsessions-e2e")


@pytest.fixture(scope="session")
def operator_kubeconfig(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A kubeconfig whose token has exactly the operator's ClusterRole: missing RBAC fails here."""
    result = local_cluster.kubectl("create", "namespace", OPERATOR_NAMESPACE)
    assert result.returncode == 0 or "AlreadyExists" in result.stderr, result.stderr
    applied = local_cluster.kubectl("apply", "-f", str(RBAC))
    assert applied.returncode == 0, applied.stderr
    path = tmp_path_factory.mktemp("operator") / "kubeconfig"
    return local_cluster.service_account_kubeconfig(
        OPERATOR_NAMESPACE, "agentsession-operator", path
    )


@dataclass
class OperatorProcess:
    """The operator under test: a real process; restartable for crash tests."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    metrics_port: int
    health_port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        wait_for(self._healthy, timeout=60, what="the operator's health endpoint")

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"operator exited {self.process.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if kill:
            self.process.kill()
        else:
            self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def operator(
    local_cluster: LocalCluster,
    node_agent: Any,
    operator_kubeconfig: Path,
    scripted_api: sa.ScriptedAPI,
    s3_server: MotoServer,
    e2e_bucket: S3Bucket,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    work = tmp_path_factory.mktemp("operator-run")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "KUBECONFIG": str(operator_kubeconfig),
        "AGENTSESSION_STORE_URL": e2e_bucket.url("agents"),
        "AGENTSESSION_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "AGENTSESSION_S3_REGION": REGION,
        "AGENTSESSION_S3_CREDENTIALS_SECRET": "s3-credentials",
        "AGENTSESSION_ANTHROPIC_BASE_URL": scripted_api.base_url,
        "AGENTSESSION_CLI_MAX_RETRIES": "0",
        "AGENTSESSION_BACKOFF_BASE_SECONDS": "1",
        "AGENTSESSION_BACKOFF_MAX_SECONDS": "2",
        "AGENTSESSION_DEFAULT_TIMEOUT_SECONDS": "120",
        "AGENTSESSION_IMAGE_ALLOWLIST": ALLOWED_IMAGE_PREFIX + "*",
        "AGENTSESSION_DEFAULT_MODEL": "claude-sonnet-4-5",
        "AGENTSESSION_METRICS_PORT": str(free_port()),
        "AGENTSESSION_HEALTH_PORT": str(free_port()),
    }
    process = OperatorProcess(
        argv=[OPERATOR_BIN],
        env=env,
        log_path=work / "operator.log",
        metrics_port=int(env["AGENTSESSION_METRICS_PORT"]),
        health_port=int(env["AGENTSESSION_HEALTH_PORT"]),
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture
def ags_namespace(local_cluster: LocalCluster, namespace: str, operator: OperatorProcess) -> str:
    """A restricted namespace with the API-key and S3 Secrets the runner pods reference."""
    api_client = local_cluster.api_client()
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "anthropic-api-key"},
            "stringData": {"ANTHROPIC_API_KEY": TEST_API_KEY},
        },
    )
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "s3-credentials"},
            "stringData": {
                "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            },
        },
    )
    api_client.close()
    return namespace


class Sessions:
    """Create and watch AgentSessions in one namespace, as a user would."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self._api_client = cluster.api_client()
        self.api = client.CustomObjectsApi(self._api_client)
        self.core = client.CoreV1Api(self._api_client)

    def close(self) -> None:
        self._api_client.close()

    def create(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {
            "apiVersion": "agents.dev/v1alpha1",
            "kind": "AgentSession",
            "metadata": {"name": name},
            "spec": spec,
        }
        result: dict[str, Any] = self.api.create_namespaced_custom_object(
            "agents.dev", "v1alpha1", self.namespace, "agentsessions", body
        )
        return result

    def apply_file(self, path: Path) -> list[str]:
        """kubectl apply -f a manifest into the namespace; returns the names applied."""
        result = self.cluster.kubectl("apply", "-n", self.namespace, "-f", str(path))
        assert result.returncode == 0, result.stderr
        return [d["metadata"]["name"] for d in yaml.safe_load_all(path.read_text()) if d]

    def get(self, name: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = self.api.get_namespaced_custom_object(
                "agents.dev", "v1alpha1", self.namespace, "agentsessions", name
            )
            return body
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def delete(self, name: str) -> None:
        self.api.delete_namespaced_custom_object(
            "agents.dev", "v1alpha1", self.namespace, "agentsessions", name
        )

    def status(self, name: str) -> dict[str, Any]:
        body = self.get(name)
        return (body or {}).get("status") or {}

    def wait(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool] = lambda s: (
            s.get("phase") in ("Succeeded", "Failed")
        ),
        *,
        timeout: float = 120,
        what: str = "a terminal phase",
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            status = self.status(name)
            return status if predicate(status) else None

        return wait_for(check, timeout=timeout, what=f"AgentSession {name}: {what}")

    def pods(self, name: str) -> list[client.V1Pod]:
        found = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"agents.dev/session={name}"
        )
        return sorted(found.items, key=lambda p: int(p.metadata.labels["agents.dev/attempt"]))

    def events(self, name: str) -> list[client.CoreV1Event]:
        found = self.core.list_namespaced_event(
            self.namespace,
            field_selector=f"involvedObject.name={name},involvedObject.kind=AgentSession",
        )
        return list(found.items)


@pytest.fixture
def sessions(local_cluster: LocalCluster, ags_namespace: str) -> Iterator[Sessions]:
    helper = Sessions(local_cluster, ags_namespace)
    yield helper
    helper.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the operator's log tail to a failed e2e test's report."""
    report = yield
    if report.failed:
        process = getattr(item, "funcargs", {}).get("operator")
        if isinstance(process, OperatorProcess):
            report.sections.append(("operator log", process.log_tail(80)))
    return report


@contextlib.contextmanager
def stopped(process: OperatorProcess) -> Iterator[None]:
    """Run a block with the operator down (it is started again afterwards)."""
    process.stop(kill=True)
    try:
        yield
    finally:
        process.start()


def now() -> float:
    return time.monotonic()
