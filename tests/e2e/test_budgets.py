"""End to end with the real CLI: AgentBudgets charge what the gateway metered, a Paused or
Suspended session holds no reservation, and a session that cannot be admitted says why.

The race of 200 sessions, the operator killed mid-burst and fair share under the operator's cap
are in tests/e2e/test_budget_race.py.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from tests.e2e.conftest import (
    Sessions,
    condition,
    gate_command,
    marker,
    table_rows,
)
from tests.e2e.test_suspend_pause import follow_hint, patch_spec, paused, spends_past_its_budget
from tests.support import scripted_api as sa
from tests.support.cluster import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.cli, pytest.mark.s3]


def create_budget(sessions: Sessions, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": "agents.dev/v1alpha1",
        "kind": "AgentBudget",
        "metadata": {"name": name},
        "spec": spec,
    }
    sessions.api.create_namespaced_custom_object(
        "agents.dev", "v1alpha1", sessions.namespace, "agentbudgets", body
    )


def budget_status(sessions: Sessions, name: str) -> dict[str, Any]:
    body = sessions.api.get_namespaced_custom_object(
        "agents.dev", "v1alpha1", sessions.namespace, "agentbudgets", name
    )
    return dict(body.get("status") or {})


def usd(value: object) -> Decimal:
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value))


def settled(sessions: Sessions, name: str) -> dict[str, Any]:
    """The budget's status once it holds no reservation."""
    return wait_for(
        lambda: (s := budget_status(sessions, name)) and "reservations" not in s and s,
        timeout=60,
        what=f"AgentBudget {name} to hold no reservation",
    )


def test_a_budget_is_charged_what_the_gateway_metered_and_a_paused_session_holds_nothing(
    sessions: Sessions, scripted_api: sa.ScriptedAPI
) -> None:
    create_budget(sessions, "team", {"limits": [{"period": "Daily", "amountUsd": 5}]})
    _, spec = spends_past_its_budget(scripted_api)
    sessions.create("thrifty", spec)
    running = sessions.wait("thrifty", lambda s: s.get("phase") == "Running", what="Running")
    assert condition(running, "Admitted")["status"] == "True"
    assert "team" in condition(running, "Admitted")["message"]
    at_limit = sessions.wait("thrifty", lambda s: paused(s) or s.get("phase") == "Failed")
    assert at_limit["phase"] == "Paused", at_limit
    ledger = settled(sessions, "team")
    # One attempt, charged once: what its gateway metered (the status rounds to 6 digits too).
    assert abs(usd(ledger["totalSpentUsd"]) - usd(at_limit["totalCostUsd"])) <= Decimal("1e-6")
    assert ledger["running"] == 0

    follow_hint(sessions, at_limit)
    status = sessions.wait("thrifty", timeout=120)
    assert status["phase"] == "Succeeded", status
    assert status["attempts"] == 2
    ledger = settled(sessions, "team")
    daily = ledger["periods"][0]
    # The status's cost is the sum over both attempts, and so is the ledger's.
    assert abs(usd(daily["spentUsd"]) - usd(status["totalCostUsd"])) <= Decimal("2e-6")
    assert usd(daily["remainingUsd"]) == 5 - usd(daily["spentUsd"])
    rows = table_rows(sessions.cluster.kubectl("get", "agb", "-n", sessions.namespace).stdout)
    assert rows[0]["NAME"] == "team"
    assert (rows[0]["PERIOD"], rows[0]["LIMIT (USD)"]) == ("Daily", "5")
    assert rows[0]["EXHAUSTED"] == "False"


def test_suspending_a_running_session_frees_its_slot_for_the_next_in_line(
    sessions: Sessions, scripted_api: sa.ScriptedAPI
) -> None:
    create_budget(sessions, "one-at-a-time", {"maxConcurrentSessions": 1})
    slow, quick = marker(), marker()
    scripted_api.route(
        slow,
        sa.bash(gate_command("never-opened", f"echo slept-{slow}")),
        default=sa.text("Slow one done."),
    )
    scripted_api.route(quick, default=sa.text("Quick one done."))
    sessions.create("slow", {"prompt": f"{slow}: nap", "allowedTools": ["Bash"]})
    sessions.wait_running_pod("slow")
    sessions.create("quick", {"prompt": f"{quick}: hurry"})
    queued = sessions.wait("quick", lambda s: s.get("phase") == "Queued", what="Queued")
    admitted = condition(queued, "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "ConcurrencyLimited")
    assert "maxConcurrentSessions 1" in admitted["message"]
    assert sessions.pods("quick") == []
    assert "Queued" in sessions.event_reasons("quick")
    first = sessions.wait("slow", lambda s: bool(s.get("sessionId")), what="a session id")
    # Suspended only once its first turn got the Bash call (else the resumed attempt gets it and
    # waits out the gate's timeout).
    wait_for(lambda: scripted_api.requests_for(slow), timeout=60, what="the slow turn's request")

    patch_spec(sessions, "slow", {"suspend": True})
    done = sessions.wait("quick", timeout=120)
    assert done["phase"] == "Succeeded", done
    assert "Admitted" in sessions.event_reasons("quick")
    assert sessions.status("slow")["phase"] == "Suspended"

    patch_spec(sessions, "slow", {"suspend": False})
    status = sessions.wait("slow", timeout=150)
    assert status["phase"] == "Succeeded", status
    assert status["sessionId"] == first["sessionId"]
    assert status["attempts"] == 2
    assert settled(sessions, "one-at-a-time")["running"] == 0


def test_a_session_without_max_budget_usd_waits_under_a_spend_limit(sessions: Sessions) -> None:
    create_budget(sessions, "capped", {"limits": [{"period": "Monthly", "amountUsd": 100}]})
    sessions.create("undeclared", {"prompt": "no budget declared"})
    queued = sessions.wait("undeclared", lambda s: s.get("phase") == "Queued", what="Queued")
    admitted = condition(queued, "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", "BudgetRequiresMaxBudgetUsd")
    assert "spec.maxBudgetUsd" in admitted["message"]
    assert condition(queued, "Succeeded")["status"] == "Unknown"
    events = sessions.events("undeclared")
    assert [(e.type, e.reason) for e in events] == [("Warning", "Queued")]
    assert sessions.pods("undeclared") == []
    rows = table_rows(sessions.cluster.kubectl("get", "ags", "-n", sessions.namespace).stdout)
    assert rows[0]["PHASE"] == "Queued"
    # A budget that no longer selects it lets it start.
    sessions.api.delete_namespaced_custom_object(
        "agents.dev", "v1alpha1", sessions.namespace, "agentbudgets", "capped"
    )
    status = sessions.wait("undeclared", lambda s: s.get("phase") == "Running", what="Running")
    assert condition(status, "Admitted")["status"] == "True"
