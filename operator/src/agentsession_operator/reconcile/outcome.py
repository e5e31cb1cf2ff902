"""The outcome of one runner attempt, from its pod: succeed, fail for good, or retry.

A podFailurePolicy-like table (documented in the README) over the agent container's exit code,
its termination message (the runner's summary), the gateway's report and the pod's own reason.
The agent controls its own summary (it runs arbitrary code in that container), so the summary is
used only for what only the agent knows (result text, subtype, structured output), bounded;
spend, turns and usage come from the gateway's report, and refs from the operator's own
knowledge. Pure; called by decide().
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from pydantic import ValidationError

from agentsession_contract.gateway import GatewayReport
from agentsession_contract.run import ExitCode, Reason, RunSummary
from agentsession_contract.workspace.init import InitReport
from agentsession_operator.reconcile.observed import PodView


class Verdict(enum.Enum):
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    RETRY = "Retry"


RETRYABLE_API_STATUSES = frozenset({408, 429, 529})
"""Plus every 5xx: transient on the API's side; a new attempt resumes the session."""


def api_status_retryable(status: int | None) -> bool:
    return status is not None and (status in RETRYABLE_API_STATUSES or 500 <= status <= 599)


@dataclass(frozen=True)
class AttemptOutcome:
    verdict: Verdict
    reason: Reason
    message: str
    summary: RunSummary | None = None
    """The agent's summary, with everything the agent cannot be trusted on removed."""
    report: GatewayReport | None = None
    """The gateway's report; None means the attempt is charged its whole reservation."""


# The agent's claims the operator never uses: accounting (the gateway meters it) and refs (the
# operator knows where the store keeps the session; a forged ref could point anywhere).
_UNTRUSTED_SUMMARY_FIELDS = frozenset(
    {
        "session_id",
        "num_turns",
        "total_cost_usd",
        "usage",
        "model_usage",
        "result_ref",
        "transcript_ref",
    }
)


def parse_summary(message: str | None) -> RunSummary | None:
    """The runner's termination message minus the untrusted fields; None if absent or invalid."""
    if not message:
        return None
    try:
        summary = RunSummary.model_validate(json.loads(message))
    except (ValueError, ValidationError):
        return None
    return summary.model_copy(update=dict.fromkeys(_UNTRUSTED_SUMMARY_FIELDS))


def parse_gateway_report(message: str | None) -> GatewayReport | None:
    """The gateway's termination message, or None if it left none (or an invalid one)."""
    if not message:
        return None
    try:
        return GatewayReport.model_validate(json.loads(message))
    except (ValueError, ValidationError):
        return None


def with_report(outcome: AttemptOutcome, report: GatewayReport | None) -> AttemptOutcome:
    """The outcome, overridden by the gateway where it knows better: a spent budget."""
    if report is not None and (report.ended == "budget_exhausted" or report.refused > 0):
        return AttemptOutcome(
            Verdict.FAILED,
            Reason.BUDGET_EXCEEDED,
            f"the session gateway refused further requests: ${report.spent_usd:.4f} spent of "
            f"the ${report.budget_usd:.4f} left in maxBudgetUsd",
            outcome.summary,
            report,
        )
    return AttemptOutcome(outcome.verdict, outcome.reason, outcome.message, outcome.summary, report)


def classify(pod: PodView) -> AttemptOutcome | None:
    """The outcome of a finished attempt; None while the pod is still working, or while its
    agent has ended but its gateway (stopped right after) has not yet left its final report."""
    init_failed = pod.workspace_init is not None and pod.workspace_init.exit_code != 0
    gateway_pending = (
        (pod.ended is not None or init_failed) and not pod.gateway_ended and not pod.deleting
    )
    pod_over = pod.phase in ("Succeeded", "Failed") or pod.reason == "DeadlineExceeded"
    if gateway_pending and not pod_over:
        return None
    if pod.reason == "DeadlineExceeded" and pod.gateway_running and not pod.deleting:
        # The kubelet marks the pod first and stops its containers after: the gateway's final
        # report (what it metered up to the kill, requests in flight included) comes with its
        # end, and the attempt is charged that, not an earlier report or the whole reservation.
        return None
    outcome = _classify(pod)
    if outcome is None:
        return None
    return with_report(outcome, parse_gateway_report(pod.gateway_report))


