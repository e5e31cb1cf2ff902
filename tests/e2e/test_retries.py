"""End to end: a retryable failure gets a new attempt, which resumes the same SDK session."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Sessions, TranscriptLoader, marker, tally
from tests.support import scripted_api as sa
from tests.support.fault_ledger import FaultLedger
from tests.support.node import LocalNode

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]


def conversation(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The user and assistant messages of a stored transcript, in order."""
    return [e for e in entries if e.get("type") in ("user", "assistant")]


def content_text(entry: dict[str, Any]) -> str:
    """A transcript message's content as text (tool inputs and results included)."""
    return str((entry.get("message") or {}).get("content"))


def test_a_429_529_storm_is_retried_and_each_retry_resumes_the_session(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    node: LocalNode,
    transcript: TranscriptLoader,
    fault_ledger: FaultLedger,
) -> None:
    tag = marker()
    prompt = f"{tag}: summarize the report"
    # The CLI's own retries are off in these tests, so each refusal ends an attempt.
    scripted_api.route(
        tag, sa.http_error(429), sa.http_error(529), sa.text("Recovered after the storm.")
    )
    # maxTurns 1: the refused requests must not use up the one turn the last retry needs.
    sessions.create("overloaded", {"prompt": prompt, "maxTurns": 1})
    first = sessions.wait("overloaded", lambda s: bool(s.get("sessionId")), what="a session id")

    status = sessions.wait("overloaded")
    assert status["phase"] == "Succeeded", status
    assert status["reason"] == "Completed"
    assert status["attempts"] == 3
    assert status["sessionId"] == first["sessionId"]
    assert status["resultPreview"] == "Recovered after the storm."
    assert "apiErrorStatus" not in status  # the success replaced the earlier attempts' error
    assert status["numTurns"] == 1
    # The API saw the prompt once, then each retry carried the earlier attempts' prompts (read
    # back from the store) in front of its own: the same conversation continued.
    requests = scripted_api.requests_for(tag)
    assert [r.text_content().count(prompt) for r in requests] == [1, 2, 3]
    assert "resuming_earlier_attempt" in node.logs(sessions.namespace, "overloaded-3")
    assert "resuming_earlier_attempt" not in node.logs(sessions.namespace, "overloaded-1")
    reasons = sessions.event_reasons("overloaded")
    assert reasons.count("AttemptFailed") == 2
    assert "Succeeded" in reasons
    failed = sorted(
        (e for e in sessions.events("overloaded") if e.reason == "AttemptFailed"),
        key=lambda e: e.metadata.creation_timestamp,
    )
    assert "429" in failed[0].message
    assert "529" in failed[1].message
    # One transcript holds every attempt's prompt and the final answer.
    messages = conversation(transcript(sessions.namespace, status["sessionId"]))
    assert [content_text(m) for m in messages if m["type"] == "user"] == [prompt] * 3
    assert "Recovered after the storm." in content_text(messages[-1])
    tally(
        fault_ledger,
        transcript,
        sessions,
        sessions.uid("overloaded"),
        status["sessionId"],
        fault="Messages API 429 then 529",
    )


def test_runner_killed_mid_turn_is_retried_and_the_transcript_stays_whole(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, transcript: TranscriptLoader
) -> None:
    tag = marker()
    prompt = f"{tag}: do the work"
    # The Bash tool's parent is the claude CLI: kill it once it has flushed the tool-use turn
    # (the command itself carries the mark, so the mark is in the transcript once it is written).
    crash = (
        "for i in $(seq 100); do "
        f'grep -qs CRASH-{tag} "$CLAUDE_CONFIG_DIR"/projects/*/*.jsonl && break; sleep 0.1; '
        f"done; kill -9 $PPID # CRASH-{tag}"
    )
    scripted_api.route(tag, sa.bash(crash), sa.text("Finished after the crash."))
    sessions.create("crashy", {"prompt": prompt, "allowedTools": ["Bash"]})
    status = sessions.wait("crashy")
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    assert status["resultPreview"] == "Finished after the crash."
    failed = next(e for e in sessions.events("crashy") if e.reason == "AttemptFailed")
    assert "ended before a result" in failed.message

    entries = transcript(sessions.namespace, status["sessionId"])
    uuids = [e["uuid"] for e in entries if e.get("uuid")]
    assert len(uuids) == len(set(uuids)), "a transcript line was stored twice"
    # Every line links to one stored before it: no turn is missing from the chain.
    seen: set[str] = set()
    for entry in entries:
        parent = entry.get("parentUuid")
        assert parent is None or parent in seen, f"{entry.get('uuid')}: parent {parent} missing"
        if entry.get("uuid"):
            seen.add(entry["uuid"])
    messages = conversation(entries)
    texts = [content_text(m) for m in messages]
    # Attempt 1: prompt, the tool call that killed the CLI, its interrupted result; attempt 2
    # repeats only the interrupted prompt and answers it.
    assert texts.count(prompt) == 2
    assert sum(f"CRASH-{tag}" in t for t in texts if "tool_use" in t) == 1
    assert sum("Tool call interrupted" in t for t in texts) == 1
    assert sum("Finished after the crash." in t for t in texts) == 1
    assert messages[0]["type"] == "user"
    assert texts[0] == prompt
    assert "Finished after the crash." in texts[-1]
    # The retry sent the whole conversation to the API, the interrupted tool call included.
    retry_request = scripted_api.requests_for(tag)[-1]
    assert f"CRASH-{tag}" in str(retry_request.messages)
