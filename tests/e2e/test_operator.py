"""End to end on the local control plane: AgentSession -> runner pod -> real CLI -> status.

Each test scripts the Messages API for its own prompt marker, creates sessions as a user would,
and checks what `kubectl` shows. The operator runs under its least-privilege ServiceAccount.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.conftest import Sessions
from tests.support import scripted_api as sa
from tests.support.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]

REPO = Path(__file__).resolve().parents[2]


def marker() -> str:
    return f"TASK-{uuid.uuid4().hex[:8]}"


def condition(status: dict, kind: str) -> dict:
    return next(c for c in status.get("conditions", []) if c["type"] == kind)


def test_happy_path_reports_turns_cost_and_result(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, local_cluster: LocalCluster
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
        "--timeout=120s",
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
    # Printer columns, as `kubectl get ags` shows them.
    table = local_cluster.kubectl("get", "ags", "-n", sessions.namespace, "hello")
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:6] == ["NAME", "PHASE", "TURNS", "COST", "(USD)", "MODEL"]
    assert row.split()[:3] == ["hello", "Succeeded", "2"]
    # The pod is hardened and owned by the session.
    (pod,) = sessions.pods("hello")
    assert pod.metadata.owner_references[0].kind == "AgentSession"
    container = pod.spec.containers[0]
    assert container.security_context.read_only_root_filesystem is True
    assert container.security_context.capabilities.drop == ["ALL"]
    assert pod.spec.security_context.run_as_non_root is True
    assert pod.spec.automount_service_account_token is False
    env_names = {e.name: e for e in container.env}
    assert env_names["ANTHROPIC_API_KEY"].value_from.secret_key_ref.name == "anthropic-api-key"
    assert env_names["ANTHROPIC_API_KEY"].value is None
    events = {e.reason for e in sessions.events("hello")}
    assert "Succeeded" in events
