"""The chart installed on the local cluster: the operator runs from its image, in the Deployment's
pod, as the chart's ServiceAccount, and runs sessions in runner pods from the runner image.

Both images are the ones `make images` builds, imported into the real node's containerd. The only
local-cluster values are host networking for both pods (there is no pod network here) and the API
server's loopback address for the operator (there is no kube-proxy for the `kubernetes` Service).
Runner pods talk to the scripted Messages API and moto's S3 server on loopback.

The module-scoped release `chart-test` adopts the CRD the shared cluster installed from crds/
(`--take-ownership`). Tests run in file order; the last one upgrades and uninstalls it.
"""

from __future__ import annotations

import functools
import json
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.support import scripted_api as sa
from tests.support.cluster import LocalCluster, wait_for
from tests.support.helm import (
    CHART,
    Helm,
    Obj,
    container_port,
    literal_env,
    local_node_values,
    operator_container,
)
from tests.support.node import LocalNode
from tests.support.s3server import TenantStore, free_port
from tests.support.session_secrets import add_session_secrets

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]

RBAC_FILE = Path(__file__).resolve().parents[2] / "config" / "rbac" / "operator.yaml"
CRD_NAME = "agentsessions.agents.dev"
GROUP, VERSION, PLURAL = "agents.dev", "v1alpha1", "agentsessions"
# Every authenticated identity may ask what it may do (system:basic-user): not the chart's doing.
SELF_REVIEWS = {"selfsubjectaccessreviews", "selfsubjectrulesreviews", "selfsubjectreviews"}
# (verb, resource[, subresource]) the operator must never be able to do, wherever it runs.
FORBIDDEN = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("get", "configmaps"),
    ("create", "agentsessions.agents.dev"),
    ("update", "agentsessions.agents.dev"),
    ("patch", "agentsessions.agents.dev"),
    ("deletecollection", "agentsessions.agents.dev"),
    ("create", "agentbudgets.agents.dev"),
    ("update", "agentbudgets.agents.dev"),
    ("patch", "agentbudgets.agents.dev"),
    ("delete", "agentbudgets.agents.dev"),
    ("update", "pods"),
    ("patch", "pods"),
    ("deletecollection", "pods"),
    ("create", "pods", "exec"),
    ("get", "pods", "log"),
    ("create", "pods", "eviction"),
    ("create", "deployments.apps"),
    ("create", "jobs.batch"),
    ("create", "serviceaccounts", "token"),
    ("list", "namespaces"),
    ("delete", "namespaces"),
    ("create", "roles.rbac.authorization.k8s.io"),
    ("create", "rolebindings.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "networkpolicies.networking.k8s.io"),
    ("get", "networkpolicies.networking.k8s.io/allow-all"),
    ("patch", "networkpolicies.networking.k8s.io/allow-all"),
    ("delete", "networkpolicies.networking.k8s.io/agentsession-runners"),
    ("list", "networkpolicies.networking.k8s.io"),
]
# What it must be able to do in a namespace it works in (so the checks above can fail too).
NAMESPACED_ALLOWED = [
    ("watch", "agentsessions.agents.dev"),
    ("delete", "agentsessions.agents.dev"),
    ("patch", "agentsessions.agents.dev", "status"),
    ("update", "agentsessions.agents.dev", "finalizers"),
    ("watch", "agentbudgets.agents.dev"),
    ("patch", "agentbudgets.agents.dev", "status"),
    ("create", "pods"),
    ("delete", "pods"),
    ("create", "secrets"),
    ("create", "events"),
    ("patch", "events.events.k8s.io"),
    ("get", "networkpolicies.networking.k8s.io/agentsession-runners"),
    ("patch", "networkpolicies.networking.k8s.io/agentsession-runners"),
]
CLUSTER_ALLOWED = [("watch", "customresourcedefinitions.apiextensions.k8s.io")]

Triple = tuple[str, str, str]  # (apiGroup, resource, verb)


# --- helpers -------------------------------------------------------------------------------------


def config_rules() -> list[Obj]:
    (role,) = (d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d["kind"] == "ClusterRole")
    rules: list[Obj] = role["rules"]
    return rules


