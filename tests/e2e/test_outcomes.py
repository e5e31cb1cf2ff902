"""End to end: the agent's own limits and errors end a session Failed with the right reason."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import Sessions, TranscriptLoader, condition, marker, table_rows
from tests.support import scripted_api as sa
from tests.support.cluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]


def assert_failed(sessions: Sessions, name: str, reason: str) -> dict[str, Any]:
    """The session's status: a terminal failure the operator did not retry, consistently so."""
    status = sessions.status(name)
    events = [f"{e.reason}: {e.message}" for e in sessions.events(name)]
    assert status["phase"] == "Failed", (status, events)
    assert status["reason"] == reason, (status, events)
    assert status["attempts"] == 1, ("agent outcomes are never retried", events)
    succeeded = condition(status, "Succeeded")
    assert (succeeded["status"], succeeded["reason"]) == ("False", reason)
    assert condition(status, "Running")["status"] == "False"
    assert status["completionTime"]
    return status


def test_max_turns_ends_the_session(sessions: Sessions, scripted_api: sa.ScriptedAPI) -> None:
    tag = marker()
    scripted_api.route(tag, default=sa.bash("echo again >> loop.log"))
    sessions.create(
        "looping", {"prompt": f"{tag}: loop forever", "maxTurns": 2, "allowedTools": ["Bash"]}
    )
    sessions.wait("looping")
    status = assert_failed(sessions, "looping", "MaxTurnsReached")
    assert status["subtype"] == "error_max_turns"
    assert status["terminalReason"] == "max_turns"
    assert status["numTurns"] >= 2
    assert len(scripted_api.requests_for(tag)) == 2  # the model was asked exactly maxTurns times
    assert "MaxTurnsReached" in sessions.event_reasons("looping")


def test_budget_ends_the_session(sessions: Sessions, scripted_api: sa.ScriptedAPI) -> None:
    tag = marker()
    expensive = sa.Reply(
        blocks=sa.bash("echo spend").blocks,
        stop_reason="tool_use",
        input_tokens=400_000,
        output_tokens=10_000,
    )
    scripted_api.route(tag, default=expensive)
    spec = {
        "prompt": f"{tag}: spend a lot",
        "maxBudgetUsd": 0.5,
        "maxTurns": 10,
        "allowedTools": ["Bash"],
    }
    sessions.create("spender", spec)
    sessions.wait("spender")
    status = assert_failed(sessions, "spender", "BudgetExceeded")
    assert status["subtype"] == "error_max_budget_usd"
    assert status["totalCostUsd"] > 0.5
    assert status["numTurns"] < 10
    assert len(scripted_api.requests_for(tag)) < 10


def test_deadline_stops_a_slow_session_and_keeps_its_transcript(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, transcript: TranscriptLoader
) -> None:
    tag = marker()
    scripted_api.route(
        tag,
        sa.bash(f"echo first-step-{tag}"),
        default=sa.slow_text(" ".join(["slow"] * 600), chunk_delay_s=0.05),
    )
    spec = {"prompt": f"{tag}: take your time", "timeoutSeconds": 8, "allowedTools": ["Bash"]}
    sessions.create("slow", spec)
    sessions.wait("slow")
    status = assert_failed(sessions, "slow", "DeadlineExceeded")
    assert "timeoutSeconds=8" in status["message"]
    (pod,) = sessions.pods("slow")
    # The runner's own deadline ended it (exit 0, summary), well before the pod's own.
    assert pod.spec.active_deadline_seconds > 8
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    assert status["sessionId"] in status["transcriptRef"]
    stored = json.dumps(transcript(sessions.namespace, status["sessionId"]))
    assert f"{tag}: take your time" in stored
    assert f"first-step-{tag}" in stored  # the tool turn before the slow stream was persisted


def test_non_retryable_api_error_fails_at_once(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, local_cluster: LocalCluster
) -> None:
    tag = marker()
    # Every request fails: the CLI itself retries a 400 once without an optional beta header.
    scripted_api.route(tag, default=sa.http_error(400))
    sessions.create("rejected", {"prompt": f"{tag}: a request the API rejects"})
    waited = local_cluster.kubectl(
        "wait",
        "-n",
        sessions.namespace,
        "--for=condition=Succeeded=False",
        "agentsession/rejected",
        "--timeout=90s",
        timeout=120,
    )
    assert waited.returncode == 0, waited.stderr
    status = assert_failed(sessions, "rejected", "APIError")
    assert status["apiErrorStatus"] == 400
    assert status["isError"] is True
    assert scripted_api.requests_for(tag)
    assert len(sessions.pods("rejected")) == 1
    (row,) = table_rows(local_cluster.kubectl("get", "ags", "-n", sessions.namespace).stdout)
    assert (row["NAME"], row["PHASE"], row["REASON"]) == ("rejected", "Failed", "APIError")
    warnings = [e for e in sessions.events("rejected") if e.type == "Warning"]
    assert [e.reason for e in warnings] == ["APIError"]
    assert "400" in warnings[0].message
