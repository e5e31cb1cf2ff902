"""The reconcile decision: `decide(session, observed, settings, now) -> Plan`. Pure and level-based.

Every trigger (a session event, a pod event, a timer) calls it with what is observed now; the
handlers carry out the plan. It never talks to the API, reads a clock or keeps state: what it
must remember between passes lives in the session's status (attempts, conditions' times).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agentsession_contract.gateway import GatewayReport
from agentsession_contract.run import Reason, RunSummary, structured_output_fits
from agentsession_contract.store.keys import LOGICAL_PROJECT, store_scope
from agentsession_operator.models import AgentSession, AgentSessionStatus, Condition, Phase
from agentsession_operator.models.spec import LimitAction
from agentsession_operator.models.status import (
    ERROR_MAX_LENGTH,
    ERRORS_MAX_ITEMS,
    MESSAGE_MAX_LENGTH,
    AdmissionReason,
    ConditionType,
)
from agentsession_operator.models.workspace import (
    COMMIT_PATTERN,
    SHA256_PATTERN,
    STATUS_ARTIFACTS_MAX,
)
from agentsession_operator.reconcile.admission import AdmissionView
from agentsession_operator.reconcile.observed import (
    STARTING_REASONS,
    Observed,
    PodView,
    TakenPod,
)
from agentsession_operator.reconcile.outcome import (
    AttemptOutcome,
    Verdict,
    classify,
    parse_gateway_report,
    parse_init_report,
    with_report,
)
from agentsession_operator.reconcile.podspec import (
    build_pod,
    pod_name,
    run_config_for,
    run_config_too_large,
)
from agentsession_operator.settings import OperatorSettings

TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})
SNAPSHOT_MESSAGE_MAX_LENGTH = 1024
REF_POLL_SECONDS = 5.0
"""A session waiting for spec.resume.sessionRef looks again after this long at first, ..."""
REF_POLL_MAX_SECONDS = 60.0
"""... then after as long as it has waited so far, at most this long. The referenced session's
own end wakes it at once (handlers.Waiters); polling only covers a missed event."""
REF_STALLED_PHASES = frozenset({Phase.SUSPENDED, Phase.PAUSED})
"""Phases a referenced session does not leave by itself: a wait on one (or on a session that does
not exist) times out after AGENTSESSION_SESSION_REF_TIMEOUT_SECONDS."""
WAITING_FOR_REF = "WaitingForSessionRef"
OUTPUT_SCHEMA_MAX_DEPTH = 100
"""How deep spec.outputFormat.schema may nest (objects and arrays). The API server accepts any
depth up to 10,000 and CEL cannot bound it; the run config's encoder gives up at about 250."""
UNSCHEDULABLE = "Unschedulable"
"""Running condition reason: the scheduler finds no node for the runner pod (its message says
why); the session waits until one fits."""
SESSION_ID_IN_USE = "SessionIdInUse"
"""Condition reason and Event: a resume in place waits for the session that runs that id."""
RETRY_BACKOFF = "RetryBackoff"
SUSPENDED = "Suspended"
"""Condition reason and Event: no runner pod runs because spec.suspend is true."""
SUSPENDING = "Suspending"
"""Running condition reason: the attempt's pod is being stopped for spec.suspend and its charge
is still to come (the attempt is in flight until its pod ends)."""
PAUSED = "Paused"
RESUMED = "Resumed"
LIMIT_FIELDS = {
    Reason.MAX_TURNS_REACHED: "spec.maxTurns",
    Reason.BUDGET_EXCEEDED: "spec.maxBudgetUsd",
}
"""The session's own limits, by the reason an attempt ends with when it reaches one."""
LIMIT_REASONS = frozenset(LIMIT_FIELDS)
POD_STARTING_REASONS = STARTING_REASONS
POD_NAME_TAKEN = "PodNameTaken"
"""Condition reason and Event: the next runner pod's name belongs to a pod not the session's."""


def pod_event_matters(pod: PodView | None) -> bool:
    """Whether a runner pod's new state can change what decide() does (None: the pod is gone).

    A pod that was just created or scheduled, which is what the operator's own create causes,
    cannot; a pod that ended, is being deleted, runs or waits for a reason other than starting
    can. Skipping the rest saves a read and a pass per pod event.
    """
    if pod is None or pod.finished or pod.deleting or pod.running_since is not None:
        return True
    if pod.unschedulable is not None:
        return True
    return pod.waiting_reason is not None and pod.waiting_reason not in POD_STARTING_REASONS


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to record on the AgentSession."""

    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    """What to do; empty fields mean nothing to do."""

    status: AgentSessionStatus | None = None
    """The whole new status, only when it differs from the current one."""
    create_pod: dict[str, Any] | None = None
    delete_pods: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None
    delete_session: bool = False
    outcome: AttemptOutcome | None = None
    """The attempt that finished in this pass (for metrics), if any."""
    retried: bool = False
    admission_attempt: int | None = None
    """The attempt that waits for admission (the budget controller plans it), if any."""


@dataclass
class _Draft:
    """The status being built in one pass, with helpers that keep conditions consistent."""

    status: dict[str, Any]
    now: dt.datetime
    generation: int | None
    events: list[Event] = field(default_factory=list)
    taken: Mapping[str, TakenPod] = field(default_factory=dict)
    """Observed.taken: pod names no attempt may start under."""
    refused: Mapping[str, str] = field(default_factory=dict)
    """Observed.refused: pod names the API server refused to create, with why."""
    from_sessions: Mapping[str, str] = field(default_factory=dict)
    """fromSession sources' session ids, by AgentSession name (resolved this pass)."""
    namespace_uid: str | None = None
    """The store scope's namespace UID: the status's, else the one observed (a session an older
    operator started has neither, and keeps the layout without it)."""

    def set(self, **fields: Any) -> None:
        self.status.update(fields)

    def condition(
        self,
        kind: ConditionType,
        status: str,
        reason: str,
        message: str,
        *,
        restart: bool = False,
    ) -> None:
        """Set a condition; its lastTransitionTime moves when its status changes (with `restart`
        also when its reason or message does: the clock of a wait that is timed)."""
        conditions: list[dict[str, Any]] = list(self.status.get("conditions") or [])
        previous = next((c for c in conditions if c["type"] == kind.value), None)
        changed = previous is None or previous["status"] != status
        if restart and previous is not None:
            changed = changed or (previous.get("reason"), previous.get("message")) != (
                reason,
                _clip(message, MESSAGE_MAX_LENGTH),
            )
        entry = {
            "type": kind.value,
            "status": status,
            "reason": reason,
            "message": _clip(message, MESSAGE_MAX_LENGTH),
            "last_transition_time": (
                previous["last_transition_time"] if previous and not changed else self.now
            ),
        }
        if self.generation is not None:
            entry["observed_generation"] = self.generation
        conditions = [c for c in conditions if c["type"] != kind.value] + [entry]
        conditions.sort(key=lambda c: c["type"])
        self.status["conditions"] = conditions

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, _clip(message, 1024)))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _condition(status: AgentSessionStatus, kind: ConditionType) -> Condition | None:
    return next((c for c in status.conditions or [] if c.type == kind.value), None)


