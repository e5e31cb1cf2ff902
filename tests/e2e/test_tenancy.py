"""End to end on the real node: the runner NetworkPolicy comes before the runner pod, and a pod is
a session's by its controller ownerReference's UID, never by its name and labels.

The local node has no CNI, so no NetworkPolicy is enforced here (runner pods use the host
network): these tests prove what the operator writes and when, against the real API server.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import (
    OperatorFactory,
    Sessions,
    condition,
    gate_command,
    marker,
    stopped,
)
from tests.support import scripted_api as sa
from tests.support.cluster import wait_for
from tests.support.operator_process import LOOPBACK_EGRESS, OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]

POLICY = "agentsession-runners"
RUNNER_LABELS = {
    "app.kubernetes.io/managed-by": "agentsession-operator",
    "app.kubernetes.io/component": "runner",
}
# Pods the test makes only to hold a name: never scheduled, so nothing runs.
HOLD = [{"name": "agents.dev/test-hold"}]


def network_policy(sessions: Sessions) -> dict[str, Any] | None:
    networking = client.NetworkingV1Api(sessions._api_client)
    try:
        found = networking.read_namespaced_network_policy(POLICY, sessions.namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    body: dict[str, Any] = sessions._api_client.sanitize_for_serialization(found)
    return body


def policy_writes(operator: OperatorProcess) -> float:
    """Server-side applies of NetworkPolicies the operator has made (all namespaces)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(operator.metrics())
        for sample in family.samples
        if sample.name == "agentsession_operator_api_requests_total"
        and sample.labels.get("resource") == "networkpolicies"
        and sample.labels.get("verb") == "PATCH"
    )


def log_messages(operator: OperatorProcess, namespace: str) -> list[str]:
    lines = operator.log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    return [str(e.get("message")) for e in entries if e.get("namespace") == namespace]


def run_hello(sessions: Sessions, api: sa.ScriptedAPI, name: str) -> dict[str, Any]:
    tag = marker()
    api.route(tag, sa.text("Hello."))
    sessions.create(name, {"prompt": f"{tag}: say hello"})
    status = sessions.wait(name)
    assert status["phase"] == "Succeeded", status
    return status


