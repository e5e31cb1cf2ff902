"""End to end: an AgentSession runs to Succeeded as a user sees it: kubectl, metrics, no secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Sessions, TranscriptLoader, condition, marker, table_rows
from tests.support import scripted_api as sa
from tests.support.cluster import LocalCluster, wait_for
from tests.support.node import LocalNode
from tests.support.operator_process import OperatorProcess
from tests.support.runner_harness import TEST_API_KEY

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]

REPO = Path(__file__).resolve().parents[2]


def samples(metrics_text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample called `name` in a Prometheus text exposition."""
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(metrics_text)
        for sample in family.samples
        if sample.name == name
    ]


def test_happy_path_reports_turns_cost_and_result(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    local_cluster: LocalCluster,
    node: LocalNode,
    operator: OperatorProcess,
) -> None:
    tag = marker()
    scripted_api.route(tag, sa.bash("echo hello > greeting.txt"), sa.text("I wrote the greeting."))
    sessions.create("hello", {"prompt": f"{tag}: write a greeting", "allowedTools": ["Bash"]})
    waited = local_cluster.kubectl(
        "wait",
        "-n",
        sessions.namespace,
        "--for=condition=Succeeded",
        "agentsession/hello",
        "--timeout=90s",
        timeout=120,
    )
    assert waited.returncode == 0, waited.stderr
    status = sessions.status("hello")
    assert status["phase"] == "Succeeded"
    assert status["reason"] == "Completed"
    assert status["numTurns"] == 2
    assert status["totalCostUsd"] > 0
    assert status["resultPreview"] == "I wrote the greeting."
    assert status["attempts"] == 1
    assert status["podName"] == "hello-1"
    assert status["transcriptRef"].startswith("s3://agentsessions-e2e/agents/")
    assert status["resultRef"].endswith("/result.json")
    assert status["observedGeneration"] == 1
    assert condition(status, "Succeeded")["status"] == "True"
    assert condition(status, "Running")["status"] == "False"
    # Printer columns, as `kubectl get ags` shows them.
    table = local_cluster.kubectl("get", "ags", "-n", sessions.namespace, "hello")
    (row,) = table_rows(table.stdout)
    assert (row["NAME"], row["PHASE"], row["TURNS"]) == ("hello", "Succeeded", "2")
    assert float(row["COST (USD)"]) == pytest.approx(status["totalCostUsd"])
    assert row["REASON"] == "Completed"
    # The pod is hardened and owned by the session.
    (pod,) = sessions.pods("hello")
    assert pod.metadata.owner_references[0].kind == "AgentSession"
    container = pod.spec.containers[0]
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.capabilities.drop == ["ALL"]
    assert pod.spec.security_context.run_as_non_root is True
    assert pod.spec.automount_service_account_token is False
    # The agent's container holds no credential; the gateway sidecar references the API key.
    agent_env = {e.name for e in container.env}
    assert not agent_env & {"ANTHROPIC_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    (gateway,) = pod.spec.init_containers
    assert gateway.restart_policy == "Always"
    assert gateway.security_context.run_as_user != container.security_context.run_as_user
    gateway_env = {e.name: e for e in gateway.env}
    assert gateway_env["ANTHROPIC_API_KEY"].value_from.secret_key_ref.name == "anthropic-api-key"
    assert gateway_env["ANTHROPIC_API_KEY"].value is None
    events = {e.reason for e in sessions.events("hello")}
    assert "Succeeded" in events

    # Metrics: the finished session, its cost, the operator's API calls, pod start latency.
    metrics = operator.metrics()
    finished = samples(metrics, "agentsession_sessions_finished_total")
    assert (
        {"namespace": sessions.namespace, "phase": "Succeeded", "reason": "Completed"},
        1.0,
    ) in finished
    cost = [
        v
        for labels, v in samples(metrics, "agentsession_cost_usd_total")
        if labels["namespace"] == sessions.namespace
    ]
    assert sum(cost) == pytest.approx(status["totalCostUsd"])
    requests = samples(metrics, "agentsession_operator_api_requests_total")
    assert any(
        labels == {"verb": "POST", "resource": "pods", "code": "201"} and value >= 1
        for labels, value in requests
    ), requests
    assert any(labels["resource"] == "agentsessions/status" for labels, _ in requests)
    (latency_count,) = samples(metrics, "agentsession_pod_start_latency_seconds_count")
    assert latency_count[1] >= 1

    # The API key is only ever referenced: it is nowhere a user or an operator can read.
    api = sessions.core.api_client
    places = {
        "the AgentSession": json.dumps(sessions.get("hello")),
        "the pod": json.dumps(api.sanitize_for_serialization(pod)),
        "events": json.dumps(
            api.sanitize_for_serialization(sessions.core.list_namespaced_event(sessions.namespace))
        ),
        "the pod log": node.logs(sessions.namespace, "hello-1"),
        "the operator log": operator.log_path.read_text(errors="replace"),
    }
    assert '"event": "run_finished"' in places["the pod log"]  # it is the runner's output
    for where, text in places.items():
        assert TEST_API_KEY not in text, f"the API key leaked into {where}"


def test_examples_hello_runs_as_a_user_would(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, local_cluster: LocalCluster
) -> None:
    path = REPO / "examples" / "hello.yaml"
    (manifest,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    prompt = manifest["spec"]["prompt"]
    name = manifest["metadata"]["name"]
    answer = "Hello\nHola\nBonjour\nHallo\nCiao"
    scripted_api.route(prompt, default=sa.text(answer))
    assert sessions.apply_file(path) == [name]
    waited = local_cluster.kubectl(
        "wait",
        "-n",
        sessions.namespace,
        "--for=condition=Succeeded",
        f"agentsession/{name}",
        "--timeout=90s",
        timeout=120,
    )
    assert waited.returncode == 0, waited.stderr
    preview = local_cluster.kubectl(
        "get", "ags", name, "-n", sessions.namespace, "-o", "jsonpath={.status.resultPreview}"
    )
    assert preview.stdout == answer
    (request,) = scripted_api.requests_for(prompt)
    assert request.body["model"] == "claude-sonnet-4-5"  # the operator's default model


def test_ttl_deletes_the_finished_session_and_keeps_its_transcript(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    transcript: TranscriptLoader,
    operator: OperatorProcess,
    garbage_collector: None,
) -> None:
    tag = marker()
    scripted_api.route(tag, sa.text("Short-lived."))
    sessions.create("ephemeral", {"prompt": f"{tag}: be brief", "ttlSecondsAfterFinished": 1})
    started = sessions.wait("ephemeral", lambda s: bool(s.get("sessionId")), what="a session id")
    sessions.wait_gone("ephemeral")
    assert "Succeeded" in sessions.event_reasons("ephemeral")  # it finished before it went
    wait_for(lambda: sessions.pods("ephemeral") == [], timeout=60, what="pods collected")
    stored = json.dumps(transcript(sessions.namespace, started["sessionId"]))
    assert f"{tag}: be brief" in stored
    assert "Short-lived." in stored
    deleted = [
        json.loads(line)
        for line in operator.log_path.read_text().splitlines()
        if "ttlSecondsAfterFinished" in line
    ]
    assert any(
        entry.get("session") == "ephemeral" and entry.get("namespace") == sessions.namespace
        for entry in deleted
    )
