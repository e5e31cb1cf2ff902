"""End to end: pods, nodes, the operator and the store fail under a running session; it recovers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    OperatorFactory,
    Sessions,
    gate_command,
    marker,
    open_gate,
    stopped,
)
from tests.support import scripted_api as sa
from tests.support.cluster import pod_gone, wait_for
from tests.support.node_agent import NodeAgent
from tests.support.operator_process import OperatorProcess
from tests.support.s3server import free_port

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]

GATE = "release"


def live_processes() -> Iterator[tuple[int, int, bytes]]:
    """(pid, process group, command line) of every process that is not a zombie."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(entry.name), int(fields[2]), cmdline


def processes_with(token: str) -> list[int]:
    """PIDs of live processes whose command line contains `token`."""
    return [pid for pid, _, cmdline in live_processes() if token.encode() in cmdline]


def process_group(pgid: int) -> list[int]:
    """PIDs of the live processes in process group `pgid`."""
    return [pid for pid, group, _ in live_processes() if group == pgid]


def start_blocked(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, name: str, answer: str, **spec: object
) -> tuple[str, str]:
    """A session whose first turn runs a Bash tool that blocks until its gate opens; the second
    reply (to whichever attempt asks next) is `answer`. Returns (tag, first pod) once the tool
    runs, i.e. the session is mid-turn."""
    tag = marker()
    scripted_api.route(tag, sa.bash(gate_command(GATE, f"echo {tag}-released")), sa.text(answer))
    sessions.create(name, {"prompt": f"{tag}: wait for the gate", "allowedTools": ["Bash"], **spec})
    pod = sessions.wait_running_pod(name)
    wait_for(lambda: processes_with(f"{tag}-released"), timeout=90, what="the blocking tool")
    return tag, pod


def test_oom_killed_runner_is_retried_and_backoff_limit_zero_fails(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, node_agent: NodeAgent
) -> None:
    ns = sessions.namespace
    retried_tag, retried_pod = start_blocked(
        sessions, scripted_api, "oom-retry", "Done after the OOM kill."
    )
    final_tag, final_pod = start_blocked(
        sessions, scripted_api, "oom-final", "must not be reached", backoffLimit=0
    )
    node_agent.oom_kill(ns, retried_pod)
    node_agent.oom_kill(ns, final_pod)

    retried = sessions.wait("oom-retry")
    assert retried["phase"] == "Succeeded", retried
    assert retried["attempts"] == 2
    assert retried["resultPreview"] == "Done after the OOM kill."
    first, second = sessions.pods("oom-retry")
    assert first.status.container_statuses[0].state.terminated.reason == "OOMKilled"
    assert second.status.phase == "Succeeded"
    failed = next(e for e in sessions.events("oom-retry") if e.reason == "AttemptFailed")
    assert "OOMKilled" in failed.message

    final = sessions.wait("oom-final")
    assert final["phase"] == "Failed", final
    assert final["reason"] == "BackoffLimitExceeded"
    assert final["attempts"] == 1
    assert "backoffLimit 0" in final["message"]
    assert "OOMKilled" in final["message"]
    assert len(sessions.pods("oom-final")) == 1
    # The kill took the whole pod: its tool processes too (they run in their own session).
    assert not processes_with(f"{retried_tag}-released")
    assert not processes_with(f"{final_tag}-released")


def test_deleted_pod_gets_a_new_attempt(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, node_agent: NodeAgent
) -> None:
    tag, pod = start_blocked(sessions, scripted_api, "evicted", "Done after the pod deletion.")
    sessions.core.delete_namespaced_pod(pod, sessions.namespace)
    status = sessions.wait("evicted")
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    assert status["podName"] == "evicted-2"
    assert status["resultPreview"] == "Done after the pod deletion."
    assert [p.metadata.name for p in sessions.pods("evicted")] == ["evicted-2"]
    assert not processes_with(f"{tag}-released"), "the deleted pod's tool still runs"
    assert "AttemptFailed" in sessions.event_reasons("evicted")
    # The second attempt resumed the first one's conversation, the blocked tool call included.
    assert "resuming_earlier_attempt" in node_agent.logs(sessions.namespace, "evicted-2")
    assert f"{tag}-released" in str(scripted_api.requests_for(tag)[-1].messages)


