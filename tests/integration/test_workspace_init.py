"""The workspace init step (`agentsession-workspace`) as a real process, the way its init
container runs it: against a real git server over loopback (git's own http-backend, smart HTTP
with basic auth, tests/support/git_server.py) and a real gateway process whose store service
(file:// store behind it) it reaches with the pod's token.

Covers: a clone at a branch and at an older commit (resolved commits reported), credentials only
through the environment (never in `.git/config`, the files, the report or the logs), bad
credentials and a missing ref (not retryable, exit 3), a server error (retryable, exit 4),
inline, configMap-shaped and fromSession sources, a retry restoring the session's snapshot
instead of fetching again, and a planted symlink refused.
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

from agentsession_contract.store.filesystem import FilesystemBackend
from agentsession_contract.workspace import snapshot as ws
from agentsession_contract.workspace.init import git_credential_env, pristine_repo
from tests.support.gateway_process import GatewayProcess
from tests.support.git_server import PASSWORD, USERNAME, GitServer

WORKSPACE_BIN = str(Path(sys.executable).parent / "agentsession-workspace")
# The namespace's UID: the operator's run configs key the store by it (keys.store_scope).
NAMESPACE_UID = "5a5a5a5a-3333-4c4c-8d8d-2e2e2e2e2e2e"


def namespace_store(store: Path) -> FilesystemBackend:
    """The namespace's store root as the gateway opens it: `<store>/<namespace>/<uid>/`."""
    return FilesystemBackend(store / "team-a" / NAMESPACE_UID)


@pytest.fixture
def server() -> Iterator[GitServer]:
    with GitServer() as git_server:
        yield git_server