def decide(
    session: AgentSession, observed: Observed, settings: OperatorSettings, now: dt.datetime
) -> Plan:
    current = session.status or AgentSessionStatus()
    draft = _Draft(
        status=current.model_dump(exclude_none=True),
        now=now,
        generation=session.metadata.generation,
        taken=observed.taken,
        refused=observed.refused,
        namespace_uid=current.namespace_uid
        or (None if current.attempts else observed.namespace_uid),
    )
    if draft.generation is not None:
        draft.set(observed_generation=draft.generation)
    plan = _decide(session, current, observed, settings, draft)
    new_status = AgentSessionStatus.model_validate(draft.status)
    changed = new_status.to_wire() != current.to_wire()
    if plan.admission_attempt is not None and observed.admission.reason is None:
        # Waiting for its first admission pass, which answers within moments (the session is
        # then requeued): a write that would only record observedGeneration can wait for it.
        same = new_status.model_copy(update={"observed_generation": current.observed_generation})
        changed = same.to_wire() != current.to_wire()
    if changed and not current.attempts and observed.namespace_uid and not current.namespace_uid:
        # Recorded with the first status write (at the latest with the first pod, whose run
        # config is scoped by it): later passes need no namespace read, and the session keeps
        # the UID it started under.
        new_status = new_status.model_copy(update={"namespace_uid": observed.namespace_uid})
    return Plan(
        status=new_status if changed else None,
        create_pod=plan.create_pod,
        delete_pods=plan.delete_pods,
        events=tuple(draft.events),
        requeue_after=plan.requeue_after,
        delete_session=plan.delete_session,
        outcome=plan.outcome,
        retried=plan.retried,
        admission_attempt=plan.admission_attempt,
    )


def _decide(
    session: AgentSession,
    current: AgentSessionStatus,
    observed: Observed,
    settings: OperatorSettings,
    draft: _Draft,
) -> Plan:
    active = [p for p in observed.pods if not p.finished and not p.deleting]
    if current.phase in TERMINAL_PHASES:
        return _finished(session, current, active, draft)

    problem = _invalid_for_operator(session, current, settings)
    if problem is not None:
        _fail(draft, Reason.INVALID_SPEC, problem)
        return Plan(delete_pods=tuple(p.name for p in active))
    _warn_limits_above_maximum(session, current, settings, draft)

    attempt = max([current.attempts or 0, *(p.attempt for p in observed.pods)])
    latest = next((p for p in observed.pods if p.attempt == attempt), None)
    if session.spec.suspend and attempt == 0:
        # Created suspended (or suspended before its first pod): nothing to stop or charge, and
        # spec.resume.sessionRef is resolved only once it may start.
        _hold_suspended(session, current, draft)
        return Plan(delete_pods=tuple(p.name for p in active))

    resume_id, wait = _resolve_resume(session, current, observed, settings, draft)
    if wait is not None:
        return wait
    wait = _resolve_from_sessions(session, current, observed, settings, draft)
    if wait is not None:
        return wait
    if latest is not None:
        _apply_init_report(latest, draft)

    admission = observed.admission
    resume = session.spec.resume
    in_place = resume_id is not None and resume is not None and not resume.fork
    if attempt == 0 and in_place and observed.session_id_holders:
        return _wait_for_holders(session, str(resume_id), observed, draft)
    if attempt == 0:
        resumed = current.phase == Phase.SUSPENDED
        return _start_attempt(
            session, current, 1, resume_id, settings, draft, admission, resumed=resumed
        )
    if latest is not None and attempt > (current.attempts or 0):
        # The pod was created but the status write after it never landed (an API timeout, an
        # operator crash): record the attempt as _start_attempt would have, then go on from it.
        config = run_config_for(
            session, resume_id, settings, draft.namespace_uid, draft.from_sessions
        )
        _record_attempt(draft, attempt, latest.name, config.session_id, config.model)
        if attempt == 1 and latest.created_at is not None:
            draft.set(start_time=latest.created_at)
        current = AgentSessionStatus.model_validate(draft.status)
    in_flight = attempt_in_flight(current)
    if session.spec.suspend:
        if not in_flight:  # backing off, paused or suspended already: nothing of ours runs
            _hold_suspended(session, current, draft)
            return Plan(delete_pods=tuple(p.name for p in active))
        if latest is not None and not latest.finished:
            _stopping_for_suspend(session, current, latest, draft)
            return Plan(delete_pods=() if latest.deleting else (latest.name,))
        if latest is not None and latest.deleting and not latest.gateway_ended:
            # Its gateway is writing the final report the charge is made from; the pod's next
            # update (or its removal, then the report in the store) brings it.
            return Plan()
    elif not in_flight and current.phase in (Phase.SUSPENDED, Phase.PAUSED, Phase.QUEUED):
        return _continue(session, current, attempt, resume_id, settings, draft, admission)
    if latest is not None and not latest.finished:
        if not latest.deleting:
            _note_running(latest, attempt, draft)
        return Plan()

    outcome = (
        classify(latest)
        if latest is not None
        else AttemptOutcome(
            Verdict.RETRY,
            Reason.POD_FAILED,
            f"pod {current.pod_name or pod_name(str(session.metadata.name), attempt)} "
            "disappeared before it finished (deleted, evicted or its node was lost)",
        )
    )
    if outcome is None:
        # The agent has ended but its gateway, stopped right after it, has yet to leave the
        # final report the charge is made from: the pod's next update brings it.
        return Plan()
    if outcome.report is None:
        name = latest.name if latest is not None else current.pod_name
        stored = observed.stored_reports.get(name or "")
        outcome = with_report(outcome, parse_gateway_report(stored))
    return _conclude(
        session, current, attempt, latest, outcome, resume_id, settings, draft, admission
    )


def _finished(
    session: AgentSession, current: AgentSessionStatus, active: list[PodView], draft: _Draft
) -> Plan:
    """A terminal session: stop stray pods, and delete it once its TTL has passed."""
    ttl = session.spec.ttl_seconds_after_finished
    if ttl is None or current.completion_time is None:
        return Plan(delete_pods=tuple(p.name for p in active))
    due = current.completion_time + dt.timedelta(seconds=ttl)
    if draft.now >= due:
        return Plan(delete_session=True)
    return Plan(
        delete_pods=tuple(p.name for p in active),
        requeue_after=(due - draft.now).total_seconds(),
    )