def test_node_loss_gets_a_new_attempt_on_the_recovered_node(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, node_agent: NodeAgent
) -> None:
    tag, _ = start_blocked(sessions, scripted_api, "stranded", "Done after the node came back.")
    node_agent.simulate_node_loss()
    try:
        # The operator sees attempt 1 fail with the node and makes attempt 2, which waits for
        # a node: there is none until the agent comes back.
        sessions.wait_pod(
            "stranded",
            lambda p: p.metadata.labels["agents.dev/attempt"] == "2",
            timeout=60,
            what="attempt 2 created",
        )
        assert not processes_with(f"{tag}-released")
    finally:
        node_agent.recover()
    status = sessions.wait("stranded")
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    assert status["resultPreview"] == "Done after the node came back."
    failed = next(e for e in sessions.events("stranded") if e.reason == "AttemptFailed")
    assert "NodeLost" in failed.message or "disappeared" in failed.message
    node = sessions.core.read_node(node_agent.node_name)
    ready = next(c for c in node.status.conditions if c.type == "Ready")
    assert ready.status == "True"
    assert not node.spec.taints


def test_operator_restarts_adopt_the_running_pod(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node_agent: NodeAgent,
    operator: OperatorProcess,
) -> None:
    ns = sessions.namespace
    _, pod = start_blocked(sessions, scripted_api, "steady", "Done across operator restarts.")
    running_message = f"runner pod {pod} (attempt 1) is working on the session"
    running = sessions.wait("steady", lambda s: s.get("message") == running_message, what="Running")
    # A crash while the pod runs. Blank the status message meanwhile: the restarted operator
    # rewrites it from what it observes, which shows it has reconciled the session.
    operator.stop(kill=True)
    sessions.api.patch_namespaced_custom_object_status(
        "agents.dev",
        "v1alpha1",
        ns,
        "agentsessions",
        "steady",
        {"status": {"message": "the operator is restarting"}},
    )
    operator.start()
    sessions.wait("steady", lambda s: s.get("message") == running_message, what="reconciled")
    assert [p.metadata.name for p in sessions.pods("steady")] == [pod], "a second pod appeared"
    assert sessions.status("steady")["attempts"] == 1
    # A crash while the pod finishes: the restarted operator reads the result from the pod.
    with stopped(operator):
        open_gate(node_agent, ns, pod, GATE)
        sessions.wait_pod("steady", lambda p: p.status.phase == "Succeeded", what="Succeeded")
        assert sessions.status("steady")["phase"] == "Running"  # nobody wrote it down yet
    status = sessions.wait("steady")
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 1
    assert status["resultPreview"] == "Done across operator restarts."
    assert status["sessionId"] == running["sessionId"]
    assert status["startTime"] == running["startTime"]
    assert [p.metadata.name for p in sessions.pods("steady")] == [pod]
    assert sessions.event_reasons("steady").count("Succeeded") == 1


def test_cr_deleted_mid_run_stops_its_pod_and_processes(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node_agent: NodeAgent,
    garbage_collector: None,
) -> None:
    tag, pod = start_blocked(sessions, scripted_api, "abandoned", "must not be reached")
    runner_pid = node_agent.pid(sessions.namespace, pod)
    assert runner_pid is not None
    assert process_group(runner_pid), "the runner should be running"
    sessions.delete("abandoned")
    sessions.wait_gone("abandoned")
    # The garbage collector deletes the pod through its ownerReference; the node stops it.
    wait_for(
        lambda: pod_gone(sessions.core, sessions.namespace, pod), timeout=60, what="pod deleted"
    )
    wait_for(lambda: not processes_with(f"{tag}-released"), timeout=30, what="the tool killed")
    assert process_group(runner_pid) == [], "the runner's processes outlived the pod"
    assert sessions.pods("abandoned") == []
    assert len(scripted_api.requests_for(tag)) == 1


def test_store_unreachable_is_retried_then_fails_clearly(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    operator: OperatorProcess,
    operator_factory: OperatorFactory,
) -> None:
    tag = marker()
    closed = f"http://127.0.0.1:{free_port()}"
    # The main operator is down; this one gives runners an S3 endpoint nothing listens on.
    with stopped(operator):
        broken = operator_factory.process("broken-store", {"AGENTSESSION_S3_ENDPOINT_URL": closed})
        broken.start()
        try:
            sessions.create("storeless", {"prompt": f"{tag}: never runs", "backoffLimit": 1})
            status = sessions.wait("storeless", timeout=180)
        finally:
            broken.stop()
    assert status["phase"] == "Failed", status
    assert status["reason"] == "BackoffLimitExceeded"
    assert status["attempts"] == 2
    assert "store" in status["message"]
    assert "2 attempts failed" in status["message"]
    assert sessions.event_reasons("storeless").count("AttemptFailed") == 1
    assert scripted_api.requests_for(tag) == []  # the agent never ran without its store
