"""Table tests: a resume in place (spec.resume without fork) never runs an SDK session id that
another non-terminal session runs; it waits, saying for whom. Forks never wait."""

from __future__ import annotations

import datetime as dt
from typing import Any

from agentsession_operator.reconcile.decide import decide
from agentsession_operator.reconcile.observed import Observed, RefView, SessionIdHolder
from tests.unit.test_decide import SETTINGS, T0, apply, condition, run_config, running, session

SOURCE_ID = "7d7d7d7d-2222-4b4b-8c8c-1f1f1f1f1f1f"
SOURCE_RUNNING = (SessionIdHolder("source", "Running"),)


def in_place(**resume: Any) -> dict[str, Any]:
    return {"resume": {"sessionId": SOURCE_ID, **resume}}


def test_a_resume_in_place_of_a_running_session_waits_for_it() -> None:
    ags = session(in_place())
    plan = decide(ags, Observed(session_id_holders=SOURCE_RUNNING), SETTINGS, T0)
    assert plan.create_pod is None
    assert plan.status is not None
    assert plan.status.phase == "Pending"
    assert plan.status.attempts is None
    message = plan.status.message or ""
    assert message.startswith(
        f"waiting for AgentSession source (Running) to finish: it runs SDK session {SOURCE_ID}, "
        "which spec.resume.sessionId resumes in place"
    )
    assert "fork: true" in message
    assert condition(plan.status, "Succeeded") == ("Unknown", "SessionIdInUse")
    assert condition(plan.status, "Running") == ("False", "SessionIdInUse")
    assert [e.reason for e in plan.events] == ["SessionIdInUse"]
    assert plan.requeue_after is not None
    ags = apply(ags, plan)

    # Still held: nothing new to write or say.
    later = T0 + dt.timedelta(seconds=5)
    again = decide(ags, Observed(session_id_holders=SOURCE_RUNNING), SETTINGS, later)
    assert (again.status, again.events, again.create_pod) == (None, (), None)

    # The source finished: the session runs that id, in place.
    free = decide(ags, Observed(), SETTINGS, later)
    assert free.create_pod is not None
    config = run_config(free.create_pod)
    assert config["sessionId"] == config["resumeSessionId"] == SOURCE_ID
    assert not config["forkSession"]
    assert free.status is not None
    assert free.status.session_id == SOURCE_ID


def test_a_second_resume_in_place_waits_for_the_first_and_names_every_holder() -> None:
    holders = (SessionIdHolder("first-follower", None), SessionIdHolder("source", "Suspended"))
    plan = decide(session(in_place()), Observed(session_id_holders=holders), SETTINGS, T0)
    assert plan.status is not None
    assert plan.create_pod is None
    assert "first-follower (Pending), source (Suspended)" in (plan.status.message or "")


def test_a_fork_of_a_running_session_starts_at_once_under_its_own_id() -> None:
    plan = decide(
        session(in_place(fork=True)), Observed(session_id_holders=SOURCE_RUNNING), SETTINGS, T0
    )
    assert plan.create_pod is not None
    config = run_config(plan.create_pod)
    assert config["resumeSessionId"] == SOURCE_ID
    assert config["sessionId"] != SOURCE_ID
    assert config["forkSession"]


def test_a_session_ref_resolved_to_a_held_id_waits_too() -> None:
    ref = RefView(name="parent", phase="Succeeded", reason="Completed", session_id=SOURCE_ID)
    holders = (SessionIdHolder("sibling", "Running"),)
    ags = session({"resume": {"sessionRef": "parent"}})
    plan = decide(ags, Observed(ref=ref, session_id_holders=holders), SETTINGS, T0)
    assert plan.create_pod is None
    assert plan.status is not None
    assert "spec.resume.sessionRef resumes in place" in (plan.status.message or "")
    assert "sibling (Running)" in (plan.status.message or "")


def test_a_started_session_is_the_holder_and_never_waits_for_itself() -> None:
    ags = session(in_place())
    ags = apply(ags, decide(ags, Observed(), SETTINGS, T0))
    # A pass that (wrongly) lists a holder once it runs changes nothing: only a start checks.
    plan = decide(
        ags, Observed(pods=(running(1),), session_id_holders=SOURCE_RUNNING), SETTINGS, T0
    )
    assert plan.status is None
    assert plan.create_pod is None
    assert plan.delete_pods == ()