def _invalid_for_operator(
    session: AgentSession, current: AgentSessionStatus, settings: OperatorSettings
) -> str | None:
    """Limits and overrides the CRD cannot know: the operator's own policy.

    The limits are checked only before the first attempt: a started session whose limits were
    raised beyond the operator's maximums is held to the maximums instead (see _limits), since
    the API server lets no one lower them again and failing would throw its transcript away.
    """
    spec = session.spec
    if spec.image and not settings.image_allowed(spec.image):
        return f"spec.image {spec.image!r} is not on the operator's image allowlist"
    if spec.output_format is not None:
        depth = nesting_depth(spec.output_format.schema_)
        if depth > OUTPUT_SCHEMA_MAX_DEPTH:
            return (
                f"spec.outputFormat.schema nests {depth} levels deep (objects and arrays); the "
                f"operator accepts at most {OUTPUT_SCHEMA_MAX_DEPTH}"
            )
    if current.attempts:
        return _invalid_timeout(session, settings)
    if spec.max_turns is not None and spec.max_turns > settings.max_max_turns:
        return (
            f"spec.maxTurns {spec.max_turns} exceeds the operator's maximum "
            f"{settings.max_max_turns}"
        )
    if spec.max_budget_usd is not None and spec.max_budget_usd > settings.max_max_budget_usd:
        return (
            f"spec.maxBudgetUsd {spec.max_budget_usd} exceeds the operator's maximum "
            f"{settings.max_max_budget_usd}"
        )
    return _invalid_timeout(session, settings)


def _invalid_timeout(session: AgentSession, settings: OperatorSettings) -> str | None:
    spec = session.spec
    if spec.timeout_seconds is not None and spec.timeout_seconds > settings.max_timeout_seconds:
        return (
            f"spec.timeoutSeconds {spec.timeout_seconds} exceeds the operator's maximum "
            f"{settings.max_timeout_seconds}"
        )
    return None


def nesting_depth(value: object) -> int:
    """How deep objects and arrays nest in a JSON value (a scalar: 0), without recursion: the
    API server stores values nested up to 10,000 levels."""
    deepest = 0
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children: Any
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        pending.extend((child, depth + 1) for child in children)
    return deepest


def _resolve_resume(
    session: AgentSession,
    current: AgentSessionStatus,
    observed: Observed,
    settings: OperatorSettings,
    draft: _Draft,
) -> tuple[str | None, Plan | None]:
    """The SDK session id to resume, or a plan that waits for or fails on spec.resume.sessionRef."""
    resume = session.spec.resume
    if resume is None:
        return None, None
    if resume.session_id is not None:
        return resume.session_id, None
    ref_name = str(resume.session_ref)
    ref = observed.ref
    if ref is not None and ref.terminal and ref.session_id:
        return ref.session_id, None
    if (current.attempts or 0) > 0 and current.session_id:
        # Started already and the reference is gone: what it resolved to is in the store now,
        # under this session's own id (see RunConfig.session_id), so resume that.
        return current.session_id, None
    if observed.ref_missing or ref is None:
        message = f"waiting for AgentSession {ref_name} (spec.resume.sessionRef) to exist"
        gave_up = f"AgentSession {ref_name} (spec.resume.sessionRef) does not exist"
        return None, _wait_for_ref(draft, settings, message, gave_up)
    if not ref.terminal:
        phase = ref.phase or "Pending"
        message = f"waiting for AgentSession {ref_name} to finish (it is {phase})"
        if phase not in REF_STALLED_PHASES:
            # It ends by itself (its own limits and timeouts bound it): wait as long as it runs.
            return None, _wait_for_ref(draft, settings, message, None)
        gave_up = (
            f"AgentSession {ref_name} (spec.resume.sessionRef) stays {phase} and does not "
            "finish by itself"
        )
        return None, _wait_for_ref(draft, settings, message, gave_up)
    _fail(
        draft,
        Reason.INVALID_SPEC,
        f"AgentSession {ref_name} (spec.resume.sessionRef) ended ({ref.reason}) without an "
        "agent session to resume",
    )
    return None, Plan()


def _resolve_from_sessions(
    session: AgentSession,
    current: AgentSessionStatus,
    observed: Observed,
    settings: OperatorSettings,
    draft: _Draft,
) -> Plan | None:
    """The session ids of spec.workspace.sources' fromSession sources (into the draft), or a
    plan that waits until each has finished (their last snapshot is their output); a wait on
    one that does not exist or stalls times out as one on spec.resume.sessionRef does."""
    workspace = session.spec.workspace
    names = (
        [s.from_session.name for s in (workspace.sources or []) if s.from_session is not None]
        if workspace
        else []
    )
    if not names:
        return None
    resolved: dict[str, str] = {}
    for name in names:
        ref = observed.from_sessions.get(name)
        if ref is None:
            if current.attempts:
                continue  # started already: a later attempt restores its own snapshot
            message = f"waiting for AgentSession {name} (workspace fromSession) to exist"
            gave_up = f"AgentSession {name} (workspace fromSession) does not exist"
            return _wait_for_ref(draft, settings, message, gave_up, poll_max=REF_POLL_SECONDS)
        if not ref.terminal:
            if current.attempts:
                continue
            phase = ref.phase or "Pending"
            message = (
                f"waiting for AgentSession {name} (workspace fromSession) to finish (it is {phase})"
            )
            stalled = None
            if phase in REF_STALLED_PHASES:
                stalled = (
                    f"AgentSession {name} (workspace fromSession) stays {phase} and does not "
                    "finish by itself"
                )
            return _wait_for_ref(draft, settings, message, stalled, poll_max=REF_POLL_SECONDS)
        if not ref.session_id:
            _fail(
                draft,
                Reason.INVALID_SPEC,
                f"AgentSession {name} (workspace fromSession) ended ({ref.reason}) without a "
                "session whose workspace could be used",
            )
            return Plan()
        resolved[name] = ref.session_id
    draft.from_sessions = resolved
    return None


def _apply_init_report(pod: PodView, draft: _Draft) -> None:
    """status.workspace.sources from the workspace init step's report (a trusted step of ours):
    results and resolved commits; a restore keeps the commits the first fetch resolved."""
    if pod.workspace_init is None:
        return
    report = parse_init_report(pod.workspace_init.message)
    if report is None or not report.sources:
        return
    workspace = dict(draft.status.get("workspace") or {})
    before = {s["name"]: s for s in workspace.get("sources") or []}
    sources = []
    for entry in report.sources:
        item: dict[str, Any] = {"name": entry.name, "path": entry.path, "result": entry.result}
        commit = entry.commit or before.get(entry.name, {}).get("commit")
        if commit:
            item["commit"] = commit
        if entry.message:
            item["message"] = _clip(entry.message, SNAPSHOT_MESSAGE_MAX_LENGTH)
        sources.append(item)
    workspace["sources"] = sources
    draft.status["workspace"] = workspace


