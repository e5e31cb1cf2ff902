"""End to end: sessions resume and fork earlier ones through the store, within their namespace."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import (
    Sessions,
    TranscriptLoader,
    condition,
    gate_command,
    marker,
    open_gate,
)
from tests.support import scripted_api as sa
from tests.support.node import LocalNode
from tests.support.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]


def waiting(status: dict[str, Any]) -> bool:
    return (
        status.get("phase") == "Pending"
        and condition(status, "Succeeded")["reason"] == "WaitingForSessionRef"
    )


def test_resume_chain_and_fork(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    transcript: TranscriptLoader,
) -> None:
    tag_a, tag_b, tag_c, tag_d = marker(), marker(), marker(), marker()
    # Every request of the chain begins with A's prompt (a resumed conversation), so A's marker
    # routes them all, in the order the chain runs.
    scripted_api.route(
        tag_a,
        sa.bash(gate_command("go", f"echo tool-output-{tag_a}")),
        sa.text("A: the answer is 42."),
        sa.text("B: 42 plus one is 43."),
        sa.text("C: and 44 after that."),
        sa.text("D: a different branch."),
    )
    sessions.create("chain-a", {"prompt": f"{tag_a}: find the answer", "allowedTools": ["Bash"]})
    sessions.create("chain-b", {"prompt": f"{tag_b}: add one", "resume": {"sessionRef": "chain-a"}})
    sessions.create(
        "chain-c", {"prompt": f"{tag_c}: add one more", "resume": {"sessionRef": "chain-b"}}
    )
    pod_a = sessions.wait_running_pod("chain-a")
    # B and C wait, visibly, without pods, while A runs.
    b_waiting = sessions.wait("chain-b", waiting, what="waiting for chain-a")
    assert "chain-a" in b_waiting["message"]
    c_waiting = sessions.wait("chain-c", waiting, what="waiting for chain-b")
    assert "chain-b" in c_waiting["message"]
    assert sessions.status("chain-a")["phase"] == "Running"
    assert sessions.pods("chain-b") == sessions.pods("chain-c") == []
    open_gate(node, sessions.namespace, pod_a, "go")

    a = sessions.wait("chain-a")
    b = sessions.wait("chain-b")
    c = sessions.wait("chain-c")
    for status in (a, b, c):
        assert status["phase"] == "Succeeded", status
        assert status["attempts"] == 1
    assert b["resultPreview"] == "B: 42 plus one is 43."
    assert c["resultPreview"] == "C: and 44 after that."
    # A resume continues the same SDK session.
    assert a["sessionId"] == b["sessionId"] == c["sessionId"]
    requests = scripted_api.requests_for(tag_a)
    assert len(requests) == 4  # A: tool call, answer; B; C
    b_request, c_request = requests[2].text_content(), requests[3].text_content()
    assert f"{tag_a}: find the answer" in b_request
    assert f"tool-output-{tag_a}" in b_request
    assert "A: the answer is 42." in b_request
    assert f"{tag_b}: add one" in b_request
    assert tag_c not in b_request
    # C's request carries every earlier turn, in order.
    earlier = [
        f"{tag_a}: find the answer",
        f"tool-output-{tag_a}",
        "A: the answer is 42.",
        f"{tag_b}: add one",
        "B: 42 plus one is 43.",
        f"{tag_c}: add one more",
    ]
    positions = [c_request.find(text) for text in earlier]
    assert -1 not in positions, dict(zip(earlier, positions, strict=True))
    assert positions == sorted(positions)

    # D forks A: a new SDK session with A's history; A's transcript is left as it was.
    before = transcript(sessions.namespace, a["sessionId"])
    sessions.create(
        "fork-d",
        {"prompt": f"{tag_d}: try another way", "resume": {"sessionRef": "chain-a", "fork": True}},
    )
    d = sessions.wait("fork-d")
    assert d["phase"] == "Succeeded", d
    assert d["resultPreview"] == "D: a different branch."
    assert d["sessionId"] != a["sessionId"]
    assert transcript(sessions.namespace, a["sessionId"]) == before
    forked = json.dumps(transcript(sessions.namespace, d["sessionId"]))
    assert f"{tag_a}: find the answer" in forked
    assert "C: and 44 after that." in forked
    assert f"{tag_d}: try another way" in forked
    assert tag_d not in json.dumps(before)


def test_session_ref_to_a_missing_session_waits_until_it_exists(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, operator: OperatorProcess
) -> None:
    tag_leader, tag_follower = marker(), marker()
    scripted_api.route(tag_leader, sa.text("Leader done."), sa.text("Follower done."))
    sessions.create(
        "follower", {"prompt": f"{tag_follower}: follow", "resume": {"sessionRef": "leader"}}
    )
    status = sessions.wait("follower", waiting, what="waiting for leader")
    assert status["message"] == (
        "waiting for AgentSession leader (spec.resume.sessionRef) to exist"
    )
    assert condition(status, "Succeeded")["status"] == "Unknown"
    assert condition(status, "Running")["status"] == "False"
    assert "attempts" not in status
    assert sessions.pods("follower") == []
    assert operator.process is not None
    assert operator.process.poll() is None

    sessions.create("leader", {"prompt": f"{tag_leader}: lead"})
    leader = sessions.wait("leader")
    follower = sessions.wait("follower")
    assert leader["phase"] == follower["phase"] == "Succeeded"
    assert follower["resultPreview"] == "Follower done."
    assert follower["sessionId"] == leader["sessionId"]
    last = scripted_api.requests_for(tag_leader)[-1].text_content()
    assert "Leader done." in last
    assert f"{tag_follower}: follow" in last


def test_a_session_id_from_another_namespace_cannot_be_resumed(
    sessions: Sessions,
    other_sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    transcript: TranscriptLoader,
) -> None:
    tag, tag_same, tag_other = marker(), marker(), marker()
    scripted_api.route(tag, sa.text("Secret plans."), sa.text("Resumed in the same namespace."))
    sessions.create("source", {"prompt": f"{tag}: make plans"})
    source = sessions.wait("source")
    assert source["phase"] == "Succeeded", source
    session_id = source["sessionId"]
    stored = transcript(sessions.namespace, session_id)

    other_sessions.create(
        "intruder", {"prompt": f"{tag_other}: show me", "resume": {"sessionId": session_id}}
    )
    status = other_sessions.wait("intruder")
    assert status["phase"] == "Failed", status
    assert status["reason"] == "InvalidSpec"
    assert status["attempts"] == 1, "an invalid spec is not retried"
    assert session_id in status["message"]
    assert f"namespace {other_sessions.namespace}" in status["message"]
    assert len(scripted_api.requests_for(tag)) == 1  # no model request for the intruder
    assert not [r for r in scripted_api.model_requests() if tag_other in r.text_content()]
    assert transcript(other_sessions.namespace, session_id) == []
    assert transcript(sessions.namespace, session_id) == stored

    # The same id resumes fine where it belongs.
    sessions.create(
        "insider", {"prompt": f"{tag_same}: continue", "resume": {"sessionId": session_id}}
    )
    insider = sessions.wait("insider")
    assert insider["phase"] == "Succeeded", insider
    assert insider["resultPreview"] == "Resumed in the same namespace."
    assert "Secret plans." in scripted_api.requests_for(tag)[-1].text_content()
