"""The runner pod the operator builds: hardened, isolated, secrets only by reference."""

from __future__ import annotations

import json
from typing import Any

from agentsession_operator.models import AgentSession
from agentsession_operator.reconcile.podspec import build_pod, pod_name, run_config_for
from agentsession_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(
    store_url="s3://bucket/agents",
    s3_endpoint_url="http://minio:9000",
    s3_credentials_secret="s3-credentials",
    anthropic_base_url="http://egress-proxy:8080",
    otel_exporter_otlp_endpoint="http://otel:4317",
    cli_max_retries=2,
)


def session(**spec: Any) -> AgentSession:
    return AgentSession.from_body(
        {
            "apiVersion": "agents.dev/v1alpha1",
            "kind": "AgentSession",
            "metadata": {"name": "review", "namespace": "team-a", "uid": "u-1", "generation": 1},
            "spec": {"prompt": "Review the diff.", **spec},
        }
    )


def pod_for(ags: AgentSession, settings: OperatorSettings = SETTINGS) -> dict[str, Any]:
    return build_pod(ags, 1, run_config_for(ags, None, settings), settings)


def env_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


def test_pod_is_hardened_for_pod_security_restricted() -> None:
    pod = pod_for(session())
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 65532
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = spec["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/workspace": "workspace", "/home/runner": "home", "/tmp": "tmp"}
    assert all("emptyDir" in v for v in spec["volumes"])
    assert container["terminationMessagePolicy"] == "File"
    assert spec["activeDeadlineSeconds"] == SETTINGS.default_timeout_seconds + 60


def test_owner_reference_labels_and_deterministic_names() -> None:
    pod = pod_for(session())
    meta = pod["metadata"]
    assert meta["name"] == "review-1"
    owner = meta["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "AgentSession",
        "review",
        "u-1",
        True,
    )
    assert meta["labels"]["agents.dev/session"] == "review"
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "agentsession-operator"
    long_name = "x" * 250
    assert pod_name(long_name, 12) == pod_name(long_name, 12)
    assert len(pod_name(long_name, 12)) <= 63
    assert pod_name(long_name, 12).endswith("-12")


def test_secrets_only_by_reference_and_isolation_env() -> None:
    env = env_of(pod_for(session()))
    assert "value" not in env["ANTHROPIC_API_KEY"]
    assert env["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "anthropic-api-key",
        "key": "ANTHROPIC_API_KEY",
    }
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-credentials"
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert env["ANTHROPIC_BASE_URL"]["value"] == "http://egress-proxy:8080"
    assert env["CLAUDE_CONFIG_DIR"]["value"] == "/home/runner/.claude"
    assert env["CLAUDE_CODE_MAX_RETRIES"]["value"] == "2"
    attributes = env["OTEL_RESOURCE_ATTRIBUTES"]["value"]
    assert "k8s.namespace.name=team-a" in attributes
    assert "agentsession.uid=u-1" in attributes
    config = json.loads(env["AGENTSESSION_RUN_CONFIG"]["value"])
    assert config["namespace"] == "team-a"
    assert config["store"] == "s3://bucket/agents"
    assert config["workspace"] == "/workspace"
    assert "sk-" not in env["AGENTSESSION_RUN_CONFIG"]["value"]


def test_spec_overrides_reach_the_pod() -> None:
    pod = pod_for(
        session(
            apiKeySecretRef={"name": "team-key", "key": "token"},
            env=[
                {"name": "GITHUB_REPO", "value": "org/repo"},
                {"name": "GH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "gh", "key": "token"}}},
            ],
            resources={"requests": {"cpu": "500m"}, "limits": {"memory": "2Gi"}},
            runtimeClassName="gvisor",
            image="registry.example/allowed/runner:2",
            model="claude-opus-4-5",
            maxTurns=7,
        )
    )
    env = env_of(pod)
    assert env["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "team-key",
        "key": "token",
    }
    assert env["GITHUB_REPO"]["value"] == "org/repo"
    assert env["GH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "gh", "key": "token"}
    container = pod["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == "500m"
    assert container["resources"]["requests"]["memory"] == "1Gi"
    assert container["resources"]["limits"]["memory"] == "2Gi"
    assert container["resources"]["limits"]["ephemeral-storage"] == "5Gi"
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert container["image"] == "registry.example/allowed/runner:2"
    config = json.loads(env["AGENTSESSION_RUN_CONFIG"]["value"])
    assert (config["model"], config["maxTurns"]) == ("claude-opus-4-5", 7)


def test_telemetry_is_off_unless_configured() -> None:
    plain = OperatorSettings(store_url="s3://bucket/agents")
    env = env_of(pod_for(session(), plain))
    assert not any(name.startswith("OTEL_") for name in env)
    assert "ANTHROPIC_BASE_URL" not in env
    assert "AWS_ACCESS_KEY_ID" not in env  # the pod's own identity (IRSA) is used


def test_host_network_only_with_the_local_cluster_setting() -> None:
    assert "hostNetwork" not in pod_for(session())["spec"]
    local = SETTINGS.model_copy(update={"runner_host_network": True})
    assert pod_for(session(), local)["spec"]["hostNetwork"] is True