def _wait_for_holders(
    session: AgentSession, resume_id: str, observed: Observed, draft: _Draft
) -> Plan:
    """A resume in place of an SDK session id that another non-terminal session runs: two
    attempts under one id would interleave one transcript and overwrite each other's result, so
    it waits (Pending) until they have finished. A fork writes its own id and never waits."""
    resume = session.spec.resume
    assert resume is not None
    holders = ", ".join(
        f"{holder.name} ({holder.phase or 'Pending'})" for holder in observed.session_id_holders
    )
    source = "spec.resume.sessionId" if resume.session_id else "spec.resume.sessionRef"
    message = (
        f"waiting for AgentSession {holders} to finish: it runs SDK session {resume_id}, which "
        f"{source} resumes in place (set spec.resume.fork: true to branch off at once instead)"
    )
    news = draft.status.get("message") != message
    draft.set(phase=Phase.PENDING, message=_clip(message, MESSAGE_MAX_LENGTH))
    draft.condition(ConditionType.SUCCEEDED, "Unknown", SESSION_ID_IN_USE, message)
    draft.condition(ConditionType.RUNNING, "False", SESSION_ID_IN_USE, message)
    if news:
        draft.event("Normal", SESSION_ID_IN_USE, message)
    return Plan(requeue_after=REF_POLL_SECONDS)


def _wait_for_ref(
    draft: _Draft,
    settings: OperatorSettings,
    message: str,
    gave_up: str | None,
    *,
    poll_max: float = REF_POLL_MAX_SECONDS,
) -> Plan:
    """Wait (Pending) for a referenced session (spec.resume.sessionRef, a workspace fromSession),
    looking again with backoff up to `poll_max` (a fromSession's end wakes no waiter: it is
    polled at REF_POLL_SECONDS). The Running condition's lastTransitionTime is when the
    reference got into the state waited on (the message names it); a wait that can end only by
    someone's hand (`gave_up` says what it waits on) fails with InvalidSpec after
    AGENTSESSION_SESSION_REF_TIMEOUT_SECONDS."""
    draft.set(phase=Phase.PENDING, message=message)
    draft.condition(ConditionType.SUCCEEDED, "Unknown", WAITING_FOR_REF, message)
    draft.condition(ConditionType.RUNNING, "False", WAITING_FOR_REF, message, restart=True)
    running = next(
        c for c in draft.status["conditions"] if c["type"] == ConditionType.RUNNING.value
    )
    waited = (draft.now - running["last_transition_time"]).total_seconds()
    poll = min(max(waited, REF_POLL_SECONDS), poll_max)
    if gave_up is None:
        return Plan(requeue_after=poll)
    timeout = settings.session_ref_timeout_seconds
    if waited >= timeout:
        _fail(
            draft,
            Reason.INVALID_SPEC,
            f"{gave_up}: gave up waiting after {waited:.0f}s "
            f"(AGENTSESSION_SESSION_REF_TIMEOUT_SECONDS={timeout:g})",
        )
        return Plan()
    return Plan(requeue_after=min(poll, timeout - waited))


def _fail(draft: _Draft, reason: Reason, message: str) -> None:
    draft.set(phase=Phase.FAILED, reason=reason, message=_clip(message, MESSAGE_MAX_LENGTH))
    draft.set(completion_time=draft.now)
    draft.condition(ConditionType.SUCCEEDED, "False", reason.value, message)
    draft.condition(ConditionType.RUNNING, "False", reason.value, message)
    draft.event("Warning", reason.value, message)


def _limits(session: AgentSession, settings: OperatorSettings) -> tuple[int, float]:
    """The session's maxTurns and maxBudgetUsd as applied: the spec's, else the operator's
    defaults, never above the operator's maximums (a started session may be raised past them)."""
    max_turns = session.spec.max_turns or settings.default_max_turns
    max_budget = session.spec.max_budget_usd or settings.default_max_budget_usd
    return min(max_turns, settings.max_max_turns), min(max_budget, settings.max_max_budget_usd)


def _remaining_limits(
    session: AgentSession, current: AgentSessionStatus, settings: OperatorSettings
) -> tuple[int, float]:
    """maxTurns and maxBudgetUsd left for the next attempt: limits hold across every attempt
    (retries, and those after a suspension or a pause)."""
    max_turns, max_budget = _limits(session, settings)
    return max_turns - (current.num_turns or 0), max_budget - (current.total_cost_usd or 0.0)


def _timeout(session: AgentSession, settings: OperatorSettings) -> int:
    return session.spec.timeout_seconds or settings.default_timeout_seconds


def _deadline(
    session: AgentSession, current: AgentSessionStatus, settings: OperatorSettings
) -> dt.datetime | None:
    """When timeoutSeconds runs out: it bounds the whole session, every attempt and the backoff
    between them, from status.startTime (the first attempt's start, or the last continue after
    spec.suspend or a Pause), as activeDeadlineSeconds bounds a Job."""
    if current.start_time is None or not current.attempts:
        return None
    return current.start_time + dt.timedelta(seconds=_timeout(session, settings))


def _seconds_left(
    session: AgentSession, current: AgentSessionStatus, settings: OperatorSettings, now: dt.datetime
) -> float:
    """What is left of timeoutSeconds for the next attempt (all of it before the first)."""
    deadline = _deadline(session, current, settings)
    if deadline is None:
        return float(_timeout(session, settings))
    return (deadline - now).total_seconds()


def _used_up(
    session: AgentSession, current: AgentSessionStatus, settings: OperatorSettings
) -> Reason | None:
    """The limit earlier attempts used up, if any."""
    return _exhausted(*_remaining_limits(session, current, settings))


def _exhausted(turns_left: int, budget_left: float) -> Reason | None:
    """Which limit nothing is left of (turns first), from `_remaining_limits`."""
    if turns_left < 1:
        return Reason.MAX_TURNS_REACHED
    if budget_left <= 0:
        return Reason.BUDGET_EXCEEDED
    return None


def _above_maximum(session: AgentSession, settings: OperatorSettings) -> list[str]:
    """What the session's spec asks beyond the operator's maximums (held to them)."""
    spec, notes = session.spec, []
    if spec.max_turns is not None and spec.max_turns > settings.max_max_turns:
        notes.append(
            f"spec.maxTurns {spec.max_turns} is above the operator's maximum "
            f"{settings.max_max_turns}, which applies instead"
        )
    if spec.max_budget_usd is not None and spec.max_budget_usd > settings.max_max_budget_usd:
        notes.append(
            f"spec.maxBudgetUsd {spec.max_budget_usd:g} is above the operator's maximum "
            f"{settings.max_max_budget_usd:g}, which applies instead"
        )
    return notes


