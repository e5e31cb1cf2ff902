"""Table tests for the pure reconcile decision: spec + observed pods + clock -> plan."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
from typing import Any

import pytest

from agentsession_contract.gateway import CONFIG_ANNOTATION
from agentsession_contract.run import decode_run_config
from agentsession_operator.models import AgentSession, AgentSessionStatus
from agentsession_operator.reconcile.decide import (
    OUTPUT_SCHEMA_MAX_DEPTH,
    Plan,
    decide,
    nesting_depth,
    pod_event_matters,
)
from agentsession_operator.reconcile.observed import Observed, PodView, RefView
from agentsession_operator.reconcile.podspec import session_id_for
from agentsession_operator.settings import OperatorSettings

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
UID = "0b7a3c52-1111-4a4a-9c9c-5e5e5e5e5e5e"
SETTINGS = OperatorSettings(store_url="s3://bucket/agents", backoff_base_seconds=10)


def session(
    spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None
) -> AgentSession:
    body: dict[str, Any] = {
        "apiVersion": "agents.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": "hello", "namespace": "team-a", "uid": UID, "generation": 1},
        "spec": {"prompt": "Say hello.", **(spec or {})},
    }
    if status is not None:
        body["status"] = status
    return AgentSession.from_body(body)


def apply(ags: AgentSession, plan: Plan) -> AgentSession:
    """The session as the next pass would see it once the plan's status landed."""
    if plan.status is None:
        return ags
    return ags.model_copy(update={"status": plan.status})


def pod_body(attempt: int, state: dict[str, Any] | None = None, **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {
            "name": f"hello-{attempt}",
            "labels": {
                "app.kubernetes.io/managed-by": "agentsession-operator",
                "agents.dev/session": "hello",
                "agents.dev/attempt": str(attempt),
            },
            "creationTimestamp": "2026-11-21T12:00:00Z",
        },
        "status": dict(status),
    }
    if state is not None:
        body["status"]["containerStatuses"] = [{"name": "runner", "state": state}]
    return body


def gateway_report(
    spent: float = 0.02, requests: int = 2, refused: int = 0, ended: str = "stopped"
) -> dict[str, Any]:
    """A gateway's termination message: what the operator charges an attempt."""
    return {
        "budgetUsd": "1.0",
        "spentUsd": str(spent),
        "requests": requests,
        "refused": refused,
        "models": {
            "claude-sonnet-4-5": {
                "requests": requests,
                "inputTokens": 100 * requests,
                "outputTokens": 10 * requests,
                "costUsd": str(spent),
            }
        },
        "ended": ended,
    }


REPORT = gateway_report()


def ended(
    attempt: int,
    exit_code: int,
    summary: dict[str, Any] | None = None,
    reason: str = "Completed",
    report: dict[str, Any] | None = REPORT,
) -> PodView:
    terminated = {
        "exitCode": exit_code,
        "reason": reason,
        "startedAt": "2026-11-21T12:00:01Z",
        "finishedAt": "2026-11-21T12:00:30Z",
    }
    if summary is not None:
        terminated["message"] = json.dumps(summary)
    body = pod_body(
        attempt, {"terminated": terminated}, phase="Succeeded" if exit_code == 0 else "Failed"
    )
    gateway: dict[str, Any] = {"exitCode": 0, "reason": "Completed"}
    if report is not None:
        gateway["message"] = json.dumps(report)
    body["status"]["initContainerStatuses"] = [
        {"name": "gateway", "state": {"terminated": gateway}}
    ]
    view = PodView.from_body(body)
    assert view is not None
    return view


def evicted(report: dict[str, Any] | None = REPORT) -> PodView:
    """A pod the kubelet evicted: its containers were killed, the gateway left its report."""
    body = pod_body(1, None, phase="Failed", reason="Evicted", message="disk pressure")
    if report is not None:
        terminated = {"exitCode": 143, "reason": "Error", "message": json.dumps(report)}
        body["status"]["initContainerStatuses"] = [
            {"name": "gateway", "state": {"terminated": terminated}}
        ]
    view = PodView.from_body(body)
    assert view is not None
    return view


def running(attempt: int) -> PodView:
    view = PodView.from_body(
        pod_body(attempt, {"running": {"startedAt": "2026-11-21T12:00:01Z"}}, phase="Running")
    )
    assert view is not None
    return view


def unschedulable_body() -> dict[str, Any]:
    body = pod_body(1, None, phase="Pending")
    body["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient memory.",
        }
    ]
    return body


def run_config(pod: dict[str, Any]) -> dict[str, Any]:
    """The run config a pod carries (its annotation, which both containers see as a file)."""
    return decode_run_config(pod["metadata"]["annotations"][CONFIG_ANNOTATION])


def condition(status: AgentSessionStatus, kind: str) -> tuple[str, str]:
    found = next(c for c in status.conditions or [] if c.type == kind)
    return found.status, found.reason


def started(spec: dict[str, Any] | None = None) -> AgentSession:
    first = decide(session(spec), Observed(), SETTINGS, T0)
    return apply(session(spec), first)


COMPLETED = {
    "reason": "Completed",
    "sessionId": session_id_for(UID),
    "numTurns": 2,
    "totalCostUsd": 0.02,
    "subtype": "success",
    "isError": False,
    "resultPreview": "Hello!",
    "resultRef": "s3://bucket/agents/team-a/sessions/x/result.json",
    "transcriptRef": "s3://bucket/agents/team-a/sessions/x/",
}


