"""The statuses the controller writes itself, outside decide(). Pure.

A session is *held* when its next step waits for something outside its spec: the namespace's
runner NetworkPolicy, store credentials, the operator's own RBAC, a used-up ResourceQuota, or an
API error that the next try may not meet. The controller retries it with backoff and says why
on the status (`held_status`) and in a Warning Event. A session the operator cannot parse at all
(stored before a stricter CRD) fails for good (`unparseable_status`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from agentsession_contract.run import Reason
from agentsession_operator.models import AgentSessionStatus, Condition, Phase
from agentsession_operator.models.status import MESSAGE_MAX_LENGTH, ConditionType

OPERATOR_FORBIDDEN = "OperatorForbidden"
"""Condition reason and Event: the operator's own RBAC (or credentials) refused a create it needs
for the session; its admin must fix the operator's permissions."""
QUOTA_EXCEEDED = "QuotaExceeded"
"""Condition reason and Event: a ResourceQuota of the namespace has no room for the runner pod
now (it would fit an empty one)."""
RETRYING = "Retrying"
"""Condition reason and Event: a pass over the session failed (an API error after the client's
own retries, a timeout); the operator tries again with backoff."""

_WAIT_CONDITIONS = {ConditionType.SUCCEEDED.value: "Unknown", ConditionType.RUNNING.value: "False"}


def held_status(
    current: AgentSessionStatus, reason: str, message: str, now: dt.datetime, generation: int | None
) -> AgentSessionStatus:
    """The session's status while its next step is held for `reason`.

    The message says why; before a first attempt the session is Pending with the conditions
    (Succeeded Unknown, Running False) giving `reason`. A started session keeps its phase and
    conditions: they record that the attempt before was concluded and charged, which must not
    happen twice.
    """
    status = current.model_dump(exclude_none=True)
    status["phase"] = status.get("phase") or Phase.PENDING
    status["message"] = _clip(message)
    if not current.attempts:
        status["phase"] = Phase.PENDING
        kept = [c for c in status.get("conditions") or [] if c["type"] not in _WAIT_CONDITIONS]
        for kind, state in _WAIT_CONDITIONS.items():
            previous = next((c for c in current.conditions or [] if c.type == kind), None)
            since = now
            if previous is not None and previous.status == state:
                since = previous.last_transition_time
            condition = Condition(
                type=kind,
                status=state,
                reason=reason,
                message=status["message"],
                last_transition_time=since,
                observed_generation=generation,
            )
            kept.append(condition.model_dump(exclude_none=True))
        status["conditions"] = sorted(kept, key=lambda c: c["type"])
    return AgentSessionStatus.model_validate(status)


def unparseable_status(
    raw: Mapping[str, Any], message: str, now: dt.datetime, generation: int | None
) -> dict[str, Any]:
    """The wire status of a session that fails because the operator cannot read it: phase Failed,
    reason InvalidSpec, the validation error as the message, both conditions False.

    Built on the stored status as it is (it may be what fails to parse): fields it does not
    replace are left unchanged, which the API server accepts even where a stricter schema would
    now refuse them (CRD validation ratcheting).
    """
    text = _clip(message)
    stamp = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = dict(raw)
    status.update(
        phase=Phase.FAILED.value,
        reason=Reason.INVALID_SPEC.value,
        message=text,
        completionTime=status.get("completionTime") or stamp,
    )
    if generation is not None:
        status["observedGeneration"] = generation
    conditions = [
        c
        for c in raw.get("conditions") or []
        if isinstance(c, Mapping) and c.get("type") not in _WAIT_CONDITIONS
    ]
    for kind in _WAIT_CONDITIONS:
        condition: dict[str, Any] = {
            "type": kind,
            "status": "False",
            "reason": Reason.INVALID_SPEC.value,
            "message": text,
            "lastTransitionTime": stamp,
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        conditions.append(condition)
    status["conditions"] = sorted(conditions, key=lambda c: str(c.get("type")))
    return status


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_MAX_LENGTH else text[: MESSAGE_MAX_LENGTH - 1] + "…"
