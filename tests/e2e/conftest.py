"""Fixtures for end-to-end tests: the operator process on the local control plane.

The operator runs as its console script under a ServiceAccount token bound to exactly the
ClusterRole in config/rbac/operator.yaml (the chart tests run it from its image, in a pod); its
runner pods run on the real node (kubelet + containerd) from the runner image, with host
networking (the local cluster has no pod network), and talk to the scripted Messages API and to
moto's S3 server on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from claude_agent_sdk.types import SessionKey
from kubernetes import client

from agentsession_gateway.s3 import open_store
from tests.support import scripted_api as sa
from tests.support.cluster import LocalCluster, wait_for
from tests.support.fault_ledger import FaultCount, FaultLedger
from tests.support.node import LocalNode
from tests.support.operator_process import (
    NETWORK_POLICY_ENV,
    OPERATOR_BIN,
    OPERATOR_NAMESPACE,
    OperatorProcess,
)
from tests.support.operator_process import operator_kubeconfig as operator_kubeconfig_for
from tests.support.s3server import S3Bucket, TenantStore, free_port
from tests.support.session_secrets import add_session_secrets

ALLOWED_IMAGE_PREFIX = "registry.example/allowed/"


@pytest.fixture(scope="session")
def scripted_api() -> Iterator[sa.ScriptedAPI]:
    """One scripted API for every runner pod; tests route replies by a marker in their prompt."""
    with sa.ScriptedAPI(default=sa.text("(no script for this prompt)")) as api:
        yield api


@pytest.fixture(scope="session")
def tenant_store() -> Iterator[TenantStore]:
    """The e2e store: IAM enforced, a role per namespace the operator assumes (STS vending)."""
    store = TenantStore("agentsessions-e2e")
    yield store
    store.stop()


@pytest.fixture(scope="session")
def e2e_bucket(tenant_store: TenantStore) -> S3Bucket:
    return tenant_store.bucket


@pytest.fixture(scope="session")
def operator_kubeconfig(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A kubeconfig whose token has exactly the operator's ClusterRole: missing RBAC fails here."""
    return operator_kubeconfig_for(
        local_cluster, tmp_path_factory.mktemp("operator") / "kubeconfig"
    )


@dataclass
class OperatorFactory:
    """Builds operator processes with the e2e settings; each gets its own HOME, log and ports."""

    kubeconfig: Path
    base_env: dict[str, str]
    tmp_path_factory: pytest.TempPathFactory

    def process(self, name: str, env: Mapping[str, str] | None = None) -> OperatorProcess:
        """An operator named `name` (not started); `env` overrides or adds AGENTSESSION_* vars."""
        work = self.tmp_path_factory.mktemp(f"operator-{name}")
        merged = {
            **self.base_env,
            "HOME": str(work),
            "KUBECONFIG": str(self.kubeconfig),
            "AGENTSESSION_METRICS_PORT": str(free_port()),
            "AGENTSESSION_HEALTH_PORT": str(free_port()),
            **(env or {}),
        }
        return OperatorProcess(
            argv=[OPERATOR_BIN],
            env=merged,
            log_path=work / "operator.log",
            metrics_port=int(merged["AGENTSESSION_METRICS_PORT"]),
            health_port=int(merged["AGENTSESSION_HEALTH_PORT"]),
        )