def triples(rules: list[Obj]) -> set[Triple]:
    """Rules as (apiGroup, resource, verb) triples, the form RBAC evaluates them in."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


CLUSTER_SCOPED = ("customresourcedefinitions", "namespaces")


def namespaced(rules: list[Obj]) -> list[Obj]:
    return [r for r in rules if not set(r["resources"]) & set(CLUSTER_SCOPED)]


def cluster_scoped(rules: list[Obj]) -> list[Obj]:
    return [r for r in rules if set(r["resources"]) & set(CLUSTER_SCOPED)]


def granted(
    kubeconfig: Path,
    cluster: LocalCluster,
    namespace: str,
    readable_namespaces: list[str] | None = None,
) -> set[Triple]:
    """What the kubeconfig's identity may do in `namespace` (SelfSubjectRulesReview), minus
    the self-reviews every authenticated user has. `readable_namespaces`: the names the
    namespaces rule is limited to (a release with watchNamespaces), None for all."""
    api_client = cluster.api_client(kubeconfig)
    try:
        review = client.AuthorizationV1Api(api_client).create_self_subject_rules_review(
            {"spec": {"namespace": namespace}}
        )
    finally:
        api_client.close()
    assert not review.status.incomplete, review.status.evaluation_error
    # The leader Lease's Role (release namespace only) is checked on its own: lease_rules().
    for rule in review.status.resource_rules:  # names: the runner NetworkPolicy's only
        if "leases" in (rule.resources or []):
            continue
        if rule.resources == ["namespaces"]:
            assert rule.resource_names == readable_namespaces, rule
            continue
        named = rule.resources == ["networkpolicies"]
        assert rule.resource_names == (["agentsession-runners"] if named else None), rule
    rules = [
        {
            "apiGroups": rule.api_groups or [],
            "resources": rule.resources or [],
            "verbs": rule.verbs,
        }
        for rule in review.status.resource_rules
        if "leases" not in (rule.resources or [])
    ]
    return {t for t in triples(rules) if t[1] not in SELF_REVIEWS}


def lease_rules(kubeconfig: Path, cluster: LocalCluster, namespace: str) -> set[Triple]:
    """The identity's rules on Leases in `namespace`, as (resource names, resource, verb)."""
    api_client = cluster.api_client(kubeconfig)
    try:
        review = client.AuthorizationV1Api(api_client).create_self_subject_rules_review(
            {"spec": {"namespace": namespace}}
        )
    finally:
        api_client.close()
    return {
        (",".join(rule.resource_names or []), resource, verb)
        for rule in review.status.resource_rules
        for resource in rule.resources or []
        if resource == "leases"
        for verb in rule.verbs
    }


def can_i(
    cluster: LocalCluster,
    kubeconfig: Path,
    action: tuple[str, ...],
    namespace: str | None,
    as_user: str | None = None,
) -> bool:
    verb, resource, *sub = action
    args = ["auth", "can-i", verb, resource, *([f"--as={as_user}"] if as_user else [])]
    if sub:
        args.append(f"--subresource={sub[0]}")
    args += ["--namespace", namespace] if namespace else ["--all-namespaces"]
    result = cluster.kubectl(*args, kubeconfig=kubeconfig)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


def get_json(cluster: LocalCluster, *args: str) -> Obj | None:
    """`kubectl get ... -o json`, or None if the object does not exist."""
    result = cluster.kubectl("get", *args, "-o", "json")
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return None
    found: Obj = json.loads(result.stdout)
    return found


def apply_session(cluster: LocalCluster, namespace: str, name: str, spec: Obj) -> None:
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentSession",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    applied = cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(manifest))
    assert applied.returncode == 0, applied.stderr


