"""End to end on the real node: workspaces. A session clones a repository from a real git server
on loopback (git's http-backend behind basic auth; the runner pods use the host's network) with
a credentials Secret, and a second one over ssh from a real sshd (an ssh-auth Secret with the
key and known_hosts), the scripted model edits a file with the Edit tool and searches its
container for the token and the key, the pod is deleted mid-turn, the next attempt finds the
edit, the session ends with its artifact stored and both branches pushed (the ssh one by the
gateway, UID 65533); a follow-up session (sessionRef) starts from the files. One session with
three attempts' worth of shape in two pods, and one follow-up: kept lean for CI."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.e2e.conftest import Sessions, condition, gate_command, marker
from tests.e2e.test_faults import processes_with
from tests.support import scripted_api as sa
from tests.support.cluster import LocalCluster, wait_for
from tests.support.git_server import PASSWORD, USERNAME, GitServer
from tests.support.ssh_server import SshGitServer

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]

BUGGY = "def parse(text):\n    return text.split(';')\n"
FIXED = BUGGY.replace("';'", "','")
REPORT = "The separator was ';', it is ',' now.\n"


@pytest.fixture
def git_server() -> Iterator[GitServer]:
    with GitServer() as server:
        yield server


@pytest.fixture
def ssh_git_server() -> Iterator[SshGitServer]:
    with SshGitServer() as server:
        yield server


def create_git_secrets(cluster: LocalCluster, namespace: str, ssh: SshGitServer) -> None:
    api_client = cluster.api_client()
    try:
        core = client.CoreV1Api(api_client)
        core.create_namespaced_secret(
            namespace,
            {
                "metadata": {"name": "git-credentials"},
                "type": "kubernetes.io/basic-auth",
                "stringData": {"username": USERNAME, "password": PASSWORD},
            },
        )
        core.create_namespaced_secret(
            namespace,
            {
                "metadata": {"name": "git-ssh"},
                "type": "kubernetes.io/ssh-auth",
                "stringData": {"ssh-privatekey": ssh.client_key, "known_hosts": ssh.known_hosts},
            },
        )
    finally:
        api_client.close()


def test_clone_edit_survive_a_kill_push_and_follow_up(
    sessions: Sessions,
    scripted_api: sa.ScriptedAPI,
    local_cluster: LocalCluster,
    git_server: GitServer,
    ssh_git_server: SshGitServer,
) -> None:
    (base,) = git_server.create_repo("parser", [{"parse.py": BUGGY}])
    (docs_base,) = ssh_git_server.create_repo("docs", [{"README.md": "Docs\n"}])
    create_git_secrets(local_cluster, sessions.namespace, ssh_git_server)
    tag, follow_tag = marker(), marker()
    # The agent hunts for the token and the ssh key: every environment it can read (its own
    # processes'; the gateway's and the finished init step's are not its to read) and every
    # file it can reach. Both are assembled in the shell, so the command itself (in the
    # transcript under /home/runner) contains neither.
    needle = PASSWORD[:16]
    key_line = ssh_git_server.client_key.splitlines()[4]
    key_needle = key_line[6:22]  # private key bytes, unlike the header all such keys share
    hunt = (
        f"N={needle[:8]}; N=${{N}}{needle[8:]}; K='{key_needle[:8]}'; K=\"$K\"'{key_needle[8:]}'; "
        "env; echo ENVIRON-HITS-$(cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n' "
        '| grep -c -F -e "$N" -e "$K"); echo FILE-HITS-$(grep -rl -F -e "$N" -e "$K" '
        f"/workspace /tmp /home/runner /run /etc/agentsession 2>/dev/null | wc -l); "
        f"echo SEARCHED-{tag}"
    )
    scripted_api.route(
        tag,
        sa.tool_use("Read", {"file_path": "/workspace/src/parse.py"}),
        sa.tool_use(
            "Edit",
            {"file_path": "/workspace/src/parse.py", "old_string": "';'", "new_string": "','"},
        ),
        sa.tool_use("Write", {"file_path": "/workspace/report.md", "content": REPORT}),
        sa.tool_use("Write", {"file_path": "/workspace/docs/FIX.md", "content": REPORT}),
        sa.bash(hunt),
        # Blocks until the test deletes the pod (the gate never opens).
        sa.bash(gate_command("never-opened", f"echo {tag}-released")),
        # Attempt 2, resuming the conversation in a new pod: the edit is there.
        sa.bash(f"cat /workspace/src/parse.py; echo READ-{tag}"),
        sa.text("Fixed, reported, pushed."),
        # The follow-up: its requests begin with this conversation, so they route here too.
        sa.bash(f"cat /workspace/src/parse.py /workspace/notes/CONTEXT.md; echo FOLLOW-{tag}"),
        sa.text("Still fixed."),
    )
    sessions.create(
        "fix-bug",
        {
            "prompt": f"{tag}: fix the parser",
            "allowedTools": ["Read", "Edit", "Write", "Bash"],
            "permissionMode": "acceptEdits",
            "backoffLimit": 2,
            "workspace": {
                "sources": [
                    {
                        "name": "repo",
                        "path": "src",
                        "git": {
                            "url": git_server.url("parser"),
                            "ref": "main",
                            "credentialsSecretRef": {"name": "git-credentials"},
                        },
                    },
                    {
                        "name": "docs",
                        "path": "docs",
                        "git": {
                            "url": ssh_git_server.url("docs"),
                            "ref": "main",
                            "credentialsSecretRef": {"name": "git-ssh"},
                        },
                    },
                    {
                        "name": "notes",
                        "path": "notes",
                        "inline": {"files": [{"path": "CONTEXT.md", "content": "commas\n"}]},
                    },
                ]
            },
            "outputs": {
                "artifacts": [{"name": "report", "path": "report.md"}],
                "git": [
                    {
                        "source": source,
                        "push": {"author": {"name": "Parser Agent", "email": "a@example.com"}},
                    }
                    for source in ("repo", "docs")
                ],
            },
        },
    )
    first_pod = sessions.wait_running_pod("fix-bug")
    wait_for(
        lambda: processes_with(f"{tag}-released"), timeout=120, what="the agent blocked mid-turn"
    )
    running = sessions.wait(
        "fix-bug", lambda s: bool(s.get("workspace", {}).get("sources")), what="sources status"
    )
    fetched = {s["name"]: s for s in running["workspace"]["sources"]}
    assert fetched["repo"] == {"name": "repo", "path": "src", "result": "Fetched", "commit": base}
    assert fetched["docs"]["commit"] == docs_base
    # Kill the pod mid-run (a delete: SIGTERM, the runner snapshots and exits retryable).
    sessions.core.delete_namespaced_pod(first_pod, sessions.namespace)

    status = sessions.wait("fix-bug", timeout=300)
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    requests = scripted_api.requests_for(tag)
    searched = next(r.text_content() for r in requests if f"SEARCHED-{tag}" in r.text_content())
    assert "ENVIRON-HITS-0" in searched
    assert "FILE-HITS-0" in searched
    assert PASSWORD not in searched
    assert key_line not in searched
    read_back = requests[-1].text_content()
    assert f"READ-{tag}" in read_back
    assert "text.split(',')" in read_back, "attempt 2 restored attempt 1's edit"

    # Outputs, as the gateway stored and pushed them.
    (artifact,) = status["outputs"]["artifacts"]
    assert artifact["path"] == "report.md"
    assert artifact["sha256"] == hashlib.sha256(REPORT.encode()).hexdigest()
    # Under the namespace's UID, where the gateway (rooted there) stored them.
    root = f"/{sessions.namespace}/{status['namespaceUid']}/sessions/{status['sessionId']}/"
    assert artifact["uri"].endswith(root + "artifacts/report/report.md")
    assert status["workspace"]["snapshot"]["uri"].endswith(root + "workspace/")
    docs_push, push = status["outputs"]["git"]
    # Over ssh, by the gateway (its own UID) with the Secret's key.
    assert docs_push["pushed"] is True, docs_push
    assert ssh_git_server.show("docs", "agent/fix-bug:FIX.md") == REPORT.rstrip()
    assert ssh_git_server.accepted_keys()
    assert push["pushed"] is True, push
    assert push["branch"] == "agent/fix-bug"
    assert git_server.ref("parser", "refs/heads/agent/fix-bug") == push["commit"]
    assert git_server.show("parser", "agent/fix-bug:parse.py") == FIXED.rstrip()
    assert status["workspace"]["snapshot"]["files"] >= 3
    assert condition(status, "Succeeded")["status"] == "True"

    # A follow-up resumes the conversation and starts from the files.
    sessions.create(
        "fix-bug-review",
        {
            "prompt": f"{follow_tag}: check the fix",
            "allowedTools": ["Bash"],
            "resume": {"sessionRef": "fix-bug", "fork": True},
        },
    )
    follow = sessions.wait("fix-bug-review", timeout=180)
    assert follow["phase"] == "Succeeded", follow
    seen = scripted_api.requests_for(tag)[-1].text_content()
    assert f"FOLLOW-{tag}" in seen
    assert "text.split(',')" in seen
    assert "commas" in seen
