"""The operator's workspace logic: the snapshot part of the run config (on by default, held to
the operator's maximum), and status.workspace from the attempt's end."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

from agentsession_contract.gateway import CONFIG_ANNOTATION
from agentsession_contract.run import decode_run_config
from agentsession_contract.workspace.init import git_credential_env
from agentsession_operator.models.status import AdmissionReason
from agentsession_operator.reconcile.admission import AdmissionView
from agentsession_operator.reconcile.decide import decide
from agentsession_operator.reconcile.observed import Observed, PodView, RefView
from agentsession_operator.reconcile.podspec import build_pod, run_config_for, session_id_for
from agentsession_operator.settings import OperatorSettings
from tests.unit.test_decide import (
    COMPLETED,
    REPORT,
    SETTINGS,
    T0,
    UID,
    apply,
    condition,
    ended,
    pod_body,
    run_config,
    started,
)
from tests.unit.test_decide import (
    session as started_new,
)
from tests.unit.test_podspec import session

SMALL = OperatorSettings(store_url="s3://bucket/agents", workspace_snapshot_max_bytes="1Gi")


def test_snapshots_are_on_by_default_at_the_operators_maximum() -> None:
    config = run_config_for(session(), None, SMALL)
    assert config.snapshot is not None
    assert config.snapshot.max_bytes == 1 << 30
    assert config.snapshot.exclude == []


def test_max_bytes_is_held_to_the_operators_maximum() -> None:
    wanted = {"snapshot": {"maxBytes": "10Gi", "exclude": ["node_modules/"]}}
    config = run_config_for(session(workspace=wanted), None, SMALL)
    assert config.snapshot is not None
    assert config.snapshot.max_bytes == 1 << 30
    assert config.snapshot.exclude == ["node_modules/"]
    smaller = run_config_for(session(workspace={"snapshot": {"maxBytes": "5Mi"}}), None, SMALL)
    assert smaller.snapshot is not None
    assert smaller.snapshot.max_bytes == 5 << 20


def test_snapshots_can_be_turned_off() -> None:
    off = session(workspace={"snapshot": {"enabled": False}})
    assert run_config_for(off, None, SMALL).snapshot is None


def test_the_snapshot_goes_to_status_with_the_operators_own_uri() -> None:
    summary = {
        **COMPLETED,
        "workspace": {"taken": True, "files": 3, "bytes": 120, "uploadedBytes": 80},
    }
    plan = decide(
        started(), Observed(pods=(ended(1, 0, summary),)), SETTINGS, T0 + dt.timedelta(minutes=1)
    )
    assert plan.status is not None
    assert plan.status.workspace is not None
    snapshot = plan.status.workspace.snapshot
    assert snapshot is not None
    uri = f"s3://bucket/agents/team-a/sessions/{session_id_for(UID)}/workspace/"
    assert (snapshot.uri, snapshot.files, snapshot.bytes, snapshot.uploaded_bytes) == (
        uri,
        3,
        120,
        80,
    )
    assert snapshot.message is None


def test_a_snapshot_not_taken_keeps_the_last_figures_and_says_why() -> None:
    summary = {
        **COMPLETED,
        "workspace": {"taken": False, "message": "the workspace holds 9 bytes, over maxBytes"},
    }
    plan = decide(
        started(), Observed(pods=(ended(1, 0, summary),)), SETTINGS, T0 + dt.timedelta(minutes=1)
    )
    assert plan.status is not None
    assert plan.status.workspace is not None
    snapshot = plan.status.workspace.snapshot
    assert snapshot is not None
    assert snapshot.files is None
    assert snapshot.message == "the workspace holds 9 bytes, over maxBytes"


WORKSPACE = {
    "sources": [
        {
            "name": "repo",
            "path": "src",
            "git": {
                "url": "https://git.example.com/o/r.git",
                "credentialsSecretRef": {"name": "gc"},
            },
        },
        {"name": "cfg", "path": "cfg", "configMap": {"name": "settings"}},
        {
            "name": "sec",
            "path": "sec",
            "secret": {"name": "tokens", "items": [{"key": "a", "path": "b/a"}]},
        },
        {"name": "notes", "path": "notes", "inline": {"files": [{"path": "n.md", "content": "x"}]}},
        {"name": "prior", "path": "prior", "fromSession": {"name": "earlier", "path": "out"}},
    ]
}
OUTPUTS = {
    "artifacts": [{"name": "report", "path": "report.md"}],
    "git": [{"source": "repo", "push": {"branch": "agent/{{ .namespace }}/{{.session}}"}}],
}


def test_sources_become_an_init_step_with_the_credentials_and_volumes_only_it_gets() -> None:
    ags = session(workspace=WORKSPACE, outputs=OUTPUTS)
    config = run_config_for(ags, None, SMALL, from_sessions={"earlier": "sid-earlier"})
    pod = build_pod(ags, 1, config, SMALL)
    gateway, init = pod["spec"]["initContainers"]
    assert (gateway["name"], init["name"]) == ("gateway", "workspace")
    assert init["command"] == ["agentsession-workspace"]
    assert init["securityContext"]["runAsUser"] == SMALL.runner_uid
    creds = {e["name"] for e in init["env"] if "valueFrom" in e}
    assert creds == {git_credential_env("repo", "username"), git_credential_env("repo", "password")}
    # The gateway pushes, so it has them too; the agent's container never does.
    assert creds <= {e["name"] for e in gateway["env"]}
    (runner,) = pod["spec"]["containers"]
    assert not [e for e in runner["env"] if "valueFrom" in e]
    assert {m["name"] for m in runner["volumeMounts"]}.isdisjoint(
        {"git-state", "source-cfg", "source-sec"}
    )
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["source-cfg"]["configMap"] == {"name": "settings", "defaultMode": 0o444}
    assert volumes["source-sec"]["secret"]["items"] == [{"key": "a", "path": "b/a"}]
    assert {m["name"] for m in init["volumeMounts"]} >= {"workspace", "git-state", "source-cfg"}
    sources = {s.name: s for s in config.sources}
    assert sources["prior"].from_session_id == "sid-earlier"
    assert sources["cfg"].files_dir == "/etc/agentsession/sources/cfg"
    assert sources["repo"].git is not None
    assert sources["repo"].git.credentials
    assert config.outputs is not None
    assert config.outputs.git[0].branch == "agent/team-a/review"


def test_an_ssh_source_brings_its_key_and_known_hosts_to_the_init_step_and_gateway_only() -> None:
    workspace = {
        "sources": [
            {
                "name": "repo",
                "path": "src",
                "git": {
                    "url": "ssh://git@git.example.com:2222/o/r.git",
                    "credentialsSecretRef": {"name": "git-ssh"},
                },
            },
            {
                "name": "docs",
                "path": "docs",
                "git": {
                    "url": "git@git.example.com:o/docs.git",
                    "credentialsSecretRef": {"name": "d"},
                },
            },
        ]
    }
    outputs = {"git": [{"source": "repo", "push": {}}]}
    ags = session(workspace=workspace, outputs=outputs)
    config = run_config_for(ags, None, SMALL)
    pod = build_pod(ags, 1, config, SMALL)
    gateway, init = pod["spec"]["initContainers"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in init["env"] if "valueFrom" in e}
    assert refs == {
        git_credential_env("repo", "ssh-privatekey"): {
            "name": "git-ssh",
            "key": "ssh-privatekey",
            "optional": True,
        },
        git_credential_env("repo", "known_hosts"): {
            "name": "git-ssh",
            "key": "known_hosts",
            "optional": True,
        },
        git_credential_env("docs", "ssh-privatekey"): {
            "name": "d",
            "key": "ssh-privatekey",
            "optional": True,
        },
        git_credential_env("docs", "known_hosts"): {
            "name": "d",
            "key": "known_hosts",
            "optional": True,
        },
    }
    # The gateway pushes `repo` only: its key, not the other source's.
    gateway_refs = {e["name"] for e in gateway["env"] if "AGENTSESSION_GIT_" in e["name"]}
    assert gateway_refs == {
        git_credential_env("repo", "ssh-privatekey"),
        git_credential_env("repo", "known_hosts"),
    }
    (runner,) = pod["spec"]["containers"]
    assert not [e for e in runner["env"] if "valueFrom" in e]
    repo = {s.name: s for s in config.sources}["repo"].git
    assert repo is not None
    assert (repo.credentials, repo.credentials_secret) == (True, "git-ssh")


def test_a_session_without_sources_has_no_init_step() -> None:
    pod = build_pod(session(), 1, run_config_for(session(), None, SMALL), SMALL)
    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["gateway"]
    assert "git-state" not in {v["name"] for v in pod["spec"]["volumes"]}


def from_session_spec() -> dict[str, Any]:
    return {"sources": [{"name": "prior", "path": "prior", "fromSession": {"name": "earlier"}}]}


def test_a_from_session_source_waits_for_its_session_to_finish() -> None:
    ags = started_new({"workspace": from_session_spec()})
    waiting = decide(ags, Observed(from_sessions={"earlier": None}), SETTINGS, T0)
    assert waiting.create_pod is None
    assert waiting.status is not None
    assert "earlier" in str(waiting.status.message)
    running = RefView(name="earlier", phase="Running", reason=None, session_id="sid-1")
    still = decide(ags, Observed(from_sessions={"earlier": running}), SETTINGS, T0)
    assert still.create_pod is None
    done = RefView(name="earlier", phase="Succeeded", reason="Completed", session_id="sid-1")
    go = decide(ags, Observed(from_sessions={"earlier": done}), SETTINGS, T0)
    assert go.create_pod is not None
    config = decode_run_config(go.create_pod["metadata"]["annotations"][CONFIG_ANNOTATION])
    assert config["sources"][0]["fromSessionId"] == "sid-1"


def test_a_from_session_wait_polls_and_times_out_like_a_session_ref() -> None:
    """A fromSession that never exists (or stays Suspended) must not hold the session forever:
    it fails with InvalidSpec after the sessionRef timeout, polled at 5 s (no waiter wakes it)."""
    ags = started_new({"workspace": from_session_spec()})
    missing = Observed(from_sessions={"earlier": None})
    polls = []
    for seconds in (0, 100, 1000):
        plan = decide(ags, missing, SETTINGS, T0 + dt.timedelta(seconds=seconds))
        ags = apply(ags, plan)
        assert plan.create_pod is None
        polls.append(plan.requeue_after)
    assert polls == [5, 5, 5]
    assert ags.status is not None
    assert ags.status.phase == "Pending"
    timeout = SETTINGS.session_ref_timeout_seconds
    failed = decide(ags, missing, SETTINGS, T0 + dt.timedelta(seconds=timeout))
    assert failed.create_pod is None
    assert failed.status is not None
    assert failed.status.phase == "Failed"
    assert failed.status.reason == "InvalidSpec"
    assert "AgentSession earlier (workspace fromSession) does not exist" in str(
        failed.status.message
    )
    running = RefView(name="earlier", phase="Running", reason=None, session_id="sid-1")
    busy = decide(ags, Observed(from_sessions={"earlier": running}), SETTINGS, T0)
    ags = apply(ags, busy)
    later = T0 + dt.timedelta(seconds=10 * timeout)
    still = decide(ags, Observed(from_sessions={"earlier": running}), SETTINGS, later)
    assert still.status is None or still.status.phase == "Pending"  # one that runs: no timeout
    suspended = RefView(name="earlier", phase="Suspended", reason=None, session_id="sid-1")
    ags = apply(ags, decide(ags, Observed(from_sessions={"earlier": suspended}), SETTINGS, later))
    stalled = decide(
        ags,
        Observed(from_sessions={"earlier": suspended}),
        SETTINGS,
        later + dt.timedelta(seconds=timeout),
    )
    assert stalled.status is not None
    assert stalled.status.reason == "InvalidSpec"
    assert "stays Suspended" in str(stalled.status.message)


NAMESPACE_UID = "5a5a5a5a-3333-4c4c-8d8d-2e2e2e2e2e2e"


def test_snapshot_and_artifact_uris_are_under_the_namespace_uid() -> None:
    """The gateway is rooted at <namespace>/<namespace uid>/ and reports keys relative to it, so
    the URIs the operator writes carry the UID the session recorded."""
    outputs = {"artifacts": [{"name": "report", "path": "report.md"}]}
    ags = started_new({"outputs": outputs})
    first = decide(ags, Observed(namespace_uid=NAMESPACE_UID), SETTINGS, T0)
    assert first.create_pod is not None
    assert run_config(first.create_pod)["namespaceUid"] == NAMESPACE_UID
    session_id = session_id_for(UID)
    key = f"sessions/{session_id}/artifacts/report/report.md"
    report = {
        **REPORT,
        "outputs": {
            "artifacts": [
                {"name": "report", "path": "report.md", "key": key, "size": 5, "sha256": "a" * 64}
            ]
        },
    }
    summary = {**COMPLETED, "workspace": {"taken": True, "files": 1, "bytes": 5}}
    pod = ended(1, 0, summary, report=report)
    plan = decide(apply(ags, first), Observed(pods=(pod,)), SETTINGS, T0 + dt.timedelta(minutes=1))
    assert plan.status is not None
    root = f"s3://bucket/agents/team-a/{NAMESPACE_UID}/"
    assert plan.status.workspace is not None
    assert plan.status.workspace.snapshot is not None
    assert plan.status.workspace.snapshot.uri == f"{root}sessions/{session_id}/workspace/"
    assert plan.status.outputs is not None
    (artifact,) = plan.status.outputs.artifacts or []
    assert artifact.uri == root + key


def test_a_budget_gates_the_attempt_before_any_workspace_work() -> None:
    """A fromSession source resolved, but no reservation yet: Queued, no pod (so no init step,
    no fetch); once admitted, the pod with the init step, scoped by the namespace's UID."""
    ags = started_new({"workspace": from_session_spec()})
    done = RefView(name="earlier", phase="Succeeded", reason="Completed", session_id="sid-1")
    message = "AgentBudget team-a/daily: Daily limit 1.00 USD, spent 0.90 (queued 1st of 1)"
    queued = AdmissionView(True, False, AdmissionReason.BUDGET_EXHAUSTED, message)
    observed = Observed(from_sessions={"earlier": done}, admission=queued)
    wait = decide(ags, dataclasses.replace(observed, namespace_uid=NAMESPACE_UID), SETTINGS, T0)
    assert wait.create_pod is None
    assert wait.admission_attempt == 1
    assert wait.status is not None
    assert wait.status.phase == "Queued"
    assert wait.status.namespace_uid == NAMESPACE_UID
    admitted = AdmissionView(True, True, AdmissionReason.ADMITTED, "holds 0.30 USD")
    go = decide(apply(ags, wait), dataclasses.replace(observed, admission=admitted), SETTINGS, T0)
    assert go.create_pod is not None
    assert [c["name"] for c in go.create_pod["spec"]["initContainers"]] == ["gateway", "workspace"]
    config = run_config(go.create_pod)
    assert config["namespaceUid"] == NAMESPACE_UID
    assert config["sources"][0]["fromSessionId"] == "sid-1"


