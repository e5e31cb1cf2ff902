"""Table tests for what decide() charges and bounds across attempts: usage summed like cost and
turns, a pod that hit its deadline charged its gateway's final report, one structured-output
limit from the runner's summary to the status, and timeoutSeconds over the whole session."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from agentsession_contract.run import (
    RESULT_PREVIEW_MAX_CHARS,
    STRUCTURED_OUTPUT_MAX_BYTES,
    SUMMARY_MAX_BYTES,
    Reason,
    RunSummary,
    structured_output_fits,
)
from agentsession_operator.models import AgentSession
from agentsession_operator.reconcile.decide import Plan, decide
from agentsession_operator.reconcile.observed import Observed, PodView
from agentsession_runner.run import bounded_structured_output
from tests.unit.test_decide import (
    SETTINGS,
    T0,
    apply,
    condition,
    edited,
    ended,
    gateway_report,
    pod_body,
    run_config,
    running,
    session,
    started,
    stopped_by_sigterm,
)


def two_model_report(spent: float, sonnet: int, haiku: int) -> dict[str, Any]:
    """A gateway report whose requests went to two models (a subagent on haiku, say)."""
    report = gateway_report(spent=spent, requests=sonnet + haiku)
    report["models"] = {
        "claude-sonnet-4-5": {
            "requests": sonnet,
            "inputTokens": 1000 * sonnet,
            "outputTokens": 100 * sonnet,
            "cacheReadInputTokens": 50 * sonnet,
            "costUsd": str(round(spent * 0.75, 6)),
        },
        "claude-haiku-4-5": {
            "requests": haiku,
            "inputTokens": 200 * haiku,
            "outputTokens": 20 * haiku,
            "cacheCreationInputTokens": 7 * haiku,
            "costUsd": str(round(spent * 0.25, 6)),
        },
    }
    return report


# -- usage and modelUsage: summed over attempts, like cost and turns -----------------------------


def test_usage_and_model_usage_are_summed_over_attempts() -> None:
    settings = SETTINGS.model_copy(update={"backoff_base_seconds": 0})
    ags = started({"maxTurns": 50, "maxBudgetUsd": 5.0})
    first = ended(
        1, 0, {"reason": "APIError", "apiErrorStatus": 529}, report=two_model_report(0.4, 3, 2)
    )
    retried = decide(ags, Observed(pods=(first,)), settings, T0)
    assert retried.create_pod is not None  # attempt 2 starts at once (no backoff here)
    ags = apply(ags, retried)
    second = ended(
        2,
        0,
        # The agent's own usage claims are not what is charged: the gateway's report is.
        {"reason": "Completed", "usage": {"input_tokens": 1}, "numTurns": 1},
        report=two_model_report(0.2, 1, 4),
    )
    plan = decide(ags, Observed(pods=(first, second)), settings, T0)
    assert plan.status is not None
    assert plan.status.phase == "Succeeded"
    assert plan.status.num_turns == 3 + 2 + 1 + 4
    assert plan.status.total_cost_usd == pytest.approx(0.6)
    assert plan.status.usage == {
        "input_tokens": 1000 * 4 + 200 * 6,
        "output_tokens": 100 * 4 + 20 * 6,
        "cache_read_input_tokens": 50 * 4,
        "cache_creation_input_tokens": 7 * 6,
    }
    usage = plan.status.model_usage or {}
    assert set(usage) == {"claude-sonnet-4-5", "claude-haiku-4-5"}
    assert usage["claude-sonnet-4-5"]["requests"] == 4
    assert usage["claude-sonnet-4-5"]["inputTokens"] == 4000
    assert usage["claude-sonnet-4-5"]["costUSD"] == pytest.approx(0.45)
    assert usage["claude-haiku-4-5"]["requests"] == 6
    assert usage["claude-haiku-4-5"]["cacheCreationInputTokens"] == 42
    assert usage["claude-haiku-4-5"]["costUSD"] == pytest.approx(0.15)


# -- a pod that hit its activeDeadlineSeconds ----------------------------------------------------


def deadline_pod(gateway: dict[str, Any], agent: dict[str, Any] | None = None) -> PodView:
    """A pod the kubelet marked DeadlineExceeded (it marks the pod first, then kills)."""
    body = pod_body(1, agent, phase="Failed", reason="DeadlineExceeded")
    body["status"]["initContainerStatuses"] = [{"name": "gateway", "state": gateway}]
    view = PodView.from_body(body)
    assert view is not None
    return view


KILLED_AGENT = {"terminated": {"exitCode": 137, "reason": "Error"}}
STILL_RUNNING = {"running": {"startedAt": "2026-11-21T12:00:01Z"}}


def test_a_deadline_exceeded_pod_is_charged_its_gateways_final_report() -> None:
    ags = started({"maxTurns": 10, "maxBudgetUsd": 1.0})
    # Marked, not yet killed: the gateway still meters, its final report is to come.
    for agent in (STILL_RUNNING, KILLED_AGENT):
        assert decide(ags, Observed(pods=(deadline_pod(STILL_RUNNING, agent),)), SETTINGS, T0) == (
            Plan()
        )
    final = gateway_report(spent=0.31, requests=4)
    gateway = {"terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(final)}}
    plan = decide(ags, Observed(pods=(deadline_pod(gateway, KILLED_AGENT),)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Failed"
    assert plan.status.reason == "DeadlineExceeded"
    # What it metered: neither nothing nor the whole reservation ($1, 10 turns).
    assert plan.status.total_cost_usd == pytest.approx(0.31)
    assert plan.status.num_turns == 4
    assert "no gateway report" not in (plan.status.message or "")


def test_a_deadline_exceeded_pod_whose_gateway_left_no_message_is_charged_the_stored_report() -> (
    None
):
    ags = started({"maxTurns": 10, "maxBudgetUsd": 1.0})
    killed = {"terminated": {"exitCode": 137, "reason": "Error"}}
    pod = deadline_pod(killed, KILLED_AGENT)
    stored = {"hello-1": json.dumps(gateway_report(spent=0.12, requests=2))}
    plan = decide(ags, Observed(pods=(pod,), stored_reports=stored), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.reason == "DeadlineExceeded"
    assert plan.status.total_cost_usd == pytest.approx(0.12)
    assert plan.status.num_turns == 2


# -- structured output: one limit from the runner's summary to the status ------------------------


def output_of(size: int) -> dict[str, str]:
    """A structured output of exactly `size` bytes as compact JSON."""
    value = {"a": ""}
    value["a"] = "x" * (size - len(json.dumps(value, separators=(",", ":"))))
    assert len(json.dumps(value, separators=(",", ":")).encode()) == size
    return value


def crowded_summary(structured: Any) -> RunSummary:
    """A summary with every optional field as large as the runner makes it (a non-ASCII preview
    is three bytes a character)."""
    return RunSummary(
        reason=Reason.COMPLETED,
        message="m" * 2000,
        session_id="0b7a3c52-1111-4a4a-9c9c-5e5e5e5e5e5e",
        subtype="success",
        is_error=False,
        num_turns=12,
        total_cost_usd=0.123456,
        duration_ms=123456,
        stop_reason="end_turn",
        terminal_reason="completed",
        usage={"input_tokens": 123456, "output_tokens": 12345},
        model_usage={"claude-sonnet-4-5": {"inputTokens": 123456.0, "costUSD": 0.1}},
        result_preview="結" * RESULT_PREVIEW_MAX_CHARS,
        structured_output=structured,
        errors=["e" * 500, "f" * 500],
        permission_denials=3,
        result_ref="s3://bucket/agents/team-a/sessions/0b7a3c52/result.json",
        transcript_ref="s3://bucket/agents/team-a/sessions/0b7a3c52/",
    )


def test_structured_output_at_the_limit_survives_a_crowded_summary_into_the_status() -> None:
    largest = output_of(STRUCTURED_OUTPUT_MAX_BYTES)
    assert structured_output_fits(largest)
    assert bounded_structured_output(largest) == largest
    message = crowded_summary(largest).to_termination_message()
    assert len(message.encode()) <= SUMMARY_MAX_BYTES
    assert json.loads(message)["structuredOutput"] == largest

    plan = decide(started(), Observed(pods=(ended(1, 0, json.loads(message)),)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Succeeded"
    assert plan.status.structured_output == largest


def test_structured_output_over_the_limit_is_left_to_result_ref_on_both_sides() -> None:
    over = output_of(STRUCTURED_OUTPUT_MAX_BYTES + 1)
    assert not structured_output_fits(over)
    assert bounded_structured_output(over) is None
    # A forged summary carrying it anyway: the operator applies the same limit.
    forged = {"reason": "Completed", "structuredOutput": over}
    plan = decide(started(), Observed(pods=(ended(1, 0, forged),)), SETTINGS, T0)
    assert plan.status is not None
    assert plan.status.phase == "Succeeded"
    assert plan.status.structured_output is None
    assert (plan.status.result_ref or "").endswith("/result.json")


# -- timeoutSeconds bounds the whole session ------------------------------------------------------


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def deadlines(plan: Plan) -> tuple[int, int]:
    """The attempt's own timeout (the runner stops itself) and its pod's activeDeadlineSeconds."""
    assert plan.create_pod is not None
    return run_config(plan.create_pod)["timeoutSeconds"], plan.create_pod["spec"][
        "activeDeadlineSeconds"
    ]


GRACE = SETTINGS.deadline_grace_seconds


def test_each_attempt_gets_what_is_left_of_timeout_seconds_and_none_starts_past_it() -> None:
    spec = {"timeoutSeconds": 600, "backoffLimit": 5}
    ags = session(spec)
    first = decide(ags, Observed(), SETTINGS, T0)
    assert deadlines(first) == (600, 600 + GRACE)
    ags = apply(ags, first)

    # Attempt 1 fails after 400 s; the backoff (10 s) counts too, as for a Job.
    failed = ended(1, 4, {"reason": "ExecutionError"})
    ags = apply(ags, decide(ags, Observed(pods=(failed,)), SETTINGS, at(400)))
    second = decide(ags, Observed(pods=(failed,)), SETTINGS, at(410))
    assert deadlines(second) == (190, 190 + GRACE)
    ags = apply(ags, second)

    # Attempt 2 fails at 590 s: its 20 s backoff would end past the deadline, so the session
    # is looked at again at the deadline, and fails there without a third attempt.
    failed_again = ended(2, 4, {"reason": "ExecutionError", "message": "store: unreachable"})
    pods = (failed, failed_again)
    backing_off = decide(ags, Observed(pods=pods), SETTINGS, at(590))
    assert backing_off.create_pod is None
    assert backing_off.requeue_after == pytest.approx(10)
    ags = apply(ags, backing_off)
    assert decide(ags, Observed(pods=pods), SETTINGS, at(595)).requeue_after == pytest.approx(5)
    over = decide(ags, Observed(pods=pods), SETTINGS, at(600))
    assert over.create_pod is None
    assert over.status is not None
    assert over.status.phase == "Failed"
    assert over.status.reason == "DeadlineExceeded"
    assert over.status.attempts == 2
    message = over.status.message or ""
    assert "spec.timeoutSeconds (600s since 2026-11-21T12:00:00Z, over 2 attempts)" in message
    assert "store: unreachable" in message
    assert condition(over.status, "Succeeded") == ("False", "DeadlineExceeded")
    assert [e.reason for e in over.events] == ["DeadlineExceeded"]


def test_the_default_timeout_bounds_the_session_too() -> None:
    settings = SETTINGS.model_copy(update={"default_timeout_seconds": 100})
    ags = apply(session(), decide(session(), Observed(), settings, T0))
    failed = ended(1, 4, {"reason": "ExecutionError"})
    ags = apply(ags, decide(ags, Observed(pods=(failed,)), settings, at(95)))
    assert ags.status is not None
    assert condition(ags.status, "Running") == ("False", "RetryBackoff")
    plan = decide(ags, Observed(pods=(failed,)), settings, at(100))
    assert plan.status is not None
    assert (plan.status.phase, plan.status.reason) == ("Failed", "DeadlineExceeded")


def test_time_suspended_does_not_count_against_timeout_seconds() -> None:
    spec = {"timeoutSeconds": 600}
    ags: AgentSession = apply(session(spec), decide(session(spec), Observed(), SETTINGS, T0))
    ags = edited(ags, suspend=True)
    ags = apply(ags, decide(ags, Observed(pods=(running(1),)), SETTINGS, at(500)))
    stopped = stopped_by_sigterm(1)
    ags = apply(ags, decide(ags, Observed(pods=(stopped,)), SETTINGS, at(510)))
    assert ags.status is not None
    assert ags.status.phase == "Suspended"

    # An hour later the session continues with the whole timeout, counted from now.
    resumed = decide(edited(ags, suspend=False), Observed(pods=(stopped,)), SETTINGS, at(4110))
    assert deadlines(resumed) == (600, 600 + GRACE)
    assert resumed.status is not None
    assert resumed.status.start_time == at(4110)
