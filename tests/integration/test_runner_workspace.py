"""The runner keeps the workspace: the real `claude` CLI edits files (Write and Edit tools, driven
by the scripted API), the runner snapshots the workspace at the end of the attempt and on
SIGTERM, and the next attempt (a new process in a new, empty workspace directory, as a new pod
would be) or a follow-up session that resumes this one finds the files before the agent starts.
A file:// store, as in the other runner tests; the S3 and gateway paths are in
test_workspace_snapshot.py and the e2e tests."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import scripted_api as sa
from tests.support.runner_harness import base_config, run_agent_runner

pytestmark = pytest.mark.cli

SNAPSHOT = {"maxBytes": 1 << 30, "exclude": ["*.tmp"]}


@pytest.fixture
def api() -> Iterator[sa.ScriptedAPI]:
    with sa.ScriptedAPI() as server:
        yield server


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return (tmp_path / "store").as_uri()


def config(store_url: str, workspace: Path, **overrides: Any) -> dict[str, Any]:
    return base_config(
        store_url,
        workspace,
        allowedTools=["Write", "Edit", "Bash", "Read"],
        permissionMode="acceptEdits",
        snapshot=SNAPSHOT,
        **overrides,
    )


def test_the_next_attempt_finds_what_the_first_one_edited(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    session = str(uuid.uuid4())
    first_ws = tmp_path / "ws-1"
    api.script(
        sa.tool_use("Write", {"file_path": str(first_ws / "notes.md"), "content": "alpha\n"}),
        sa.tool_use("Write", {"file_path": str(first_ws / "scratch.tmp"), "content": "x"}),
        sa.text("Wrote the notes."),
    )
    first = run_agent_runner(
        config(store_url, first_ws, sessionId=session),
        workdir=tmp_path / "attempt-1",
        base_url=api.base_url,
    )
    assert first.exit_code == 0, first.stdout
    assert first.summary is not None
    workspace = first.summary["workspace"]
    assert workspace["taken"] is True
    assert workspace["files"] == 1  # scratch.tmp is excluded
    assert any(r.get("phase") == "workspace_snapshot" for r in first.logs_of("phase"))

    # A retry (same config, a fresh workspace directory): the runner restores before the CLI
    # starts, and the Edit tool works on the restored file.
    second_ws = tmp_path / "ws-2"
    second_ws.mkdir()
    api.script(
        # The Edit tool edits only what was Read in the same CLI process.
        sa.tool_use("Read", {"file_path": str(second_ws / "notes.md")}),
        sa.tool_use(
            "Edit",
            {"file_path": str(second_ws / "notes.md"), "old_string": "alpha", "new_string": "beta"},
        ),
        sa.text("Edited."),
    )
    second = run_agent_runner(
        config(store_url, second_ws, sessionId=session),
        workdir=tmp_path / "attempt-2",
        base_url=api.base_url,
    )
    assert second.exit_code == 0, second.stdout
    assert any(r.get("phase") == "workspace_restore" for r in second.logs_of("phase"))
    assert (second_ws / "notes.md").read_text() == "beta\n"
    assert not (second_ws / "scratch.tmp").exists()
    assert second.summary is not None
    assert second.summary["workspace"]["uploadedBytes"] < 2000  # one small pack and a manifest


def test_sigterm_snapshots_before_the_runner_exits(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    session = str(uuid.uuid4())
    first_ws = tmp_path / "ws-1"
    marker = "sleep 120 # WORKSPACE-SIGTERM"
    api.script(
        sa.tool_use("Write", {"file_path": str(first_ws / "draft.txt"), "content": "draft 1\n"}),
        sa.bash(marker),
    )
    runner: list[subprocess.Popen[str]] = []

    def terminate_on_the_sleep(record: dict[str, Any]) -> None:
        if record.get("event") == "turn" and record.get("tools") == ["Bash"]:
            runner[0].send_signal(signal.SIGTERM)

    first = run_agent_runner(
        config(store_url, first_ws, sessionId=session),
        workdir=tmp_path / "attempt-1",
        base_url=api.base_url,
        on_start=runner.append,
        on_log=terminate_on_the_sleep,
    )
    assert first.exit_code == 4, first.stdout
    assert first.summary is not None
    assert first.summary["workspace"]["taken"] is True

    second_ws = tmp_path / "ws-2"
    api.script(sa.bash(f"cat {second_ws / 'draft.txt'}"), sa.text("Read it."))
    second = run_agent_runner(
        config(store_url, second_ws, sessionId=session),
        workdir=tmp_path / "attempt-2",
        base_url=api.base_url,
    )
    assert second.exit_code == 0, second.stdout
    assert "draft 1" in api.model_requests()[-1].text_content()


def test_a_follow_up_session_starts_from_the_workspace_it_resumes(
    api: sa.ScriptedAPI, store_url: str, tmp_path: Path
) -> None:
    parent = str(uuid.uuid4())
    parent_ws = tmp_path / "parent"
    api.script(
        sa.tool_use("Write", {"file_path": str(parent_ws / "plan.md"), "content": "step 1\n"}),
        sa.text("Planned."),
    )
    first = run_agent_runner(
        config(store_url, parent_ws, sessionId=parent),
        workdir=tmp_path / "parent-run",
        base_url=api.base_url,
    )
    assert first.exit_code == 0, first.stdout

    child = str(uuid.uuid4())
    child_ws = tmp_path / "child"
    api.script(sa.text("Continuing."))
    second = run_agent_runner(
        config(
            store_url,
            child_ws,
            sessionId=child,
            resumeSessionId=parent,
            forkSession=True,
        ),
        workdir=tmp_path / "child-run",
        base_url=api.base_url,
    )
    assert second.exit_code == 0, second.stdout
    assert (child_ws / "plan.md").read_text() == "step 1\n"
    # Its own snapshot: the child's area holds the files now, the parent's is untouched.
    assert second.summary is not None
    assert second.summary["workspace"]["files"] == 1
    assert second.summary["workspace"]["uploadedBytes"] > 0
