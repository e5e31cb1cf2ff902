"""The Helm chart renders what it promises, and the real API server accepts what it renders.

Rendering tests need only helm (from the control-plane cache); the dry-run tests use the shared
local control plane. Two value sets: the defaults (plus `store.url`, the one required value) and
tests/chart/values-all.yaml, which turns every option on.

Single sources of truth checked here:
- RBAC: the chart's rules (templates/_helpers.tpl) equal config/rbac/operator.yaml's, comments
  included, in both the cluster-wide and the per-namespace mode;
- settings: the Deployment's env, parsed by `OperatorSettings`, gives the operator's own defaults
  for default values, and values-all.yaml reaches every setting;
- the CRDs: each rendered CRD's spec is crds/'s (the templates are generated from the models;
  their drift test is tests/unit/test_chart_crd.py).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from agentsession_operator.reconcile.network_policy import runner_network_policy
from agentsession_operator.settings import OperatorSettings
from tests.support.cluster import LocalCluster
from tests.support.helm import (
    CHART,
    REPO_ROOT,
    Helm,
    Obj,
    container_port,
    literal_env,
    objects,
    only,
    operator_container,
    value_args,
)

pytestmark = pytest.mark.cluster

STORE_URL = "s3://agentsessions/chart-test"
S3_PEERS = [{"ipBlock": {"cidr": "52.216.0.0/15"}}]
# The two required values: the store, and where the runner NetworkPolicy lets runners reach it.
REQUIRED = {"store.url": STORE_URL, "networkPolicy.runners.s3.to": S3_PEERS}
VALUES_ALL = Path(__file__).with_name("values-all.yaml")
RBAC_FILE = REPO_ROOT / "config" / "rbac" / "operator.yaml"
HELPERS = CHART / "templates" / "_helpers.tpl"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES_TEXT = (CHART / "values.yaml").read_text()
DOCS = REPO_ROOT / "docs" / "helm.md"
CRD_FILES = sorted((REPO_ROOT / "crds").glob("*.yaml"))
CLUSTER_SCOPED_RESOURCES = {"customresourcedefinitions", "namespaces"}
# Kinds the local control plane cannot validate (their CRDs are not installed there).
NOT_ON_LOCAL_CLUSTER = {"ServiceMonitor"}
PRIORITY_CLASS = "agentsession-chart-test"  # values-all.yaml's priorityClassName


def render(helm: Helm, *, all_on: bool = False, **set_json: Any) -> list[Obj]:
    files = [VALUES_ALL] if all_on else []
    overrides = {} if all_on else dict(REQUIRED)
    overrides.update({key.replace("__", "."): value for key, value in set_json.items()})
    return objects(helm.template(values_files=files, set_json=overrides).stdout)


TENANT_ROLES = ("agentsession-edit", "agentsession-view")


def operator_role(docs: list[Obj]) -> Obj:
    """The operator's own ClusterRole (the chart also ships the tenant roles)."""
    (role,) = (
        d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] not in TENANT_ROLES
    )
    return role


def config_rules() -> list[Obj]:
    (role,) = (d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d["kind"] == "ClusterRole")
    rules: list[Obj] = role["rules"]
    return rules


def is_cluster_scoped(rule: Obj) -> bool:
    return set(rule["resources"]) <= CLUSTER_SCOPED_RESOURCES


# --- lint and objects --------------------------------------------------------------------------


@pytest.mark.parametrize("all_on", [False, True], ids=["defaults", "values-all"])
def test_helm_lint_strict_passes(helm: Helm, all_on: bool) -> None:
    args = ["--values", str(VALUES_ALL)] if all_on else value_args([], REQUIRED)
    result = helm.run("lint", "--strict", str(CHART), *args)
    assert "0 chart(s) failed" in result.stdout


def test_defaults_render_the_core_objects_only(helm: Helm) -> None:
    docs = render(helm)
    assert sorted(d["kind"] for d in docs) == [
        "ClusterRole",
        "ClusterRole",  # agentsession-edit
        "ClusterRole",  # agentsession-view
        "ClusterRoleBinding",
        "CustomResourceDefinition",  # AgentBudget
        "CustomResourceDefinition",  # AgentSession
        "Deployment",
        "PodDisruptionBudget",  # two replicas: drains take one at a time
        "Role",  # the leader Lease
        "RoleBinding",
        "ServiceAccount",
        *["ValidatingAdmissionPolicy"] * 4,  # pods, pod deletes, Secrets, NetworkPolicies
        *["ValidatingAdmissionPolicyBinding"] * 4,
    ]
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/name"] == "agentsession-operator"