class Pod:
    """One attempt's pod: its gateway (file:// store) and the init step's paths."""

    def __init__(self, tmp: Path, store: Path, config: dict[str, Any]) -> None:
        self.tmp = tmp
        self.store = store
        self.config = config
        self.workspace = Path(config["workspace"])
        self.git_state = tmp / "git-state"
        self.state_dir = tmp / "runner-state"
        self.report_file = tmp / "init-report.json"

    def run_init(self, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
        self.git_state.mkdir(parents=True, exist_ok=True)
        gateway = GatewayProcess(
            self.config, self.tmp / "gateway", upstream_url="http://127.0.0.1:9"
        )
        config_file = self.tmp / "run-config.json"
        config_file.write_text(json.dumps(self.config))
        with gateway:
            result = subprocess.run(
                [
                    WORKSPACE_BIN,
                    "--config",
                    str(config_file),
                    "--report-file",
                    str(self.report_file),
                ],
                env={
                    "PATH": os.environ["PATH"],
                    "HOME": str(self.git_state / "home"),
                    "AGENTSESSION_GATEWAY_DIR": str(gateway.shared_dir),
                    "AGENTSESSION_GIT_STATE_DIR": str(self.git_state),
                    "AGENTSESSION_STATE_DIR": str(self.state_dir),
                    **(env or {}),
                },
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        report = json.loads(self.report_file.read_text()) if self.report_file.exists() else {}
        return result.returncode, report, result.stdout + result.stderr


def credentials(source: str, password: str = PASSWORD) -> dict[str, str]:
    return {
        git_credential_env(source, "username"): USERNAME,
        git_credential_env(source, "password"): password,
    }


def run_config(
    tmp: Path, store: Path, sources: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        "prompt": "p",
        "maxTurns": 1,
        "maxBudgetUsd": 1.0,
        "store": store.as_uri(),
        "namespace": "team-a",
        "namespaceUid": NAMESPACE_UID,
        "sessionName": "s",
        "sessionId": str(uuid.uuid4()),
        "workspace": str(tmp / "workspace"),
        "snapshot": {"maxBytes": 1 << 30},
        "sources": sources,
        **extra,
    }


def git_source(server: GitServer, **git: Any) -> dict[str, Any]:
    return {
        "name": "repo",
        "path": "src",
        "kind": "git",
        "git": {"url": server.url("parser"), "credentials": True, **git},
    }


def test_a_clone_at_a_branch_and_at_an_older_commit(server: GitServer, tmp_path: Path) -> None:
    first, second = server.create_repo(
        "parser", [{"parse.py": "v1\n"}, {"parse.py": "v2\n", "README.md": "r\n"}]
    )
    store = tmp_path / "store"
    config = run_config(
        tmp_path / "a",
        store,
        [
            git_source(server, ref="main"),
            {**git_source(server, ref=first), "name": "old", "path": "old"},
        ],
        outputs={
            "git": [
                {
                    "source": "repo",
                    "branch": "agent/s",
                    "authorName": "A",
                    "authorEmail": "a@b.c",
                    "message": "m",
                }
            ]
        },
    )
    pod = Pod(tmp_path / "a", store, config)
    code, report, logs = pod.run_init({**credentials("repo"), **credentials("old")})
    assert code == 0, logs
    by_name = {s["name"]: s for s in report["sources"]}
    assert by_name["repo"] == {"name": "repo", "path": "src", "result": "Fetched", "commit": second}
    assert by_name["old"]["commit"] == first
    src = pod.workspace / "src"
    assert (src / "parse.py").read_text() == "v2\n"
    assert (pod.workspace / "old" / "parse.py").read_text() == "v1\n"
    # The agent gets a working repository on the branch, with no credentials anywhere in it.
    head = subprocess.run(
        ["git", "-C", str(src), "rev-parse", "--abbrev-ref", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert head == "main"
    every_byte = b"".join(p.read_bytes() for p in pod.workspace.rglob("*") if p.is_file())
    assert PASSWORD.encode() not in every_byte
    assert PASSWORD not in logs
    assert PASSWORD not in pod.report_file.read_text()
    # Only the pushed source gets a pristine base for the gateway.
    assert Path(pristine_repo("repo", str(pod.git_state))).is_dir()
    assert not Path(pristine_repo("old", str(pod.git_state))).exists()
    assert {r.user for r in server.requests if r.status == 200} == {USERNAME}


def test_bad_credentials_fail_for_good(server: GitServer, tmp_path: Path) -> None:
    server.create_repo("parser", [{"a": "1"}])
    pod = Pod(
        tmp_path, tmp_path / "store", run_config(tmp_path, tmp_path / "store", [git_source(server)])
    )
    code, report, logs = pod.run_init(credentials("repo", password="wrong-token-XYZ"))
    assert code == 3, logs
    assert report["retryable"] is False
    (failed,) = report["sources"]
    assert failed["result"] == "Failed"
    assert "repo" in failed["message"]
    assert "wrong-token-XYZ" not in json.dumps(report) + logs


def test_a_missing_ref_fails_for_good(server: GitServer, tmp_path: Path) -> None:
    server.create_repo("parser", [{"a": "1"}])
    pod = Pod(
        tmp_path,
        tmp_path / "store",
        run_config(tmp_path, tmp_path / "store", [git_source(server, ref="no-such")]),
    )
    code, report, logs = pod.run_init(credentials("repo"))
    assert code == 3, logs
    assert "no-such" in report["sources"][0]["message"]


def test_a_server_error_is_retryable(server: GitServer, tmp_path: Path) -> None:
    server.create_repo("parser", [{"a": "1"}])
    server.fail_next = 100
    pod = Pod(
        tmp_path, tmp_path / "store", run_config(tmp_path, tmp_path / "store", [git_source(server)])
    )
    code, report, logs = pod.run_init(credentials("repo"))
    assert code == 4, logs
    assert report["retryable"] is True


def test_inline_configmap_and_from_session_sources(tmp_path: Path) -> None:
    store = tmp_path / "store"
    # Another session's snapshot in the same namespace.
    other = str(uuid.uuid4())
    theirs = tmp_path / "theirs"
    (theirs / "results").mkdir(parents=True)
    (theirs / "results" / "table.csv").write_text("a,b\n")
    (theirs / "private.txt").write_text("not lent")
    ws.take_snapshot(theirs, namespace_store(store), other, max_bytes=1 << 30)
    # A configMap volume as the kubelet lays it out.
    mounted = tmp_path / "mounted"
    data = mounted / "..2026_01_01"
    data.mkdir(parents=True)
    (data / "settings.yaml").write_text("debug: true\n")
    (mounted / "..data").symlink_to("..2026_01_01")
    (mounted / "settings.yaml").symlink_to("..data/settings.yaml")
    config = run_config(
        tmp_path,
        store,
        [
            {
                "name": "notes",
                "path": "notes",
                "kind": "inline",
                "inline": [{"path": "a/CONTEXT.md", "content": "Trailing commas."}],
            },
            {"name": "config", "path": "config", "kind": "configMap", "filesDir": str(mounted)},
            {
                "name": "prior",
                "path": "prior",
                "kind": "fromSession",
                "fromSessionId": other,
                "fromPath": "results",
            },
        ],
    )
    pod = Pod(tmp_path, store, config)
    code, report, logs = pod.run_init()
    assert code == 0, logs
    assert [s["result"] for s in report["sources"]] == ["Fetched"] * 3
    assert (pod.workspace / "notes" / "a" / "CONTEXT.md").read_text() == "Trailing commas."
    assert (pod.workspace / "config" / "settings.yaml").read_text() == "debug: true\n"
    assert not (pod.workspace / "config" / "..data").exists()
    assert (pod.workspace / "prior" / "table.csv").read_text() == "a,b\n"
    assert not (pod.workspace / "prior" / "private.txt").exists()


def test_a_retry_restores_the_snapshot_instead_of_fetching(
    server: GitServer, tmp_path: Path
) -> None:
    (commit,) = server.create_repo("parser", [{"parse.py": "v1\n"}])
    store = tmp_path / "store"
    config = run_config(tmp_path / "one", store, [git_source(server)])
    first = Pod(tmp_path / "one", store, config)
    assert first.run_init(credentials("repo"))[0] == 0
    # The agent edited, the runner snapshotted at the end of attempt 1.
    (first.workspace / "src" / "parse.py").write_text("fixed\n")
    ws.take_snapshot(
        first.workspace, namespace_store(store), config["sessionId"], max_bytes=1 << 30
    )
    fetches = len(server.requests)
    retry = {**config, "workspace": str(tmp_path / "two" / "workspace")}
    second = Pod(tmp_path / "two", store, retry)
    code, report, logs = second.run_init(credentials("repo"))
    assert code == 0, logs
    assert report["restoredFrom"] == config["sessionId"]
    assert report["sources"] == [{"name": "repo", "path": "src", "result": "Restored"}]
    assert (second.workspace / "src" / "parse.py").read_text() == "fixed\n"
    assert len(server.requests) == fetches, "a restored source is not fetched again"
    assert commit


def test_a_symlink_planted_where_a_source_goes_is_refused(
    server: GitServer, tmp_path: Path
) -> None:
    # The session this one resumes left `src -> <outside>` in its workspace.
    server.create_repo("parser", [{"parse.py": "v1\n"}])
    store = tmp_path / "store"
    parent = str(uuid.uuid4())
    outside = tmp_path / "outside"
    outside.mkdir()
    planted = tmp_path / "parent-ws"
    (planted / "lib").mkdir(parents=True)
    (planted / "lib" / "x").write_text("x")
    (planted / "src").symlink_to("lib")  # inside the workspace: kept by snapshots
    ws.take_snapshot(planted, namespace_store(store), parent, max_bytes=1 << 30)
    config = run_config(
        tmp_path, store, [git_source(server)], resumeSessionId=parent, forkSession=True
    )
    pod = Pod(tmp_path, store, config)
    code, report, logs = pod.run_init(credentials("repo"))
    assert code == 3, logs
    assert "symlink" in report["sources"][0]["message"]
    assert list((pod.workspace / "lib").iterdir()) == [pod.workspace / "lib" / "x"]
