"""Table tests: a runner pod is the session's by its controller ownerReference's UID, never by its
name and labels; a pod that only looks like one is never adopted, deleted or counted."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from agentsession_operator.models import AgentSession
from agentsession_operator.reconcile.decide import POD_NAME_TAKEN, decide
from agentsession_operator.reconcile.observed import (
    Observed,
    Owner,
    PodView,
    TakenPod,
    split_by_owner,
)
from agentsession_operator.settings import OperatorSettings

T0 = dt.datetime(2026, 11, 21, 12, 0, 0, tzinfo=dt.UTC)
UID = "0b7a3c52-1111-4a4a-9c9c-5e5e5e5e5e5e"
EARLIER_UID = "9d9d9d9d-2222-4b4b-8c8c-6f6f6f6f6f6f"
SETTINGS = OperatorSettings(store_url="s3://bucket/agents", backoff_base_seconds=10)
LABELS = {
    "app.kubernetes.io/managed-by": "agentsession-operator",
    "app.kubernetes.io/component": "runner",
    "agents.dev/session": "web",
}


REPORT = json.dumps(
    {
        "budgetUsd": "1.0",
        "spentUsd": "0.02",
        "requests": 2,
        "models": {"claude-sonnet-4-5": {"requests": 2, "costUsd": "0.02"}},
        "ended": "stopped",
    }
)


def session(status: dict[str, Any] | None = None) -> AgentSession:
    body: dict[str, Any] = {
        "apiVersion": "agents.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": "web", "namespace": "team-a", "uid": UID, "generation": 1},
        "spec": {"prompt": "Say hello."},
    }
    if status is not None:
        body["status"] = status
    return AgentSession.from_body(body)


def owner_ref(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": kind, "name": name, "uid": uid, "controller": True}


def pod_body(
    name: str, attempt: int, owners: list[dict[str, Any]], *, deleting: bool = False
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "labels": {**LABELS, "agents.dev/attempt": str(attempt)},
        "ownerReferences": owners,
        "creationTimestamp": "2026-11-21T11:00:00Z",
    }
    if deleting:
        metadata["deletionTimestamp"] = "2026-11-21T11:59:00Z"
    running = {"running": {"startedAt": "2026-11-21T11:00:01Z"}}
    return {
        "metadata": metadata,
        "status": {"phase": "Running", "containerStatuses": [{"name": "runner", "state": running}]},
    }


def view(body: dict[str, Any]) -> PodView:
    parsed = PodView.from_body(body)
    assert parsed is not None
    return parsed


OURS = view(pod_body("web-1", 1, [owner_ref("AgentSession", "web", UID)]))
IMPOSTOR = view(pod_body("web-5", 5, []))  # the runner's labels, made by someone else
EARLIER = view(pod_body("web-1", 1, [owner_ref("AgentSession", "web", EARLIER_UID)]))
STATEFUL = TakenPod("web-1", Owner("StatefulSet", "web", "5e5e5e5e"), deleting=False)


def test_only_a_pod_whose_controller_has_the_sessions_uid_is_its_own() -> None:
    own, taken = split_by_owner([OURS, IMPOSTOR], UID)
    assert list(own) == ["web-1"]
    assert taken == {"web-5": TakenPod("web-5", None, deleting=False)}
    own, taken = split_by_owner([EARLIER], UID)
    assert own == {}
    assert taken["web-1"].owner == Owner("AgentSession", "web", EARLIER_UID)
    # A non-controller reference to the session proves nothing either.
    shared = pod_body("web-1", 1, [{**owner_ref("AgentSession", "web", UID), "controller": False}])
    assert split_by_owner([view(shared)], UID)[0] == {}


@pytest.mark.parametrize(
    ("taken", "goes_away"),
    [
        (EARLIER.taken(), True),  # the garbage collector deletes a deleted namesake's pods
        (TakenPod("web-1", None, deleting=True), True),
        (STATEFUL, False),  # a StatefulSet recreates its pod
        (TakenPod("web-1", None, deleting=False), False),  # a bare pod stays until deleted
        (TakenPod("web-1", Owner("AgentSession", "other", EARLIER_UID), deleting=False), False),
    ],
)
def test_which_taken_names_free_up_by_themselves(taken: TakenPod, goes_away: bool) -> None:
    assert taken.goes_away_for("web") is goes_away


def test_a_first_pod_name_held_by_a_statefulset_fails_the_session_at_once() -> None:
    """An AgentSession named like a StatefulSet (its pod web-1) ends InvalidSpec before any
    attempt, never BackoffLimitExceeded after retrying into the same name."""
    plan = decide(session(), Observed(taken={"web-1": STATEFUL}), SETTINGS, T0)
    assert plan.create_pod is None
    assert plan.delete_pods == ()
    assert plan.status is not None
    assert plan.status.phase == "Failed"
    assert plan.status.reason == "InvalidSpec"
    assert plan.status.attempts is None
    assert plan.status.pod_name is None
    message = plan.status.message or ""
    assert "runner pod web-1 (attempt 1) cannot be created" in message
    assert "owned by StatefulSet web" in message
    assert "create the session under another name" in message
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "InvalidSpec")]


def test_a_pod_of_a_deleted_namesake_is_waited_for_then_the_session_starts() -> None:
    first = decide(session(), Observed(taken={"web-1": EARLIER.taken()}), SETTINGS, T0)
    assert first.create_pod is None
    assert first.status is not None
    assert first.status.phase == "Pending"
    assert first.status.attempts is None
    assert "waiting for pod web-1 (owned by AgentSession web" in (first.status.message or "")
    assert "an earlier AgentSession of this name" in (first.status.message or "")
    running = next(c for c in first.status.conditions or [] if c.type == "Running")
    assert (running.status, running.reason) == ("False", POD_NAME_TAKEN)
    assert [(e.type, e.reason) for e in first.events] == [("Warning", POD_NAME_TAKEN)]
    assert first.requeue_after == 1.0
    # Still there 8 s later: no second Event, and the next look backs off as the wait grows.
    waiting = session(first.status.to_wire())
    later = decide(
        waiting, Observed(taken={"web-1": EARLIER.taken()}), SETTINGS, T0 + dt.timedelta(seconds=8)
    )
    assert later.status is None
    assert later.events == ()
    assert later.requeue_after == 8.0
    # Gone: the first attempt starts under its name.
    started = decide(waiting, Observed(), SETTINGS, T0 + dt.timedelta(seconds=9))
    assert started.create_pod is not None
    assert started.create_pod["metadata"]["name"] == "web-1"
    assert started.create_pod["metadata"]["ownerReferences"][0]["uid"] == UID
    assert started.status is not None
    assert started.status.phase == "Running"
    assert started.status.attempts == 1


def test_a_foreign_pod_being_deleted_is_waited_for() -> None:
    plan = decide(session(), Observed(taken={"web-1": TakenPod("web-1", None, True)}), SETTINGS, T0)
    assert plan.create_pod is None
    assert plan.status is not None
    assert plan.status.phase == "Pending"
    assert "owned by nothing, being deleted" in (plan.status.message or "")


def test_a_later_attempts_name_taken_fails_and_keeps_the_earlier_charge() -> None:
    """The retry's pod name is held by a copy: the attempt already concluded stays charged
    once, and the session ends instead of waiting (a wait would conclude it twice)."""
    first = decide(session(), Observed(), SETTINGS, T0)
    assert first.status is not None
    ags = session(first.status.to_wire())
    failed_body = pod_body("web-1", 1, [owner_ref("AgentSession", "web", UID)])
    failed_body["status"] = {
        "phase": "Failed",
        "containerStatuses": [
            {"name": "runner", "state": {"terminated": {"exitCode": 4, "reason": "Error"}}}
        ],
        "initContainerStatuses": [
            {"name": "gateway", "state": {"terminated": {"exitCode": 0, "message": REPORT}}}
        ],
    }
    failed = view(failed_body)
    copy = TakenPod("web-2", None, deleting=False)
    observed = Observed(pods=(failed,), taken={"web-2": copy})
    ended = T0 + dt.timedelta(seconds=60)
    backing_off = decide(ags, observed, SETTINGS, ended)
    assert backing_off.status is not None
    assert backing_off.requeue_after == 10.0
    charged = backing_off.status.num_turns
    due = ended + dt.timedelta(seconds=10)
    plan = decide(session(backing_off.status.to_wire()), observed, SETTINGS, due)
    assert plan.create_pod is None
    assert plan.status is not None
    assert plan.status.phase == "Failed"
    assert plan.status.reason == "InvalidSpec"
    assert plan.status.attempts == 1
    assert "runner pod web-2 (attempt 2) cannot be created" in (plan.status.message or "")
    # Charged what its gateway metered, once.
    assert charged == 2
    assert plan.status.num_turns == charged


def test_a_copy_with_the_runners_labels_is_neither_counted_nor_stopped() -> None:
    """A running pod labelled as attempt 5 of the session is not the session's: the first
    attempt is still 1, and a finished session does not delete the copy."""
    own, taken = split_by_owner([IMPOSTOR], UID)
    plan = decide(session(), Observed(pods=tuple(own.values()), taken=taken), SETTINGS, T0)
    assert plan.create_pod is not None
    assert plan.create_pod["metadata"]["name"] == "web-1"
    done = session({"phase": "Succeeded", "reason": "Completed", "attempts": 1})
    finished = decide(done, Observed(pods=tuple(own.values()), taken=taken), SETTINGS, T0)
    assert finished.delete_pods == ()