def run_hello_session(cluster: LocalCluster, api: sa.ScriptedAPI, namespace: str) -> Obj:
    """The core scenario: one AgentSession through a runner pod to Succeeded; returns its status."""
    tag = f"CHART-{uuid.uuid4().hex[:8]}"
    api.route(tag, sa.bash("echo hello > greeting.txt"), sa.text("I wrote the greeting."))
    apply_session(
        cluster,
        namespace,
        "hello",
        {"prompt": f"{tag}: write a greeting", "allowedTools": ["Bash"]},
    )
    waited = cluster.kubectl(
        "wait",
        "-n",
        namespace,
        "--for=condition=Succeeded",
        "agentsession/hello",
        "--timeout=180s",
        timeout=200,
    )
    session = get_json(cluster, "agentsession", "hello", "-n", namespace)
    assert waited.returncode == 0, f"{waited.stderr}\nstatus: {(session or {}).get('status')}"
    assert session is not None
    status: Obj = session["status"]
    assert status["phase"] == "Succeeded"
    assert status["reason"] == "Completed"
    assert status["numTurns"] == 2
    assert status["resultPreview"] == "I wrote the greeting."
    assert status["podName"] == "hello-1"
    return status


@dataclass
class Release:
    """A helm release of the chart in its own namespace."""

    name: str
    namespace: str
    values_file: Path
    helm: Helm
    cluster: LocalCluster

    def install(self, *extra: str) -> None:
        self.helm.run(
            "install",
            self.name,
            str(CHART),
            "--namespace",
            self.namespace,
            "--values",
            str(self.values_file),
            *extra,
        )

    def installed(self) -> bool:
        status = self.helm.run("status", self.name, "--namespace", self.namespace, check=False)
        return status.returncode == 0

    def uninstall(self) -> str:
        return self.helm.run("uninstall", self.name, "--namespace", self.namespace).stdout

    def deployment(self) -> Obj:
        """The Deployment as the API server stores it."""
        selector = f"app.kubernetes.io/instance={self.name}"
        found = get_json(self.cluster, "deployment", "-n", self.namespace, "-l", selector)
        assert found is not None
        (deployment,) = found["items"]
        result: Obj = deployment
        return result

    def service_account(self) -> str:
        name: str = self.deployment()["spec"]["template"]["spec"]["serviceAccountName"]
        return name

    def kubeconfig(self, path: Path) -> Path:
        """A kubeconfig with a TokenRequest token of the chart's ServiceAccount."""
        account = self.service_account()
        assert get_json(self.cluster, "serviceaccount", account, "-n", self.namespace)
        return self.cluster.service_account_kubeconfig(self.namespace, account, path)

    def operator_pod(self, timeout: float = 120) -> Obj:
        """The Deployment's pod once it is Ready (the operator's /healthz answered the probe)."""
        selector = f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"

        def ready() -> Obj | None:
            found = get_json(self.cluster, "pods", "-n", self.namespace, "-l", selector)
            for pod in (found or {}).get("items", []):
                conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
                if conditions.get("Ready") == "True" and not pod["metadata"].get(
                    "deletionTimestamp"
                ):
                    result: Obj = pod
                    return result
            return None

        found: Obj = wait_for(ready, timeout=timeout, what=f"the {self.name} operator pod Ready")
        return found

    def scale(self, replicas: int) -> None:
        deployment = self.deployment()["metadata"]["name"]
        scaled = self.cluster.kubectl(
            "scale", "deployment", deployment, "-n", self.namespace, f"--replicas={replicas}"
        )
        assert scaled.returncode == 0, scaled.stderr
        if replicas == 0:
            selector = (
                f"app.kubernetes.io/instance={self.name},app.kubernetes.io/component=operator"
            )
            wait_for(
                lambda: (
                    not get_json(self.cluster, "pods", "-n", self.namespace, "-l", selector)[
                        "items"
                    ]
                ),
                timeout=60,
                what=f"the {self.name} operator pod to go",
            )

    def get(self, port_name: str, path: str) -> str:
        """GET a path from the operator pod's port (host network: the node's loopback)."""
        port = container_port(operator_container(self.deployment()), port_name)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            assert response.status == 200
            body: bytes = response.read()
        return body.decode()

    def logs(self) -> str:
        pod = self.operator_pod()["metadata"]["name"]
        result = self.cluster.kubectl("logs", "-n", self.namespace, pod)
        assert result.returncode == 0, result.stderr
        return result.stdout


OPERATOR_SECRET = "agentsession-operator-aws"