def _warn_limits_above_maximum(
    session: AgentSession,
    current: AgentSessionStatus,
    settings: OperatorSettings,
    draft: _Draft,
) -> None:
    """Say so, once per spec change, when a started session was raised past the maximums."""
    if current.observed_generation == draft.generation:
        return
    notes = _above_maximum(session, settings)
    if notes:
        draft.event("Warning", "LimitAboveMaximum", "; ".join(notes))


def _start_attempt(
    session: AgentSession,
    current: AgentSessionStatus,
    attempt: int,
    resume_id: str | None,
    settings: OperatorSettings,
    draft: _Draft,
    admission: AdmissionView,
    last: str | None = None,
    resumed: bool = False,
) -> Plan:
    """Start attempt `attempt` with what the limits leave, or end at a limit (fail or pause), or
    wait for admission (phase Queued) when it holds no reservation yet.
    `resumed`: it continues a suspended or paused session (an Event says so)."""
    turns_left, budget_left = _remaining_limits(session, current, settings)
    detail = f" ({last})" if last else ""
    used_up = _exhausted(turns_left, budget_left)
    if used_up is not None:
        message = f"earlier attempts used up {LIMIT_FIELDS[used_up]}{detail}"
        _at_limit(session, settings, draft, used_up, message)
        return Plan()
    if resumed and current.attempts:
        # As for a Job resumed from suspension, timeoutSeconds counts again from now.
        draft.set(start_time=draft.now)
        current = AgentSessionStatus.model_validate(draft.status)
    seconds_left = _seconds_left(session, current, settings, draft.now)
    if seconds_left <= 0:
        _fail(
            draft,
            Reason.DEADLINE_EXCEEDED,
            f"the session ran past spec.timeoutSeconds ({_timeout(session, settings)}s since "
            f"{current.start_time:%Y-%m-%dT%H:%M:%SZ}, over {current.attempts} attempts): no "
            f"attempt {attempt}{detail}",
        )
        return Plan()
    if not admission.admitted:
        _queue(session, current, attempt, admission, draft, resumed=resumed)
        return Plan(admission_attempt=attempt)
    was_queued = current.phase == Phase.QUEUED
    if admission.reserved_usd is not None:
        # Never more than the budgets hold for it (a limit raised after its admission waits for
        # the next attempt's reservation).
        budget_left = min(budget_left, float(admission.reserved_usd))
    config = run_config_for(
        session, resume_id, settings, draft.namespace_uid, draft.from_sessions
    ).model_copy(
        update={
            "max_turns": turns_left,
            "max_budget_usd": budget_left,
            # The runner stops itself then; the pod's activeDeadlineSeconds adds the grace.
            "timeout_seconds": max(1, math.ceil(seconds_left)),
        }
    )
    pod = build_pod(session, attempt, config, settings)
    name = pod["metadata"]["name"]
    taken = draft.taken.get(name)
    if taken is not None:
        return _pod_name_taken(session, attempt, taken, draft)
    problem = run_config_too_large(pod, config)
    if problem is None:
        problem = draft.refused.get(name)
    if problem is not None:
        # Before anything ran: nothing to charge, and a retry would be refused the same way.
        _fail(draft, Reason.INVALID_SPEC, f"attempt {attempt} cannot start: {problem}")
        return Plan()
    _record_attempt(draft, attempt, pod["metadata"]["name"], config.session_id, config.model)
    draft.condition(ConditionType.ADMITTED, "True", AdmissionReason.ADMITTED, admission.message)
    if was_queued:
        draft.event("Normal", "Admitted", f"attempt {attempt} admitted: {admission.message}")
    if resumed:
        notes = "".join(f"; {note}" for note in _above_maximum(session, settings))
        draft.event(
            "Normal",
            RESUMED,
            f"attempt {attempt} continues the session with {turns_left} turns and "
            f"${budget_left:.4f} left{notes}",
        )
    return Plan(create_pod=pod, retried=attempt > 1)


def _pod_name_taken(session: AgentSession, attempt: int, taken: TakenPod, draft: _Draft) -> Plan:
    """Attempt `attempt`'s pod name belongs to a pod that is not the session's: never adopt it.

    Waits (Pending) for a name that frees up by itself, the pod of a deleted AgentSession of
    the same name or a pod being deleted, so a delete-and-recreate works. Fails (InvalidSpec)
    otherwise, e.g. a StatefulSet's pod (it would be recreated) or a pod someone made with the
    runner's labels: waiting would never end, and failing before any attempt ran costs nothing
    and names what to do. A later attempt's name fails too: waiting there would make the next pass
    conclude (and charge) the attempt just concluded a second time.
    """
    name = str(session.metadata.name)
    if attempt == 1 and taken.goes_away_for(name):
        message = (
            f"waiting for pod {taken.name} ({taken.describe()}) to go: it has the name of this "
            "session's first runner pod, which is never adopted from another owner"
        )
        previous = draft.status.get("message")
        draft.set(phase=Phase.PENDING, message=_clip(message, MESSAGE_MAX_LENGTH))
        draft.condition(ConditionType.SUCCEEDED, "Unknown", POD_NAME_TAKEN, message)
        draft.condition(ConditionType.RUNNING, "False", POD_NAME_TAKEN, message)
        if previous != draft.status.get("message"):
            draft.event("Warning", POD_NAME_TAKEN, message)
        # Its deletion requeues the session (a labelled pod) sooner; this bounds the wait
        # for one without the runner labels, backing off as the wait grows.
        running = ConditionType.RUNNING.value
        waiting = next(c for c in draft.status["conditions"] if c["type"] == running)
        waited = (draft.now - waiting["last_transition_time"]).total_seconds()
        return Plan(requeue_after=min(max(waited, 1.0), 30.0))
    _fail(
        draft,
        Reason.INVALID_SPEC,
        f"runner pod {taken.name} (attempt {attempt}) cannot be created: a pod of that name "
        f"exists and is not this AgentSession's ({taken.describe()}); runner pods are named "
        f"<session>-<attempt>, so delete that pod or create the session under another name",
    )
    return Plan()


def attempt_in_flight(current: AgentSessionStatus) -> bool:
    """Whether the latest attempt is still to be concluded (charged): its pod runs, or is being
    stopped for spec.suspend. Backing off, Suspended and Paused sessions have charged it."""
    if not current.attempts:
        return False
    running = _condition(current, ConditionType.RUNNING)
    reason = running.reason if running is not None else None
    if current.phase == Phase.RUNNING:
        return reason != RETRY_BACKOFF
    return current.phase == Phase.SUSPENDED and reason == SUSPENDING


def _resume_hint(session: AgentSession, field_name: str, value: object) -> str:
    patch = json.dumps({"spec": {field_name: value}}, separators=(",", ":"))
    return f"kubectl patch agentsession {session.metadata.name} --type merge -p '{patch}'"


