"""Proves the local control plane is a real one: CRDs and schemas, admission, RBAC, GC.

Run by `make test` / `pytest tests/cluster` (marker `cluster`); uses the tests/cluster fixtures.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.support.cluster import (
    CRD_DIR,
    REPO_ROOT,
    LocalCluster,
    crd_established,
    pod_gone,
    restricted_pod,
    wait_for,
)
from tests.support.node import LocalNode

pytestmark = pytest.mark.cluster

IMAGE = "registry.example/never-pulled:0"  # dry runs only
EXAMPLES_DIR = REPO_ROOT / "examples"
INVALID_DIR = REPO_ROOT / "tests" / "manifests" / "invalid"
INVALID_UPDATES_DIR = REPO_ROOT / "tests" / "manifests" / "invalid-updates"
VALID_UPDATES_DIR = REPO_ROOT / "tests" / "manifests" / "valid-updates"
EXPECT = re.compile(r"^#\s*expect:\s*(?P<text>.+?)\s*$", re.MULTILINE)


def _yaml_files(directory: Path) -> list[Any]:
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no YAML files in {directory}"))]
    return [pytest.param(path, id=path.name) for path in files]


def _crd_names() -> list[Any]:
    names = []
    for path in sorted(CRD_DIR.glob("*.y*ml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document and document.get("kind") == "CustomResourceDefinition":
                names.append(pytest.param(document["metadata"]["name"], id=path.name))
    return names or [pytest.param(None, marks=pytest.mark.skip(reason=f"no CRDs in {CRD_DIR}"))]


def test_api_server_reports_pinned_version(local_cluster: LocalCluster) -> None:
    version = client.VersionApi(local_cluster.api_client()).get_code()
    assert re.fullmatch(r"v1\.3[45]\.\d+", version.git_version), version.git_version
    assert version.minor in ("34", "35")


@pytest.mark.parametrize("crd_name", _crd_names())
def test_crd_is_established(local_cluster: LocalCluster, crd_name: str) -> None:
    assert crd_name in local_cluster.crd_names
    extensions = client.ApiextensionsV1Api(local_cluster.api_client())
    assert crd_established(extensions, crd_name)


@pytest.mark.parametrize("path", _yaml_files(EXAMPLES_DIR))
def test_example_passes_server_side_dry_run(
    local_cluster: LocalCluster, namespace: str, path: Path
) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert documents, f"{path} holds no documents"
    namespaced = all(not d.get("metadata", {}).get("namespace") for d in documents)
    args = ["apply", "--dry-run=server", "-f", str(path)]
    result = local_cluster.kubectl(*args, *(["-n", namespace] if namespaced else []))
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout


@pytest.mark.parametrize("path", _yaml_files(INVALID_DIR))
def test_invalid_manifest_is_rejected(
    local_cluster: LocalCluster, namespace: str, path: Path
) -> None:
    text = path.read_text()
    expectations = [m.group("text") for m in EXPECT.finditer(text)]
    assert expectations, f"{path} lacks a '# expect: <substring>' comment line"
    result = local_cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(path))
    assert result.returncode != 0, f"{path.name} was accepted:\n{result.stdout}"
    for expected in expectations:
        assert expected in result.stderr, f"{expected!r} not in:\n{result.stderr}"


def _create_then_update(local_cluster: LocalCluster, namespace: str, path: Path) -> tuple[str, Any]:
    """`kubectl apply` the file's first document (the object as created), then its second (the
    update, a patch the API server checks against the CEL transition rules); returns the text and
    the second apply's result. No operator runs in tests/cluster, so nothing else touches it."""
    created, updated = [d for d in yaml.safe_load_all(path.read_text()) if d]
    result = local_cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(created)
    )
    assert result.returncode == 0, (
        f"{path.name}: the object as created was refused: {result.stderr}"
    )
    return path.read_text(), local_cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input_text=yaml.safe_dump(updated)
    )


@pytest.mark.parametrize("path", _yaml_files(INVALID_UPDATES_DIR))
def test_invalid_update_is_rejected(
    local_cluster: LocalCluster, namespace: str, path: Path
) -> None:
    text, result = _create_then_update(local_cluster, namespace, path)
    expectations = [m.group("text") for m in EXPECT.finditer(text)]
    assert expectations, f"{path} lacks a '# expect: <substring>' comment line"
    assert result.returncode != 0, f"{path.name}: the update was accepted:\n{result.stdout}"
    for expected in expectations:
        assert expected in result.stderr, f"{expected!r} not in:\n{result.stderr}"


@pytest.mark.parametrize("path", _yaml_files(VALID_UPDATES_DIR))
def test_valid_update_is_accepted(local_cluster: LocalCluster, namespace: str, path: Path) -> None:
    _, result = _create_then_update(local_cluster, namespace, path)
    assert result.returncode == 0, f"{path.name}: the update was refused:\n{result.stderr}"


