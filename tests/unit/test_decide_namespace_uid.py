"""Table tests: the store scope's namespace UID, from the first pass to the refs; sessions an
older operator started keep the layout without it."""

from __future__ import annotations

import datetime as dt

import pytest

from agentsession_contract.store import InvalidKeyError
from agentsession_contract.store.keys import store_scope
from agentsession_operator.reconcile.decide import decide
from agentsession_operator.reconcile.observed import Observed
from agentsession_operator.reconcile.podspec import session_id_for
from tests.unit.test_decide import (
    COMPLETED,
    SETTINGS,
    T0,
    UID,
    apply,
    ended,
    run_config,
    session,
)

NAMESPACE_UID = "5a5a5a5a-3333-4c4c-8d8d-2e2e2e2e2e2e"
RECREATED_UID = "6b6b6b6b-4444-4d4d-9e9e-3f3f3f3f3f3f"


def test_store_scope_is_namespace_then_uid() -> None:
    assert store_scope("team-a", NAMESPACE_UID) == f"team-a/{NAMESPACE_UID}/"
    assert store_scope("team-a", None) == "team-a/"
    for bad in ("../x", "5A5A5A5A-3333-4C4C-8D8D-2E2E2E2E2E2E", "", "sessions", "a/b"):
        with pytest.raises(InvalidKeyError):
            store_scope("team-a", bad)


def test_the_first_pass_records_the_namespace_uid_and_every_attempt_is_scoped_by_it() -> None:
    first = decide(session(), Observed(namespace_uid=NAMESPACE_UID), SETTINGS, T0)
    assert first.status is not None
    assert first.status.namespace_uid == NAMESPACE_UID
    assert first.create_pod is not None
    assert run_config(first.create_pod)["namespaceUid"] == NAMESPACE_UID
    ags = apply(session(), first)

    # Later passes read no namespace (the controller observes none once the status has it).
    plan = decide(ags, Observed(pods=(ended(1, 0, COMPLETED),)), SETTINGS, T0)
    assert plan.status is not None
    root = f"s3://bucket/agents/team-a/{NAMESPACE_UID}/sessions/{session_id_for(UID)}/"
    assert plan.status.transcript_ref == root
    assert plan.status.result_ref == root + "result.json"


def test_a_session_keeps_the_uid_it_started_under() -> None:
    ags = apply(session(), decide(session(), Observed(namespace_uid=NAMESPACE_UID), SETTINGS, T0))
    failed = ended(1, 4, {"reason": "ExecutionError"})
    settings = SETTINGS.model_copy(update={"backoff_base_seconds": 0})
    plan = decide(ags, Observed(pods=(failed,), namespace_uid=RECREATED_UID), settings, T0)
    assert plan.create_pod is not None
    assert run_config(plan.create_pod)["namespaceUid"] == NAMESPACE_UID
    assert plan.status is not None
    assert plan.status.namespace_uid == NAMESPACE_UID


def test_a_waiting_session_records_the_uid_with_its_first_status_write() -> None:
    ags = session({"resume": {"sessionRef": "later"}})
    plan = decide(ags, Observed(ref_missing=True, namespace_uid=NAMESPACE_UID), SETTINGS, T0)
    assert plan.create_pod is None
    assert plan.status is not None
    assert plan.status.namespace_uid == NAMESPACE_UID


def test_a_session_started_before_the_uid_was_part_of_the_layout_keeps_the_old_one() -> None:
    started_by_an_older_operator = apply(session(), decide(session(), Observed(), SETTINGS, T0))
    assert started_by_an_older_operator.status is not None
    assert started_by_an_older_operator.status.namespace_uid is None
    failed = ended(1, 4, {"reason": "ExecutionError"})
    settings = SETTINGS.model_copy(update={"backoff_base_seconds": 0})
    later = T0 + dt.timedelta(seconds=1)
    plan = decide(
        started_by_an_older_operator,
        Observed(pods=(failed,), namespace_uid=NAMESPACE_UID),
        settings,
        later,
    )
    assert plan.create_pod is not None
    assert run_config(plan.create_pod).get("namespaceUid") is None
    assert plan.status is not None
    assert plan.status.namespace_uid is None
    done = decide(
        apply(started_by_an_older_operator, plan),
        Observed(pods=(failed, ended(2, 0, COMPLETED))),
        settings,
        later,
    )
    assert done.status is not None
    assert done.status.transcript_ref == (
        f"s3://bucket/agents/team-a/sessions/{session_id_for(UID)}/"
    )
