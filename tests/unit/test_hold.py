"""The statuses the controller writes outside decide(): a held session (waiting for something
outside its spec) and one the operator cannot parse; and which refused creates fail a session."""

from __future__ import annotations

import datetime as dt

import pytest

from agentsession_operator.models import AgentSessionStatus
from agentsession_operator.reconcile.hold import RETRYING, held_status, unparseable_status
from agentsession_operator.reconcile.network_policy import NETWORK_POLICY_MISSING
from agentsession_operator.reconcile.refusal import (
    REFUSAL_MESSAGE_MAX_LENGTH,
    Refusal,
    classify_refusal,
    refusal_message,
)

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)


def test_a_new_session_waits_pending_with_conditions_that_keep_their_time() -> None:
    message = "no runner pod starts in namespace team-a until ..."
    first = held_status(AgentSessionStatus(), NETWORK_POLICY_MISSING, message, T0, 1)
    assert first.phase == "Pending"
    assert first.message == message
    conditions = {
        c.type: (c.status, c.reason, c.last_transition_time) for c in first.conditions or []
    }
    assert conditions == {
        "Running": ("False", NETWORK_POLICY_MISSING, T0),
        "Succeeded": ("Unknown", NETWORK_POLICY_MISSING, T0),
    }
    later = held_status(
        first, NETWORK_POLICY_MISSING, message + " (again)", T0 + dt.timedelta(seconds=30), 1
    )
    assert {c.type: c.last_transition_time for c in later.conditions or []} == {
        "Running": T0,
        "Succeeded": T0,
    }


def test_a_later_attempt_keeps_its_phase_and_conditions() -> None:
    """Backing off after attempt 1: the Running condition (RetryBackoff) records that attempt 1
    was charged; rewriting it would charge it again."""
    backing_off = AgentSessionStatus.model_validate(
        {
            "phase": "Running",
            "attempts": 1,
            "conditions": [
                {
                    "type": "Running",
                    "status": "False",
                    "reason": "RetryBackoff",
                    "message": "attempt 1 failed",
                    "lastTransitionTime": "2026-11-21T11:59:00Z",
                }
            ],
        }
    )
    waiting = held_status(backing_off, RETRYING, "no runner pod starts ...", T0, 1)
    assert waiting.phase == "Running"
    assert waiting.message == "no runner pod starts ..."
    assert waiting.conditions == backing_off.conditions


def test_an_unparseable_session_fails_keeping_what_it_does_not_replace() -> None:
    raw = {
        "phase": "Running",
        "attempts": 1,
        "podName": "old-1",
        "someFieldOfAnOlderOperator": {"x": 1},
        "conditions": [
            {"type": "Admitted", "status": "True", "reason": "Admitted", "message": "ok",
             "lastTransitionTime": "2026-11-21T11:00:00Z"},
            {"type": "Running", "status": "True", "reason": "PodCreated", "message": "working",
             "lastTransitionTime": "2026-11-21T11:00:00Z"},
        ],
    }  # fmt: skip
    status = unparseable_status(raw, "spec.maxTurns: Input should be an integer", T0, 3)
    assert status["phase"] == "Failed"
    assert status["reason"] == "InvalidSpec"
    assert status["message"] == "spec.maxTurns: Input should be an integer"
    assert status["completionTime"] == "2026-11-21T12:00:00Z"
    assert status["observedGeneration"] == 3
    assert status["attempts"] == 1
    assert status["someFieldOfAnOlderOperator"] == {"x": 1}
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {
        "Admitted": ("True", "Admitted"),
        "Running": ("False", "InvalidSpec"),
        "Succeeded": ("False", "InvalidSpec"),
    }
    # What the operator can read back: a terminal status, so it is never failed twice.
    parsed = AgentSessionStatus.model_validate(
        {k: v for k, v in status.items() if k != "someFieldOfAnOlderOperator"}
    )
    assert parsed.phase == "Failed"


POD_SECURITY = (
    'pods "hello-1" is forbidden: violates PodSecurity "restricted:latest": host namespaces '
    "(hostNetwork=true)"
)
RBAC = (
    'pods is forbidden: User "system:serviceaccount:agentsession-system:agentsession-operator" '
    'cannot create resource "pods" in API group "" in the namespace "team-a"'
)
QUOTA_BUSY = (
    'pods "hello-1" is forbidden: exceeded quota: compute, requested: limits.cpu=1,'
    "requests.cpu=1, used: limits.cpu=2,requests.cpu=2, limited: limits.cpu=2,requests.cpu=2"
)
QUOTA_TOO_SMALL = (
    'pods "hello-1" is forbidden: exceeded quota: compute, requested: limits.memory=2Gi,'
    "requests.memory=2Gi, used: limits.memory=0,requests.memory=0, limited: "
    "limits.memory=1Gi,requests.memory=1Gi"
)
QUOTA_COUNT = (
    'pods "hello-1" is forbidden: exceeded quota: count, requested: pods=1, used: pods=2, '
    "limited: pods=2"
)
QUOTA_NO_PODS = (
    'pods "hello-1" is forbidden: exceeded quota: none, requested: pods=1, used: pods=0, '
    "limited: pods=0"
)