def init_failed(exit_code: int, report: dict[str, Any]) -> PodView:
    body = pod_body(1, None, phase="Failed")
    body["status"]["initContainerStatuses"] = [
        {
            "name": "gateway",
            "state": {"terminated": {"exitCode": 0, "message": json.dumps(REPORT)}},
        },
        {
            "name": "workspace",
            "state": {"terminated": {"exitCode": exit_code, "message": json.dumps(report)}},
        },
    ]
    view = PodView.from_body(body)
    assert view is not None
    return view


FAILED_FETCH = {
    "sources": [
        {
            "name": "repo",
            "path": "src",
            "result": "Failed",
            "message": "repo: git fetch failed: 401",
        }
    ],
    "retryable": False,
}


def test_a_source_that_cannot_be_fetched_fails_the_session_naming_it() -> None:
    plan = decide(started(), Observed(pods=(init_failed(3, FAILED_FETCH),)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Failed"
    assert plan.status.reason == "SourceFetchFailed"
    assert "repo: git fetch failed: 401" in str(plan.status.message)
    assert plan.status.workspace is not None
    (source,) = plan.status.workspace.sources or []
    assert (source.name, source.result) == ("repo", "Failed")


def test_a_retryable_fetch_failure_backs_off_and_retries() -> None:
    report = {**FAILED_FETCH, "retryable": True}
    plan = decide(started(), Observed(pods=(init_failed(4, report),)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Running"
    assert condition(plan.status, "Running")[1] == "RetryBackoff"


def test_resolved_commits_go_to_status_and_pin_later_attempts() -> None:
    commit = "a" * 40
    report = {"sources": [{"name": "repo", "path": "src", "result": "Fetched", "commit": commit}]}
    body = pod_body(1, {"running": {"startedAt": "2026-11-21T12:00:01Z"}}, phase="Running")
    body["status"]["initContainerStatuses"] = [
        {
            "name": "workspace",
            "state": {"terminated": {"exitCode": 0, "message": json.dumps(report)}},
        }
    ]
    pod = PodView.from_body(body)
    assert pod is not None
    spec = {"sources": [{"name": "repo", "path": "src", "git": {"url": "https://g.example/r.git"}}]}
    ags = started(spec={"workspace": spec})
    plan = decide(ags, Observed(pods=(pod,)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.workspace is not None
    (source,) = plan.status.workspace.sources or []
    assert source.commit == commit
    later = run_config_for(apply(ags, plan), None, SETTINGS)
    assert later.sources[0].git is not None
    assert later.sources[0].git.commit == commit


def test_an_init_step_that_cannot_start_is_reported() -> None:
    body = pod_body(1, None, phase="Pending")
    body["status"]["initContainerStatuses"] = [
        {"name": "gateway", "state": {"running": {"startedAt": "2026-11-21T12:00:01Z"}}},
        {
            "name": "workspace",
            "state": {
                "waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": 'secret "git-credentials" not found',
                }
            },
        },
    ]
    pod = PodView.from_body(body)
    assert pod is not None
    plan = decide(started(), Observed(pods=(pod,)), SETTINGS, T0)
    assert plan.status is not None
    assert 'secret "git-credentials" not found' in str(plan.status.message)
    assert condition(plan.status, "Running") == ("False", "CreateContainerConfigError")