def test_pod_security_restricted_is_enforced(
    local_cluster: LocalCluster, core: client.CoreV1Api, restricted_namespace: str
) -> None:
    namespace = restricted_namespace
    labels = core.read_namespace(namespace).metadata.labels
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    compliant = restricted_pod("compliant", ["true"], image=IMAGE, host_network=False)
    core.create_namespaced_pod(namespace, compliant, dry_run="All")

    loose = restricted_pod("loose", ["true"], image=IMAGE, host_network=False)
    del loose["spec"]["securityContext"]["runAsNonRoot"]
    loose["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    with pytest.raises(ApiException) as rejected:
        core.create_namespaced_pod(namespace, loose, dry_run="All")
    assert rejected.value.status == 403
    message = json.loads(rejected.value.body)["message"]
    assert 'violates PodSecurity "restricted:latest"' in message
    for violation in ("privileged", "allowPrivilegeEscalation", "capabilities", "runAsNonRoot"):
        assert violation in message

    # The same pod is admitted where no Pod Security label applies: the label did the rejecting.
    unlabelled = local_cluster.create_namespace("plain", labels={})
    try:
        core.create_namespaced_pod(unlabelled, loose, dry_run="All")
    finally:
        local_cluster.delete_namespace(unlabelled)


def test_owner_deletion_garbage_collects_child_pod(
    core: client.CoreV1Api, node: LocalNode, runner_image: str, namespace: str
) -> None:
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    pod = restricted_pod("child", ["sleep", "300"], image=runner_image)
    pod["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    ]
    core.create_namespaced_pod(namespace, pod)
    wait_for(
        lambda: node.container_pid(namespace, "child"),
        timeout=60,
        what="the child's container to run",
    )
    core.delete_namespaced_config_map("owner", namespace)
    wait_for(
        lambda: pod_gone(core, namespace, "child"),
        timeout=60,
        what="the garbage collector to delete the child pod",
    )


def _role(namespace: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"metadata": {"name": "reader", "namespace": namespace}, "rules": rules}


def test_service_account_token_has_exactly_its_role(
    local_cluster: LocalCluster,
    namespace: str,
    sa_kubeconfig: Callable[[str, str], Path],
) -> None:
    rbac = client.RbacAuthorizationV1Api(local_cluster.api_client())
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]
    rbac.create_namespaced_role(namespace, _role(namespace, rules))
    binding = {
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    }
    rbac.create_namespaced_role_binding(namespace, binding)
    kubeconfig = sa_kubeconfig(namespace, "reader")
    sa_core = client.CoreV1Api(local_cluster.api_client(kubeconfig))

    # RBAC caches refresh quickly but not instantly: allowed within a deadline, then forbidden.
    wait_for(
        lambda: sa_core.list_namespaced_config_map(namespace) is not None,
        timeout=30,
        what="the Role to take effect",
    )
    name = f"cm-{uuid.uuid4().hex[:6]}"
    forbidden_calls: list[Callable[[], object]] = [
        lambda: sa_core.create_namespaced_config_map(namespace, {"metadata": {"name": name}}),
        lambda: sa_core.list_namespaced_secret(namespace),
        lambda: sa_core.list_namespaced_config_map("default"),
    ]
    for forbidden in forbidden_calls:
        with pytest.raises(ApiException) as denied:
            forbidden()
        assert denied.value.status == 403
        assert f"system:serviceaccount:{namespace}:reader" in denied.value.body

    allowed = local_cluster.kubectl("get", "configmaps", "-n", namespace, kubeconfig=kubeconfig)
    assert allowed.returncode == 0, allowed.stderr
    denied_cli = local_cluster.kubectl("get", "secrets", "-n", namespace, kubeconfig=kubeconfig)
    assert denied_cli.returncode != 0
    assert "forbidden" in denied_cli.stderr
    whoami = local_cluster.kubectl("auth", "whoami", "-o", "yaml", kubeconfig=kubeconfig)
    assert f"system:serviceaccount:{namespace}:reader" in whoami.stdout, whoami.stderr


def _operator_built_pod(namespace: str, *, host_network: bool) -> dict[str, Any]:
    """The runner pod exactly as the operator builds it for a session in `namespace`."""
    from agentsession_operator.models import AgentSession
    from agentsession_operator.reconcile.podspec import build_pod, run_config_for
    from agentsession_operator.settings import OperatorSettings

    settings = OperatorSettings(store_url="s3://bucket/agents", runner_host_network=host_network)
    session = AgentSession.from_body(
        {
            "apiVersion": "agents.dev/v1alpha1",
            "kind": "AgentSession",
            "metadata": {"name": "shape", "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": {"prompt": "Check the pod shape.", "allowedTools": ["Bash"]},
        }
    )
    pod = build_pod(session, 1, run_config_for(session, None, settings), settings)
    del pod["metadata"]["ownerReferences"]  # no such AgentSession exists for a dry run
    return pod


def test_the_production_runner_pod_passes_pod_security_restricted(
    core: client.CoreV1Api, restricted_namespace: str
) -> None:
    production = _operator_built_pod(restricted_namespace, host_network=False)
    assert "hostNetwork" not in production["spec"]
    core.create_namespaced_pod(restricted_namespace, production, dry_run="All")
    # The local node's setting is the one thing restricted refuses in the pods tests run.
    local = _operator_built_pod(restricted_namespace, host_network=True)
    with pytest.raises(ApiException) as rejected:
        core.create_namespaced_pod(restricted_namespace, local, dry_run="All")
    message = json.loads(rejected.value.body)["message"]
    violations = message.split('violates PodSecurity "restricted:latest": ', 1)[1]
    assert violations == "host namespaces (hostNetwork=true)", message