def _hold_suspended(session: AgentSession, current: AgentSessionStatus, draft: _Draft) -> None:
    """Phase Suspended with no attempt in flight: the same status every pass, so one write."""
    attempts = current.attempts or 0
    message = (
        f"suspended by spec.suspend after {attempts} attempts; no runner pod runs until it is "
        f"false: {_resume_hint(session, 'suspend', False)}"
    )
    if current.phase != Phase.SUSPENDED:
        draft.event("Normal", SUSPENDED, message)
    draft.set(phase=Phase.SUSPENDED, message=message)
    draft.status.pop("reason", None)
    draft.condition(ConditionType.SUCCEEDED, "Unknown", SUSPENDED, message)
    draft.condition(ConditionType.RUNNING, "False", SUSPENDED, message)


def _stopping_for_suspend(
    session: AgentSession, current: AgentSessionStatus, pod: PodView, draft: _Draft
) -> None:
    """The running attempt is stopped (a normal delete: SIGTERM, the runner saves the turn in
    progress); it is charged once its pod ends."""
    if current.phase == Phase.SUSPENDED:
        return
    message = (
        f"spec.suspend is true: stopping runner pod {pod.name} (attempt {current.attempts}); "
        "it is charged what its gateway metered, and the session continues from its transcript "
        "once spec.suspend is false"
    )
    draft.set(phase=Phase.SUSPENDED, message=message)
    draft.condition(ConditionType.SUCCEEDED, "Unknown", SUSPENDED, message)
    draft.condition(ConditionType.RUNNING, "False", SUSPENDING, message)
    draft.event("Normal", SUSPENDED, message)


QUEUED = "Queued"
"""Event, and Running/Succeeded condition reason: the next attempt waits for admission."""


def _queue(
    session: AgentSession,
    current: AgentSessionStatus,
    attempt: int,
    admission: AdmissionView,
    draft: _Draft,
    *,
    resumed: bool,
) -> None:
    """Phase Queued: attempt `attempt` waits for a reservation (or a slot); the Admitted
    condition says why, with the numbers and its place in the queue. Before an admission pass has
    considered it there is nothing to say yet, so the status is left as it is."""
    if admission.reason is None:
        return
    message = f"attempt {attempt} is queued: {admission.message}"
    before = _condition(current, ConditionType.ADMITTED)
    news = (
        current.phase != Phase.QUEUED or before is None or before.reason != admission.reason.value
    )
    draft.set(phase=Phase.QUEUED, message=_clip(message, MESSAGE_MAX_LENGTH))
    draft.status.pop("reason", None)
    draft.condition(ConditionType.ADMITTED, "False", admission.reason.value, admission.message)
    draft.condition(ConditionType.RUNNING, "False", QUEUED, message)
    draft.condition(ConditionType.SUCCEEDED, "Unknown", QUEUED, message)
    if news:
        waits = admission.reason in (
            AdmissionReason.BUDGET_EXHAUSTED,
            AdmissionReason.CONCURRENCY_LIMITED,
        )
        draft.event("Normal" if waits else "Warning", QUEUED, message)
        if resumed:
            draft.event(
                "Normal",
                RESUMED,
                f"the session continues once attempt {attempt} is admitted "
                f"(spec of {session.metadata.name} allows it again)",
            )


def _continue(
    session: AgentSession,
    current: AgentSessionStatus,
    attempt: int,
    resume_id: str | None,
    settings: OperatorSettings,
    draft: _Draft,
    admission: AdmissionView,
) -> Plan:
    """A Suspended session whose spec.suspend is false again, a Paused one, or one Queued after
    an attempt: the next attempt resumes the session (the run config's sessionId, which the store
    holds) with what the limits leave. A Paused session stays so while the limit it reached is
    used up."""
    if current.phase == Phase.PAUSED:
        used_up = _used_up(session, current, settings)
        if used_up is not None and used_up == current.reason:
            return Plan()
    resumed = current.phase != Phase.QUEUED
    return _start_attempt(
        session, current, attempt + 1, resume_id, settings, draft, admission, resumed=resumed
    )


def _at_limit(
    session: AgentSession, settings: OperatorSettings, draft: _Draft, reason: Reason, detail: str
) -> None:
    """The session reached its maxTurns or maxBudgetUsd: fail, or pause (onLimitReached)."""
    if session.spec.on_limit_reached == LimitAction.PAUSE:
        _pause(session, settings, draft, reason, detail)
    else:
        _fail(draft, reason, detail)


def _pause(
    session: AgentSession, settings: OperatorSettings, draft: _Draft, reason: Reason, detail: str
) -> None:
    """Wait in phase Paused, saying which limit to raise and how (the spec holds both limits:
    a CEL rule requires them with Pause)."""
    turns = reason is Reason.MAX_TURNS_REACHED
    wire = "maxTurns" if turns else "maxBudgetUsd"
    limit: float | None = session.spec.max_turns if turns else session.spec.max_budget_usd
    maximum: float = settings.max_max_turns if turns else settings.max_max_budget_usd
    applied = min(limit or maximum, maximum)
    if applied >= maximum:
        how = (
            f"spec.{wire} is at the operator's maximum ({maximum:g}), so raising it cannot "
            "continue the session"
        )
    else:
        raised = min(applied * 2, maximum)
        value = int(raised) if turns else round(raised, 6)
        how = f"raise spec.{wire} to continue, e.g. {_resume_hint(session, wire, value)}"
    message = _clip(f"{detail}; paused (onLimitReached Pause): {how}", MESSAGE_MAX_LENGTH)
    news = draft.status.get("phase") != Phase.PAUSED or draft.status.get("reason") != reason
    draft.set(phase=Phase.PAUSED, reason=reason, message=message)
    draft.condition(ConditionType.SUCCEEDED, "Unknown", PAUSED, message)
    draft.condition(ConditionType.RUNNING, "False", reason.value, message)
    if news:
        draft.event("Warning", PAUSED, message)


def _record_attempt(
    draft: _Draft, attempt: int, pod: str, session_id: str | None, model: str | None
) -> None:
    """The status of a session whose attempt `attempt` runs in `pod`."""
    message = working_message(pod, attempt)
    draft.set(phase=Phase.RUNNING, attempts=attempt, pod_name=pod, message=message)
    if session_id:
        draft.set(session_id=session_id)
    if model:
        draft.set(model=model)
    draft.status.pop("reason", None)
    if attempt == 1:
        draft.set(start_time=draft.now)
    draft.condition(ConditionType.RUNNING, "True", "PodCreated", message)
    draft.condition(ConditionType.SUCCEEDED, "Unknown", "Running", message)