def test_values_all_renders_every_optional_object(helm: Helm) -> None:
    docs = render(helm, all_on=True)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ClusterRole",
            "ClusterRole",  # agentsession-edit
            "ClusterRole",  # agentsession-view
            "ClusterRoleBinding",
            "CustomResourceDefinition",  # AgentBudget
            "CustomResourceDefinition",  # AgentSession
            "Deployment",
            "NetworkPolicy",  # the operator's (the operator applies the runners')
            "PodDisruptionBudget",
            "Role",
            "Role",
            "Role",  # the leader Lease
            "RoleBinding",
            "RoleBinding",
            "RoleBinding",
            "Service",
            "ServiceAccount",
            "ServiceMonitor",
            *["ValidatingAdmissionPolicy"] * 4,
            *["ValidatingAdmissionPolicyBinding"] * 4,
        ]
    )
    service = only(docs, "Service")
    monitor = only(docs, "ServiceMonitor")
    # The ServiceMonitor (which the local cluster cannot validate) selects the metrics Service.
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_deployment_is_two_hardened_replicas_with_probes(helm: Helm) -> None:
    deployment = only(render(helm), "Deployment")
    spec = deployment["spec"]
    # Two replicas, one elected: a rollout starts a standby before it stops anyone.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    container = operator_container(deployment)
    assert container["image"] == "ghcr.io/agentsession/agentsession-operator:0.1.0"
    assert container["command"] == ["agentsession-operator"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    env = literal_env(container)
    health = container_port(container, "health")
    assert health == int(env["AGENTSESSION_HEALTH_PORT"])
    assert container_port(container, "metrics") == int(env["AGENTSESSION_METRICS_PORT"])
    # Liveness: the process answers. Readiness: leader, or a standby able to take over.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    pod_name = next(e for e in container["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # The API client writes scratch files: /tmp is the one writable path.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["emptyDir"]


def test_one_replica_without_leader_election_is_recreated(helm: Helm) -> None:
    docs = render(helm, replicaCount=1, leaderElection__enabled=False, podAntiAffinity="")
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "affinity" not in deployment["spec"]["template"]["spec"]
    env = literal_env(operator_container(deployment))
    assert not [name for name in env if name.startswith("AGENTSESSION_LEADER_ELECTION")]
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    # Host-network pods cannot surge on one node: Recreate, with leader election still on.
    docs = render(helm, replicaCount=1, hostNetwork=True)
    assert only(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert literal_env(operator_container(only(docs, "Deployment")))["AGENTSESSION_LEADER_ELECTION"]


def test_pod_disruption_budget_takes_one_replica_at_a_time(helm: Helm) -> None:
    budget = only(render(helm), "PodDisruptionBudget")["spec"]
    assert budget["maxUnavailable"] == 1
    assert "minAvailable" not in budget
    assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    minimum = only(render(helm, podDisruptionBudget__maxUnavailable=None), "PodDisruptionBudget")
    assert minimum["spec"]["minAvailable"] == 1


def test_required_anti_affinity_never_puts_two_replicas_on_one_node(helm: Helm) -> None:
    pod = only(render(helm, podAntiAffinity="required"), "Deployment")["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"


def test_chart_metadata_matches_the_project(helm: Helm) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == project["version"]
    assert chart["kubeVersion"] == ">=1.31.0-0"
    values = yaml.safe_load(VALUES_TEXT)
    assert values["runner"]["image"] == OperatorSettings.model_fields["runner_image"].default


# --- the CRD -----------------------------------------------------------------------------------


@pytest.mark.parametrize("crd_file", CRD_FILES, ids=lambda p: p.name)
def test_crd_is_the_generated_one_kept_on_uninstall(helm: Helm, crd_file: Path) -> None:
    committed = yaml.safe_load(crd_file.read_text())
    name = committed["metadata"]["name"]
    crd = only(render(helm), "CustomResourceDefinition", name)
    assert crd["spec"] == committed["spec"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    unkept = only(render(helm, crds__keep=False), "CustomResourceDefinition", name)
    assert "annotations" not in unkept["metadata"]
    assert unkept["spec"] == committed["spec"]
    kinds = {d["kind"] for d in render(helm, crds__enabled=False)}
    assert "CustomResourceDefinition" not in kinds


def test_chart_has_every_crd() -> None:
    names = {yaml.safe_load(f.read_text())["metadata"]["name"] for f in CRD_FILES}
    assert names == {"agentsessions.agents.dev", "agentbudgets.agents.dev"}


# --- RBAC: one source of truth -----------------------------------------------------------------


def test_cluster_wide_rules_equal_config_rbac(helm: Helm) -> None:
    docs = render(helm)
    role = operator_role(docs)
    assert role["rules"] == config_rules()
    binding = only(docs, "ClusterRoleBinding")
    account = only(docs, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    assert [d["metadata"]["name"] for d in docs if d["kind"] in ("Role", "RoleBinding")] == [
        f"{role['metadata']['name']}-leader-election"
    ] * 2


def config_lease_role() -> Obj:
    (role,) = (d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d["kind"] == "Role")
    return role


@pytest.mark.parametrize(
    ("overrides", "namespace", "lease"),
    [
        ({}, "agentsession-system", "agentsession-agentsession-operator"),
        (
            {"leaderElection.namespace": "leases", "leaderElection.leaseName": "mine"},
            "leases",
            "mine",
        ),
    ],
    ids=["defaults", "named"],
)
def test_leader_election_role_is_config_rbac_for_its_one_lease(
    helm: Helm, overrides: dict[str, str], namespace: str, lease: str
) -> None:
    docs = render(helm, **{k.replace(".", "__"): v for k, v in overrides.items()})
    role = only(docs, "Role")
    binding = only(docs, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == namespace
    expected = config_lease_role()["rules"]
    expected[1]["resourceNames"] = [lease]  # config/rbac names the operator's default Lease
    assert role["rules"] == expected
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    account = only(docs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]
    env = literal_env(operator_container(only(docs, "Deployment")))
    assert env["AGENTSESSION_LEADER_ELECTION_NAMESPACE"] == namespace
    assert env["AGENTSESSION_LEADER_ELECTION_LEASE_NAME"] == lease


def test_config_rbac_names_the_operators_default_lease() -> None:
    (rule,) = [r for r in config_lease_role()["rules"] if "resourceNames" in r]
    assert rule["resourceNames"] == [
        OperatorSettings.model_fields["leader_election_lease_name"].default
    ]
    assert config_lease_role()["metadata"]["namespace"] == "agentsession-system"


def test_rbac_comments_of_the_lease_role_are_the_same_text_as_config_rbac() -> None:
    template = (CHART / "templates" / "rbac-leader-election.yaml").read_text()
    config_text = RBAC_FILE.read_text()
    start = config_text.index("rules:", config_text.index("kind: Role\n"))
    config_section = config_text[start : config_text.index("---", start)]
    template_section = template[template.index("rules:") : template.index("---")]

    # The Lease's name is the release's in the chart (a template expression here): compared
    # rendered in the Role tests.
    def unnamed(text: str) -> list[str]:
        return [line for line in _rule_lines(text) if not line.startswith("resourceNames:")]

    assert unnamed(template_section) == unnamed(config_section)


def test_watch_namespaces_split_rules_into_roles_and_a_discovery_cluster_role(
    helm: Helm,
) -> None:
    docs = render(helm, watchNamespaces=["team-a", "team-b"])
    expected_cluster = [r for r in config_rules() if is_cluster_scoped(r)]
    # The namespaces it may read (their UIDs key the store) are the watched ones only.
    (namespaces,) = [r for r in expected_cluster if r["resources"] == ["namespaces"]]
    namespaces["resourceNames"] = ["team-a", "team-b"]
    expected_namespaced = [r for r in config_rules() if not is_cluster_scoped(r)]
    assert expected_cluster
    assert expected_namespaced
    assert operator_role(docs)["rules"] == expected_cluster
    roles = [d for d in docs if d["kind"] == "Role" and "leader" not in d["metadata"]["name"]]
    bindings = [
        d for d in docs if d["kind"] == "RoleBinding" and "leader" not in d["metadata"]["name"]
    ]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for role in roles:
        assert role["rules"] == expected_namespaced
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == "agentsession-system"
    env = literal_env(operator_container(only(docs, "Deployment")))
    assert env["AGENTSESSION_WATCH_NAMESPACES"] == "team-a,team-b"


def _rule_lines(text: str) -> list[str]:
    """Comment and rule lines of an RBAC rules list, stripped of indentation."""
    lines = [line.strip() for line in text.splitlines()]
    starts = ("#", "- apiGroups", "resources:", "resourceNames:", "verbs:")
    return [line for line in lines if line.startswith(starts)]


def _rendered_rules_text(helm: Helm, **set_json: Any) -> str:
    """The rules section of the operator's ClusterRole as `helm template` prints it (comments
    are template text, so they are kept)."""
    overrides = {**REQUIRED, **{key.replace("__", "."): value for key, value in set_json.items()}}
    rendered = helm.template(set_json=overrides).stdout
    for document in rendered.split("\n---\n"):
        parsed = yaml.safe_load(document)
        operator = parsed and parsed["kind"] == "ClusterRole"
        if operator and parsed["metadata"]["name"] not in TENANT_ROLES:
            return document[document.index("rules:") :]
    raise AssertionError("no operator ClusterRole rendered")


def test_rules_and_their_comments_are_the_same_text_as_config_rbac(helm: Helm) -> None:
    config_text = RBAC_FILE.read_text()
    start = config_text.index("rules:")
    config_section = config_text[start : config_text.index("---", start)]
    lines = _rule_lines(_rendered_rules_text(helm))
    assert lines == _rule_lines(config_section)
    # Every rule says who needs it: kopf (framework) or our logic (application).
    for index, line in enumerate(lines):
        if line.startswith("- apiGroups"):
            comment = []
            for previous in reversed(lines[:index]):
                if not previous.startswith("#"):
                    break
                comment.append(previous)
            assert any(re.match(r"# (framework|application):", c) for c in comment), line


@pytest.mark.parametrize(
    ("mode", "verbs"),
    [("create", ["get", "create", "patch"]), ("require", ["get"]), ("off", None)],
)
def test_network_policy_rights_follow_the_mode_and_name_one_policy(
    helm: Helm, mode: str, verbs: list[str] | None
) -> None:
    docs = render(helm, networkPolicy__runners__mode=mode, networkPolicy__runners__name="np-x")
    rules = [r for r in operator_role(docs)["rules"] if "networkpolicies" in r["resources"]]
    if verbs is None:
        assert rules == []
    else:
        assert rules == [
            {
                "apiGroups": ["networking.k8s.io"],
                "resources": ["networkpolicies"],
                "resourceNames": ["np-x"],
                "verbs": verbs,
            }
        ]
    env = literal_env(operator_container(only(docs, "Deployment")))
    assert env["AGENTSESSION_RUNNER_NETWORK_POLICY"] == mode
    assert env["AGENTSESSION_RUNNER_NETWORK_POLICY_NAME"] == "np-x"
    assert ("AGENTSESSION_RUNNER_NETWORK_POLICY_EGRESS" in env) == (mode == "create")
    policies = [d["metadata"]["name"] for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    assert ("agentsession-agentsession-operator-runner-network-policies" in policies) == (
        mode == "create"
    )


def test_runner_egress_is_dns_anthropic_s3_and_extra_with_explicit_protocols(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 4317}]}
    docs = render(helm, networkPolicy__runners__extraEgress=[extra])
    env = literal_env(operator_container(only(docs, "Deployment")))
    egress = json.loads(env["AGENTSESSION_RUNNER_NETWORK_POLICY_EGRESS"])
    assert [rule["to"] for rule in egress] == [
        [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ],
        [{"ipBlock": {"cidr": "160.79.104.0/23"}}, {"ipBlock": {"cidr": "2607:6bc0::/48"}}],
        S3_PEERS,
        extra["to"],
    ]
    assert egress[3]["ports"] == [{"port": 4317, "protocol": "TCP"}]
    settings = settings_from(env, monkeypatch)
    assert [r.to_wire() for r in settings.runner_network_policy_egress] == egress


def test_admission_policies_can_be_turned_off(helm: Helm) -> None:
    kinds = {d["kind"] for d in render(helm, admissionPolicy__enabled=False)}
    assert not kinds & {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def test_tenant_roles_aggregate_into_edit_and_view_without_status_or_budget_writes(
    helm: Helm,
) -> None:
    docs = render(helm)
    roles = {d["metadata"]["name"]: d for d in docs if d["metadata"]["name"] in TENANT_ROLES}
    edit, view = roles["agentsession-edit"], roles["agentsession-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    writes = {"create", "update", "patch", "delete", "deletecollection"}
    for role in (edit, view):
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["agents.dev"], rule
            assert not [r for r in rule["resources"] if "/" in r], rule  # no status subresource
            if "agentbudgets" in rule["resources"] or role is view:
                assert not writes & set(rule["verbs"]), rule
    assert any("agentsessions" in r["resources"] and "create" in r["verbs"] for r in edit["rules"])
    assert not [
        d for d in render(helm, tenantRoles__enabled=False) if d["metadata"]["name"] in TENANT_ROLES
    ]


@pytest.mark.parametrize("watch", [[], ["team-a"]], ids=["cluster-wide", "namespaced"])
def test_rbac_has_no_wildcards_and_can_only_create_secrets(helm: Helm, watch: list[str]) -> None:
    """No wildcard, Secrets created only, and resource names only on the one NetworkPolicy."""
    docs = render(helm, watchNamespaces=watch)
    rules = [r for d in docs if d["kind"] in ("ClusterRole", "Role") for r in d["rules"]]
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        if "secrets" in rule["resources"]:
            # The vended store credentials: created, never read, listed or updated.
            assert rule["resources"] == ["secrets"], rule
            assert rule["verbs"] == ["create"], rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        # Names only narrow the leader Lease's rule, the runner NetworkPolicy's and, with
        # watched namespaces, which namespaces may be read.
        if "networkpolicies" in rule["resources"]:
            assert rule["resourceNames"] == ["agentsession-runners"], rule
        elif "namespaces" in rule["resources"]:
            assert rule["verbs"] == ["get"], rule
            assert rule.get("resourceNames") == (watch or None), rule
        else:
            assert "resourceNames" not in rule or rule["resources"] == ["leases"], rule
        assert "nonResourceURLs" not in rule


# --- settings: one source of truth -------------------------------------------------------------


def clear_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AGENTSESSION_"):
            monkeypatch.delenv(name)


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    """OperatorSettings as the operator builds them from exactly this environment."""
    clear_settings_env(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return OperatorSettings()  # type: ignore[call-arg]


def test_default_values_give_the_operators_own_defaults(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Except the runner NetworkPolicy: the chart knows the egress rules and creates it (mode
    create); the operator alone has no rules and only requires one (mode require)."""
    env = literal_env(operator_container(only(render(helm), "Deployment")))
    assert all(name.startswith("AGENTSESSION_") for name in env)
    clear_settings_env(monkeypatch)
    # Before the rendered env is set. The chart runs two replicas, so it turns leader election
    # on (the binary alone is one process) and names the Lease after the release; it applies the
    # runner NetworkPolicy (mode create, with its rules).
    defaults = OperatorSettings(
        store_url=STORE_URL,
        leader_election=True,
        leader_election_namespace="agentsession-system",
        leader_election_lease_name="agentsession-agentsession-operator",
    )
    assert defaults.runner_network_policy == "require"
    rendered = settings_from(env, monkeypatch)
    assert rendered.runner_network_policy == "create"
    assert rendered.runner_network_policy_egress
    policy = {"runner_network_policy", "runner_network_policy_egress"}
    assert rendered.model_dump(exclude=policy) == defaults.model_dump(exclude=policy)


def test_values_all_reaches_every_operator_setting(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    container = operator_container(only(render(helm, all_on=True), "Deployment"))
    env = {e["name"]: e["value"] for e in container["env"] if e["name"].startswith("AGENTSESSION_")}
    every_setting = {f"AGENTSESSION_{name.upper()}" for name in OperatorSettings.model_fields}
    assert set(env) == every_setting
    settings = settings_from(env, monkeypatch)
    assert settings.watch_namespaces == ["team-a", "team-b"]
    assert settings.runner_command == ["agent-runner", "--verbose"]
    assert settings.gateway_command == ["agentsession-gateway", "--verbose"]
    assert settings.image_allowlist == [
        "registry.example/platform/agentsession-runner:*",
        "registry.example/team-a/*",
    ]
    assert settings.cli_max_retries == 2
    assert settings.default_max_budget_usd == 0.5
    assert settings.max_max_budget_usd == 10.25
    assert settings.max_timeout_seconds == 604800
    assert settings.backoff_base_seconds == 2.5
    assert settings.session_ref_timeout_seconds == 900
    assert settings.max_concurrent_reconciles == 24
    assert (settings.metrics_port, settings.health_port) == (9090, 9091)
    assert settings.leader_election is True
    assert settings.leader_election_namespace == "agentsession-leases"
    assert settings.leader_election_lease_name == "agents-leader"
    assert settings.leader_election_lease_duration_seconds == 12
    assert settings.leader_election_renew_deadline_seconds == 8.5
    assert settings.leader_election_retry_period_seconds == 1.5
    assert settings.runner_network_policy_name == "team-runner-egress"
    assert len(settings.runner_network_policy_egress) == 4  # DNS, API, S3, one extra
    # extraEnv follows the chart's own variables.
    names = [e["name"] for e in container["env"]]
    assert names[-2:] == ["HTTPS_PROXY", "LOG_LEVEL_HINT"]


# --- values.yaml and values.schema.json --------------------------------------------------------


def _resolve(node: Obj) -> Obj:
    while True:
        if "$ref" in node:
            node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[-1]]
        elif "allOf" in node and len(node["allOf"]) == 1:
            node = node["allOf"][0]
        else:
            return node


def _schema_nodes(node: Any, path: str = "#") -> Iterator[tuple[str, Obj]]:
    if not isinstance(node, dict):
        return
    yield path, node
    for key in ("properties", "definitions"):
        for name, sub in node.get(key, {}).items():
            yield from _schema_nodes(sub, f"{path}/{key}/{name}")
    for key in ("items", "additionalProperties", "not"):
        if isinstance(node.get(key), dict):
            yield from _schema_nodes(node[key], f"{path}/{key}")
    for key in ("allOf", "oneOf", "anyOf"):
        for index, sub in enumerate(node.get(key, [])):
            yield from _schema_nodes(sub, f"{path}/{key}/{index}")


def test_schema_refuses_unknown_keys_at_every_object_level() -> None:
    objects_seen = 0
    for path, node in _schema_nodes(SCHEMA):
        if node.get("type") == "object" or "properties" in node:
            objects_seen += 1
            if "properties" in node:
                assert node.get("additionalProperties") is False, path
            else:  # a map (annotations, labels, nodeSelector): values are typed
                assert node.get("additionalProperties") == {"type": "string"}, path
    assert objects_seen > 40


def _values_keys(
    mapping: yaml.MappingNode, schema: Obj, path: str = ""
) -> Iterator[tuple[str, int, bool]]:
    """(dotted path, line index, is a leaf) of every key the schema declares, from values.yaml."""
    schema = _resolve(schema)
    properties = schema.get("properties", {})
    seen = set()
    for key_node, value_node in mapping.value:
        key = key_node.value
        seen.add(key)
        assert key in properties, f"{path}{key} is not in values.schema.json"
        sub = _resolve(properties[key])
        nested = "properties" in sub
        yield f"{path}{key}", key_node.start_mark.line, not nested
        if nested:
            assert isinstance(value_node, yaml.MappingNode), f"{path}{key}"
            yield from _values_keys(value_node, sub, f"{path}{key}.")
    assert seen == set(properties), (
        f"{path or 'top level'}: no default for {set(properties) - seen}"
    )


def values_keys() -> list[tuple[str, int, bool]]:
    root = yaml.compose(VALUES_TEXT)
    assert isinstance(root, yaml.MappingNode)
    return list(_values_keys(root, SCHEMA))


def test_values_yaml_has_a_default_and_a_comment_for_every_key() -> None:
    lines = VALUES_TEXT.splitlines()
    keys = values_keys()
    assert len(keys) > 100
    undocumented = [path for path, line, _ in keys if not lines[line - 1].strip().startswith("#")]
    assert undocumented == []


def test_docs_list_every_value() -> None:
    docs = DOCS.read_text()
    leaves = [path for path, _, leaf in values_keys() if leaf]
    missing = [path for path in leaves if f"`{path}`" not in docs]
    assert missing == []


BAD_VALUES = [
    ({"bogus": 1}, "additional properties 'bogus' not allowed"),
    ({"image.tagg": "1.0"}, "at '/image': additional properties 'tagg' not allowed"),
    ({"store.url": "http://bucket/prefix"}, "at '/store/url'"),
    ({"limits.maxTurns.default": 0}, "at '/limits/maxTurns/default'"),
    ({"limits.maxBudgetUsd.max": 5000}, "at '/limits/maxBudgetUsd/max'"),
    ({"metrics.port": 70000}, "at '/metrics/port'"),
    ({"anthropic.cliMaxRetries": -1}, "at '/anthropic/cliMaxRetries'"),
    ({"otel.protocol": "udp"}, "at '/otel/protocol'"),
    ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
    ({"runner.imageAllowlist": "registry.example/*"}, "at '/runner/imageAllowlist'"),
    (
        {"extraEnv": [{"name": "AGENTSESSION_STORE_URL", "value": "s3://other"}]},
        "at '/extraEnv/0/name'",
    ),
    (
        {"networkPolicy.runners.s3.to": [{"ipBlock": {"cidr": "10.0.0.0/8", "cidrs": []}}]},
        "at '/networkPolicy/runners/s3/to/0/ipBlock'",
    ),
    ({"networkPolicy.runners.mode": "on"}, "at '/networkPolicy/runners/mode'"),
    ({"networkPolicy.runners.enabled": True}, "additional properties 'enabled' not allowed"),
    ({"admissionPolicy.enabled": "yes"}, "at '/admissionPolicy/enabled'"),
    ({"resources.requests.gpu": "1"}, "at '/resources/requests'"),
    ({"replicaCount": 0}, "at '/replicaCount'"),
    ({"podAntiAffinity": "sometimes"}, "at '/podAntiAffinity'"),
    ({"leaderElection.leaseDurationSeconds": 1}, "at '/leaderElection/leaseDurationSeconds'"),
    ({"leaderElection.namespace": "Leases"}, "at '/leaderElection/namespace'"),
]


@pytest.mark.parametrize(
    ("overrides", "message"), BAD_VALUES, ids=[next(iter(o)) for o, _ in BAD_VALUES]
)
def test_schema_rejects_bad_values_naming_the_key(
    helm: Helm, overrides: dict[str, Any], message: str
) -> None:
    result = helm.template(set_json={**REQUIRED, **overrides}, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


GUARDS = [
    ({"networkPolicy.runners.s3.to": S3_PEERS}, "store.url is required"),
    (
        {**REQUIRED, "limits.maxTurns.default": 50, "limits.maxTurns.max": 40},
        "limits.maxTurns.default must not exceed limits.maxTurns.max",
    ),
    (
        {**REQUIRED, "limits.maxBudgetUsd.default": 30},
        "limits.maxBudgetUsd.default must not exceed limits.maxBudgetUsd.max",
    ),
    ({**REQUIRED, "metrics.port": 8081}, "metrics.port and health.port must differ"),
    (
        {**REQUIRED, "serviceAccount.create": False},
        "serviceAccount.name is required when serviceAccount.create is false",
    ),
    (
        {"store.url": STORE_URL},
        "networkPolicy.runners.s3.to is empty: the runner NetworkPolicy (networkPolicy.runners.mode"
        " create, the default) needs its destinations",
    ),
    (
        {**REQUIRED, "networkPolicy.operator.enabled": True},
        "networkPolicy.operator.apiServer.to is empty",
    ),
    (
        {**REQUIRED, "leaderElection.enabled": False},
        "replicaCount above 1 needs leaderElection.enabled",
    ),
    (
        {**REQUIRED, "leaderElection.renewDeadlineSeconds": 10},
        "leaderElection.renewDeadlineSeconds must be shorter",
    ),
    (
        {**REQUIRED, "leaderElection.retryPeriodSeconds": 6},
        "leaderElection.retryPeriodSeconds times 1.2",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), GUARDS, ids=[m.split()[0] for _, m in GUARDS])
def test_template_guards_name_the_key(helm: Helm, overrides: dict[str, Any], message: str) -> None:
    result = helm.template(set_json=overrides, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_notes_tell_how_to_apply_and_watch_a_session(helm: Helm) -> None:
    result = helm.run(
        "install",
        "demo",
        str(CHART),
        "--dry-run=client",
        "--namespace",
        "agents-system",
        *value_args([], REQUIRED),
        "--set-json",
        'watchNamespaces=["team-a"]',
    )
    notes = result.stdout[result.stdout.index("NOTES:") :]
    assert "It watches AgentSessions in: team-a." in notes
    assert "kubectl -n team-a create secret generic anthropic-api-key" in notes
    assert "kubectl -n team-a apply -f -" in notes
    assert "kubectl -n team-a get ags -w" in notes
    assert "kubectl -n team-a wait --for=condition=Succeeded agentsession/hello" in notes
    assert "stays on `helm uninstall`" in notes


# --- the real API server -----------------------------------------------------------------------


@pytest.fixture
def priority_class(local_cluster: LocalCluster) -> Iterator[str]:
    """values-all.yaml's PriorityClass, so the operator pod can be dry-run created."""
    api_client = local_cluster.api_client()
    scheduling = client.SchedulingV1Api(api_client)
    scheduling.create_priority_class({"metadata": {"name": PRIORITY_CLASS}, "value": 1000})
    yield PRIORITY_CLASS
    scheduling.delete_priority_class(PRIORITY_CLASS)
    api_client.close()


def minimal_policies(namespaces: list[str]) -> dict[str, Any]:
    """The operator's NetworkPolicy with only its required values (no metricsFrom, no
    extraEgress), and the runner policy with only S3, in namespaced mode (Roles)."""
    return {
        **REQUIRED,
        "watchNamespaces": namespaces,
        "networkPolicy.operator.enabled": True,
        "networkPolicy.operator.apiServer.to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}],
    }


VALUE_SETS = {
    # name: (values files, --set-json overrides given the two extra namespaces, kinds not checked)
    "defaults": ([], lambda _: dict(REQUIRED), []),
    "values-all": (
        [VALUES_ALL],
        lambda ns: {"watchNamespaces": ns, "leaderElection.namespace": ns[0]},
        ["ServiceMonitor"],
    ),
    "minimal-policies": ([], minimal_policies, []),
}


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_api_server_accepts_every_rendered_object(
    cluster_helm: Helm,
    local_cluster: LocalCluster,
    priority_class: str,
    value_set: str,
) -> None:
    files, overrides, not_checked = VALUE_SETS[value_set]
    release_ns = local_cluster.create_namespace("chart-dry")
    watched = [local_cluster.create_namespace("chart-team") for _ in range(2)]
    try:
        rendered = cluster_helm.template(
            namespace=release_ns, values_files=files, set_json=overrides(watched)
        ).stdout
        docs = objects(rendered)
        checkable = [d for d in docs if d["kind"] not in NOT_ON_LOCAL_CLUSTER]
        skipped = sorted({d["kind"] for d in docs} - {d["kind"] for d in checkable})
        assert skipped == not_checked
        applied = local_cluster.kubectl(
            "apply", "--dry-run=server", "-f", "-", input_text=yaml.safe_dump_all(checkable)
        )
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.count("(server dry run)") == len(checkable), applied.stdout
        deployment = only(docs, "Deployment")
        # The runner NetworkPolicy the operator builds from the rendered settings.
        settings = OperatorSettings.model_validate(
            {
                e["name"].removeprefix("AGENTSESSION_").lower(): e["value"]
                for e in operator_container(deployment)["env"]
                if e["name"].startswith("AGENTSESSION_")
            }
        )
        policy = runner_network_policy(settings, watched[0])
        dry_run = local_cluster.kubectl(
            "apply", "--dry-run=server", "-f", "-", input_text=json.dumps(policy)
        )
        assert dry_run.returncode == 0, dry_run.stderr
        # The operator pod itself passes Pod Security `restricted` (the namespace enforces it).
        account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        created = local_cluster.kubectl("create", "serviceaccount", account, "-n", release_ns)
        assert created.returncode == 0, created.stderr
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "operator-pod-security-check",
                "namespace": release_ns,
                "labels": deployment["spec"]["template"]["metadata"]["labels"],
            },
            "spec": deployment["spec"]["template"]["spec"],
        }
        checked = local_cluster.kubectl(
            "apply", "--dry-run=server", "-f", "-", input_text=yaml.safe_dump(pod)
        )
        assert checked.returncode == 0, checked.stderr
        assert "Warning" not in checked.stderr, checked.stderr
    finally:
        for namespace in [release_ns, *watched]:
            local_cluster.delete_namespace(namespace)
