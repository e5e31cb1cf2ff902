"""The runner end to end: the real `claude` CLI from the SDK wheel against the scripted API.

Each test runs `agent-runner` as a subprocess with a file:// store (the embedded default) unless it
is about S3 behaviour; the S3 tests talk to moto's server over HTTP, through a toggleable proxy.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentsession_contract.store import open_store
from tests.support import scripted_api as sa
from tests.support.runner_harness import (
    TEST_API_KEY,
    base_config,
    mirrored,
    run_agent_runner,
    tapped_transcript_lines,
)

pytestmark = pytest.mark.cli


@pytest.fixture
def api() -> Iterator[sa.ScriptedAPI]:
    with sa.ScriptedAPI() as server:
        yield server


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return (tmp_path / "store").as_uri()


def load_transcript(store_url: str, namespace: str, session_id: str) -> list[dict[str, Any]]:
    store = open_store(store_url, namespace)
    entries = asyncio.run(store.load({"project_key": "sessions", "session_id": session_id}))
    return [dict(e) for e in entries or []]


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert TEST_API_KEY not in text


def test_plain_answer_succeeds_and_persists(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    api.script(sa.text("Hello from the scripted model."))
    result = run_agent_runner(
        base_config(store_url, tmp_path / "ws"), workdir=tmp_path / "run", base_url=api.base_url
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    summary = result.summary
    assert summary is not None
    assert summary["reason"] == "Completed"
    assert summary["subtype"] == "success"
    assert summary["isError"] is False
    assert summary["numTurns"] == 1
    assert summary["totalCostUsd"] > 0
    assert summary["resultPreview"] == "Hello from the scripted model."
    assert summary["transcriptRef"].startswith("file://")
    assert summary["resultRef"].endswith("result.json")
    # The full result document is in the store, and says the same.
    document = json.loads(Path(summary["resultRef"].removeprefix("file://")).read_text())
    assert document["result"]["result"] == "Hello from the scripted model."
    # Every line the CLI wrote locally is in the store, in one compacted object.
    local = tapped_transcript_lines(result.state_dir)
    assert len(local) == 1
    (lines,) = local.values()
    stored = load_transcript(store_url, "team-a", summary["sessionId"])
    assert stored == mirrored(lines)
    # The session ran with the isolation settings and logged one line per message type.
    assert {"session_started", "turn", "result", "run_finished"} <= set(result.events)
    # ... and one `phase` line with the duration of each phase of the run.
    phases = {line["phase"]: line["ms"] for line in result.logs_of("phase")}
    assert set(phases) == {
        "gateway_wait",
        "preflight",
        "cli_start",
        "query",
        "cli_exit",
        "reconcile",
        "compact",
        "result_write",
    }
    assert all(isinstance(ms, int | float) and ms >= 0 for ms in phases.values())
    assert_no_secret(result.stdout, result.stderr, json.dumps(summary), json.dumps(stored))


def test_tool_loop_logs_each_turn_and_stops_at_max_turns(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    api.default = sa.bash("echo looping >> loop.log")
    config = base_config(store_url, tmp_path / "ws", maxTurns=3, allowedTools=["Bash"])
    result = run_agent_runner(config, workdir=tmp_path / "run", base_url=api.base_url)
    assert result.exit_code == 0, result.stdout
    assert result.summary is not None
    assert result.summary["reason"] == "MaxTurnsReached"
    assert result.summary["subtype"] == "error_max_turns"
    assert result.summary["isError"] is True
    assert result.summary["terminalReason"] == "max_turns"
    turns = result.logs_of("turn")
    assert [t["turn"] for t in turns] == [1, 2, 3]
    assert all(t["tools"] == ["Bash"] for t in turns)
    # The tool really ran three times, in the session's workspace.
    assert (tmp_path / "ws" / "loop.log").read_text().splitlines() == ["looping"] * 3
    assert len(api.model_requests()) == 3


def test_budget_exceeded(api: sa.ScriptedAPI, store_url: str, tmp_path: Path) -> None:
    api.default = sa.Reply(
        blocks=sa.bash("echo spend").blocks,
        stop_reason="tool_use",
        input_tokens=400_000,
        output_tokens=10_000,
    )
    config = base_config(
        store_url, tmp_path / "ws", maxBudgetUsd=0.5, maxTurns=10, allowedTools=["Bash"]
    )
    result = run_agent_runner(config, workdir=tmp_path / "run", base_url=api.base_url)
    assert result.exit_code == 0, result.stdout
    assert result.summary is not None
    assert result.summary["reason"] == "BudgetExceeded"
    assert result.summary["subtype"] == "error_max_budget_usd"
    assert result.summary["totalCostUsd"] > 0.5


@pytest.mark.parametrize("status", [400, 429, 500, 529])
def test_api_error_is_reported_with_its_status(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path, status: int
) -> None:
    api.default = sa.http_error(status)
    result = run_agent_runner(
        base_config(store_url, tmp_path / "ws"), workdir=tmp_path / "run", base_url=api.base_url
    )
    assert result.exit_code == 0, result.stdout
    assert result.summary is not None
    assert result.summary["reason"] == "APIError"
    assert result.summary["apiErrorStatus"] == status
    assert result.summary["isError"] is True
    assert result.summary["transcriptRef"]


def test_resume_in_a_new_process_and_workspace_carries_earlier_turns(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    api.script(sa.text("Noted: the code word is PINEAPPLE."))
    first = run_agent_runner(
        base_config(store_url, tmp_path / "ws-one", prompt="Remember the code word PINEAPPLE."),
        workdir=tmp_path / "run1",
        base_url=api.base_url,
    )
    assert first.exit_code == 0, first.stdout
    assert first.summary is not None
    session_id = first.summary["sessionId"]

    api.script(sa.text("The code word was PINEAPPLE."))
    # A different workspace path and a fresh config dir: only the store connects the two runs.
    second = run_agent_runner(
        base_config(
            store_url,
            tmp_path / "elsewhere" / "ws-two",
            prompt="What was the code word?",
            resumeSessionId=session_id,
        ),
        workdir=tmp_path / "run2",
        base_url=api.base_url,
    )
    assert second.exit_code == 0, second.stdout
    assert second.summary is not None
    assert second.summary["sessionId"] == session_id
    last_request = api.model_requests()[-1].text_content()
    assert "Remember the code word PINEAPPLE." in last_request
    assert "Noted: the code word is PINEAPPLE." in last_request
    assert "What was the code word?" in last_request
    stored = load_transcript(store_url, "team-a", session_id)
    assert any("The code word was PINEAPPLE." in json.dumps(e) for e in stored)


def test_fork_leaves_the_original_session_untouched(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    api.script(sa.text("Base answer."))
    first = run_agent_runner(
        base_config(store_url, tmp_path / "ws"), workdir=tmp_path / "run1", base_url=api.base_url
    )
    assert first.summary is not None
    original_id = first.summary["sessionId"]
    original = load_transcript(store_url, "team-a", original_id)

    api.script(sa.text("Forked answer."))
    fork = run_agent_runner(
        base_config(
            store_url,
            tmp_path / "ws",
            prompt="Try another way.",
            resumeSessionId=original_id,
            forkSession=True,
        ),
        workdir=tmp_path / "run2",
        base_url=api.base_url,
    )
    assert fork.exit_code == 0, fork.stdout
    assert fork.summary is not None
    fork_id = fork.summary["sessionId"]
    assert fork_id != original_id
    assert load_transcript(store_url, "team-a", original_id) == original
    forked = json.dumps(load_transcript(store_url, "team-a", fork_id))
    assert "Forked answer." in forked
    assert "Base answer." in forked


def test_structured_output(api: sa.ScriptedAPI, store_url: str, tmp_path: Path) -> None:
    api.script(sa.tool_use("StructuredOutput", {"answer": 42}), sa.text("Done."))
    config = base_config(
        store_url,
        tmp_path / "ws",
        outputFormat={
            "type": "json_schema",
            "schema": {
                "type": "object",
                "properties": {"answer": {"type": "integer"}},
                "required": ["answer"],
            },
        },
    )
    result = run_agent_runner(config, workdir=tmp_path / "run", base_url=api.base_url)
    assert result.exit_code == 0, result.stdout
    assert result.summary is not None
    assert result.summary["structuredOutput"] == {"answer": 42}
    assert result.summary["reason"] == "Completed"


def test_deadline_stops_a_slow_session_and_keeps_its_transcript(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    api.script(sa.bash("echo first"))
    api.default = sa.slow_text(" ".join(["slow"] * 400), chunk_delay_s=0.05)
    config = base_config(store_url, tmp_path / "ws", timeoutSeconds=8, allowedTools=["Bash"])
    result = run_agent_runner(config, workdir=tmp_path / "run", base_url=api.base_url)
    assert result.exit_code == 0, result.stdout
    assert result.summary is not None
    assert result.summary["reason"] == "DeadlineExceeded"
    session_id = result.summary["sessionId"]
    stored = load_transcript(store_url, "team-a", session_id)
    local_lines = next(iter(tapped_transcript_lines(result.state_dir).values()))
    assert all(e in stored for e in mirrored(local_lines))
    assert any("first" in json.dumps(e) for e in stored)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (None, "no run config"),
        ("{not json", "not valid JSON"),
        (
            {
                "maxTurns": 3,
                "maxBudgetUsd": 1,
                "store": "file:///tmp/x",
                "namespace": "a",
                "sessionName": "s",
            },
            "prompt",
        ),
        (
            {
                "prompt": "x",
                "maxTurns": 0,
                "maxBudgetUsd": 1,
                "store": "file:///tmp/x",
                "namespace": "a",
                "sessionName": "s",
            },
            "maxTurns",
        ),
        (
            {
                "prompt": "x",
                "maxTurns": 1,
                "maxBudgetUsd": 0,
                "store": "file:///tmp/x",
                "namespace": "a",
                "sessionName": "s",
            },
            "maxBudgetUsd",
        ),
        (
            {
                "prompt": "x",
                "maxTurns": 1,
                "maxBudgetUsd": 1,
                "store": "file:///tmp/x",
                "namespace": "Bad_NS",
                "sessionName": "s",
            },
            "namespace",
        ),
        (
            {
                "prompt": "x",
                "maxTurns": 1,
                "maxBudgetUsd": 1,
                "store": "ftp://bucket",
                "namespace": "a",
                "sessionName": "s",
            },
            "ftp://bucket",
        ),
        (
            {
                "prompt": "x",
                "maxTurns": 1,
                "maxBudgetUsd": 1,
                "store": "file:///tmp/x",
                "namespace": "a",
                "sessionName": "s",
                "apiKey": "sk",
            },
            "apiKey",
        ),
    ],
    ids=[
        "missing",
        "not-json",
        "no-prompt",
        "zero-turns",
        "zero-budget",
        "bad-namespace",
        "bad-store-url",
        "unknown-field",
    ],
)
def test_bad_config_exits_3_with_the_field_named(
    tmp_path: Path, config: dict[str, Any] | str | None, expected: str
) -> None:
    result = run_agent_runner(config, workdir=tmp_path / "run", base_url=None)
    assert result.exit_code == 3, result.stdout
    assert result.summary is not None
    assert result.summary["reason"] == "InvalidSpec"
    assert expected in result.summary["message"]
    assert expected in result.logs_of("invalid_config")[0]["message"]


def test_mcp_headers_from_secrets_without_a_gateway_is_invalid_not_retried(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    server = {
        "type": "http",
        "url": "https://mcp.example/mcp",
        "headersFrom": {"Authorization": {"name": "mcp-token", "key": "token"}},
    }
    config = base_config(store_url, tmp_path / "ws", mcpServers={"tracker": server})
    result = run_agent_runner(config, workdir=tmp_path / "run", base_url=api.base_url)
    assert result.exit_code == 3, result.stdout
    assert result.summary is not None
    assert result.summary["reason"] == "InvalidSpec"
    assert result.summary["message"] == "mcpServers.tracker.headersFrom needs the session gateway"
    assert api.model_requests() == []


def test_config_from_environment_variable(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    api.script(sa.text("From env."))
    result = run_agent_runner(
        base_config(store_url, tmp_path / "ws"),
        workdir=tmp_path / "run",
        base_url=api.base_url,
        config_via_env=True,
    )
    assert result.exit_code == 0, result.stdout
    assert result.summary is not None
    assert result.summary["resultPreview"] == "From env."


def test_resuming_an_unknown_session_is_invalid(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    config = base_config(
        store_url, tmp_path / "ws", resumeSessionId="5b1e0d52-3c36-4f55-9a39-0e0d2f6b1c11"
    )
    result = run_agent_runner(config, workdir=tmp_path / "run", base_url=api.base_url)
    assert result.exit_code == 3
    assert result.summary is not None
    assert "not found in the store for namespace team-a" in result.summary["message"]
    assert api.model_requests() == []


def test_a_session_from_another_namespace_cannot_be_resumed(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    api.script(sa.text("Secret plans of team A."))
    first = run_agent_runner(
        base_config(store_url, tmp_path / "ws"), workdir=tmp_path / "run1", base_url=api.base_url
    )
    assert first.summary is not None
    stolen = base_config(
        store_url, tmp_path / "ws", namespace="team-b", resumeSessionId=first.summary["sessionId"]
    )
    result = run_agent_runner(stolen, workdir=tmp_path / "run2", base_url=api.base_url)
    assert result.exit_code == 3
    assert result.summary is not None
    assert "namespace team-b" in result.summary["message"]
    assert len(api.model_requests()) == 1


def test_cli_killed_mid_turn_is_retryable_and_the_transcript_survives(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    # The Bash tool's parent process is the claude CLI: this kills it in the middle of a turn,
    # once the CLI has flushed the turn that asked for it (it writes its transcript lazily).
    api.script(
        sa.bash(
            "for i in $(seq 100); do "
            'grep -qs CRASH-MARK "$CLAUDE_CONFIG_DIR"/projects/*/*.jsonl && break; sleep 0.1; '
            "done; kill -9 $PPID"
        )
    )
    config = base_config(store_url, tmp_path / "ws", allowedTools=["Bash"], prompt="Crash please.")
    result = run_agent_runner(config, workdir=tmp_path / "run", base_url=api.base_url)
    assert result.exit_code == 4, result.stdout
    assert result.summary is not None
    assert result.summary["reason"] == "ExecutionError"
    assert "ended before a result" in result.summary["message"]
    session_id = result.summary["sessionId"]
    local_lines = next(iter(tapped_transcript_lines(result.state_dir).values()))
    stored = load_transcript(store_url, "team-a", session_id)
    assert stored, "the interrupted session's transcript must be in the store"
    assert all(e in stored for e in mirrored(local_lines))
    assert "Crash please." in json.dumps(stored)

    # The retry the operator would make: resume the same session in a fresh process.
    api.script(sa.text("Recovered."))
    retry = run_agent_runner(
        {**config, "prompt": "Continue.", "resumeSessionId": session_id},
        workdir=tmp_path / "retry",
        base_url=api.base_url,
    )
    assert retry.exit_code == 0, retry.stdout
    assert retry.summary is not None
    assert retry.summary["sessionId"] == session_id
    assert "Crash please." in api.model_requests()[-1].text_content()


SESSION_ID = "3f0c9a52-8d1e-4b7a-9c55-2d6f1e0b7a11"


def test_preassigned_session_id_and_a_retry_with_the_same_config_resumes(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    # The operator gives every attempt the same config; only the store tells them apart.
    config = base_config(store_url, tmp_path / "ws", sessionId=SESSION_ID, prompt="Count to two.")
    api.script(sa.bash("exit 0"))
    api.default = sa.http_error(529)
    first = run_agent_runner(config, workdir=tmp_path / "attempt1", base_url=api.base_url)
    assert first.summary is not None
    assert first.summary["sessionId"] == SESSION_ID
    assert first.summary["apiErrorStatus"] == 529

    api.default = sa.text("One, two.")
    second = run_agent_runner(config, workdir=tmp_path / "attempt2", base_url=api.base_url)
    assert second.exit_code == 0, second.stdout
    assert second.summary is not None
    assert second.summary["sessionId"] == SESSION_ID
    assert second.summary["reason"] == "Completed"
    assert second.logs_of("resuming_earlier_attempt")
    # The retry's request carries the first attempt's turns (the tool call it made).
    retry_request = api.model_requests()[-1]
    assert any(
        block.get("type") == "tool_use"
        for message in retry_request.messages
        if isinstance(message.get("content"), list)
        for block in message["content"]
    )


def test_fork_into_a_preassigned_session_id(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    api.script(sa.text("Original."))
    first = run_agent_runner(
        base_config(store_url, tmp_path / "ws"), workdir=tmp_path / "run1", base_url=api.base_url
    )
    assert first.summary is not None
    api.script(sa.text("Forked."))
    fork = run_agent_runner(
        base_config(
            store_url,
            tmp_path / "ws",
            resumeSessionId=first.summary["sessionId"],
            forkSession=True,
            sessionId=SESSION_ID,
        ),
        workdir=tmp_path / "run2",
        base_url=api.base_url,
    )
    assert fork.exit_code == 0, fork.stdout
    assert fork.summary is not None
    assert fork.summary["sessionId"] == SESSION_ID
    assert "Original." in json.dumps(load_transcript(store_url, "team-a", SESSION_ID))


def test_sigterm_mid_turn_saves_the_turn_and_the_next_attempt_resumes_it(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    # What a pod deletion, eviction or drain does: SIGTERM to the runner while a tool runs,
    # at the moment the runner has seen the turn (before the CLI's lazy transcript write).
    tool_command = "sleep 120 # SIGTERM-TEST"
    api.script(sa.bash(tool_command))
    config = base_config(
        store_url, tmp_path / "ws", sessionId=SESSION_ID, allowedTools=["Bash"], prompt="Wait."
    )
    runner: list[subprocess.Popen[str]] = []
    signalled_at: list[float] = []

    def terminate_on_the_tool_turn(record: dict[str, Any]) -> None:
        if record.get("event") == "turn" and record.get("tools") == ["Bash"] and not signalled_at:
            signalled_at.append(time.monotonic())
            runner[0].send_signal(signal.SIGTERM)

    first = run_agent_runner(
        config,
        workdir=tmp_path / "attempt1",
        base_url=api.base_url,
        on_start=runner.append,
        on_log=terminate_on_the_tool_turn,
    )
    stopped_in = time.monotonic() - signalled_at[0]
    assert first.exit_code == 4, first.stdout
    assert first.summary is not None
    assert first.summary["reason"] == "ExecutionError"
    assert "stopped by SIGTERM" in first.summary["message"]
    assert first.logs_of("termination_requested")
    # Well inside the default 30 s terminationGracePeriodSeconds, so the kubelet never SIGKILLs.
    assert stopped_in < 20, f"the runner took {stopped_in:.1f} s to stop"
    stored = json.dumps(load_transcript(store_url, "team-a", SESSION_ID))
    assert tool_command in stored, "the turn that asked for the tool must be in the store"

    api.script(sa.text("Resumed after the stop."))
    second = run_agent_runner(config, workdir=tmp_path / "attempt2", base_url=api.base_url)
    assert second.exit_code == 0, second.stdout
    assert second.logs_of("resuming_earlier_attempt")
    assert tool_command in json.dumps(api.model_requests()[-1].messages)