@pytest.fixture(scope="session")
def operator_factory(
    operator_kubeconfig: Path,
    scripted_api: sa.ScriptedAPI,
    tenant_store: TenantStore,
    runner_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> OperatorFactory:
    """Operators configured like the e2e one (scripted API, moto S3, short backoffs)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        **tenant_store.operator_env(),
        "AGENTSESSION_ANTHROPIC_BASE_URL": scripted_api.base_url,
        "AGENTSESSION_CLI_MAX_RETRIES": "0",
        "AGENTSESSION_BACKOFF_BASE_SECONDS": "1",
        "AGENTSESSION_BACKOFF_MAX_SECONDS": "2",
        "AGENTSESSION_DEFAULT_TIMEOUT_SECONDS": "120",
        # A wait for a missing spec.resume.sessionRef fails this soon (tests/e2e/test_wedges.py).
        "AGENTSESSION_SESSION_REF_TIMEOUT_SECONDS": "15",
        "AGENTSESSION_IMAGE_ALLOWLIST": ALLOWED_IMAGE_PREFIX + "*",
        "AGENTSESSION_DEFAULT_MODEL": "claude-sonnet-4-5",
        "AGENTSESSION_RUNNER_IMAGE": runner_image,
        # The local node has no pod network (docs/local-cluster.md).
        "AGENTSESSION_RUNNER_HOST_NETWORK": "true",
        **NETWORK_POLICY_ENV,
    }
    return OperatorFactory(operator_kubeconfig, env, tmp_path_factory)


@pytest.fixture(scope="package")
def operator(
    local_cluster: LocalCluster, node: LocalNode, operator_factory: OperatorFactory
) -> Iterator[OperatorProcess]:
    """The operator every e2e test uses: all namespaces, least-privilege RBAC.

    Package-scoped: it stops when the e2e tests end, so it never competes with the operator that
    later tests (the chart's) run in the same cluster.
    """
    process = operator_factory.process("main")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def ags_namespace(
    local_cluster: LocalCluster,
    namespace: str,
    operator: OperatorProcess,
    tenant_store: TenantStore,
) -> str:
    """A namespace with the API-key Secret, and its store role provisioned."""
    add_session_secrets(local_cluster, namespace)
    tenant_store.provision(namespace)
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

    @property
    def namespace_uid(self) -> str:
        """The namespace's UID: the store keys its transcripts by it."""
        return namespace_uid(self.cluster, self.namespace)

    def uid(self, name: str) -> str:
        """The AgentSession's UID: its runner pods' controller ownerReference names it."""
        return str((self.get(name) or {})["metadata"]["uid"])

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

    def event_reasons(self, name: str) -> list[str]:
        return [str(e.reason) for e in self.events(name)]

    def wait_gone(self, name: str, *, timeout: float = 60) -> None:
        wait_for(lambda: self.get(name) is None, timeout=timeout, what=f"{name} to be deleted")

    def wait_pod(
        self,
        name: str,
        predicate: Callable[[client.V1Pod], bool],
        *,
        timeout: float = 90,
        what: str,
    ) -> client.V1Pod:
        """Poll the session's pods until one satisfies `predicate`; returns it."""

        def check() -> client.V1Pod | None:
            return next((p for p in self.pods(name) if predicate(p)), None)

        return wait_for(check, timeout=timeout, what=f"a pod of {name}: {what}")

    def wait_running_pod(self, name: str, attempt: int = 1, *, timeout: float = 90) -> str:
        """The name of attempt `attempt`'s pod once its container runs."""

        def running(pod: client.V1Pod) -> bool:
            statuses = pod.status.container_statuses or []
            return (
                pod.metadata.labels.get("agents.dev/attempt") == str(attempt)
                and bool(statuses)
                and statuses[0].state.running is not None
            )

        pod = self.wait_pod(name, running, timeout=timeout, what=f"attempt {attempt} running")
        return str(pod.metadata.name)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    """The status condition of type `kind` (StopIteration if absent)."""
    return next(c for c in status.get("conditions", []) if c["type"] == kind)


def table_rows(output: str) -> list[dict[str, str]]:
    """Rows of `kubectl get` table output, keyed by column header (headers may hold spaces)."""
    lines = [line for line in output.splitlines() if line.strip()]
    if not lines:
        return []
    header = lines[0]
    starts = [m.start() for m in re.finditer(r"(?:^|(?<=\s\s))\S", header)]
    bounds = [*starts[1:], None]
    names = [header[a:b].strip() for a, b in zip(starts, bounds, strict=True)]
    return [
        {name: line[a:b].strip() for name, a, b in zip(names, starts, bounds, strict=True)}
        for line in lines[1:]
    ]


def marker() -> str:
    """A unique tag for a test's prompt, so the scripted API can route its replies."""
    return f"TASK-{uuid.uuid4().hex[:8]}"


def gate_command(gate: str, then: str = "echo released") -> str:
    """A Bash tool command that waits (bounded) until file `gate` appears in the workspace.

    The test opens the gate with `open_gate()`: deterministic control over when a running agent
    turn ends, without timing guesses.
    """
    return (
        f"for i in $(seq 900); do [ -e {gate} ] && break; sleep 0.1; done; [ -e {gate} ] && {then}"
    )


def open_gate(node: LocalNode, namespace: str, pod: str, gate: str) -> None:
    """Create `gate` in the pod's workspace volume (what the pod sees at /workspace)."""
    path = node.volume_path(namespace, pod, "workspace") / gate
    path.write_text("open\n")
    path.chmod(0o644)


@pytest.fixture
def sessions(local_cluster: LocalCluster, ags_namespace: str) -> Iterator[Sessions]:
    helper = Sessions(local_cluster, ags_namespace)
    yield helper
    helper.close()


def tenant_namespace(cluster: LocalCluster, store: TenantStore) -> str:
    """A fresh namespace as a tenant gets it: the API-key Secret and its store role."""
    namespace = cluster.create_namespace(labels={})
    add_session_secrets(cluster, namespace)
    store.provision(namespace)
    return namespace


@pytest.fixture
def other_sessions(
    local_cluster: LocalCluster, operator: OperatorProcess, tenant_store: TenantStore
) -> Iterator[Sessions]:
    """Sessions in a second fresh namespace (with the Secrets), for cross-namespace tests."""
    namespace = tenant_namespace(local_cluster, tenant_store)
    helper = Sessions(local_cluster, namespace)
    yield helper
    helper.close()
    local_cluster.delete_namespace(namespace)


@pytest.fixture(scope="session")
def garbage_collector(local_cluster: LocalCluster, operator_kubeconfig: Path) -> None:
    """Returns once kube-controller-manager's garbage collector can resolve AgentSession owners.

    The collector re-reads API discovery every 30 s; the control plane starts it before the CRDs
    are installed, so until then it cannot map an AgentSession owner and backs off on each such
    dependent (tens of seconds). Probe with ConfigMaps owned by an AgentSession that does not
    exist: the collector deletes one as soon as it can look the owner up. A fresh probe every
    few seconds keeps the collector's per-item backoff out of the measurement.
    """
    api_client = local_cluster.api_client()
    core = client.CoreV1Api(api_client)
    probes: list[str] = []

    def new_probe() -> None:
        name = f"gc-probe-{uuid.uuid4().hex[:8]}"
        owner = {
            "apiVersion": "agents.dev/v1alpha1",
            "kind": "AgentSession",
            "name": name,
            "uid": str(uuid.uuid4()),
        }
        body = {"metadata": {"name": name, "ownerReferences": [owner]}}
        core.create_namespaced_config_map(OPERATOR_NAMESPACE, body)
        probes.append(name)

    def collected() -> bool:
        names = {
            cm.metadata.name for cm in core.list_namespaced_config_map(OPERATOR_NAMESPACE).items
        }
        if any(probe not in names for probe in probes):
            return True
        if len(probes) * 3 < time.monotonic() - started:
            new_probe()
        return False

    started = time.monotonic()
    try:
        new_probe()
        wait_for(collected, timeout=120, what="the garbage collector to know AgentSessions")
    finally:
        for probe in probes:
            with contextlib.suppress(client.ApiException):
                core.delete_namespaced_config_map(probe, OPERATOR_NAMESPACE)
        api_client.close()


def namespace_uid(cluster: LocalCluster, namespace: str) -> str:
    """The UID of `namespace` as it exists now (the store keys its transcripts by it)."""
    api_client = cluster.api_client()
    try:
        return str(client.CoreV1Api(api_client).read_namespace(namespace).metadata.uid)
    finally:
        api_client.close()


TranscriptLoader = Callable[[str, str], list[dict[str, Any]]]


@pytest.fixture
def transcript(
    local_cluster: LocalCluster,
    tenant_store: TenantStore,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> TranscriptLoader:
    """`transcript(namespace, session_id)`: the session's transcript entries as the store has them
    for the namespace as it exists now (read through the runner's own store code, as the next
    attempt would)."""
    for name, value in tenant_store.reader_env().items():
        monkeypatch.setenv(name, value)
    empty = tmp_path_factory.mktemp("aws") / "none"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))

    def load(namespace: str, session_id: str) -> list[dict[str, Any]]:
        store = open_store(tenant_store.url, namespace, namespace_uid(local_cluster, namespace))
        key: SessionKey = {"project_key": "sessions", "session_id": session_id}
        entries = asyncio.run(store.load(key))
        return [dict(e) for e in entries or []]

    return load


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


@pytest.fixture
def fault_ledger(
    local_cluster: LocalCluster, node: LocalNode, sessions: Sessions
) -> Iterator[FaultLedger]:
    """Watches the test namespace's runner pods and their transcripts from before the first
    session exists (duplicate pods, lost lines: `tally()`)."""
    with FaultLedger(local_cluster, node, sessions.namespace).running() as ledger:
        yield ledger


def tally(
    ledger: FaultLedger,
    transcript: TranscriptLoader,
    sessions: Sessions,
    uid: str,
    session_id: str,
    *,
    fault: str,
    in_flight: int = 0,
    ran: bool = True,
) -> FaultCount:
    """Count what `fault` cost the session and assert the fault matrix's goals: no duplicate pod,
    no transcript line lost beyond `in_flight` (lines a kill may take before they are mirrored)."""
    stored = {e["uuid"] for e in transcript(sessions.namespace, session_id) if "uuid" in e}
    count = ledger.count(uid, stored)
    print(
        f"fault matrix | {fault} | pods {count.pods} for {count.attempts} attempt(s), "
        f"at most {count.most_running_at_once} running at once, duplicates {count.duplicate_pods}"
        f" | transcript lines seen {count.lines_seen}, lost {count.lines_lost}"
    )
    if ran:  # else the agent never started: nothing to lose
        assert count.lines_seen, "the CLI's transcript was never seen on the node"
    assert count.duplicate_pods == 0, count
    assert count.lines_lost <= in_flight, count.lost
    return count
