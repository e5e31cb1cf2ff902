"""End to end: spec.suspend stops and resumes a session; onLimitReached Pause waits for a raise.

Both continue the same SDK session in a new attempt (the runner resumes its session id from the
store), and the session's cost and turns are the sums over its attempts.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Sessions, TranscriptLoader, condition, gate_command, marker
from tests.support import scripted_api as sa
from tests.support.cluster import wait_for
from tests.support.node import LocalNode

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]

PATCH_HINT = re.compile(r"kubectl patch agentsession (\S+) --type merge -p '([^']+)'")


def patch_spec(sessions: Sessions, name: str, spec: dict[str, Any]) -> None:
    """`kubectl patch agentsession NAME --type merge`, as the docs tell users to."""
    patch = json.dumps({"spec": spec})
    result = sessions.cluster.kubectl(
        "patch", "agentsession", name, "-n", sessions.namespace, "--type", "merge", "-p", patch
    )
    assert result.returncode == 0, result.stderr


def follow_hint(sessions: Sessions, status: dict[str, Any]) -> dict[str, Any]:
    """Run the `kubectl patch` line a Paused session's message suggests; returns its spec."""
    found = PATCH_HINT.search(status.get("message", ""))
    assert found is not None, status
    name, patch = found.groups()
    spec: dict[str, Any] = json.loads(patch)["spec"]
    patch_spec(sessions, name, spec)
    return spec


