"""The operator's index of who runs an SDK session id (budgets.BudgetController.holders_of and
claim): what a resume in place waits for. Fed with session bodies as the watch delivers them."""

from __future__ import annotations

from typing import Any

import kopf

from agentsession_operator.budgets import BudgetController
from agentsession_operator.kube.client import Connection, KubeClient
from agentsession_operator.metrics import Metrics
from agentsession_operator.models import AgentSession
from agentsession_operator.reconcile.observed import SessionIdHolder
from agentsession_operator.settings import OperatorSettings

SDK_ID = "7d7d7d7d-2222-4b4b-8c8c-1f1f1f1f1f1f"
VERSIONS = iter(range(1, 1000))


def index() -> BudgetController:
    """A budget controller as the operator builds it; these calls make no API request."""
    metrics = Metrics()
    client = KubeClient(Connection(kopf.ConnectionInfo(server="https://127.0.0.1:9")), metrics, 1)
    settings = OperatorSettings(store_url="s3://bucket/agents")
    return BudgetController(
        settings, client, metrics, requeue=lambda key, delay: None, readmit=lambda body: None
    )


def body(name: str, namespace: str = "team-a", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agents.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "resourceVersion": str(next(VERSIONS)),
            "creationTimestamp": "2026-11-21T12:00:00Z",
        },
        "spec": {"prompt": "Go on.", "resume": {"sessionId": SDK_ID}},
        "status": status,
    }


def test_holders_are_the_other_live_sessions_of_the_namespace_that_run_the_id() -> None:
    sessions = index()
    sessions.session_seen(body("source", phase="Running", attempts=1, sessionId=SDK_ID))
    sessions.session_seen(body("waiting"))  # not started: holds nothing
    sessions.session_seen(
        body("elsewhere", "team-b", phase="Running", attempts=1, sessionId=SDK_ID)
    )
    other_id = "8e8e8e8e-2222-4b4b-8c8c-1f1f1f1f1f1f"
    sessions.session_seen(body("unrelated", phase="Running", attempts=1, sessionId=other_id))

    assert sessions.holders_of("team-a", SDK_ID, "uid-team-a-waiting") == (
        SessionIdHolder("source", "Running"),
    )
    assert sessions.holders_of("team-a", SDK_ID, "uid-team-a-source") == ()  # not itself
    assert sessions.holders_of("team-b", SDK_ID, None) == (SessionIdHolder("elsewhere", "Running"),)

    # The source finishes (terminal sessions leave the index): nobody holds the id.
    sessions.session_seen(body("source", phase="Succeeded", attempts=1, sessionId=SDK_ID))
    assert sessions.holders_of("team-a", SDK_ID, "uid-team-a-waiting") == ()


def test_a_claim_holds_the_id_until_the_status_says_so_or_the_session_goes() -> None:
    sessions = index()
    first, second = body("first"), body("second")
    sessions.session_seen(first)
    sessions.session_seen(second)
    # first's pass decided to create its pod: from that step on, second sees it as a holder,
    # though first's status write (with the id) is still in flight.
    sessions.claim(AgentSession.from_body(first), SDK_ID)
    assert sessions.holders_of("team-a", SDK_ID, "uid-team-a-second") == (
        SessionIdHolder("first", None),
    )
    # Its status lands: it holds the id by its status now (the claim is done with).
    sessions.session_seen(body("first", phase="Running", attempts=1, sessionId=SDK_ID))
    assert sessions.holders_of("team-a", SDK_ID, "uid-team-a-second") == (
        SessionIdHolder("first", "Running"),
    )
    # Ended without starting (say its pod name was taken): out of the index, claim and all.
    sessions.claim(AgentSession.from_body(second), SDK_ID)
    assert [h.name for h in sessions.holders_of("team-a", SDK_ID, None)] == ["first", "second"]
    sessions.session_seen(body("second", phase="Failed"))
    assert [h.name for h in sessions.holders_of("team-a", SDK_ID, None)] == ["first"]