@pytest.mark.parametrize(
    ("status", "reason", "message", "expected"),
    [
        pytest.param(403, "Forbidden", POD_SECURITY, Refusal.SPEC, id="pod-security"),
        pytest.param(
            403,
            "Forbidden",
            "pods \"hello-1\" is forbidden: ValidatingAdmissionPolicy 'runner-pods' with binding "
            "'runner-pods' denied request: the runner image is not allowed",
            Refusal.SPEC,
            id="admission-policy",
        ),
        pytest.param(
            403,
            "Forbidden",
            'pods "hello-1" is forbidden: pod rejected: RuntimeClass "gvisor" not found',
            Refusal.SPEC,
            id="runtime-class-missing",
        ),
        pytest.param(
            403,
            "Forbidden",
            'pods "hello-1" is forbidden: maximum cpu usage per Container is 500m, but limit is 1',
            Refusal.SPEC,
            id="limit-range",
        ),
        pytest.param(403, "Forbidden", QUOTA_TOO_SMALL, Refusal.SPEC, id="quota-smaller-than-pod"),
        pytest.param(403, "Forbidden", QUOTA_NO_PODS, Refusal.SPEC, id="quota-of-no-pods"),
        pytest.param(403, "Forbidden", QUOTA_BUSY, Refusal.QUOTA, id="quota-used-up-for-now"),
        pytest.param(403, "Forbidden", QUOTA_COUNT, Refusal.QUOTA, id="quota-pod-count-for-now"),
        pytest.param(
            403,
            "Forbidden",
            'pods "hello-1" is forbidden: failed quota: compute: must specify '
            "limits.ephemeral-storage for: gateway",
            Refusal.SPEC,
            id="quota-needs-a-limit-the-pod-lacks",
        ),
        pytest.param(403, "Forbidden", RBAC, Refusal.OPERATOR, id="operator-rbac"),
        pytest.param(401, "Unauthorized", "Unauthorized", Refusal.OPERATOR, id="operator-token"),
        pytest.param(
            403,
            "Forbidden",
            'pods "hello-1" is forbidden: unable to create new content in namespace team-a '
            "because it is being terminated",
            Refusal.TRANSIENT,
            id="namespace-terminating",
        ),
        pytest.param(
            422,
            "Invalid",
            'Pod "hello-1" is invalid: metadata.annotations: Too long: must have at most 262144 '
            "bytes",
            Refusal.SPEC,
            id="invalid",
        ),
        pytest.param(
            400,
            "BadRequest",
            "admission webhook denied the request",
            Refusal.SPEC,
            id="bad-request",
        ),
        pytest.param(
            413, "RequestEntityTooLarge", "limit is 3145728", Refusal.SPEC, id="too-large"
        ),
        pytest.param(
            404, "NotFound", 'namespaces "team-a" not found', Refusal.TRANSIENT, id="namespace-gone"
        ),
        pytest.param(
            409, "Conflict", "the object has been modified", Refusal.TRANSIENT, id="conflict"
        ),
        pytest.param(415, "UnsupportedMediaType", "", Refusal.OPERATOR, id="unsupported"),
        pytest.param(429, "TooManyRequests", "", Refusal.TRANSIENT, id="throttled"),
        pytest.param(
            500, "InternalError", "etcdserver: leader changed", Refusal.TRANSIENT, id="server-error"
        ),
        pytest.param(503, "ServiceUnavailable", "", Refusal.TRANSIENT, id="unavailable"),
    ],
)
def test_refused_creates_are_sorted_by_whose_fault_they_are(
    status: int, reason: str, message: str, expected: Refusal
) -> None:
    assert classify_refusal(status, reason, message) is expected


def test_the_api_message_is_redacted_and_clipped_for_status_and_events() -> None:
    leaked = (
        "admission denied: env AWS_SECRET_ACCESS_KEY=abcdefghijklmnop and sk-ant-api03-zzzzzzzzzz"
    )
    shown = refusal_message(leaked + "\n  spread   over lines")
    assert "abcdefghijklmnop" not in shown
    assert "sk-ant-api03" not in shown
    assert "[REDACTED]" in shown
    assert "spread over lines" in shown
    long = refusal_message("x" * 10_000)
    assert len(long) == REFUSAL_MESSAGE_MAX_LENGTH
    assert long.endswith("…")
