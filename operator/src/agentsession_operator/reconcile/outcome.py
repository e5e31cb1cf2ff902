"""The outcome of one runner attempt, from its pod: succeed, fail for good, or retry.

A podFailurePolicy-like table (documented in the README) over the container's exit code, its
termination message (the runner's summary) and the pod's own reason. Pure; called by decide().
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from pydantic import ValidationError

from agentsession_operator.reconcile.observed import PodView
from agentsession_runner.contract import ExitCode, Reason, RunSummary


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


def parse_summary(message: str | None) -> RunSummary | None:
    """The runner's termination message, or None if it did not get to write one."""
    if not message:
        return None
    try:
        return RunSummary.model_validate(json.loads(message))
    except (ValueError, ValidationError):
        return None


def classify(pod: PodView) -> AttemptOutcome | None:
    """The outcome of a finished attempt; None while the pod is still working."""
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