def _note_running(pod: PodView, attempt: int, draft: _Draft) -> None:
    """Surface a pod that cannot start (no node fits it, missing Secret, bad image) on the
    session."""
    if pod.running_since is None and pod.unschedulable is not None:
        message = f"runner pod {pod.name} cannot be scheduled: {pod.unschedulable}"
        draft.set(message=_clip(message, MESSAGE_MAX_LENGTH))
        draft.condition(ConditionType.RUNNING, "False", UNSCHEDULABLE, message)
        return
    if pod.waiting_reason and pod.waiting_reason not in POD_STARTING_REASONS:
        message = f"runner pod {pod.name} is waiting: {pod.waiting_reason}"
        if pod.waiting_message:
            message += f": {pod.waiting_message}"
        draft.set(message=_clip(message, MESSAGE_MAX_LENGTH))
        draft.condition(ConditionType.RUNNING, "False", pod.waiting_reason, message)
        return
    # Steady state: the message and condition written with the pod, so nothing to write; only a
    # recovery from a waiting reason (or a status someone else changed) is rewritten.
    message = working_message(pod.name, attempt)
    draft.set(message=message)
    conditions = draft.status.get("conditions") or []
    running = next((c for c in conditions if c["type"] == ConditionType.RUNNING.value), None)
    if running is None or running["status"] != "True":
        draft.condition(ConditionType.RUNNING, "True", "PodRunning", message)


def working_message(pod: str, attempt: int) -> str:
    return f"runner pod {pod} (attempt {attempt}) is working on the session"


def _charge(
    draft: _Draft,
    outcome: AttemptOutcome,
    reservation: tuple[int, float],
) -> None:
    """Charge the attempt against the session's limits: what the gateway metered, or, with no
    gateway report at all, everything the attempt was given (fail closed). The agent's own
    claims never count: it could kill its CLI or forge its summary."""
    status = draft.status
    report = outcome.report
    if report is None:
        turns, cost = reservation
        usage: dict[str, int] = {}
        by_model: dict[str, dict[str, float]] = {}
    else:
        # Turns are the model requests the gateway metered (each agent turn is at least one; a
        # request the API refused without usage, such as a 529, is not a turn).
        turns = sum(m.requests for m in report.models.values())
        cost = float(report.spent_usd + report.in_flight_usd)
        usage = {
            "input_tokens": sum(m.input_tokens for m in report.models.values()),
            "output_tokens": sum(m.output_tokens for m in report.models.values()),
            "cache_read_input_tokens": sum(
                m.cache_read_input_tokens for m in report.models.values()
            ),
            "cache_creation_input_tokens": sum(
                m.cache_creation_input_tokens for m in report.models.values()
            ),
        }
        by_model = {
            model: {
                "requests": m.requests,
                "inputTokens": m.input_tokens,
                "outputTokens": m.output_tokens,
                "cacheReadInputTokens": m.cache_read_input_tokens,
                "cacheCreationInputTokens": m.cache_creation_input_tokens,
                "costUSD": float(m.cost_usd),
            }
            for model, m in report.models.items()
        }
    status["num_turns"] = (status.get("num_turns") or 0) + turns
    status["total_cost_usd"] = round((status.get("total_cost_usd") or 0.0) + cost, 6)
    if usage:
        totals = dict(status.get("usage") or {})
        for key, value in usage.items():
            totals[key] = int(totals.get(key, 0)) + value
        status["usage"] = totals
    if by_model:
        models: dict[str, dict[str, float]] = {
            k: dict(v) for k, v in (status.get("model_usage") or {}).items()
        }
        for model, numbers in by_model.items():
            merged = models.setdefault(model, {})
            for key, number in numbers.items():
                merged[key] = round(float(merged.get(key, 0)) + number, 6)
        status["model_usage"] = models


def _apply_result(
    draft: _Draft,
    summary: RunSummary | None,
    session: AgentSession,
    settings: OperatorSettings,
) -> None:
    """What only the agent knows (result text, subtype, structured output), bounded; refs from
    where the operator knows the store keeps this session, not from the agent."""
    status = draft.status
    session_id = status.get("session_id")
    if session_id:
        root = f"{_store_root(session, settings, draft)}{LOGICAL_PROJECT}/{session_id}/"
        status["transcript_ref"] = root
        status["result_ref"] = root + "result.json"
    if summary is None:
        return
    if summary.workspace is not None and session_id:
        root = f"{_store_root(session, settings, draft)}{LOGICAL_PROJECT}/{session_id}/"
        _apply_snapshot(draft, summary, f"{root}workspace/")
    errors = [_clip(e, ERROR_MAX_LENGTH) for e in (summary.errors or [])][:ERRORS_MAX_ITEMS]
    structured = summary.structured_output
    if structured is not None and not structured_output_fits(structured):
        structured = None  # a forged summary: the runner never sends a larger one
    updates: dict[str, Any] = {
        "subtype": summary.subtype,
        "is_error": summary.is_error,
        "duration_ms": summary.duration_ms,
        "stop_reason": summary.stop_reason,
        "terminal_reason": summary.terminal_reason,
        "result_preview": summary.result_preview,
        "structured_output": structured,
        "errors": errors or None,
        "permission_denials": summary.permission_denials,
        "api_error_status": summary.api_error_status,
    }
    for key, value in updates.items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = value


def _store_root(session: AgentSession, settings: OperatorSettings, draft: _Draft) -> str:
    """`<store URL>/<namespace>/<namespace uid>/`: what the session's gateway is rooted at, so
    the keys it reports are relative to it (keys.store_scope)."""
    scope = store_scope(str(session.metadata.namespace), draft.namespace_uid)
    return f"{settings.store_url.rstrip('/')}/{scope}"


def _apply_outputs(
    draft: _Draft,
    report: GatewayReport | None,
    session: AgentSession,
    settings: OperatorSettings,
) -> None:
    """status.outputs from the gateway's report (it stored the artifacts and made the pushes):
    URIs from the store's root and the keys it wrote; entries that do not fit are counted."""
    outputs = report.outputs if report is not None else None
    if outputs is None:
        return
    root = _store_root(session, settings, draft)
    artifacts = [
        {
            "name": a.name,
            "path": a.path,
            "uri": root + a.key,
            "size": a.size,
            "sha256": a.sha256,
        }
        for a in outputs.artifacts
        if re.fullmatch(SHA256_PATTERN, a.sha256)
    ]
    left_out = outputs.artifacts_left_out + max(len(artifacts) - STATUS_ARTIFACTS_MAX, 0)
    pushes = []
    for push in outputs.git:
        entry: dict[str, Any] = {"source": push.source, "pushed": push.pushed}
        if push.branch:
            entry["branch"] = push.branch
        if push.commit and re.fullmatch(COMMIT_PATTERN, push.commit):
            entry["commit"] = push.commit
        if push.message:
            entry["message"] = _clip(push.message, SNAPSHOT_MESSAGE_MAX_LENGTH)
        pushes.append(entry)
    status: dict[str, Any] = {}
    if artifacts:
        status["artifacts"] = artifacts[:STATUS_ARTIFACTS_MAX]
    if pushes:
        status["git"] = pushes
    if left_out:
        status["message"] = (
            f"{left_out} more artifact files are stored under {root}{LOGICAL_PROJECT}/"
            f"{draft.status.get('session_id')}/artifacts/ (not listed here)"
        )
    draft.status["outputs"] = status


