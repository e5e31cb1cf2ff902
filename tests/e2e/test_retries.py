"""End to end: attempts that fail for infrastructure reasons are retried and resume the session."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.e2e.conftest import Sessions, TranscriptLoader, marker
from tests.support import scripted_api as sa

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]


def test_overloaded_api_is_retried_and_the_retry_resumes_the_session(
    sessions: Sessions, scripted_api: sa.ScriptedAPI
) -> None:
    tag = marker()
    scripted_api.route(tag, sa.http_error(529), sa.text("Recovered after the overload."))
    sessions.create("overloaded", {"prompt": f"{tag}: summarize the report"})
    status = sessions.wait("overloaded")
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    assert status["resultPreview"] == "Recovered after the overload."
    requests = scripted_api.requests_for(tag)
    print(json.dumps([r.messages for r in requests], indent=1)[:6000])
    assert "AttemptFailed" in sessions.event_reasons("overloaded")


def test_runner_killed_mid_turn_is_retried_and_the_transcript_stays_whole(
    sessions: Sessions, scripted_api: sa.ScriptedAPI, transcript: TranscriptLoader
) -> None:
    tag = marker()
    # The Bash tool's parent is the claude CLI: kill it once it has flushed the tool-use turn.
    crash = (
        "for i in $(seq 100); do "
        f'grep -qs CRASH-{tag} "$CLAUDE_CONFIG_DIR"/projects/*/*.jsonl && break; sleep 0.1; '
        f"done; kill -9 $PPID # CRASH-{tag}"
    )
    scripted_api.route(tag, sa.bash(crash), sa.text("Finished after the crash."))
    sessions.create("crashy", {"prompt": f"{tag}: do the work", "allowedTools": ["Bash"]})
    status = sessions.wait("crashy")
    assert status["phase"] == "Succeeded", status
    entries = transcript(sessions.namespace, status["sessionId"])
    print(json.dumps(entries, indent=1)[:20000])
    print(Counter(e.get("type") for e in entries))
