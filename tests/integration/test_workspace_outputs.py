"""A whole workspace attempt as a pod runs it, without a cluster: the gateway process (holding
the git credentials and the store), the workspace init step (`agentsession-workspace`) cloning
from a real git server (http-backend, basic auth), then `agent-runner` with the real CLI whose
scripted model edits a file with the Edit tool, writes a report and looks for credentials. At
the end the runner uploads the artifact and sends its work to the gateway, which commits and
pushes it: the server has the commit on the branch, the gateway's report lists both.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentsession_contract.workspace.init import git_credential_env
from tests.support import scripted_api as sa
from tests.support.gateway_process import GatewayProcess
from tests.support.git_server import PASSWORD, USERNAME, GitServer, git
from tests.support.runner_harness import run_agent_runner

pytestmark = pytest.mark.cli

WORKSPACE_BIN = str(Path(sys.executable).parent / "agentsession-workspace")
NAMESPACE_UID = "5a5a5a5a-3333-4c4c-8d8d-2e2e2e2e2e2e"
BUGGY = "def parse(text):\n    return text.split(';')\n"


@pytest.fixture
def api() -> Iterator[sa.ScriptedAPI]:
    with sa.ScriptedAPI() as server:
        yield server


@pytest.fixture
def server() -> Iterator[GitServer]:
    with GitServer() as git_server:
        yield git_server


def credentials() -> dict[str, str]:
    return {
        git_credential_env("repo", "username"): USERNAME,
        git_credential_env("repo", "password"): PASSWORD,
    }


def attempt(
    tmp: Path, config: dict[str, Any], api: sa.ScriptedAPI
) -> tuple[dict[str, Any], Any, GatewayProcess]:
    """The init step, then the runner, each beside the attempt's gateway; the gateway's final
    report (its termination message) and the runner's result."""
    git_state = tmp / "git-state"
    git_state.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps(config))
    gateway = GatewayProcess(
        config,
        tmp / "gateway",
        upstream_url=api.base_url,
        env={**credentials(), "AGENTSESSION_GIT_STATE_DIR": str(git_state)},
    )
    with gateway:
        init = subprocess.run(
            [
                WORKSPACE_BIN,
                "--config",
                str(tmp / "config.json"),
                "--report-file",
                str(tmp / "init.json"),
            ],
            env={
                "PATH": os.environ["PATH"],
                "HOME": str(git_state / "home"),
                "AGENTSESSION_GATEWAY_DIR": str(gateway.shared_dir),
                "AGENTSESSION_GIT_STATE_DIR": str(git_state),
                "AGENTSESSION_STATE_DIR": str(tmp / "run" / "state"),
                **credentials(),
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert init.returncode == 0, init.stdout + init.stderr
        result = run_agent_runner(
            config, workdir=tmp / "run", base_url=None, env=gateway.agent_env()
        )
    return gateway.report(), result, gateway


def test_clone_edit_push_and_artifact(
    api: sa.ScriptedAPI, server: GitServer, tmp_path: Path
) -> None:
    (base,) = server.create_repo("parser", [{"parse.py": BUGGY, "README.md": "Parser\n"}])
    workspace = tmp_path / "workspace"
    src = workspace / "src"
    report_text = "Fixed the separator: ',' not ';'.\n"
    api.script(
        sa.tool_use("Read", {"file_path": str(src / "parse.py")}),
        sa.tool_use(
            "Edit",
            {"file_path": str(src / "parse.py"), "old_string": "';'", "new_string": "','"},
        ),
        sa.tool_use("Write", {"file_path": str(workspace / "report.md"), "content": report_text}),
        # The agent looks everywhere it can for the git credentials.
        sa.bash(
            f"env; cat ~/.git-credentials ~/.gitconfig; cat {src}/.git/config; "
            f"grep -rl '{PASSWORD[:12]}' {workspace} /tmp 2>/dev/null; echo SEARCHED"
        ),
        sa.text("Fixed and reported."),
    )
    session_id = str(uuid.uuid4())
    config = {
        "prompt": "Fix the parser.",
        "model": "claude-sonnet-4-5",
        "maxTurns": 10,
        "maxBudgetUsd": 1.0,
        "store": (tmp_path / "store").as_uri(),
        "namespace": "team-a",
        "namespaceUid": NAMESPACE_UID,
        "sessionName": "fix-bug",
        "sessionId": session_id,
        "workspace": str(workspace),
        "allowedTools": ["Read", "Edit", "Write", "Bash"],
        "permissionMode": "acceptEdits",
        "snapshot": {"maxBytes": 1 << 30},
        "sources": [
            {
                "name": "repo",
                "path": "src",
                "kind": "git",
                "git": {"url": server.url("parser"), "ref": "main", "credentials": True},
            },
        ],
        "outputs": {
            "artifacts": [{"name": "report", "path": "report.md"}],
            "git": [
                {
                    "source": "repo",
                    "branch": "agent/fix-bug",
                    "authorName": "Parser Agent",
                    "authorEmail": "agent@example.com",
                    "message": "Fix the separator",
                }
            ],
        },
    }
    report, result, _ = attempt(tmp_path, config, api)
    assert result.exit_code == 0, result.stdout
    searched = api.model_requests()[-1].text_content()
    assert "SEARCHED" in searched
    assert PASSWORD not in searched
    assert PASSWORD not in result.stdout + result.stderr

    outputs = report["outputs"]
    (artifact,) = outputs["artifacts"]
    assert artifact["name"] == "report"
    assert artifact["path"] == "report.md"
    assert artifact["size"] == len(report_text)
    assert artifact["sha256"] == hashlib.sha256(report_text.encode()).hexdigest()
    # Below the namespace's UID, as the operator's run config keys the store.
    stored = tmp_path / "store" / "team-a" / NAMESPACE_UID / artifact["key"]
    assert stored.read_text() == report_text

    (push,) = outputs["git"]
    assert push["pushed"] is True, push
    assert push["branch"] == "agent/fix-bug"
    assert server.ref("parser", "refs/heads/agent/fix-bug") == push["commit"]
    assert server.show("parser", "agent/fix-bug:parse.py") == BUGGY.replace("';'", "','").rstrip()
    assert server.ref("parser", "refs/heads/main") == base
    details = subprocess.run(
        [
            "git",
            "-C",
            str(server.root / "parser.git"),
            "log",
            "-1",
            "--format=%an <%ae>|%P|%B",
            "agent/fix-bug",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert details.startswith(f"Parser Agent <agent@example.com>|{base}|Fix the separator")
    assert f"AgentSession-Id: team-a/{session_id}" in details
    # The push came from the gateway, authenticated; the agent's container never talked to git.
    pushes = [r for r in server.requests if "git-receive-pack" in r.path and r.status == 200]
    assert pushes
    assert {r.user for r in pushes} == {USERNAME}


def test_a_branch_someone_else_pushed_is_not_overwritten(
    api: sa.ScriptedAPI, server: GitServer, tmp_path: Path
) -> None:
    server.create_repo("parser", [{"parse.py": BUGGY}])
    # A human's branch of the same name, not made by this session.
    bare = server.root / "parser.git"
    git("branch", "agent/fix-bug", "main", cwd=bare)
    human_tip = server.ref("parser", "refs/heads/agent/fix-bug")
    workspace = tmp_path / "workspace"
    api.script(
        sa.tool_use("Write", {"file_path": str(workspace / "src" / "new.txt"), "content": "n\n"}),
        sa.text("Done."),
    )
    config = {
        "prompt": "Add a file.",
        "model": "claude-sonnet-4-5",
        "maxTurns": 5,
        "maxBudgetUsd": 1.0,
        "store": (tmp_path / "store").as_uri(),
        "namespace": "team-a",
        "namespaceUid": NAMESPACE_UID,
        "sessionName": "fix-bug",
        "sessionId": str(uuid.uuid4()),
        "workspace": str(workspace),
        "allowedTools": ["Write"],
        "permissionMode": "acceptEdits",
        "snapshot": {"maxBytes": 1 << 30},
        "sources": [
            {
                "name": "repo",
                "path": "src",
                "kind": "git",
                "git": {"url": server.url("parser"), "credentials": True},
            }
        ],
        "outputs": {
            "git": [
                {
                    "source": "repo",
                    "branch": "agent/fix-bug",
                    "authorName": "A",
                    "authorEmail": "a@example.com",
                    "message": "m",
                }
            ]
        },
    }
    report, result, _ = attempt(tmp_path, config, api)
    assert result.exit_code == 0, result.stdout
    (push,) = report["outputs"]["git"]
    assert push["pushed"] is False
    assert "was not pushed by this session" in push["message"]
    assert server.ref("parser", "refs/heads/agent/fix-bug") == human_tip