def tool_running(token: str) -> bool:
    """Whether a process whose command line holds `token` runs (the node is this host)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if token.encode() in (entry / "cmdline").read_bytes():
                    return True
    return False


def paused(status: dict[str, Any]) -> bool:
    return status.get("phase") == "Paused"


def test_suspend_stops_the_running_pod_and_resuming_continues_the_same_session(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    transcript: TranscriptLoader,
) -> None:
    tag = marker()
    scripted_api.route(
        tag,
        # A slow tool call (up to 90 s: a gate that is never opened), so it is stopped mid-turn.
        sa.bash(gate_command("never-opened", f"echo slept-{tag}")),
        sa.text("Done after the suspension."),
        default=sa.text("Done after the suspension."),
    )
    sessions.create(
        "pausable",
        {"prompt": f"{tag}: take a nap", "allowedTools": ["Bash"], "backoffLimit": 0},
    )
    sessions.wait_running_pod("pausable")
    # Mid-turn: the model asked for the slow tool call, which runs now (on this host's node).
    wait_for(lambda: tool_running(f"slept-{tag}"), timeout=90, what="the slow tool call")
    first = sessions.wait("pausable", lambda s: bool(s.get("sessionId")), what="a session id")

    patch_spec(sessions, "pausable", {"suspend": True})
    suspended = sessions.wait(
        "pausable",
        lambda s: (
            s.get("phase") == "Suspended" and condition(s, "Running")["reason"] == "Suspended"
        ),
        what="Suspended, its stopped attempt charged",
        timeout=90,
    )
    wait_for(lambda: sessions.pods("pausable") == [], timeout=60, what="the pod to go away")
    assert condition(suspended, "Succeeded")["status"] == "Unknown"
    assert suspended["attempts"] == 1
    assert suspended["interruptedAttempts"] == 1
    assert suspended["numTurns"] >= 1
    assert suspended["totalCostUsd"] > 0
    assert "reason" not in suspended
    assert "Suspended" in sessions.event_reasons("pausable")
    # Nothing starts while it stays suspended.
    assert sessions.status("pausable")["phase"] == "Suspended"
    assert sessions.pods("pausable") == []

    patch_spec(sessions, "pausable", {"suspend": False})
    status = sessions.wait("pausable", timeout=120)
    # backoffLimit 0 and a second attempt: the suspended one did not count as a failure.
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    assert status["sessionId"] == first["sessionId"]
    assert status["resultPreview"] == "Done after the suspension."
    assert status["numTurns"] > suspended["numTurns"]
    assert status["totalCostUsd"] > suspended["totalCostUsd"]
    assert "Resumed" in sessions.event_reasons("pausable")
    assert "AttemptFailed" not in sessions.event_reasons("pausable")
    assert "resuming_earlier_attempt" in node.logs(sessions.namespace, "pausable-2")
    # The resumed attempt sent the first attempt's conversation on.
    assert f"{tag}: take a nap" in scripted_api.requests_for(tag)[-1].text_content()
    stored = json.dumps(transcript(sessions.namespace, status["sessionId"]))
    assert f"echo slept-{tag}" in stored
    assert "Done after the suspension." in stored


def expensive_tool_call(tag: str) -> sa.Reply:
    """A Bash tool call priced at about $0.32 (100k input, 1k output tokens of Sonnet 4.5)."""
    return sa.Reply(
        blocks=sa.bash(f"echo spent-{tag}").blocks,
        stop_reason="tool_use",
        input_tokens=100_000,
        output_tokens=1_000,
    )


def spends_past_its_budget(scripted_api: sa.ScriptedAPI) -> tuple[str, dict[str, Any]]:
    """A session (its tag and spec) whose model spends past maxBudgetUsd 0.5 in two tool calls,
    pauses there, and finishes once the budget is raised."""
    tag = marker()
    scripted_api.route(
        tag,
        expensive_tool_call(tag),
        expensive_tool_call(tag),
        default=sa.text("Done within the raised budget."),
    )
    spec = {
        "prompt": f"{tag}: spend it",
        "allowedTools": ["Bash"],
        "maxTurns": 10,
        "maxBudgetUsd": 0.5,
        "onLimitReached": "Pause",
    }
    return tag, spec


def test_pause_at_the_budget_then_a_raise_continues_the_session(
    sessions: Sessions, scripted_api: sa.ScriptedAPI
) -> None:
    tag, spec = spends_past_its_budget(scripted_api)
    sessions.create("thrifty", spec)
    at_limit = sessions.wait("thrifty", lambda s: paused(s) or s.get("phase") == "Failed")
    assert at_limit["phase"] == "Paused", at_limit
    assert at_limit["reason"] == "BudgetExceeded"
    assert condition(at_limit, "Succeeded")["status"] == "Unknown"
    assert "completionTime" not in at_limit
    assert at_limit["totalCostUsd"] >= 0.5
    assert "Paused" in sessions.event_reasons("thrifty")
    wait_for(
        lambda: all(p.status.phase != "Running" for p in sessions.pods("thrifty")),
        timeout=60,
        what="the paused attempt's pod to stop",
    )

    raised = follow_hint(sessions, at_limit)
    assert raised == {"maxBudgetUsd": 1.0}
    status = sessions.wait("thrifty", timeout=120)
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    assert status["interruptedAttempts"] == 1
    assert status["sessionId"] == at_limit["sessionId"]
    assert status["resultPreview"] == "Done within the raised budget."
    assert status["totalCostUsd"] > at_limit["totalCostUsd"]
    assert status["totalCostUsd"] <= 1.0
    assert status["numTurns"] > at_limit["numTurns"]
    assert "Resumed" in sessions.event_reasons("thrifty")
    # The resumed attempt continued the conversation: the first attempt's tool output went on.
    assert f"spent-{tag}" in scripted_api.requests_for(tag)[-1].text_content()


def test_pause_at_max_turns_then_more_turns_continue_the_session(
    sessions: Sessions, scripted_api: sa.ScriptedAPI
) -> None:
    tag = marker()
    scripted_api.route(
        tag,
        sa.bash(f"echo turn-1-{tag}"),
        sa.bash(f"echo turn-2-{tag}"),
        default=sa.text("Done with more turns."),
    )
    spec = {
        "prompt": f"{tag}: take turns",
        "allowedTools": ["Bash"],
        "maxTurns": 2,
        "maxBudgetUsd": 1,
        "onLimitReached": "Pause",
    }
    sessions.create("turner", spec)
    at_limit = sessions.wait("turner", lambda s: paused(s) or s.get("phase") == "Failed")
    assert at_limit["phase"] == "Paused", at_limit
    assert at_limit["reason"] == "MaxTurnsReached"
    assert at_limit["numTurns"] >= 2
    assert len(scripted_api.requests_for(tag)) == 2
    # More budget does not continue it: the turns are what ran out.
    patch_spec(sessions, "turner", {"maxBudgetUsd": 2})
    still = sessions.wait(
        "turner", lambda s: s.get("observedGeneration") == 2, what="the budget raise seen"
    )
    assert still["phase"] == "Paused"
    assert still["attempts"] == 1

    raised = follow_hint(sessions, still)
    assert raised == {"maxTurns": 4}
    status = sessions.wait("turner", timeout=120)
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    assert status["sessionId"] == at_limit["sessionId"]
    assert status["resultPreview"] == "Done with more turns."
    assert status["numTurns"] > at_limit["numTurns"]
    assert status["numTurns"] <= 4
    assert status["totalCostUsd"] > at_limit["totalCostUsd"]
    assert f"turn-2-{tag}" in scripted_api.requests_for(tag)[-1].text_content()