def test_the_runner_policy_is_applied_before_the_first_pod_and_kept(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, operator: OperatorProcess
) -> None:
    """The namespace is newer than the operator; the policy is there (as configured) before its
    first runner pod, is not rewritten while it is right, and comes back once deleted."""
    assert network_policy(sessions) is None
    writes = policy_writes(operator)
    run_hello(sessions, scripted_api, "first")
    policy = network_policy(sessions)
    assert policy is not None
    assert policy["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "agentsession-operator"
    assert policy["spec"]["podSelector"] == {"matchLabels": RUNNER_LABELS}
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"]
    assert policy["spec"]["egress"] == LOOPBACK_EGRESS
    managers = {m["manager"] for m in policy["metadata"]["managedFields"]}
    assert managers == {"agentsession-operator"}
    messages = log_messages(operator, sessions.namespace)
    assert messages.index(f"Applied NetworkPolicy {POLICY}") < messages.index("Created Pod")
    assert policy_writes(operator) == writes + 1
    # Right as it is: the next pod reads it and writes nothing.
    run_hello(sessions, scripted_api, "second")
    assert policy_writes(operator) == writes + 1
    unchanged = network_policy(sessions)
    assert unchanged is not None
    assert unchanged["metadata"]["resourceVersion"] == policy["metadata"]["resourceVersion"]
    # Deleted (by anyone): checked before every pod, so the next one brings it back first.
    networking = client.NetworkingV1Api(sessions._api_client)
    networking.delete_namespaced_network_policy(POLICY, sessions.namespace)
    run_hello(sessions, scripted_api, "third")
    again = network_policy(sessions)
    assert again is not None
    assert again["metadata"]["uid"] != policy["metadata"]["uid"]
    assert policy_writes(operator) == writes + 2


def test_mode_require_holds_sessions_pending_until_a_policy_exists(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    operator: OperatorProcess,
    operator_factory: OperatorFactory,
) -> None:
    with stopped(operator):
        requiring = operator_factory.process(
            "require", {"AGENTSESSION_RUNNER_NETWORK_POLICY": "require"}
        )
        requiring.start()
        try:
            tag = marker()
            scripted_api.route(tag, sa.text("Hello at last."))
            sessions.create("held", {"prompt": f"{tag}: say hello"})
            held = sessions.wait(
                "held",
                lambda s: "NetworkPolicy agentsession-runners" in (s.get("message") or ""),
                what="a message naming the missing NetworkPolicy",
                timeout=60,
            )
            assert held["phase"] == "Pending"
            assert "AGENTSESSION_RUNNER_NETWORK_POLICY=require" in held["message"]
            assert "it does not exist" in held["message"]
            assert condition(held, "Running")["reason"] == "NetworkPolicyMissing"
            assert condition(held, "Succeeded")["status"] == "Unknown"
            assert "attempts" not in held
            assert sessions.pods("held") == []
            assert network_policy(sessions) is None  # require never creates one
            # Retried with backoff, but told once.
            wait_for(
                lambda: (
                    "Refused to start a runner pod without the namespace's NetworkPolicy"
                    in "\n".join(log_messages(requiring, sessions.namespace)[1:])
                ),
                timeout=30,
                what="a retry",
            )
            assert sessions.event_reasons("held").count("NetworkPolicyMissing") == 1
            assert sessions.pods("held") == []
            # An admin (or GitOps) makes the policy: the session starts by itself.
            networking = client.NetworkingV1Api(sessions._api_client)
            networking.create_namespaced_network_policy(
                sessions.namespace,
                {
                    "metadata": {"name": POLICY},
                    "spec": {
                        "podSelector": {"matchLabels": RUNNER_LABELS},
                        "policyTypes": ["Ingress", "Egress"],
                        "egress": LOOPBACK_EGRESS,
                    },
                },
            )
            status = sessions.wait("held", timeout=120)
        finally:
            requiring.stop()
    assert status["phase"] == "Succeeded", status
    assert status["resultPreview"] == "Hello at last."
    assert status["attempts"] == 1


def hold_pod(sessions: Sessions, body: dict[str, Any]) -> client.V1Pod:
    """Create a pod (as an admin) that keeps its name but is never scheduled."""
    body = {**body, "spec": {"schedulingGates": HOLD, **body["spec"]}}
    return sessions.core.create_namespaced_pod(sessions.namespace, body)


def test_a_pod_with_the_runners_name_and_labels_is_never_adopted(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, runner_image: str
) -> None:
    """Someone made `copy-1` with every label a runner pod of `copy` has: the session fails at
    once, naming it, and the pod is left as it was."""
    labels = {**RUNNER_LABELS, "agents.dev/session": "copy", "agents.dev/attempt": "1"}
    made = hold_pod(
        sessions,
        {
            "metadata": {"name": "copy-1", "labels": labels},
            "spec": {"containers": [{"name": "runner", "image": runner_image}]},
        },
    )
    tag = marker()
    scripted_api.route(tag, sa.text("never"))
    sessions.create("copy", {"prompt": f"{tag}: say hello"})
    status = sessions.wait("copy", timeout=60)
    assert status["phase"] == "Failed", status
    assert status["reason"] == "InvalidSpec"
    assert "runner pod copy-1 (attempt 1) cannot be created" in status["message"]
    assert "owned by nothing" in status["message"]
    assert "attempts" not in status
    assert "podName" not in status
    assert "InvalidSpec" in sessions.event_reasons("copy")
    (pod,) = sessions.pods("copy")
    assert pod.metadata.uid == made.metadata.uid
    assert pod.metadata.deletion_timestamp is None
    assert scripted_api.requests_for(tag) == []


def test_a_session_named_like_a_statefulset_fails_clearly_not_after_retries(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, runner_image: str
) -> None:
    """StatefulSet `web` has pods web-0 and web-1; AgentSession `web` would name its first pod
    web-1. It ends InvalidSpec before any attempt, never BackoffLimitExceeded."""
    apps = client.AppsV1Api(sessions._api_client)
    selector = {"app": "web-db"}
    apps.create_namespaced_stateful_set(
        sessions.namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "podManagementPolicy": "Parallel",
                "serviceName": "web",
                "selector": {"matchLabels": selector},
                "template": {
                    "metadata": {"labels": selector},
                    "spec": {
                        "schedulingGates": HOLD,
                        "containers": [{"name": "db", "image": runner_image}],
                    },
                },
            },
        },
    )
    web_1 = wait_for(
        lambda: next(
            (
                p
                for p in sessions.core.list_namespaced_pod(
                    sessions.namespace, label_selector="app=web-db"
                ).items
                if p.metadata.name == "web-1"
            ),
            None,
        ),
        timeout=60,
        what="the StatefulSet's pod web-1",
    )
    tag = marker()
    scripted_api.route(tag, sa.text("never"))
    sessions.create("web", {"prompt": f"{tag}: say hello"})
    status = sessions.wait("web", timeout=60)
    assert status["phase"] == "Failed", status
    assert status["reason"] == "InvalidSpec"
    assert "runner pod web-1 (attempt 1) cannot be created" in status["message"]
    assert "owned by StatefulSet web" in status["message"]
    assert "attempts" not in status
    reasons = sessions.event_reasons("web")
    assert "InvalidSpec" in reasons
    assert "AttemptFailed" not in reasons
    after = sessions.core.read_namespaced_pod("web-1", sessions.namespace)
    assert after.metadata.uid == web_1.metadata.uid
    assert after.metadata.deletion_timestamp is None
    assert scripted_api.requests_for(tag) == []


