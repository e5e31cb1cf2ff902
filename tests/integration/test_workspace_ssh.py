"""git sources over ssh: the workspace init step and the gateway as processes, the way their
containers run them, against a real OpenSSH `sshd` on loopback (a host key made for this run,
one authorized client key, git-shell only; tests/support/ssh_server.py).

Covers: a clone at a branch and at an older commit with the Secret's `ssh-privatekey` and
`known_hosts` (resolved commits reported, the key never in the workspace, the report or the
logs, its private directory gone afterwards); a wrong key and an unknown host key, both final
(exit 3) naming the source and ssh's error; a Secret without `known_hosts` refused before any
connection, naming the Secret and the key; and a whole attempt with the real CLI whose scripted
model edits a file and hunts for the key, after which the gateway pushes the branch over ssh.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentsession_contract.workspace.init import git_credential_env, pristine_repo
from tests.support import scripted_api as sa
from tests.support.gateway_process import GatewayProcess
from tests.support.runner_harness import run_agent_runner
from tests.support.ssh_server import SshGitServer, fingerprint, keygen

WORKSPACE_BIN = str(Path(sys.executable).parent / "agentsession-workspace")
NAMESPACE_UID = "5a5a5a5a-3333-4c4c-8d8d-2e2e2e2e2e2e"
SECRET = "git-ssh"
BUGGY = "def parse(text):\n    return text.split(';')\n"


@pytest.fixture
def server() -> Iterator[SshGitServer]:
    with SshGitServer() as ssh_server:
        yield ssh_server


def ssh_credentials(source: str, key: str, known_hosts: str | None) -> dict[str, str]:
    """The init step's (and gateway's) environment from the Secret, as the pod gets it."""
    env = {git_credential_env(source, "ssh-privatekey"): key}
    if known_hosts is not None:
        env[git_credential_env(source, "known_hosts")] = known_hosts
    return env


def key_marker(private_key: str) -> str:
    """Private key bytes from the key's body (past the header and public part every ed25519 key
    file shares): what a leak of this key would contain."""
    return private_key.splitlines()[4][6:]


def git_source(server: SshGitServer, name: str = "repo", **git: Any) -> dict[str, Any]:
    return {
        "name": name,
        "path": name,
        "kind": "git",
        "git": {
            "url": server.url("parser"),
            "credentials": True,
            "credentialsSecret": SECRET,
            **git,
        },
    }


def run_config(tmp: Path, sources: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "prompt": "p",
        "model": "claude-sonnet-4-5",
        "maxTurns": 10,
        "maxBudgetUsd": 1.0,
        "store": (tmp / "store").as_uri(),
        "namespace": "team-a",
        "namespaceUid": NAMESPACE_UID,
        "sessionName": "fix-bug",
        "sessionId": str(uuid.uuid4()),
        "workspace": str(tmp / "workspace"),
        "snapshot": {"maxBytes": 1 << 30},
        "sources": sources,
        **extra,
    }


PUSH = {
    "git": [
        {
            "source": "repo",
            "branch": "agent/fix-bug",
            "authorName": "Parser Agent",
            "authorEmail": "agent@example.com",
            "message": "Fix the separator",
        }
    ]
}


def run_init(
    tmp: Path, config: dict[str, Any], gateway: GatewayProcess, env: dict[str, str]
) -> tuple[int, dict[str, Any], str]:
    (tmp / "config.json").write_text(json.dumps(config))
    git_state = tmp / "git-state"
    result = subprocess.run(
        [WORKSPACE_BIN, "--config", str(tmp / "config.json"), "--report-file", str(tmp / "r")],
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(git_state / "home"),
            "AGENTSESSION_GATEWAY_DIR": str(gateway.shared_dir),
            "AGENTSESSION_GIT_STATE_DIR": str(git_state),
            "AGENTSESSION_STATE_DIR": str(tmp / "run" / "state"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = json.loads((tmp / "r").read_text()) if (tmp / "r").exists() else {}
    return result.returncode, report, result.stdout + result.stderr


def init_only(
    tmp: Path, config: dict[str, Any], env: dict[str, str]
) -> tuple[int, dict[str, Any], str]:
    (tmp / "git-state").mkdir(parents=True, exist_ok=True)
    with GatewayProcess(config, tmp / "gateway", upstream_url="http://127.0.0.1:9") as gateway:
        return run_init(tmp, config, gateway, env)


def test_a_clone_over_ssh_at_a_branch_and_at_an_older_commit(
    server: SshGitServer, tmp_path: Path
) -> None:
    first, second = server.create_repo(
        "parser", [{"parse.py": "v1\n"}, {"parse.py": "v2\n", "README.md": "r\n"}]
    )
    config = run_config(
        tmp_path,
        [git_source(server, ref="main"), git_source(server, name="old", ref=first)],
        outputs=PUSH,
    )
    env = {
        **ssh_credentials("repo", server.client_key, server.known_hosts),
        **ssh_credentials("old", server.client_key, server.known_hosts),
    }
    code, report, logs = init_only(tmp_path, config, env)
    assert code == 0, logs
    by_name = {s["name"]: s for s in report["sources"]}
    assert by_name["repo"] == {
        "name": "repo",
        "path": "repo",
        "result": "Fetched",
        "commit": second,
    }
    assert by_name["old"]["commit"] == first
    workspace = tmp_path / "workspace"
    assert (workspace / "repo" / "parse.py").read_text() == "v2\n"
    assert (workspace / "old" / "parse.py").read_text() == "v1\n"
    head = subprocess.run(
        ["git", "-C", str(workspace / "repo"), "rev-parse", "--abbrev-ref", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert head == "main"
    # The pushed source's pristine base came over ssh too.
    assert Path(pristine_repo("repo", str(tmp_path / "git-state"))).is_dir()
    # The key is nowhere the agent could find it, and its private directory is gone.
    marker = key_marker(server.client_key)
    every_byte = b"".join(p.read_bytes() for p in workspace.rglob("*") if p.is_file())
    assert marker.encode() not in every_byte
    assert marker not in logs
    assert marker not in json.dumps(report)
    assert not list((tmp_path / "git-state").glob(".ssh-*"))
    # Every connection authenticated with the Secret's key.
    accepted = server.accepted_keys()
    assert accepted
    assert set(accepted) == {fingerprint(server.client_public_key)}


def test_a_wrong_key_fails_for_good(server: SshGitServer, tmp_path: Path) -> None:
    server.create_repo("parser", [{"a": "1"}])
    keygen(tmp_path / "other_ed25519", "someone-else")
    other = (tmp_path / "other_ed25519").read_text()
    config = run_config(tmp_path, [git_source(server)])
    code, report, logs = init_only(
        tmp_path, config, ssh_credentials("repo", other, server.known_hosts)
    )
    assert code == 3, logs
    assert report["retryable"] is False
    (failed,) = report["sources"]
    assert failed["result"] == "Failed"
    assert failed["message"].startswith("repo: ")
    assert "Permission denied (publickey)" in failed["message"]
    assert key_marker(other) not in json.dumps(report) + logs
    assert server.accepted_keys() == []


def test_an_unknown_host_key_is_refused(server: SshGitServer, tmp_path: Path) -> None:
    server.create_repo("parser", [{"a": "1"}])
    # known_hosts names another key for this host and port: a man in the middle, as ssh sees it.
    impostor = keygen(tmp_path / "impostor_host", "impostor")
    known_hosts = f"[127.0.0.1]:{server.port} {impostor}\n"
    config = run_config(tmp_path, [git_source(server)])
    code, report, logs = init_only(
        tmp_path, config, ssh_credentials("repo", server.client_key, known_hosts)
    )
    assert code == 3, logs
    assert report["retryable"] is False
    message = report["sources"][0]["message"]
    assert message.startswith("repo: ")
    assert "Host key verification failed" in message
    # The key was never offered to a host it does not know.
    assert server.accepted_keys() == []
    # And a known_hosts for another host (this one unknown) is refused the same way.
    code, report, logs = init_only(
        tmp_path / "b",
        run_config(tmp_path / "b", [git_source(server)]),
        ssh_credentials("repo", server.client_key, f"git.example.com {server.host_public_key}\n"),
    )
    assert code == 3, logs
    assert "Host key verification failed" in report["sources"][0]["message"]


def test_a_secret_without_known_hosts_is_refused_naming_the_key(
    server: SshGitServer, tmp_path: Path
) -> None:
    server.create_repo("parser", [{"a": "1"}])
    config = run_config(tmp_path, [git_source(server)])
    code, report, logs = init_only(
        tmp_path, config, ssh_credentials("repo", server.client_key, None)
    )
    assert code == 3, logs
    assert report["retryable"] is False
    message = report["sources"][0]["message"]
    assert message.startswith("repo: ")
    assert f"Secret {SECRET} has no key known_hosts" in message
    # No connection but the fixture's own readiness probe: refused before ssh ran.
    assert server.log().count("Connection from") == 1


@pytest.mark.cli
def test_an_attempt_clones_edits_and_the_gateway_pushes_over_ssh(
    server: SshGitServer, tmp_path: Path
) -> None:
    (base,) = server.create_repo("parser", [{"parse.py": BUGGY}])
    workspace = tmp_path / "workspace"
    src = workspace / "repo"
    marker = key_marker(server.client_key)
    with sa.ScriptedAPI() as api:
        api.script(
            sa.tool_use("Read", {"file_path": str(src / "parse.py")}),
            sa.tool_use(
                "Edit",
                {"file_path": str(src / "parse.py"), "old_string": "';'", "new_string": "','"},
            ),
            # The agent looks for the key in its environment, its home and the workspace (the
            # needle assembled in the shell, so the transcript under ~ holds only its halves).
            sa.bash(
                f"env; ls -a ~ ~/.ssh; cat {src}/.git/config; "
                f"K='{marker[:10]}'; K=\"$K\"'{marker[10:20]}'; echo FILE-HITS-$(grep -rlF "
                f'-e "$K" {workspace} ~ 2>/dev/null | wc -l); echo SEARCHED'
            ),
            sa.text("Fixed."),
        )
        config = run_config(
            tmp_path,
            [git_source(server, ref="main")],
            outputs=PUSH,
            allowedTools=["Read", "Edit", "Bash"],
            permissionMode="acceptEdits",
        )
        credentials = ssh_credentials("repo", server.client_key, server.known_hosts)
        git_state = tmp_path / "git-state"
        git_state.mkdir()
        gateway = GatewayProcess(
            config,
            tmp_path / "gateway",
            upstream_url=api.base_url,
            env={**credentials, "AGENTSESSION_GIT_STATE_DIR": str(git_state)},
        )
        with gateway:
            code, _, logs = run_init(tmp_path, config, gateway, credentials)
            assert code == 0, logs
            agent_env = gateway.agent_env()
            assert not set(credentials) & set(agent_env)
            result = run_agent_runner(
                config, workdir=tmp_path / "run", base_url=None, env=agent_env
            )
        report = gateway.report()
        searched = api.model_requests()[-1].text_content()
    assert result.exit_code == 0, result.stdout
    assert "SEARCHED" in searched
    assert "FILE-HITS-0" in searched
    assert marker[:20] not in searched
    assert marker not in result.stdout + result.stderr
    (push,) = report["outputs"]["git"]
    assert push["pushed"] is True, push
    assert server.ref("parser", "refs/heads/agent/fix-bug") == push["commit"]
    assert server.show("parser", "agent/fix-bug:parse.py") == BUGGY.replace("';'", "','").rstrip()
    assert server.ref("parser", "refs/heads/main") == base
    assert not list(git_state.glob(".ssh-*"))
    assert set(server.accepted_keys()) == {fingerprint(server.client_public_key)}