def add_operator_secret(cluster: LocalCluster, namespace: str, store: TenantStore) -> None:
    """The operator's own (vending) identity, in the release namespace, for the chart to mount."""
    api_client = cluster.api_client()
    try:
        client.CoreV1Api(api_client).create_namespaced_secret(
            namespace, store.operator_secret(OPERATOR_SECRET)
        )
    finally:
        api_client.close()


def write_values(
    path: Path,
    api: sa.ScriptedAPI,
    store: TenantStore,
    node: LocalNode,
    cluster: LocalCluster,
) -> Path:
    """Chart values for the local cluster: our images, host networking, the API server on
    loopback, scripted API, IAM-enforcing moto S3 with per-namespace roles, short backoffs, free
    ports."""
    local = local_node_values(cluster.server, node.images)
    values: Obj = {
        **local,
        "store": store.chart_values(OPERATOR_SECRET),
        "anthropic": {"baseUrl": api.base_url, "cliMaxRetries": 0},
        "runner": {**local["runner"], "defaultModel": "claude-sonnet-4-5"},
        "limits": {"timeoutSeconds": {"default": 120}},
        "backoff": {"baseSeconds": 1, "maxSeconds": 2},
        "metrics": {"port": free_port()},
        "health": {"port": free_port()},
    }
    path.write_text(yaml.safe_dump(values))
    return path


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chart_api() -> Iterator[sa.ScriptedAPI]:
    with sa.ScriptedAPI(default=sa.text("(no script for this prompt)")) as api:
        yield api


@pytest.fixture(scope="module")
def chart_store() -> Iterator[TenantStore]:
    store = TenantStore(f"agentsessions-chart-{uuid.uuid4().hex[:6]}", prefix="chart")
    yield store
    store.stop()


@pytest.fixture(scope="module")
def release(
    cluster_helm: Helm,
    local_cluster: LocalCluster,
    node: LocalNode,
    chart_api: sa.ScriptedAPI,
    chart_store: TenantStore,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Release]:
    """`helm install chart-test` (cluster-wide), adopting the CRD the cluster already has."""
    namespace = local_cluster.create_namespace("chart-release", labels={})
    add_operator_secret(local_cluster, namespace, chart_store)
    values = write_values(
        tmp_path_factory.mktemp("chart") / "values.yaml",
        chart_api,
        chart_store,
        node,
        local_cluster,
    )
    installed = Release("chart-test", namespace, values, cluster_helm, local_cluster)
    installed.install("--take-ownership")
    yield installed
    if installed.installed():
        installed.uninstall()
    local_cluster.delete_namespace(namespace)


# --- tests ---------------------------------------------------------------------------------------


def test_install_created_the_release_objects(release: Release, local_cluster: LocalCluster) -> None:
    crd = get_json(local_cluster, "crd", CRD_NAME)
    assert crd is not None
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.name
    full_name = f"{release.name}-agentsession-operator"
    role = get_json(local_cluster, "clusterrole", full_name)
    assert role is not None
    assert role["rules"] == config_rules()
    assert get_json(local_cluster, "clusterrolebinding", full_name)
    assert release.service_account() == full_name
    # One host-network replica on the one node (local_node_values): Recreate.
    assert release.deployment()["spec"]["strategy"]["type"] == "Recreate"
    lease_role = get_json(
        local_cluster, "role", f"{full_name}-leader-election", "-n", release.namespace
    )
    assert lease_role is not None
    assert lease_role["rules"][1]["resourceNames"] == [full_name]