def _source_failure(pod: PodView) -> AttemptOutcome | None:
    """The workspace init step failed: a source could not be fetched (exit 3: for good, e.g.
    bad credentials or a missing ref; otherwise retryable, e.g. the network or a 5xx)."""
    init = pod.workspace_init
    if init is None or init.exit_code == 0:
        return None
    report = parse_init_report(init.message)
    failed = next((s for s in report.sources if s.result == "Failed"), None) if report else None
    detail = failed.message if failed and failed.message else None
    if detail is None:
        detail = f"the workspace init step in pod {pod.name} ended with exit code {init.exit_code}"
    if init.exit_code == ExitCode.INVALID_CONFIG:
        return AttemptOutcome(Verdict.FAILED, Reason.SOURCE_FETCH_FAILED, detail)
    return AttemptOutcome(Verdict.RETRY, Reason.SOURCE_FETCH_FAILED, detail)


def parse_init_report(message: str | None) -> InitReport | None:
    """The workspace init step's termination message, or None if absent or invalid."""
    if not message:
        return None
    try:
        return InitReport.model_validate(json.loads(message))
    except (ValueError, ValidationError):
        return None


def _classify(pod: PodView) -> AttemptOutcome | None:
    if pod.ended is None and (failed := _source_failure(pod)) is not None:
        return failed
    if pod.reason == "DeadlineExceeded":
        return AttemptOutcome(
            Verdict.FAILED,
            Reason.DEADLINE_EXCEEDED,
            f"pod {pod.name} exceeded its activeDeadlineSeconds",
            parse_summary(pod.ended.message if pod.ended else None),
        )
    if pod.ended is None:
        if pod.phase == "Failed":
            why = pod.reason or "Failed"
            suffix = f": {pod.message}" if pod.message else ""
            return AttemptOutcome(Verdict.RETRY, Reason.POD_FAILED, f"pod {pod.name} {why}{suffix}")
        return None
    ended = pod.ended
    summary = parse_summary(ended.message)
    detail = summary.message if summary and summary.message else None
    if ended.reason == "OOMKilled":
        return AttemptOutcome(
            Verdict.RETRY, Reason.POD_FAILED, f"runner in pod {pod.name} was OOMKilled", summary
        )
    if ended.exit_code == ExitCode.OK and summary is not None:
        return _from_summary(summary)
    if ended.exit_code == ExitCode.INVALID_CONFIG:
        return AttemptOutcome(
            Verdict.FAILED, Reason.INVALID_SPEC, detail or "the runner rejected its config", summary
        )
    if ended.exit_code == ExitCode.RETRYABLE:
        return AttemptOutcome(
            Verdict.RETRY,
            Reason.EXECUTION_ERROR,
            detail or f"runner in pod {pod.name} failed (exit 4)",
            summary,
        )
    why = ended.reason or "Error"
    return AttemptOutcome(
        Verdict.RETRY,
        Reason.POD_FAILED,
        f"runner in pod {pod.name} ended with exit code {ended.exit_code} ({why})",
        summary,
    )


def _from_summary(summary: RunSummary) -> AttemptOutcome:
    reason = summary.reason
    if reason is Reason.COMPLETED:
        return AttemptOutcome(Verdict.SUCCEEDED, reason, "the agent finished", summary)
    if reason is Reason.API_ERROR and summary.api_error_status is None:
        # No answer at all (the gateway restarting, a network error): transient, like a 5xx.
        return AttemptOutcome(
            Verdict.RETRY,
            reason,
            "a Messages API request got no answer (connection refused or reset); "
            "retrying resumes the session",
            summary,
        )
    if reason is Reason.API_ERROR and api_status_retryable(summary.api_error_status):
        return AttemptOutcome(
            Verdict.RETRY,
            reason,
            f"the Anthropic API answered {summary.api_error_status}; retrying resumes the session",
            summary,
        )
    messages = {
        Reason.MAX_TURNS_REACHED: "the agent reached maxTurns",
        Reason.BUDGET_EXCEEDED: "the agent exceeded maxBudgetUsd",
        Reason.DEADLINE_EXCEEDED: "the session ran past timeoutSeconds",
        Reason.API_ERROR: f"the Anthropic API answered {summary.api_error_status}",
    }
    message = summary.message or messages.get(reason, "the agent run failed")
    return AttemptOutcome(Verdict.FAILED, reason, message, summary)
