"""The runner pod the operator builds: hardened, isolated, secrets only by reference."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentsession_contract.gateway import CONFIG_ANNOTATION
from agentsession_contract.run import decode_run_config, mcp_header_env
from agentsession_operator.models import AgentSession
from agentsession_operator.reconcile.podspec import (
    build_pod,
    pod_name,
    run_config_for,
    store_secret,
)
from agentsession_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(
    store_url="s3://bucket/agents",
    s3_endpoint_url="http://minio:9000",
    store_role_arn="arn:aws:iam::123456789012:role/agentsession-{namespace}",
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
    """The agent container's environment."""
    return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}


def gateway_of(pod: dict[str, Any]) -> dict[str, Any]:
    (gateway,) = pod["spec"]["initContainers"]
    assert gateway["name"] == "gateway"
    return gateway


def gateway_env_of(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in gateway_of(pod)["env"]}


def config_of(pod: dict[str, Any]) -> dict[str, Any]:
    return decode_run_config(pod["metadata"]["annotations"][CONFIG_ANNOTATION])


HARDENED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def test_pod_is_hardened_for_pod_security_restricted() -> None:
    pod = pod_for(session())
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["shareProcessNamespace"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 65532
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = spec["containers"][0]
    assert container["securityContext"] == {**HARDENED, "runAsUser": 65532, "runAsGroup": 65532}
    mounts = {
        m["mountPath"]: (m["name"], m.get("readOnly", False)) for m in container["volumeMounts"]
    }
    assert mounts == {
        "/workspace": ("workspace", False),
        "/home/runner": ("home", False),
        "/tmp": ("tmp", False),
        "/etc/agentsession": ("run-config", True),
        "/run/agentsession/gateway": ("gateway", True),
    }
    assert container["terminationMessagePolicy"] == "File"
    assert spec["activeDeadlineSeconds"] == SETTINGS.default_timeout_seconds + 60


def test_the_gateway_is_a_native_sidecar_with_its_own_uid_and_volumes() -> None:
    pod = pod_for(session())
    gateway = gateway_of(pod)
    assert gateway["restartPolicy"] == "Always"  # a native sidecar: first up, last down
    assert gateway["command"] == ["agentsession-gateway"]
    assert gateway["securityContext"] == {**HARDENED, "runAsUser": 65533, "runAsGroup": 65533}
    # The runner waits for the gateway's endpoint file itself: a probe would only delay it.
    assert "startupProbe" not in gateway
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    assert mounts == {
        "run-config": "/etc/agentsession",
        "gateway": "/run/agentsession/gateway",
        "gateway-state": "/var/lib/agentsession-gateway",
    }
    agent_volumes = {m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert "gateway-state" not in agent_volumes  # where the gateway keeps its report
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (item,) = volumes["run-config"]["downwardAPI"]["items"]
    assert item["fieldRef"]["fieldPath"] == f"metadata.annotations['{CONFIG_ANNOTATION}']"
    # spec.image never replaces the component that holds the credentials.
    overridden = pod_for(session(image="registry.example/allowed/runner:2"))
    assert gateway_of(overridden)["image"] == SETTINGS.runner_image


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


def test_credentials_reach_only_the_gateway_and_only_by_reference() -> None:
    pod = pod_for(session())
    agent = env_of(pod)
    assert not [n for n in agent if n.startswith(("ANTHROPIC_", "AWS_"))]
    assert agent["AGENTSESSION_GATEWAY_DIR"]["value"] == "/run/agentsession/gateway"
    assert agent["CLAUDE_CONFIG_DIR"]["value"] == "/home/runner/.claude"
    assert agent["CLAUDE_CODE_MAX_RETRIES"]["value"] == "2"
    attributes = agent["OTEL_RESOURCE_ATTRIBUTES"]["value"]
    assert "k8s.namespace.name=team-a" in attributes
    assert "agentsession.uid=u-1" in attributes
    gateway = gateway_env_of(pod)
    assert "value" not in gateway["ANTHROPIC_API_KEY"]
    assert gateway["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "anthropic-api-key",
        "key": "ANTHROPIC_API_KEY",
    }
    # The attempt's own vended, namespace-scoped credentials (see store_secret).
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert gateway[key]["valueFrom"]["secretKeyRef"] == {
            "name": "agentsession-store-review-1",
            "key": key,
        }
    assert gateway["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert gateway["AGENTSESSION_UPSTREAM_URL"]["value"] == "http://egress-proxy:8080"
    assert gateway["AGENTSESSION_ATTEMPT_ID"]["value"] == "review-1"
    config = config_of(pod)
    assert config["namespace"] == "team-a"
    assert config["store"] == "s3://bucket/agents"
    assert config["workspace"] == "/workspace"
    assert "sk-" not in json.dumps(pod)


def test_a_run_config_too_large_for_an_environment_variable_travels_compactly() -> None:
    big = session(prompt="Describe this. " * 6_000, systemPrompt="Be careful. " * 8_000)
    pod = pod_for(big)
    encoded = pod["metadata"]["annotations"][CONFIG_ANNOTATION]
    assert len(encoded) < 16_000  # 186k characters of prompt, compressed
    assert config_of(pod)["prompt"] == big.spec.prompt
    assert config_of(pod)["systemPrompt"] == big.spec.system_prompt


def test_mcp_headers_from_secrets_reach_only_the_gateway() -> None:
    pod = pod_for(
        session(
            mcpServers={
                "github": {
                    "type": "http",
                    "url": "https://mcp.example/github",
                    "headersFrom": {"Authorization": {"name": "gh", "key": "header"}},
                }
            }
        )
    )
    env = gateway_env_of(pod)
    var = mcp_header_env("github", "Authorization")
    assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "gh", "key": "header"}
    assert var not in env_of(pod)


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
    assert gateway_env_of(pod)["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "team-key",
        "key": "token",
    }
    assert env["GITHUB_REPO"]["value"] == "org/repo"
    assert env["GH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "gh", "key": "token"}
    container = pod["spec"]["containers"][0]
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "2Gi", "ephemeral-storage": "5Gi"},
        "limits": {"cpu": "500m", "memory": "2Gi", "ephemeral-storage": "5Gi"},
    }
    assert pod["spec"]["runtimeClassName"] == "gvisor"
    assert container["image"] == "registry.example/allowed/runner:2"
    config = config_of(pod)
    assert (config["model"], config["maxTurns"]) == ("claude-opus-4-5", 7)


@pytest.mark.parametrize(
    ("resources", "requests", "limits"),
    [
        pytest.param({}, ("1", "1Gi"), ("1", "1Gi"), id="defaults"),
        pytest.param(
            {"limits": {"memory": "300Mi", "cpu": "250m"}},
            ("250m", "300Mi"),
            ("250m", "300Mi"),
            id="a-limit-below-the-default-request",
        ),
        pytest.param(
            {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": 6}},
            ("4", "8Gi"),
            ("6", "8Gi"),
            id="a-request-above-the-default-limit",
        ),
        pytest.param(
            {"requests": {"cpu": "100m"}, "limits": {"cpu": "2"}},
            ("100m", "1Gi"),
            ("2", "1Gi"),
            id="both-sides",
        ),
    ],
)
def test_a_resource_set_on_one_side_only_is_used_for_both(
    resources: dict[str, Any], requests: tuple[str, str], limits: tuple[str, str]
) -> None:
    """The operator's default on the other side could cross the value set (a limit below the
    default request), which the API server refuses; Kubernetes defaults a request to its limit."""
    container = pod_for(session(resources=resources))["spec"]["containers"][0]
    got = container["resources"]
    assert (got["requests"]["cpu"], got["requests"]["memory"]) == requests
    assert (got["limits"]["cpu"], got["limits"]["memory"]) == limits


def test_telemetry_is_off_unless_configured() -> None:
    plain = OperatorSettings(store_url="s3://bucket/agents")
    pod = pod_for(session(), plain)
    assert not any(name.startswith("OTEL_") for name in env_of(pod))
    assert "AGENTSESSION_UPSTREAM_URL" not in gateway_env_of(pod)
    assert "AWS_ACCESS_KEY_ID" not in gateway_env_of(pod)  # the pod's own identity (IRSA)


def test_host_network_only_with_the_local_cluster_setting() -> None:
    assert "hostNetwork" not in pod_for(session())["spec"]
    local = SETTINGS.model_copy(update={"runner_host_network": True})
    assert pod_for(session(), local)["spec"]["hostNetwork"] is True


def test_the_store_secret_is_owned_by_the_session_and_named_for_the_pod() -> None:
    credentials = {
        "AWS_ACCESS_KEY_ID": "ASIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
    }
    secret = store_secret(session(), "review-1", credentials)
    assert secret["metadata"]["name"] == "agentsession-store-review-1"
    assert secret["metadata"]["namespace"] == "team-a"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert secret["stringData"] == credentials