def test_a_recreated_session_waits_for_its_namesakes_pod_then_runs(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, garbage_collector: None
) -> None:
    """Deleted and created again under the same name while the old runner pod is still being
    deleted (a finalizer holds it here): the new session waits for the name instead of adopting
    the old session's pod, then runs its own."""
    gate, old_tag = "gate", marker()
    scripted_api.route(old_tag, sa.bash(gate_command(gate)), sa.text("old"))
    old = sessions.create("again", {"prompt": f"{old_tag}: wait", "allowedTools": ["Bash"]})
    pod = sessions.wait_running_pod("again")
    # Its one turn reached the model (and waits at the gate) before the session goes.
    wait_for(lambda: scripted_api.requests_for(old_tag), timeout=60, what="the old turn's request")
    hold = f"agents.dev/test-{uuid.uuid4().hex[:6]}"
    sessions.core.patch_namespaced_pod(
        pod, sessions.namespace, {"metadata": {"finalizers": [hold]}}
    )
    sessions.delete("again")
    sessions.wait_gone("again")
    wait_for(
        lambda: (
            sessions.core.read_namespaced_pod(pod, sessions.namespace).metadata.deletion_timestamp
        ),
        timeout=60,
        what="the old pod being deleted",
    )
    tag = marker()
    scripted_api.route(tag, sa.text("The new session's answer."))
    new = sessions.create("again", {"prompt": f"{tag}: say hello"})
    assert new["metadata"]["uid"] != old["metadata"]["uid"]
    waiting = sessions.wait(
        "again",
        lambda s: (
            s.get("phase") == "Pending" and "waiting for pod again-1" in (s.get("message") or "")
        ),
        what="a wait for the old pod",
        timeout=60,
    )
    assert f"owned by AgentSession again (uid {old['metadata']['uid']}" in waiting["message"]
    assert "being deleted" in waiting["message"]
    assert condition(waiting, "Running")["reason"] == "PodNameTaken"
    assert "podName" not in waiting
    assert "PodNameTaken" in sessions.event_reasons("again")
    # Still waiting while the name is held; the old pod is never its pod.
    assert sessions.status("again")["phase"] == "Pending"
    old_pod = sessions.core.read_namespaced_pod(pod, sessions.namespace).metadata.uid
    sessions.core.patch_namespaced_pod(pod, sessions.namespace, {"metadata": {"finalizers": None}})
    status = sessions.wait("again", timeout=120)
    assert status["phase"] == "Succeeded", status
    assert status["resultPreview"] == "The new session's answer."
    assert status["attempts"] == 1
    (mine,) = sessions.pods("again")  # the old one is gone; this is the new session's, same name
    assert mine.metadata.name == pod
    assert mine.metadata.uid != old_pod
    assert mine.metadata.owner_references[0].uid == new["metadata"]["uid"]
    # The old turn (its gate never opened) died with its pod; nothing asked for it again.
    assert len(scripted_api.requests_for(old_tag)) == 1