def test_a_new_session_gets_its_first_pod_and_running_status() -> None:
    plan = decide(session(), Observed(), SETTINGS, T0)
    assert plan.create_pod is not None
    assert plan.create_pod["metadata"]["name"] == "hello-1"
    assert plan.status is not None
    assert plan.status.phase == "Running"
    assert plan.status.attempts == 1
    assert plan.status.pod_name == "hello-1"
    assert plan.status.session_id == session_id_for(UID)
    assert plan.status.start_time == T0
    assert plan.status.observed_generation == 1
    assert condition(plan.status, "Succeeded") == ("Unknown", "Running")
    assert condition(plan.status, "Running") == ("True", "PodCreated")
    config = run_config(plan.create_pod)
    assert config["sessionId"] == session_id_for(UID)
    assert config["maxTurns"] == SETTINGS.default_max_turns
    assert config["maxBudgetUsd"] == SETTINGS.default_max_budget_usd
    assert config["namespace"] == "team-a"
    (gateway,) = plan.create_pod["spec"]["initContainers"]
    env = {e["name"]: e for e in gateway["env"]}
    assert env["ANTHROPIC_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "anthropic-api-key"
    assert plan.events == ()  # the first pod is news only on the status


def test_a_running_pod_needs_no_write_and_decisions_are_idempotent() -> None:
    # The status written with the pod already says Running: the pod starting is no API write.
    ags = started()
    assert (
        decide(ags, Observed(pods=(running(1),)), SETTINGS, T0 + dt.timedelta(seconds=5)) == Plan()
    )
    assert (
        decide(ags, Observed(pods=(running(1),)), SETTINGS, T0 + dt.timedelta(seconds=9)) == Plan()
    )


def test_a_gateway_that_cannot_start_is_reported_for_the_agent_waiting_on_it() -> None:
    """The API key Secret is the gateway's: the agent container only says PodInitializing (it
    starts after its native sidecar), which alone looks like a pod on its way."""
    body = pod_body(1, {"waiting": {"reason": "PodInitializing"}}, phase="Pending")
    body["status"]["initContainerStatuses"] = [
        {
            "name": "gateway",
            "state": {
                "waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": 'secret "team-key" not found',
                }
            },
        }
    ]
    pod = PodView.from_body(body)
    assert pod is not None
    assert pod_event_matters(pod)
    plan = decide(started(), Observed(pods=(pod,)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.message == (
        'runner pod hello-1 is waiting: CreateContainerConfigError: secret "team-key" not found'
    )
    assert condition(plan.status, "Running") == ("False", "CreateContainerConfigError")


def test_pod_that_cannot_start_is_reported() -> None:
    waiting = PodView.from_body(
        pod_body(
            1,
            {
                "waiting": {
                    "reason": "CreateContainerConfigError",
                    "message": 'secret "anthropic-api-key" not found',
                }
            },
            phase="Pending",
        )
    )
    assert waiting is not None
    plan = decide(started(), Observed(pods=(waiting,)), SETTINGS, T0)
    assert plan.status is not None
    assert "anthropic-api-key" in (plan.status.message or "")
    assert condition(plan.status, "Running") == ("False", "CreateContainerConfigError")
    # Once the Secret exists and the pod runs, the status says so again.
    recovered = decide(apply(started(), plan), Observed(pods=(running(1),)), SETTINGS, T0)
    assert recovered.status is not None
    assert condition(recovered.status, "Running") == ("True", "PodRunning")
    assert recovered.status.message == "runner pod hello-1 (attempt 1) is working on the session"


def test_success_fills_the_result_and_is_terminal() -> None:
    plan = decide(
        started(), Observed(pods=(ended(1, 0, COMPLETED),)), SETTINGS, T0 + dt.timedelta(minutes=1)
    )
    assert plan.status is not None
    assert plan.status.phase == "Succeeded"
    assert plan.status.reason == "Completed"
    assert plan.status.num_turns == 2
    assert plan.status.total_cost_usd == 0.02
    assert plan.status.result_preview == "Hello!"
    # Refs are where the operator knows the store keeps the session, whatever the agent claims.
    root = f"s3://bucket/agents/team-a/sessions/{session_id_for(UID)}/"
    assert plan.status.transcript_ref == root
    assert plan.status.result_ref == root + "result.json"
    assert plan.status.completion_time == T0 + dt.timedelta(minutes=1)
    assert condition(plan.status, "Succeeded") == ("True", "Completed")
    assert [e.reason for e in plan.events] == ["Succeeded"]
    assert plan.outcome is not None


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        (ended(1, 0, {"reason": "MaxTurnsReached", "numTurns": 25}), "MaxTurnsReached"),
        (ended(1, 0, {"reason": "BudgetExceeded", "totalCostUsd": 1.2}), "BudgetExceeded"),
        (ended(1, 0, {"reason": "DeadlineExceeded"}), "DeadlineExceeded"),
        (ended(1, 0, {"reason": "APIError", "apiErrorStatus": 400}), "APIError"),
        (ended(1, 3, {"reason": "InvalidSpec", "message": "session x not found"}), "InvalidSpec"),
    ],
)
def test_terminal_failures(pod: PodView, reason: str) -> None:
    plan = decide(started(), Observed(pods=(pod,)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Failed"
    assert plan.status.reason == reason
    assert condition(plan.status, "Succeeded") == ("False", reason)
    assert plan.create_pod is None
    assert plan.events[0].type == "Warning"


def test_pod_deadline_exceeded_is_terminal() -> None:
    pod = PodView.from_body(pod_body(1, None, phase="Failed", reason="DeadlineExceeded"))
    assert pod is not None
    plan = decide(started(), Observed(pods=(pod,)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.reason == "DeadlineExceeded"


@pytest.mark.parametrize(
    "failed",
    [
        ended(1, 4, {"reason": "ExecutionError", "message": "store: unreachable"}),
        ended(
            1, 0, {"reason": "APIError", "apiErrorStatus": 529, "numTurns": 1, "totalCostUsd": 0.01}
        ),
        ended(1, 0, {"reason": "APIError", "apiErrorStatus": 429}),
        ended(1, 0, {"reason": "APIError"}),  # no answer: connection refused or reset
        ended(1, 137, None, reason="OOMKilled"),
        ended(1, 137, None, reason="Error"),
        evicted(),
    ],
    ids=["exit-4", "api-529", "api-429", "api-no-answer", "oom", "killed", "evicted"],
)
def test_retryable_failures_back_off_then_start_the_next_attempt(failed: PodView | None) -> None:
    ags = started()
    pods = (failed,) if failed is not None else ()
    plan = decide(ags, Observed(pods=pods), SETTINGS, T0 + dt.timedelta(seconds=30))
    assert plan.create_pod is None
    assert plan.requeue_after == 10
    assert plan.status is not None
    assert plan.status.phase == "Running"
    assert condition(plan.status, "Running") == ("False", "RetryBackoff")
    assert [e.reason for e in plan.events] == ["AttemptFailed"]
    ags = apply(ags, plan)

    early = decide(ags, Observed(pods=pods), SETTINGS, T0 + dt.timedelta(seconds=35))
    assert early.create_pod is None
    assert early.status is None
    assert early.requeue_after == 5

    due = decide(ags, Observed(pods=pods), SETTINGS, T0 + dt.timedelta(seconds=40))
    assert due.create_pod is not None
    assert due.create_pod["metadata"]["name"] == "hello-2"
    assert due.status is not None
    assert due.status.attempts == 2
    assert due.retried
    config = run_config(due.create_pod)
    # Every attempt names the same session id: the runner resumes it if the store has it.
    assert config["sessionId"] == session_id_for(UID)


def test_limits_hold_across_attempts_as_the_gateway_metered_them() -> None:
    ags = started({"maxTurns": 10, "maxBudgetUsd": 1.0})
    # The agent claims less than it spent (it controls its summary): the gateway's report counts.
    failed = ended(
        1,
        0,
        {"reason": "APIError", "apiErrorStatus": 529, "numTurns": 1, "totalCostUsd": 0.01},
        report=gateway_report(spent=0.25, requests=3),
    )
    settings = SETTINGS.model_copy(update={"backoff_base_seconds": 0})
    plan = decide(ags, Observed(pods=(failed,)), settings, T0)
    assert plan.create_pod is not None
    config = run_config(plan.create_pod)
    # The gateway metered 3 model requests (the 529 it passed through had no usage).
    assert config["maxTurns"] == 7
    assert config["maxBudgetUsd"] == pytest.approx(0.75)
    assert plan.status is not None
    assert plan.status.num_turns == 3
    assert plan.status.total_cost_usd == pytest.approx(0.25)
    assert plan.status.usage == {
        "input_tokens": 300,
        "output_tokens": 30,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }


def test_an_ended_agent_waits_for_its_gateways_final_report() -> None:
    """Between the agent's exit and its gateway's the pod is still Running: charge nothing yet."""
    ags = started({"maxBudgetUsd": 1.0})
    body = pod_body(
        1,
        {"terminated": {"exitCode": 0, "reason": "Completed", "message": '{"reason":"Completed"}'}},
        phase="Running",
    )
    body["status"]["initContainerStatuses"] = [
        {"name": "gateway", "state": {"running": {"startedAt": "2026-11-21T12:00:01Z"}}}
    ]
    view = PodView.from_body(body)
    assert view is not None
    assert view.finished
    assert not view.gateway_ended
    plan = decide(ags, Observed(pods=(view,)), SETTINGS, T0)
    assert plan == Plan()


@pytest.mark.parametrize(
    "lost",
    [evicted(report=None), None],
    ids=["no-report", "pod-gone"],
)
def test_an_attempt_without_a_gateway_report_is_charged_its_whole_reservation(
    lost: PodView | None,
) -> None:
    """A killed gateway, a forged or missing report, a pod gone with its node: fail closed."""
    ags = started({"maxTurns": 10, "maxBudgetUsd": 1.0})
    settings = SETTINGS.model_copy(update={"backoff_base_seconds": 0})
    plan = decide(ags, Observed(pods=(lost,) if lost else ()), settings, T0)
    assert plan.status is not None
    assert plan.status.total_cost_usd == pytest.approx(1.0)
    assert plan.status.num_turns == 10
    assert plan.create_pod is None
    assert plan.status.phase == "Failed"
    assert plan.status.reason == "MaxTurnsReached"
    assert "no gateway report" in (plan.status.message or "")


def test_backoff_limit_exceeded() -> None:
    ags = started({"backoffLimit": 1})
    settings = SETTINGS.model_copy(update={"backoff_base_seconds": 0})
    first_fail = ended(1, 4, {"reason": "ExecutionError"})
    ags = apply(ags, decide(ags, Observed(pods=(first_fail,)), settings, T0))
    assert ags.status is not None
    assert ags.status.attempts == 2
    second_fail = ended(2, 4, {"reason": "ExecutionError", "message": "store: unreachable"})
    plan = decide(ags, Observed(pods=(first_fail, second_fail)), settings, T0)
    assert plan.status is not None
    assert plan.status.phase == "Failed"
    assert plan.status.reason == "BackoffLimitExceeded"
    assert "store: unreachable" in (plan.status.message or "")
    assert plan.create_pod is None


def test_image_not_on_allowlist_fails_as_invalid_spec() -> None:
    plan = decide(session({"image": "evil.example/runner:1"}), Observed(), SETTINGS, T0)
    assert plan.create_pod is None
    assert plan.status is not None
    assert plan.status.reason == "InvalidSpec"
    assert "allowlist" in (plan.status.message or "")
    allowed = SETTINGS.model_copy(update={"image_allowlist": ["evil.example/*"]})
    assert decide(session({"image": "evil.example/runner:1"}), Observed(), allowed, T0).create_pod


def test_limits_beyond_the_operator_maximum_are_invalid() -> None:
    plan = decide(session({"maxTurns": 999}), Observed(), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.reason == "InvalidSpec"
    assert "spec.maxTurns" in (plan.status.message or "")


REF_SPEC = {"resume": {"sessionRef": "first"}}


def test_session_ref_waits_while_missing_or_running_then_resumes() -> None:
    missing = decide(session(REF_SPEC), Observed(ref_missing=True), SETTINGS, T0)
    assert missing.status is not None
    assert missing.status.phase == "Pending"
    assert "to exist" in (missing.status.message or "")
    assert condition(missing.status, "Succeeded") == ("Unknown", "WaitingForSessionRef")
    assert missing.requeue_after
    busy = RefView(name="first", phase="Running", reason=None, session_id="aaaa")
    assert decide(session(REF_SPEC), Observed(ref=busy), SETTINGS, T0).create_pod is None
    done = RefView(
        name="first",
        phase="Succeeded",
        reason="Completed",
        session_id="5b1e0d52-3c36-4f55-9a39-0e0d2f6b1c11",
    )
    plan = decide(session(REF_SPEC), Observed(ref=done), SETTINGS, T0)
    assert plan.create_pod is not None
    config = run_config(plan.create_pod)
    assert config["resumeSessionId"] == done.session_id
    assert config["sessionId"] == done.session_id  # a plain resume continues that session
    assert plan.status is not None
    assert plan.status.session_id == done.session_id


def test_fork_of_a_ref_gets_its_own_session_id() -> None:
    done = RefView(
        name="first",
        phase="Failed",
        reason="MaxTurnsReached",
        session_id="5b1e0d52-3c36-4f55-9a39-0e0d2f6b1c11",
    )
    plan = decide(
        session({"resume": {"sessionRef": "first", "fork": True}}), Observed(ref=done), SETTINGS, T0
    )
    assert plan.create_pod is not None
    config = run_config(plan.create_pod)
    assert config["forkSession"] is True
    assert config["resumeSessionId"] == done.session_id
    assert config["sessionId"] == session_id_for(UID)


def test_ref_that_failed_without_a_session_fails_this_one() -> None:
    dead = RefView(name="first", phase="Failed", reason="InvalidSpec", session_id=None)
    plan = decide(session(REF_SPEC), Observed(ref=dead), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Failed"
    assert plan.status.reason == "InvalidSpec"
    assert "without an agent session" in (plan.status.message or "")


def test_ttl_deletes_finished_sessions_when_due() -> None:
    ags = started({"ttlSecondsAfterFinished": 60})
    ags = apply(ags, decide(ags, Observed(pods=(ended(1, 0, COMPLETED),)), SETTINGS, T0))
    early = decide(ags, Observed(), SETTINGS, T0 + dt.timedelta(seconds=20))
    assert early.requeue_after == 40
    assert not early.delete_session
    assert decide(ags, Observed(), SETTINGS, T0 + dt.timedelta(seconds=60)).delete_session


def test_terminal_session_stops_stray_pods() -> None:
    ags = started()
    ags = apply(ags, decide(ags, Observed(pods=(ended(1, 0, COMPLETED),)), SETTINGS, T0))
    plan = decide(ags, Observed(pods=(ended(1, 0, COMPLETED), running(2))), SETTINGS, T0)
    assert plan.delete_pods == ("hello-2",)


def test_a_pod_whose_status_write_was_lost_is_recorded_not_recreated() -> None:
    # The pod was created but the status write after it failed (API timeout, operator crash):
    # the next pass sees a pod the status does not record.
    later = T0 + dt.timedelta(seconds=40)
    for pod in (running(1), PodView.from_body(pod_body(1, None, phase="Pending"))):
        assert pod is not None
        plan = decide(session(), Observed(pods=(pod,)), SETTINGS, later)
        assert plan.create_pod is None
        assert plan.status is not None
        assert plan.status.phase == "Running"
        assert plan.status.attempts == 1
        assert plan.status.pod_name == "hello-1"
        assert plan.status.session_id == session_id_for(UID)
        assert plan.status.start_time == dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
        assert condition(plan.status, "Running") == ("True", "PodCreated")
        # Recorded once: the following pass has nothing to write.
        assert decide(apply(session(), plan), Observed(pods=(pod,)), SETTINGS, later) == Plan()


def test_an_unrecorded_attempt_that_already_finished_is_concluded() -> None:
    plan = decide(session(), Observed(pods=(ended(1, 0, COMPLETED),)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Succeeded"
    assert plan.status.attempts == 1
    assert plan.status.result_preview == "Hello!"


def test_an_unrecorded_retry_pod_is_recorded_without_the_old_backoff() -> None:
    ags = started()
    backoff = decide(ags, Observed(pods=(ended(1, 4),)), SETTINGS, T0 + dt.timedelta(seconds=30))
    ags = apply(ags, backoff)
    # Attempt 2's pod exists, but the status still says attempt 1 is backing off.
    plan = decide(
        ags, Observed(pods=(ended(1, 4), running(2))), SETTINGS, T0 + dt.timedelta(seconds=45)
    )
    assert plan.create_pod is None
    assert plan.status is not None
    assert plan.status.attempts == 2
    assert plan.status.pod_name == "hello-2"
    assert condition(plan.status, "Running") == ("True", "PodCreated")
    # Attempt 2 then fails too: its summary counts, and the next backoff starts from it.
    ags = apply(ags, plan)
    failed = ended(2, 0, {**COMPLETED, "reason": "APIError", "apiErrorStatus": 529})
    again = decide(
        ags, Observed(pods=(ended(1, 4), failed)), SETTINGS, T0 + dt.timedelta(seconds=60)
    )
    assert again.status is not None
    assert condition(again.status, "Running") == ("False", "RetryBackoff")
    assert again.requeue_after == 20


@pytest.mark.parametrize(
    ("pod", "matters"),
    [
        (PodView.from_body(pod_body(1, None, phase="Pending")), False),  # our own create
        (PodView.from_body(pod_body(1, {"waiting": {"reason": "ContainerCreating"}})), False),
        (PodView.from_body(pod_body(1, {"waiting": {"reason": "ImagePullBackOff"}})), True),
        (PodView.from_body(unschedulable_body()), True),
        (running(1), True),
        (ended(1, 0, COMPLETED), True),
        (PodView.from_body(pod_body(1, None, phase="Failed", reason="Evicted")), True),
        (None, True),  # deleted
    ],
    ids=[
        "created",
        "starting",
        "cannot-start",
        "unschedulable",
        "running",
        "ended",
        "evicted",
        "deleted",
    ],
)
def test_which_pod_events_need_a_pass(pod: PodView | None, matters: bool) -> None:
    assert pod_event_matters(pod) is matters


def test_a_deleting_pod_needs_a_pass() -> None:
    body = pod_body(1, None, phase="Pending")
    body["metadata"]["deletionTimestamp"] = "2026-11-21T12:00:05Z"
    assert pod_event_matters(PodView.from_body(body))


# -- spec.suspend and onLimitReached: Pause -------------------------------------------------------

PAUSE_SPEC = {"maxTurns": 10, "maxBudgetUsd": 0.5, "onLimitReached": "Pause"}


def edited(ags: AgentSession, **spec: Any) -> AgentSession:
    """The session after a spec update (snake_case fields): the API server bumps the generation."""
    generation = (ags.metadata.generation or 0) + 1
    return ags.model_copy(
        update={
            "spec": ags.spec.model_copy(update=spec),
            "metadata": ags.metadata.model_copy(update={"generation": generation}),
        }
    )


def deleting(pod: PodView) -> PodView:
    return dataclasses.replace(pod, deleting=True)


def stopped_by_sigterm(attempt: int, report: dict[str, Any] | None = REPORT) -> PodView:
    """A deleted pod whose runner saved the turn and exited retryable; its gateway reported."""
    return deleting(
        ended(attempt, 4, {"reason": "ExecutionError", "message": "stopped"}, report=report)
    )


def reasons(plan: Plan) -> list[str]:
    return [e.reason for e in plan.events]


def test_a_session_created_suspended_gets_no_pod_until_cleared() -> None:
    ags = session({"suspend": True})
    plan = decide(ags, Observed(), SETTINGS, T0)
    assert plan.create_pod is None
    assert plan.status is not None
    assert plan.status.phase == "Suspended"
    assert plan.status.attempts is None
    assert condition(plan.status, "Succeeded") == ("Unknown", "Suspended")
    assert condition(plan.status, "Running") == ("False", "Suspended")
    assert reasons(plan) == ["Suspended"]
    ags = apply(ags, plan)
    assert decide(ags, Observed(), SETTINGS, T0 + dt.timedelta(minutes=5)) == Plan()

    resumed = decide(edited(ags, suspend=False), Observed(), SETTINGS, T0)
    assert resumed.create_pod is not None
    assert resumed.create_pod["metadata"]["name"] == "hello-1"
    assert resumed.status is not None
    assert resumed.status.phase == "Running"
    assert reasons(resumed) == ["Resumed"]


def test_suspending_a_running_session_stops_its_pod_charges_it_and_resumes_the_session() -> None:
    ags = started({"backoffLimit": 1, "maxTurns": 10, "maxBudgetUsd": 1.0})
    ags = edited(ags, suspend=True)
    stop = decide(ags, Observed(pods=(running(1),)), SETTINGS, T0 + dt.timedelta(seconds=20))
    assert stop.delete_pods == ("hello-1",)
    assert stop.create_pod is None
    assert stop.status is not None
    assert stop.status.phase == "Suspended"
    assert condition(stop.status, "Running") == ("False", "Suspending")
    assert condition(stop.status, "Succeeded") == ("Unknown", "Suspended")
    assert reasons(stop) == ["Suspended"]
    ags = apply(ags, stop)

    # While the pod stops: no second delete, nothing to write.
    assert decide(ags, Observed(pods=(deleting(running(1)),)), SETTINGS, T0) == Plan()
    # Its agent has ended but its gateway is still writing the final report: wait for it.
    gateway_running = dataclasses.replace(stopped_by_sigterm(1), gateway_ended=False)
    assert decide(ags, Observed(pods=(gateway_running,)), SETTINGS, T0) == Plan()

    report = gateway_report(spent=0.25, requests=3)
    charged = decide(ags, Observed(pods=(stopped_by_sigterm(1, report),)), SETTINGS, T0)
    assert charged.create_pod is None
    assert charged.status is not None
    assert charged.status.phase == "Suspended"
    assert condition(charged.status, "Running") == ("False", "Suspended")
    assert charged.status.total_cost_usd == pytest.approx(0.25)
    assert charged.status.num_turns == 3
    assert charged.status.interrupted_attempts == 1
    assert charged.events == ()  # the Suspended event came with the stop
    ags = apply(ags, charged)
    assert decide(ags, Observed(), SETTINGS, T0 + dt.timedelta(minutes=1)) == Plan()

    resumed = decide(edited(ags, suspend=False), Observed(), SETTINGS, T0 + dt.timedelta(minutes=2))
    assert resumed.create_pod is not None
    assert resumed.create_pod["metadata"]["name"] == "hello-2"
    config = run_config(resumed.create_pod)
    assert config["sessionId"] == session_id_for(UID)  # the runner resumes it from the store
    assert config["maxTurns"] == 7
    assert config["maxBudgetUsd"] == pytest.approx(0.75)
    assert resumed.status is not None
    assert resumed.status.phase == "Running"
    assert resumed.status.attempts == 2
    assert reasons(resumed) == ["Resumed"]
    ags = apply(edited(ags, suspend=False), resumed)

    # The suspended attempt does not count against backoffLimit 1: a failure now is retried.
    failed = decide(ags, Observed(pods=(ended(2, 4, {"reason": "ExecutionError"}),)), SETTINGS, T0)
    assert failed.status is not None
    assert failed.status.phase == "Running"
    assert condition(failed.status, "Running") == ("False", "RetryBackoff")
    assert failed.requeue_after == 10  # the first backoff: the suspension was no failure


def test_a_suspended_pod_that_vanished_is_charged_from_its_stored_report() -> None:
    ags = apply(
        edited(started(), suspend=True),
        decide(edited(started(), suspend=True), Observed(pods=(running(1),)), SETTINGS, T0),
    )
    stored = {"hello-1": json.dumps(gateway_report(spent=0.1, requests=1))}
    plan = decide(ags, Observed(stored_reports=stored), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Suspended"
    assert plan.status.total_cost_usd == pytest.approx(0.1)
    assert plan.status.interrupted_attempts == 1


def test_suspend_cleared_while_the_pod_stops_continues_at_once() -> None:
    ags = edited(started(), suspend=True)
    ags = apply(ags, decide(ags, Observed(pods=(running(1),)), SETTINGS, T0))
    ags = edited(ags, suspend=False)
    waiting = decide(ags, Observed(pods=(deleting(running(1)),)), SETTINGS, T0)
    assert (waiting.create_pod, waiting.delete_pods, waiting.events) == (None, (), ())
    assert waiting.status is not None
    assert condition(waiting.status, "Running") == ("False", "Suspending")
    plan = decide(ags, Observed(pods=(stopped_by_sigterm(1),)), SETTINGS, T0)
    assert plan.create_pod is not None  # no backoff: nothing failed
    assert plan.create_pod["metadata"]["name"] == "hello-2"
    assert plan.status is not None
    assert plan.status.interrupted_attempts == 1
    assert plan.status.phase == "Running"
    assert reasons(plan) == ["Resumed"]


def test_suspending_a_session_in_backoff_charges_nothing_twice() -> None:
    ags = started()
    ags = apply(ags, decide(ags, Observed(pods=(ended(1, 4),)), SETTINGS, T0))
    assert ags.status is not None
    cost = ags.status.total_cost_usd
    ags = edited(ags, suspend=True)
    plan = decide(ags, Observed(pods=(ended(1, 4),)), SETTINGS, T0 + dt.timedelta(seconds=5))
    assert plan.status is not None
    assert plan.status.phase == "Suspended"
    assert plan.status.total_cost_usd == cost
    assert plan.status.interrupted_attempts is None  # attempt 1 really failed
    assert plan.create_pod is None
    ags = apply(ags, plan)
    resumed = decide(edited(ags, suspend=False), Observed(pods=(ended(1, 4),)), SETTINGS, T0)
    assert resumed.create_pod is not None
    assert resumed.create_pod["metadata"]["name"] == "hello-2"


def test_a_stopped_attempt_that_finished_anyway_succeeds() -> None:
    ags = edited(started(), suspend=True)
    ags = apply(ags, decide(ags, Observed(pods=(running(1),)), SETTINGS, T0))
    plan = decide(ags, Observed(pods=(deleting(ended(1, 0, COMPLETED)),)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Succeeded"


def test_a_terminal_session_ignores_suspend() -> None:
    ags = started()
    ags = apply(ags, decide(ags, Observed(pods=(ended(1, 0, COMPLETED),)), SETTINGS, T0))
    plan = decide(edited(ags, suspend=True), Observed(pods=(ended(1, 0, COMPLETED),)), SETTINGS, T0)
    assert plan.delete_pods == ()
    assert plan.status is not None
    assert plan.status.phase == "Succeeded"
    assert plan.events == ()


def refused(attempt: int, spent: float, requests: int = 2) -> PodView:
    """An attempt the gateway stopped at the session's budget."""
    report = gateway_report(spent=spent, requests=requests, refused=1, ended="budget_exhausted")
    return ended(attempt, 0, {"reason": "BudgetExceeded"}, report=report)


def test_pause_on_budget_then_a_raise_resumes_the_session_with_what_is_left() -> None:
    ags = started(PAUSE_SPEC)
    paused = decide(ags, Observed(pods=(refused(1, 0.5),)), SETTINGS, T0)
    assert paused.create_pod is None
    assert paused.status is not None
    assert paused.status.phase == "Paused"
    assert paused.status.reason == "BudgetExceeded"
    assert paused.status.completion_time is None
    assert paused.status.interrupted_attempts == 1
    assert paused.status.total_cost_usd == pytest.approx(0.5)
    assert condition(paused.status, "Succeeded") == ("Unknown", "Paused")
    assert condition(paused.status, "Running") == ("False", "BudgetExceeded")
    hint = """kubectl patch agentsession hello --type merge -p '{"spec":{"maxBudgetUsd":1.0}}'"""
    assert hint in (paused.status.message or "")
    assert reasons(paused) == ["Paused"]
    ags = apply(ags, paused)
    assert decide(ags, Observed(pods=(refused(1, 0.5),)), SETTINGS, T0) == Plan()
    # Raising the other limit does not help: still paused, no new event.
    more_turns = decide(edited(ags, max_turns=20), Observed(pods=(refused(1, 0.5),)), SETTINGS, T0)
    assert more_turns.create_pod is None
    assert more_turns.events == ()

    raised = edited(ags, max_budget_usd=1.0)
    resumed = decide(raised, Observed(pods=(refused(1, 0.5),)), SETTINGS, T0)
    assert resumed.create_pod is not None
    assert resumed.create_pod["metadata"]["name"] == "hello-2"
    config = run_config(resumed.create_pod)
    assert config["sessionId"] == session_id_for(UID)
    assert config["maxBudgetUsd"] == pytest.approx(0.5)
    assert config["maxTurns"] == 8
    assert resumed.status is not None
    assert resumed.status.phase == "Running"
    assert resumed.status.reason is None
    assert reasons(resumed) == ["Resumed"]
    ags = apply(raised, resumed)

    done = ended(2, 0, COMPLETED, report=gateway_report(spent=0.3, requests=1))
    finished = decide(ags, Observed(pods=(refused(1, 0.5), done)), SETTINGS, T0)
    assert finished.status is not None
    assert finished.status.phase == "Succeeded"
    assert finished.status.total_cost_usd == pytest.approx(0.8)
    assert finished.status.num_turns == 3
    assert finished.status.attempts == 2


def test_pause_on_max_turns_waits_for_more_turns() -> None:
    ags = started(PAUSE_SPEC)
    at_limit = ended(
        1, 0, {"reason": "MaxTurnsReached"}, report=gateway_report(spent=0.1, requests=10)
    )
    paused = decide(ags, Observed(pods=(at_limit,)), SETTINGS, T0)
    assert paused.status is not None
    assert paused.status.phase == "Paused"
    assert paused.status.reason == "MaxTurnsReached"
    assert """-p '{"spec":{"maxTurns":20}}'""" in (paused.status.message or "")
    ags = apply(ags, paused)
    assert decide(edited(ags, max_budget_usd=5.0), Observed(), SETTINGS, T0).create_pod is None
    resumed = decide(edited(ags, max_turns=15), Observed(), SETTINGS, T0)
    assert resumed.create_pod is not None
    assert run_config(resumed.create_pod)["maxTurns"] == 5


def test_fail_at_a_limit_stays_the_default() -> None:
    ags = started({"maxTurns": 10, "maxBudgetUsd": 0.5})
    plan = decide(ags, Observed(pods=(refused(1, 0.5),)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Failed"
    assert plan.status.reason == "BudgetExceeded"


def test_an_attempt_charged_its_whole_reservation_pauses_instead_of_failing() -> None:
    settings = SETTINGS.model_copy(update={"backoff_base_seconds": 0})
    plan = decide(started(PAUSE_SPEC), Observed(pods=(evicted(report=None),)), settings, T0)
    assert plan.create_pod is None
    assert plan.status is not None
    assert plan.status.phase == "Paused"
    assert plan.status.reason == "MaxTurnsReached"
    assert plan.status.interrupted_attempts is None  # the eviction was a failure


def test_a_limit_raised_while_the_attempt_ran_continues_at_once() -> None:
    ags = edited(started(PAUSE_SPEC), max_budget_usd=2.0)
    plan = decide(ags, Observed(pods=(refused(1, 0.5),)), SETTINGS, T0)
    assert plan.create_pod is not None
    assert run_config(plan.create_pod)["maxBudgetUsd"] == pytest.approx(1.5)
    assert plan.status is not None
    assert plan.status.phase == "Running"
    assert plan.status.interrupted_attempts == 1
    assert reasons(plan) == ["Resumed"]


def test_a_raise_beyond_the_operator_maximum_is_held_to_it_not_failed() -> None:
    ags = started(PAUSE_SPEC)
    ags = apply(ags, decide(ags, Observed(pods=(refused(1, 0.5),)), SETTINGS, T0))
    raised = edited(ags, max_budget_usd=100.0)  # the operator's maximum is 25
    plan = decide(raised, Observed(), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Running"
    assert plan.create_pod is not None
    assert run_config(plan.create_pod)["maxBudgetUsd"] == pytest.approx(24.5)
    assert reasons(plan) == ["LimitAboveMaximum", "Resumed"]
    assert "operator's maximum 25" in plan.events[0].message
    # A running session raised past it keeps running (it was failed mid-run before).
    running_raised = edited(started(), max_turns=999)
    kept = decide(running_raised, Observed(pods=(running(1),)), SETTINGS, T0)
    assert kept.delete_pods == ()
    assert kept.status is not None
    assert kept.status.phase == "Running"
    assert reasons(kept) == ["LimitAboveMaximum"]
    # A new session asking for that much is still refused.
    refused_new = decide(session({"maxTurns": 999}), Observed(), SETTINGS, T0)
    assert refused_new.status is not None
    assert refused_new.status.reason == "InvalidSpec"


def test_a_paused_session_at_the_operator_maximum_says_it_cannot_continue() -> None:
    spec = {**PAUSE_SPEC, "maxBudgetUsd": SETTINGS.max_max_budget_usd}
    ags = started(spec)
    plan = decide(ags, Observed(pods=(refused(1, SETTINGS.max_max_budget_usd),)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Paused"
    assert "operator's maximum" in (plan.status.message or "")
    assert "kubectl patch" not in (plan.status.message or "")


# -- nothing the schema accepts wedges a session ---------------------------------------------------


def ref_wait(ags: AgentSession, observed: Observed, seconds: float) -> tuple[AgentSession, Plan]:
    plan = decide(ags, observed, SETTINGS, T0 + dt.timedelta(seconds=seconds))
    return apply(ags, plan), plan


def test_a_wait_for_a_missing_ref_backs_off_then_times_out_naming_it() -> None:
    ags = session(REF_SPEC)
    missing = Observed(ref_missing=True)
    polls = []
    for seconds in (0, 5, 20, 100, 1000):
        ags, plan = ref_wait(ags, missing, seconds)
        assert plan.create_pod is None
        polls.append(plan.requeue_after)
    # 5 s at first, then as long as it waited so far, at most a minute.
    assert polls == [5, 5, 20, 60, 60]
    assert ags.status is not None
    assert ags.status.phase == "Pending"
    assert condition(ags.status, "Running") == ("False", "WaitingForSessionRef")
    # Near the timeout it looks again exactly when the timeout is due.
    _, near = ref_wait(ags, missing, SETTINGS.session_ref_timeout_seconds - 10)
    assert near.requeue_after == 10
    _, timed_out = ref_wait(ags, missing, SETTINGS.session_ref_timeout_seconds)
    assert timed_out.status is not None
    assert timed_out.status.phase == "Failed"
    assert timed_out.status.reason == "InvalidSpec"
    assert "AgentSession first (spec.resume.sessionRef) does not exist" in (
        timed_out.status.message or ""
    )
    assert "AGENTSESSION_SESSION_REF_TIMEOUT_SECONDS=3600" in (timed_out.status.message or "")
    assert timed_out.create_pod is None
    assert [e.reason for e in timed_out.events] == ["InvalidSpec"]


def test_a_ref_that_runs_is_waited_for_as_long_as_it_runs() -> None:
    ags = session(REF_SPEC)
    busy = Observed(ref=RefView(name="first", phase="Running", reason=None, session_id="a"))
    ags, _ = ref_wait(ags, busy, 0)
    ags, plan = ref_wait(ags, busy, 10 * SETTINGS.session_ref_timeout_seconds)
    assert plan.status is None  # nothing new to say: no write
    assert plan.requeue_after == 60
    assert ags.status is not None
    assert ags.status.phase == "Pending"


@pytest.mark.parametrize("phase", ["Suspended", "Paused"])
def test_a_ref_that_stays_suspended_or_paused_times_out_from_when_it_stopped(phase: str) -> None:
    ags = session(REF_SPEC)
    running_ref = RefView(name="first", phase="Running", reason=None, session_id="a")
    stalled_ref = RefView(name="first", phase=phase, reason=None, session_id="a")
    ags, _ = ref_wait(ags, Observed(ref=running_ref), 0)
    ags, _ = ref_wait(ags, Observed(ref=running_ref), 5000)  # longer than the timeout: fine
    ags, plan = ref_wait(ags, Observed(ref=stalled_ref), 6000)  # the wait's clock starts here
    assert plan.status is not None
    assert f"(it is {phase})" in (plan.status.message or "")
    _, still = ref_wait(ags, Observed(ref=stalled_ref), 6000 + 3599)
    assert still.status is None or still.status.phase == "Pending"
    _, failed = ref_wait(ags, Observed(ref=stalled_ref), 6000 + 3600)
    assert failed.status is not None
    assert failed.status.reason == "InvalidSpec"
    assert f"stays {phase} and does not finish by itself" in (failed.status.message or "")


def test_a_ref_wait_times_out_after_the_setting() -> None:
    quick = SETTINGS.model_copy(update={"session_ref_timeout_seconds": 30})
    ags = session(REF_SPEC)
    ags = apply(ags, decide(ags, Observed(ref_missing=True), quick, T0))
    plan = decide(ags, Observed(ref_missing=True), quick, T0 + dt.timedelta(seconds=30))
    assert plan.status is not None
    assert plan.status.reason == "InvalidSpec"


def test_a_pod_the_api_server_refused_fails_the_session_before_any_attempt() -> None:
    refusal = (
        'the API server refused runner pod hello-1 (403 Forbidden): pods "hello-1" is '
        'forbidden: violates PodSecurity "restricted:latest": host namespaces (hostNetwork=true)'
    )
    plan = decide(session(), Observed(refused={"hello-1": refusal}), SETTINGS, T0)
    assert plan.create_pod is None
    assert plan.admission_attempt is None
    assert plan.status is not None
    assert plan.status.phase == "Failed"
    assert plan.status.reason == "InvalidSpec"
    assert plan.status.message == f"attempt 1 cannot start: {refusal}"
    assert not plan.status.attempts  # nothing ran: nothing charged, no pod to look for
    assert plan.status.pod_name is None
    assert condition(plan.status, "Succeeded") == ("False", "InvalidSpec")
    assert [e.reason for e in plan.events] == ["InvalidSpec"]


def test_a_refused_retry_fails_after_charging_the_attempt_before_it() -> None:
    ags = started()
    settings = SETTINGS.model_copy(update={"backoff_base_seconds": 0})
    refusal = "the API server refused runner pod hello-2 (403 Forbidden): exceeded quota"
    plan = decide(ags, Observed(pods=(evicted(),), refused={"hello-2": refusal}), settings, T0)
    assert plan.create_pod is None
    assert plan.status is not None
    assert plan.status.phase == "Failed"
    assert plan.status.reason == "InvalidSpec"
    assert plan.status.attempts == 1
    assert plan.status.total_cost_usd == 0.02  # attempt 1, as its gateway metered it


def deep_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


def test_an_output_schema_nested_too_deep_fails_naming_the_field() -> None:
    limit = OUTPUT_SCHEMA_MAX_DEPTH
    fits = decide(session({"outputFormat": {"schema": deep_schema(limit - 1)}}), Observed(),
                  SETTINGS, T0)  # fmt: skip
    assert fits.create_pod is not None
    for levels in (limit, 127, 9_999):  # 128 levels of issue 12; the API server's own limit
        plan = decide(
            session({"outputFormat": {"schema": deep_schema(levels)}}), Observed(), SETTINGS, T0
        )
        assert plan.create_pod is None
        assert plan.status is not None
        assert plan.status.reason == "InvalidSpec"
        assert plan.status.message == (
            f"spec.outputFormat.schema nests {levels + 1} levels deep (objects and arrays); "
            f"the operator accepts at most {limit}"
        )


@pytest.mark.parametrize(
    ("value", "depth"),
    [("x", 0), ({}, 1), ([], 1), ({"a": [1, {"b": []}]}, 4), ([[[]], {"c": {"d": {}}}], 4)],
)
def test_nesting_depth_counts_objects_and_arrays(value: object, depth: int) -> None:
    assert nesting_depth(value) == depth


def test_a_run_config_too_large_for_the_pod_fails_naming_the_largest_field() -> None:
    noise = random.Random(12)  # text that does not compress
    letters = "".join(noise.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(400_000))
    spec = {"prompt": "hi", "outputFormat": {"schema": {"type": "object", "description": letters}}}
    plan = decide(session(spec), Observed(), SETTINGS, T0)
    assert plan.create_pod is None
    assert plan.status is not None
    assert plan.status.reason == "InvalidSpec"
    message = plan.status.message or ""
    assert message.startswith("attempt 1 cannot start: the run config does not fit the runner pod")
    assert "more than the 262,144 the API server allows" in message
    assert "the largest parts: spec.outputFormat.schema (400," in message
    # The same text, compressible, fits.
    spec["outputFormat"]["schema"]["description"] = "a" * 400_000  # type: ignore[index]
    assert decide(session(spec), Observed(), SETTINGS, T0).create_pod is not None


def test_an_unschedulable_pod_is_reported_on_the_session() -> None:
    ags = started()
    pod = PodView.from_body(unschedulable_body())
    assert pod is not None
    plan = decide(ags, Observed(pods=(pod,)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Running"
    assert plan.status.message == (
        "runner pod hello-1 cannot be scheduled: 0/1 nodes are available: 1 Insufficient memory."
    )
    assert condition(plan.status, "Running") == ("False", "Unschedulable")