def test_service_account_may_hold_only_its_own_lease(
    release: Release, local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = release.kubeconfig(tmp_path / "kubeconfig")
    lease = f"leases.coordination.k8s.io/{release.name}-agentsession-operator"
    assert lease_rules(kubeconfig, local_cluster, release.namespace) == {
        ("", "leases", "create"),
        (f"{release.name}-agentsession-operator", "leases", "get"),
        (f"{release.name}-agentsession-operator", "leases", "update"),
    }
    assert lease_rules(kubeconfig, local_cluster, namespace) == set()
    for verb in ("get", "update"):
        assert can_i(local_cluster, kubeconfig, (verb, lease), release.namespace), verb
        other = "leases.coordination.k8s.io/kube-scheduler"
        assert not can_i(local_cluster, kubeconfig, (verb, other), release.namespace), verb
        assert not can_i(local_cluster, kubeconfig, (verb, lease), namespace), verb
        assert not can_i(local_cluster, kubeconfig, (verb, lease), "kube-system"), verb
    for verb in ("list", "watch", "delete", "patch"):
        assert not can_i(local_cluster, kubeconfig, (verb, lease), release.namespace), verb
    assert can_i(
        local_cluster, kubeconfig, ("create", "leases.coordination.k8s.io"), release.namespace
    )
    assert not can_i(local_cluster, kubeconfig, ("create", "leases.coordination.k8s.io"), namespace)


def test_service_account_has_exactly_the_commented_rules(
    release: Release, local_cluster: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = release.kubeconfig(tmp_path / "kubeconfig")
    expected = triples(config_rules())
    assert granted(kubeconfig, local_cluster, namespace) == expected
    assert granted(kubeconfig, local_cluster, release.namespace) == expected
    for action in FORBIDDEN:
        for where in (namespace, release.namespace, None):
            assert not can_i(local_cluster, kubeconfig, action, where), (action, where)
    for action in NAMESPACED_ALLOWED:
        assert can_i(local_cluster, kubeconfig, action, namespace), action
        assert can_i(local_cluster, kubeconfig, action, None), action  # cluster-wide
    for action in CLUSTER_ALLOWED:
        assert can_i(local_cluster, kubeconfig, action, None), action


def tenant_can(
    cluster: LocalCluster, user: str, namespace: str, verb: str, resource: str, sub: str = ""
) -> bool:
    """`kubectl auth can-i` as `user` (impersonated by the cluster's admin)."""
    action = (verb, resource, sub) if sub else (verb, resource)
    return can_i(cluster, cluster.kubeconfig, action, namespace, as_user=user)


def test_tenant_roles_reach_the_builtin_edit_and_view_roles(
    release: Release, local_cluster: LocalCluster, namespace: str
) -> None:
    """Bound to the built-in `edit` or `view` in their namespace, tenants get sessions (and read
    budgets) through aggregation, and never the session's status or a budget's spec."""
    for user, role in (("tenant-editor", "edit"), ("tenant-viewer", "view")):
        bound = local_cluster.kubectl(
            "create",
            "rolebinding",
            user,
            f"--clusterrole={role}",
            f"--user={user}",
            "-n",
            namespace,
        )
        assert bound.returncode == 0, bound.stderr
    # The controller-manager aggregates the rules into edit/view asynchronously.
    wait_for(
        lambda: (
            tenant_can(local_cluster, "tenant-editor", namespace, "create", "agentsessions")
            and tenant_can(local_cluster, "tenant-viewer", namespace, "list", "agentbudgets")
        ),
        timeout=60,
        what="the tenant roles aggregated into edit and view",
    )
    editor = functools.partial(tenant_can, local_cluster, "tenant-editor", namespace)
    viewer = functools.partial(tenant_can, local_cluster, "tenant-viewer", namespace)
    for verb in ("get", "list", "watch", "create", "patch", "delete"):
        assert editor(verb, "agentsessions"), verb
    for verb in ("patch", "update"):
        assert not editor(verb, "agentsessions", "status"), verb
        assert not viewer(verb, "agentsessions", "status"), verb
    for verb in ("create", "patch", "update", "delete"):
        assert not editor(verb, "agentbudgets"), verb
        assert not viewer(verb, "agentsessions"), verb
    assert editor("get", "agentbudgets")
    assert viewer("watch", "agentsessions")
    assert not tenant_can(local_cluster, "tenant-editor", "default", "get", "agentsessions")


def test_operator_image_runs_a_session_as_the_charts_service_account(
    release: Release,
    local_cluster: LocalCluster,
    node: LocalNode,
    chart_api: sa.ScriptedAPI,
    chart_store: TenantStore,
    namespace: str,
) -> None:
    pod = release.operator_pod()
    (container,) = pod["status"]["containerStatuses"]
    assert container["image"].endswith(node.images["operator"].split("/", 1)[1])
    assert pod["spec"]["nodeName"] == node.name
    assert pod["spec"]["serviceAccountName"] == release.service_account()
    assert release.get("health", "/healthz")
    # It runs under the chart's Lease Role: elected, so it reconciles.
    assert json.loads(release.get("health", "/readyz"))["role"] == "leader"
    assert "agentsession_leader 1.0" in release.get("metrics", "/metrics")
    add_session_secrets(local_cluster, namespace)
    chart_store.provision(namespace)
    status = run_hello_session(local_cluster, chart_api, namespace)
    assert status["transcriptRef"].startswith(f"s3://{chart_store.bucket.name}/chart/{namespace}/")
    (runner,) = json.loads(
        local_cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout
    )["items"]
    assert runner["spec"]["containers"][0]["image"] == node.images["runner"]
    agent_env = {e["name"] for e in runner["spec"]["containers"][0]["env"]}
    assert not agent_env & {"ANTHROPIC_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    (gateway,) = runner["spec"]["initContainers"]
    env = {e["name"]: e for e in gateway["env"]}
    assert env["AGENTSESSION_UPSTREAM_URL"]["value"] == chart_api.base_url
    vended = env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"]
    assert vended == f"agentsession-store-{runner['metadata']['name']}"
    metrics = release.get("metrics", "/metrics")
    assert (
        f'agentsession_sessions_finished_total{{namespace="{namespace}",'
        f'phase="Succeeded",reason="Completed"}} 1.0'
    ) in metrics
    assert 'code="403"' not in metrics  # no request of ours was refused by RBAC
    assert 'code="422"' not in metrics  # ... nor by the admission policies
    log = release.logs()
    assert "Forbidden" not in log
    assert "Not enough permissions" not in log
    assert "ValidatingAdmissionPolicy" not in log
    # The admission policies were in place all along: the session ran under them.
    for policy in ("runner-pods", "runner-pod-deletes", "store-secrets", "runner-network-policies"):
        name = f"{release.name}-agentsession-operator-{policy}"
        assert get_json(local_cluster, "validatingadmissionpolicybinding", name), name
    assert_runner_policy_before_pod(release, local_cluster, namespace, log)


def assert_runner_policy_before_pod(
    release: Release, cluster: LocalCluster, namespace: str, log: str
) -> None:
    """The namespace (made after the install) got the chart's runner NetworkPolicy, and the
    operator applied it before it created the runner pod there."""
    policy = get_json(cluster, "networkpolicy", "agentsession-runners", "-n", namespace)
    assert policy is not None
    assert policy["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "agentsession-operator"
    assert policy["spec"]["podSelector"] == {
        "matchLabels": {
            "app.kubernetes.io/managed-by": "agentsession-operator",
            "app.kubernetes.io/component": "runner",
        }
    }
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"]
    env = literal_env(operator_container(release.deployment()))
    assert policy["spec"]["egress"] == json.loads(env["AGENTSESSION_RUNNER_NETWORK_POLICY_EGRESS"])
    assert [rule["to"] for rule in policy["spec"]["egress"]][2] == [
        {"ipBlock": {"cidr": "127.0.0.0/8"}}  # tests/support/helm.py: the S3 server on loopback
    ]
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    mine = [e.get("message") for e in events if e.get("namespace") == namespace]
    applied = mine.index("Applied NetworkPolicy agentsession-runners")
    assert applied < mine.index("Created Pod"), mine


def test_watch_namespaces_release_works_with_roles_only(
    cluster_helm: Helm,
    release: Release,
    local_cluster: LocalCluster,
    node: LocalNode,
    chart_api: sa.ScriptedAPI,
    chart_store: TenantStore,
    tmp_path: Path,
) -> None:
    watched = local_cluster.create_namespace("chart-watched", labels={})
    other = local_cluster.create_namespace("chart-other", labels={})
    release_ns = local_cluster.create_namespace("chart-ns-release", labels={})
    add_operator_secret(local_cluster, release_ns, chart_store)
    values = write_values(tmp_path / "values.yaml", chart_api, chart_store, node, local_cluster)
    ns_release = Release("chart-ns", release_ns, values, cluster_helm, local_cluster)
    release.scale(0)  # the cluster-wide release would take the watched namespace's sessions too
    try:
        # A second release shares the first one's CRDs and tenant roles (cluster-wide objects
        # with fixed names: one release ships them) instead of installing its own.
        ns_release.install(
            "--set",
            "crds.enabled=false",
            "--set",
            "tenantRoles.enabled=false",
            "--set-json",
            f'watchNamespaces=["{watched}"]',
        )
        kubeconfig = ns_release.kubeconfig(tmp_path / "kubeconfig")
        rules = config_rules()
        # It may read the UID of the watched namespace only (the store is keyed by it).
        names = [watched]
        assert granted(kubeconfig, local_cluster, watched, names) == triples(rules)
        cluster_rules = triples(cluster_scoped(rules))
        assert granted(kubeconfig, local_cluster, other, names) == cluster_rules
        assert granted(kubeconfig, local_cluster, release_ns, names) == cluster_rules
        assert can_i(local_cluster, kubeconfig, ("get", f"namespaces/{watched}"), None)
        assert not can_i(local_cluster, kubeconfig, ("get", f"namespaces/{other}"), None)
        for action in NAMESPACED_ALLOWED:
            assert can_i(local_cluster, kubeconfig, action, watched), action
            assert not can_i(local_cluster, kubeconfig, action, other), action
            assert not can_i(local_cluster, kubeconfig, action, None), action
        env = literal_env(operator_container(ns_release.deployment()))
        assert env["AGENTSESSION_WATCH_NAMESPACES"] == watched
        add_session_secrets(local_cluster, watched)
        chart_store.provision(watched)
        ns_release.operator_pod()
        run_hello_session(local_cluster, chart_api, watched)
        assert 'code="403"' not in ns_release.get("metrics", "/metrics")
        assert "Forbidden" not in ns_release.logs()
    finally:
        if ns_release.installed():
            ns_release.uninstall()
        release.scale(1)
        for name in (watched, other, release_ns):
            local_cluster.delete_namespace(name)


def test_upgrade_then_uninstall_keep_the_crd_and_sessions(
    release: Release, local_cluster: LocalCluster, namespace: str
) -> None:
    crd_before = get_json(local_cluster, "crd", CRD_NAME)
    assert crd_before is not None
    apply_session(local_cluster, namespace, "kept", {"prompt": "stay"})
    session_before = get_json(local_cluster, "agentsession", "kept", "-n", namespace)
    assert session_before is not None

    release.helm.run(
        "upgrade",
        release.name,
        str(CHART),
        "--namespace",
        release.namespace,
        "--values",
        str(release.values_file),
        "--set",
        "limits.maxTurns.default=30",
    )
    history = json.loads(
        release.helm.run(
            "history", release.name, "--namespace", release.namespace, "-o", "json"
        ).stdout
    )
    assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "deployed")]
    env = literal_env(operator_container(release.deployment()))
    assert env["AGENTSESSION_DEFAULT_MAX_TURNS"] == "30"
    crd_after_upgrade = get_json(local_cluster, "crd", CRD_NAME)
    assert crd_after_upgrade is not None
    assert crd_after_upgrade["metadata"]["uid"] == crd_before["metadata"]["uid"]

    output = release.uninstall()
    assert "kept due to the resource policy" in output
    assert f"[CustomResourceDefinition] {CRD_NAME}" in output
    full_name = f"{release.name}-agentsession-operator"
    for kind, where in (
        ("deployment", ["-n", release.namespace]),
        ("serviceaccount", ["-n", release.namespace]),
        ("clusterrole", []),
        ("clusterrolebinding", []),
    ):
        wait_for(
            lambda kind=kind, where=where: get_json(local_cluster, kind, full_name, *where) is None,
            timeout=30,
            what=f"{kind} {full_name} to be deleted",
        )
    crd_after = get_json(local_cluster, "crd", CRD_NAME)
    assert crd_after is not None
    assert crd_after["metadata"]["uid"] == crd_before["metadata"]["uid"]
    assert crd_after["metadata"].get("deletionTimestamp") is None
    session_after = get_json(local_cluster, "agentsession", "kept", "-n", namespace)
    assert session_after is not None
    assert session_after["metadata"]["uid"] == session_before["metadata"]["uid"]