def _apply_snapshot(draft: _Draft, summary: RunSummary, uri: str) -> None:
    """status.workspace.snapshot from the runner's summary: counts and warnings only (bounded;
    the URI is the operator's own). A snapshot not taken keeps the last one's figures."""
    taken = summary.workspace
    assert taken is not None
    workspace = dict(draft.status.get("workspace") or {})
    snapshot = dict(workspace.get("snapshot") or {})
    if taken.taken:
        snapshot = {
            "uri": uri,
            "files": taken.files,
            "bytes": taken.bytes,
            "uploaded_bytes": taken.uploaded_bytes,
        }
    if taken.message:
        snapshot["message"] = _clip(taken.message, SNAPSHOT_MESSAGE_MAX_LENGTH)
    else:
        snapshot.pop("message", None)
    workspace["snapshot"] = {k: v for k, v in snapshot.items() if v is not None}
    draft.status["workspace"] = workspace


def _conclude(
    session: AgentSession,
    current: AgentSessionStatus,
    attempt: int,
    latest: PodView | None,
    outcome: AttemptOutcome,
    resume_id: str | None,
    settings: OperatorSettings,
    draft: _Draft,
    admission: AdmissionView,
) -> Plan:
    """An attempt has ended: finish the session, or schedule and start the next attempt."""
    backoff = _condition(current, ConditionType.RUNNING)
    waiting_to_retry = backoff is not None and backoff.reason == RETRY_BACKOFF
    stopped_for_suspend = current.phase == Phase.SUSPENDED  # and in flight: _decide checks
    if outcome.report is None:
        charged = ""
        if not waiting_to_retry:  # afterwards the status already holds the charge
            turns, budget = _remaining_limits(session, current, settings)
            charged = f" (${budget:.4f}, {turns} turns)"
        outcome = dataclasses.replace(
            outcome,
            message=(
                f"{outcome.message}; attempt {attempt} left no gateway report, so it was charged "
                f"its whole reservation{charged}"
            ),
        )
    if not waiting_to_retry:
        _charge(draft, outcome, _remaining_limits(session, current, settings))
        _apply_result(draft, outcome.summary, session, settings)
        _apply_outputs(draft, outcome.report, session, settings)

    def start_next(*, last: str | None = None, resumed: bool = False) -> Plan:
        """The next attempt, against the status as charged so far in this pass."""
        return _start_attempt(
            session,
            AgentSessionStatus.model_validate(draft.status),
            attempt + 1,
            resume_id,
            settings,
            draft,
            admission,
            last=last,
            resumed=resumed,
        )

    if outcome.verdict is Verdict.SUCCEEDED:
        draft.set(phase=Phase.SUCCEEDED, reason=Reason.COMPLETED, completion_time=draft.now)
        message = (
            f"the agent finished in {draft.status.get('num_turns', 0)} turns "
            f"(${draft.status.get('total_cost_usd', 0.0):.4f})"
        )
        draft.set(message=message)
        draft.condition(ConditionType.SUCCEEDED, "True", Reason.COMPLETED.value, message)
        draft.condition(ConditionType.RUNNING, "False", Reason.COMPLETED.value, message)
        draft.event("Normal", "Succeeded", message)
        return Plan(outcome=outcome)
    if (
        outcome.verdict is Verdict.FAILED
        and outcome.reason in LIMIT_REASONS
        and session.spec.on_limit_reached == LimitAction.PAUSE
    ):
        # Not a failure the backoffLimit counts; the next attempt starts at once if the spec
        # was raised while this one ran, else the session waits Paused for a raise.
        _count_interrupted(draft)
        started = start_next(last=outcome.message, resumed=True)
        return Plan(
            create_pod=started.create_pod,
            outcome=outcome,
            admission_attempt=started.admission_attempt,
        )
    if outcome.verdict is Verdict.FAILED:
        _fail(draft, outcome.reason, outcome.message)
        return Plan(outcome=outcome)
    if stopped_for_suspend:
        _count_interrupted(draft)
        if session.spec.suspend:
            _hold_suspended(session, AgentSessionStatus.model_validate(draft.status), draft)
            return Plan(outcome=outcome)
        # Cleared while the pod was stopping: continue now, no backoff (nothing failed).
        started = start_next(resumed=True)
        return Plan(
            create_pod=started.create_pod,
            outcome=outcome,
            admission_attempt=started.admission_attempt,
        )

    failed_attempts = attempt - (current.interrupted_attempts or 0)
    if failed_attempts >= session.spec.backoff_limit + 1:
        _fail(
            draft,
            Reason.BACKOFF_LIMIT_EXCEEDED,
            f"{failed_attempts} attempts failed (backoffLimit {session.spec.backoff_limit}); "
            f"last: {outcome.message}",
        )
        return Plan(outcome=outcome)
    delay = min(
        settings.backoff_base_seconds * 2 ** (failed_attempts - 1), settings.backoff_max_seconds
    )
    if not waiting_to_retry:
        message = f"attempt {attempt} failed: {outcome.message}; retrying in {delay:g}s"
        draft.set(message=_clip(message, MESSAGE_MAX_LENGTH))
        draft.condition(ConditionType.RUNNING, "False", RETRY_BACKOFF, message)
        draft.event("Warning", "AttemptFailed", message)
        anchor = draft.now
    else:
        assert backoff is not None
        anchor = backoff.last_transition_time
    due = anchor + dt.timedelta(seconds=delay)
    deadline = _deadline(session, AgentSessionStatus.model_validate(draft.status), settings)
    if deadline is not None:
        due = min(due, deadline)  # then the next attempt is refused: fail without waiting longer
    if draft.now < due:
        return Plan(
            outcome=None if waiting_to_retry else outcome,
            requeue_after=(due - draft.now).total_seconds(),
        )
    started = start_next(last=outcome.message)
    return Plan(
        create_pod=started.create_pod,
        outcome=None if waiting_to_retry else outcome,
        retried=started.create_pod is not None,
        admission_attempt=started.admission_attempt,
    )


def _count_interrupted(draft: _Draft) -> None:
    """The attempt just concluded was stopped (suspend) or ended at a limit (Pause): it does not
    count against backoffLimit."""
    draft.set(interrupted_attempts=(draft.status.get("interrupted_attempts") or 0) + 1)
