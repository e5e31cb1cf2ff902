"""AgentSession.status: what the operator reports. Source of the CRD's status schema (via
models.crd); the operator's reconcile code builds it, partly from the runner's RunSummary."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

from pydantic import AwareDatetime, Field, PlainSerializer

from agentsession_contract.run import (
    RESULT_PREVIEW_MAX_CHARS,
    STRUCTURED_OUTPUT_MAX_BYTES,
    Reason,
    WireModel,
)

from .markers import LIST_ATOMIC, list_map
from .workspace import OutputsStatus, WorkspaceStatus

# Bounds the API server enforces on status writes: the operator must truncate to fit them.
MESSAGE_MAX_LENGTH: Final = 32_768
ERRORS_MAX_ITEMS: Final = 16
ERROR_MAX_LENGTH: Final = 4096
CONDITIONS_MAX_ITEMS: Final = 8
REF_MAX_LENGTH: Final = 2048


def _rfc3339(value: datetime) -> str:
    # metav1.Time's own form: UTC, whole seconds, "Z".
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Time = Annotated[AwareDatetime, PlainSerializer(_rfc3339, return_type=str, when_used="json")]
"""A timestamp that serializes as Kubernetes writes them (2006-01-02T15:04:05Z)."""


class Phase(enum.StrEnum):
    """Where the session is in its lifecycle; Succeeded and Failed are terminal."""

    PENDING = "Pending"
    """Accepted, no runner pod yet; or waiting for spec.resume.sessionRef to finish."""
    QUEUED = "Queued"
    """Waiting for admission: a budget reservation on every AgentBudget that selects the session,
    or a concurrency slot (their maxConcurrentSessions). The `Admitted` condition (False) says
    which budget and why, with the numbers."""
    RUNNING = "Running"
    """A runner pod is working on the session (possibly a retry, see attempts)."""
    SUSPENDED = "Suspended"
    """spec.suspend is true: no runner pod runs (a running one was stopped) and the session holds
    no budget reservation or concurrency slot. Setting suspend back to false continues it, resuming
    the transcript."""
    PAUSED = "Paused"
    """The session reached its maxTurns or maxBudgetUsd with spec.onLimitReached Pause: no runner
    pod runs, the transcript is kept, and raising the limit that was reached continues it."""
    SUCCEEDED = "Succeeded"
    """The agent finished with a result (reason Completed)."""
    FAILED = "Failed"
    """The session ended without a successful result; reason says why."""


class ConditionType(enum.StrEnum):
    """The condition types an AgentSession reports, Knative/Tekton style.

    `Succeeded` is the one to wait on: Unknown while the session is pending, queued, running,
    suspended or paused, True when it finished with a result, False when it failed for good; its
    reason is status.reason once terminal. So `kubectl wait --for=condition=Succeeded` waits for
    success and `kubectl wait --for=condition=Succeeded=False` for failure. `Running` is True while
    a runner pod is working on the session. `Admitted` is about cost governance: True once the
    session holds a reservation on every AgentBudget that selects it (reasons in AdmissionReason),
    False while it is Queued.
    """

    SUCCEEDED = "Succeeded"
    RUNNING = "Running"
    ADMITTED = "Admitted"


class AdmissionReason(enum.StrEnum):
    """The reasons of an AgentSession's `Admitted` condition.

    While False, the condition's message names the AgentBudget and gives the numbers, e.g.
    `AgentBudget team-a/daily: Daily limit 10.00 USD, spent 9.50, reserved 0.30; this session
    needs 0.50`. BudgetExhausted and ConcurrencyLimited clear by themselves (a period rolls over,
    a session finishes); the other False reasons need a change to the session or the budget.
    """

    ADMITTED = "Admitted"
    """True: the session holds a reservation and a slot on every AgentBudget that selects it (or
    none selects it)."""
    BUDGET_EXHAUSTED = "BudgetExhausted"
    """False, waits: a selecting AgentBudget has less left in one of its periods than the session
    would reserve (its maxBudgetUsd less what its earlier attempts spent)."""
    CONCURRENCY_LIMITED = "ConcurrencyLimited"
    """False, waits: a selecting AgentBudget already runs maxConcurrentSessions sessions (or the
    operator's own limit on running sessions is reached)."""
    EXCEEDS_BUDGET_LIMIT = "ExceedsBudgetLimit"
    """False, needs a change: the session's reservation can never fit (it is above a limit, or
    above what a Total limit has left)."""
    BUDGET_REQUIRES_MAX_BUDGET_USD = "BudgetRequiresMaxBudgetUsd"
    """False, needs a change: an AgentBudget with spend limits selects the session and it sets no
    spec.maxBudgetUsd, so there is no declared amount to reserve."""
    BUDGET_INVALID = "BudgetInvalid"
    """False, needs a change: a selecting AgentBudget cannot be enforced (its Ready condition is
    False)."""


class Condition(WireModel):
    """A metav1.Condition: one aspect of the object's state, for machines and `kubectl wait`."""

    type: str = Field(
        max_length=316,
        pattern=(
            r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
            r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
        ),
        description=(
            "Condition type: `Succeeded`, `Running` or `Admitted` on an AgentSession; `Ready` or "
            "`Exhausted` on an AgentBudget."
        ),
    )
    status: Literal["True", "False", "Unknown"] = Field(description="`True`, `False` or `Unknown`.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this condition was computed from."
    )
    last_transition_time: Time = Field(description="When status last changed.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="A CamelCase reason for the condition's last transition.",
    )
    message: str = Field(
        max_length=MESSAGE_MAX_LENGTH, description="Human-readable detail; may be empty."
    )


class AgentSessionStatus(WireModel):
    """The observed state of an AgentSession and, once finished, its result."""

    phase: Phase | None = Field(
        default=None,
        description=(
            "Pending, Queued, Running, Suspended, Paused, Succeeded or Failed; the last two are "
            "terminal."
        ),
    )
    reason: Reason | None = Field(
        default=None,
        description=(
            "Why the session ended (set when terminal): Completed, MaxTurnsReached, "
            "BudgetExceeded, DeadlineExceeded, APIError, ExecutionError, InvalidSpec, PodFailed, "
            "BackoffLimitExceeded or SourceFetchFailed; or the limit a Paused session reached "
            "(MaxTurnsReached, BudgetExceeded)."
        ),
    )
    message: str | None = Field(
        default=None,
        max_length=MESSAGE_MAX_LENGTH,
        description="Human-readable detail about the phase or reason.",
    )
    conditions: list[Condition] | None = Field(
        default=None,
        max_length=CONDITIONS_MAX_ITEMS,
        description=(
            "`Succeeded` (Unknown until terminal, then True or False: wait on it), `Running` and "
            "`Admitted` (False while Queued, e.g. reason BudgetExhausted or ConcurrencyLimited)."
        ),
        json_schema_extra=list_map("type"),
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation the operator last acted on."
    )
    model: str | None = Field(
        default=None,
        max_length=256,
        description="The model the session runs with: spec.model, or the operator's default.",
    )
    session_id: str | None = Field(
        default=None,
        max_length=64,
        description="The Agent SDK session id; resume it with spec.resume.sessionId.",
    )
    namespace_uid: str | None = Field(
        default=None,
        max_length=36,
        description=(
            "The UID of the namespace as the session first saw it: its transcripts are stored "
            "under <store prefix>/<namespace>/<namespaceUid>/, so a namespace deleted and created "
            "again under the same name never reaches the old one's."
        ),
    )
    attempts: int | None = Field(
        default=None, ge=0, description="Runner pods started so far, including retries."
    )
    interrupted_attempts: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Of attempts, those stopped by spec.suspend or ended at a limit with onLimitReached "
            "Pause: they do not count against backoffLimit."
        ),
    )
    pod_name: str | None = Field(
        default=None, max_length=253, description="The current or last runner pod."
    )
    start_time: Time | None = Field(
        default=None,
        description=(
            "When the first runner pod was created, or when the session last continued after "
            "spec.suspend or a Pause: spec.timeoutSeconds counts from it."
        ),
    )
    completion_time: Time | None = Field(
        default=None, description="When the session reached a terminal phase."
    )
    subtype: str | None = Field(
        default=None,
        max_length=64,
        description=(
            "The SDK result's subtype: `success`, `error_max_turns`, `error_max_budget_usd`, "
            "`error_during_execution`, ..."
        ),
    )
    is_error: bool | None = Field(default=None, description="The SDK result's is_error flag.")
    num_turns: int | None = Field(default=None, ge=0, description="Agent turns taken.")
    total_cost_usd: float | None = Field(
        default=None, ge=0, description="Total cost in USD as the SDK computed it."
    )
    usage: dict[str, Any] | None = Field(
        default=None, description="Token usage as the SDK reported it (free-form)."
    )
    model_usage: dict[str, Any] | None = Field(
        default=None, description="Per-model usage and cost as the SDK reported it (free-form)."
    )
    duration_ms: int | None = Field(
        default=None, ge=0, description="Duration of the agent run in milliseconds."
    )
    stop_reason: str | None = Field(
        default=None, max_length=64, description="The model's last stop reason, e.g. `end_turn`."
    )
    terminal_reason: str | None = Field(
        default=None,
        max_length=64,
        description="Why the SDK's agent loop ended, e.g. `max_turns`.",
    )
    result_preview: str | None = Field(
        default=None,
        max_length=RESULT_PREVIEW_MAX_CHARS,
        description=(
            f"The first {RESULT_PREVIEW_MAX_CHARS} characters of the final result text; the "
            "whole result is at resultRef."
        ),
    )
    structured_output: Any = Field(
        default=None,
        description=(
            "The structured output requested by spec.outputFormat, when it is at most "
            f"{STRUCTURED_OUTPUT_MAX_BYTES} bytes as compact JSON; the whole output is always in "
            "the result document at resultRef."
        ),
    )
    errors: list[Annotated[str, Field(max_length=ERROR_MAX_LENGTH)]] | None = Field(
        default=None,
        max_length=ERRORS_MAX_ITEMS,
        description="Error messages the SDK reported with the result.",
        json_schema_extra=LIST_ATOMIC,
    )
    permission_denials: int | None = Field(
        default=None, ge=0, description="How many tool uses were refused by the permission rules."
    )
    api_error_status: int | None = Field(
        default=None,
        ge=100,
        le=599,
        description="HTTP status of the Anthropic API error that ended the session, if any.",
    )
    result_ref: str | None = Field(
        default=None,
        max_length=REF_MAX_LENGTH,
        description="Store URI of the full result (text, structured output, usage).",
    )
    transcript_ref: str | None = Field(
        default=None,
        max_length=REF_MAX_LENGTH,
        description="Store URI of the session transcript.",
    )
    workspace: WorkspaceStatus | None = Field(
        default=None,
        description=(
            "How spec.workspace.sources were fetched (resolved git commits, errors) and the "
            "workspace's last snapshot in the store."
        ),
    )
    outputs: OutputsStatus | None = Field(
        default=None,
        description="The artifacts stored and the git pushes made (spec.outputs).",
    )
