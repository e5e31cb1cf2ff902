"""Admission, pure: selectors, what a session reserves, the ledger <-> status round trip, the
AdmissionView decide() reads, and decide() queueing and starting attempts by it."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import pytest

from agentsession_contract.gateway import CONFIG_ANNOTATION
from agentsession_contract.run import decode_run_config
from agentsession_operator.models.budget import AgentBudget, AgentBudgetStatus, LabelSelector
from agentsession_operator.models.status import AdmissionReason
from agentsession_operator.reconcile.admission import (
    NOT_REQUIRED,
    AdmissionView,
    admission_view,
    budget_status,
    selects,
    session_need,
    to_budget,
    to_ledger,
)
from agentsession_operator.reconcile.budget import (
    Blocked,
    BlockReason,
    BudgetRef,
    Ledger,
    Period,
    PeriodSpend,
    QueuedSession,
    Reservation,
    roll_over,
    usd,
)
from agentsession_operator.reconcile.decide import decide
from agentsession_operator.reconcile.observed import Observed
from tests.unit.test_decide import SETTINGS, T0, UID, apply, ended, gateway_report, session

REF = BudgetRef("team-a", "daily")
OTHER = BudgetRef("team-a", "team")


def selector(body: dict[str, Any] | None) -> LabelSelector | None:
    return None if body is None else LabelSelector.model_validate(body)


@pytest.mark.parametrize(
    ("body", "labels", "expected"),
    [
        (None, {}, True),
        ({}, {"team": "a"}, True),
        ({"matchLabels": {"team": "a"}}, {"team": "a", "x": "y"}, True),
        ({"matchLabels": {"team": "a"}}, {"team": "b"}, False),
        ({"matchLabels": {"team": "a"}}, {}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["1", "2"]}]},
         {"tier": "2"}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["1"]}]},
         {"tier": "1"}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {"tier": ""}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, {"tier": "1"},
         False),
        # matchLabels and matchExpressions are ANDed.
        ({"matchLabels": {"team": "a"},
          "matchExpressions": [{"key": "tier", "operator": "Exists"}]}, {"team": "a"}, False),
    ],
)  # fmt: skip
def test_selectors_match_as_kubernetes_label_selectors_do(
    body: dict[str, Any] | None, labels: dict[str, str], expected: bool
) -> None:
    assert selects(selector(body), labels) is expected


def test_a_session_reserves_its_remaining_declared_budget_held_to_the_operators_maximum() -> None:
    assert session_need(None, 25.0, 0.0) is None
    assert session_need(0.5, 25.0, None) == Decimal("0.500000")
    assert session_need(0.5, 25.0, 0.1234561) == Decimal("0.376543")  # spend rounds up
    assert session_need(100.0, 25.0, 1.0) == Decimal("24.000000")
    assert session_need(0.5, 25.0, 0.75) == Decimal("0")


def budget(spec: dict[str, Any], status: dict[str, Any] | None = None) -> AgentBudget:
    body: dict[str, Any] = {
        "metadata": {"name": "daily", "namespace": "team-a", "generation": 3},
        "spec": spec,
    }
    if status is not None:
        body["status"] = status
    return AgentBudget.model_validate(body)


def test_an_unknown_time_zone_makes_a_budget_unenforceable_not_unlimited() -> None:
    bad = to_budget(
        budget({"limits": [{"period": "Daily", "amountUsd": 5}], "timeZone": "Mars/Base"})
    )
    assert bad.problem is not None
    assert "Mars/Base" in bad.problem
    good = to_budget(budget({"limits": [{"period": "Daily", "amountUsd": 5.25}]}))
    assert good.problem is None
    assert [(limit.period, limit.amount_usd) for limit in good.limits] == [
        (Period.DAILY, Decimal("5.250000"))
    ]


def test_the_status_written_reads_back_as_the_same_ledger() -> None:
    model = budget(
        {
            "limits": [
                {"period": "Monthly", "amountUsd": 300},
                {"period": "Daily", "amountUsd": 10},
            ],
            "timeZone": "Europe/Berlin",
        }
    )
    spec = to_budget(model)
    ledger = roll_over(
        Ledger(
            reservations=(
                Reservation("a", UID, 2, usd("0.5"), T0),
                Reservation("b", "1b7a3c52-1111-4a4a-9c9c-5e5e5e5e5e5e", 1, usd("0.123457"), T0),
            ),
            total_spent_usd=usd("7.000001"),
        ),
        spec.time_zone,
        T0,
    )
    ledger = Ledger(
        ledger.reservations,
        tuple(PeriodSpend(p.period, p.period_start, usd("1.1")) for p in ledger.periods),
        ledger.total_spent_usd,
    )
    status = budget_status(spec, ledger, T0, (usd("0.5"),), 3, None)
    wire = json.loads(json.dumps(status.to_wire()))  # as it goes to the API server and back
    again = AgentBudgetStatus.model_validate(wire)
    assert to_ledger(again) == ledger
    assert [p["period"] for p in wire["periods"]] == ["Monthly", "Daily"]  # spec order
    daily = wire["periods"][1]
    assert (daily["limitUsd"], daily["spentUsd"], daily["reservedUsd"]) == (10, 1.1, 0.623457)
    assert daily["remainingUsd"] == 8.276543
    assert daily["periodStart"] == "2026-11-20T23:00:00Z"  # midnight in Berlin
    assert (wire["running"], wire["queued"], wire["observedGeneration"]) == (2, 1, 3)
    assert {c["type"]: c["status"] for c in wire["conditions"]} == {
        "Exhausted": "False",
        "Ready": "True",
    }


def test_budget_conditions_keep_their_transition_time_while_unchanged() -> None:
    spec = to_budget(budget({"limits": [{"period": "Daily", "amountUsd": 1}]}))
    first = budget_status(spec, Ledger(), T0, (), 1, None)
    later = T0 + dt.timedelta(hours=1)
    full = Ledger(reservations=(Reservation("a", UID, 1, usd(1), T0),))
    second = budget_status(spec, full, later, (), 1, first)
    times = {c.type: c.last_transition_time for c in second.conditions or []}
    assert times == {"Ready": T0, "Exhausted": later}  # Exhausted turned True


def held(*refs: BudgetRef, attempt: int = 1, amount: str = "0.5") -> list[tuple[BudgetRef, Ledger]]:
    reservation = Reservation("hello", UID, attempt, usd(amount), T0)
    return [(ref, Ledger(reservations=(reservation,))) for ref in refs]


def test_an_attempt_is_admitted_only_holding_a_reservation_in_every_selecting_budget() -> None:
    assert admission_view(UID, 1, [], False, False, None) is NOT_REQUIRED
    both = admission_view(UID, 1, held(REF, OTHER), False, False, None)
    assert (both.admitted, both.reserved_usd) == (True, Decimal("0.500000"))
    assert "team-a/daily, team-a/team" in both.message
    one = admission_view(UID, 1, [*held(REF), (OTHER, Ledger())], False, False, None)
    assert (one.required, one.admitted, one.reason) == (True, False, None)
    stale = admission_view(UID, 2, held(REF, attempt=1), False, False, None)
    assert not stale.admitted  # a reservation is for one attempt


def test_a_slot_without_money_does_not_cap_the_attempts_own_budget() -> None:
    view = admission_view(UID, 1, held(REF, amount="0"), False, False, None)
    assert view.admitted
    assert view.reserved_usd is None  # the session's own (default) maxBudgetUsd applies
    assert "slot" in view.message


def test_a_waiting_attempt_carries_the_reason_the_last_pass_gave() -> None:
    queued = QueuedSession("team-a", "hello", UID, 1, T0, usd("0.5"), (REF,))
    blocked = Blocked(queued, BlockReason.BUDGET_EXHAUSTED, "Daily limit ... (queued 3rd)", 3, REF)
    view = admission_view(UID, 1, [(REF, Ledger())], False, False, blocked)
    assert (view.admitted, view.reason) == (False, AdmissionReason.BUDGET_EXHAUSTED)
    assert view.message == "Daily limit ... (queued 3rd)"


def test_under_the_operators_cap_a_session_no_budget_selects_needs_a_slot() -> None:
    assert not admission_view(UID, 1, [], True, False, None).admitted
    assert admission_view(UID, 1, [], True, True, None).admitted


# -- decide() with admission ------------------------------------------------------------------


def waiting(reason: AdmissionReason | None = AdmissionReason.BUDGET_EXHAUSTED) -> Observed:
    message = "AgentBudget team-a/daily: Daily limit 1.00 USD, spent 0.90 (queued 1st of 1)"
    return Observed(admission=AdmissionView(True, False, reason, message if reason else ""))


ADMITTED = Observed(
    admission=AdmissionView(
        True, True, AdmissionReason.ADMITTED, "holds 0.30 USD in team-a/daily", usd("0.3")
    )
)


def conditions(plan_status: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in plan_status.conditions or []}


def test_a_session_without_a_reservation_is_queued_with_the_reason_and_no_pod() -> None:
    plan = decide(session({"maxBudgetUsd": 0.5}), waiting(), SETTINGS, T0)
    assert plan.create_pod is None
    assert plan.admission_attempt == 1
    assert plan.status is not None
    assert plan.status.phase == "Queued"
    assert conditions(plan.status) == {
        "Admitted": ("False", "BudgetExhausted"),
        "Running": ("False", "Queued"),
        "Succeeded": ("Unknown", "Queued"),
    }
    assert "queued 1st of 1" in (plan.status.message or "")
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "Queued")]
    again = decide(apply(session({"maxBudgetUsd": 0.5}), plan), waiting(), SETTINGS, T0)
    assert again.status is None
    assert again.events == ()


def test_before_any_admission_pass_nothing_is_written_yet() -> None:
    plan = decide(session({"maxBudgetUsd": 0.5}), waiting(reason=None), SETTINGS, T0)
    assert (plan.create_pod, plan.admission_attempt, plan.events) == (None, 1, ())
    assert plan.status is None  # nothing to say until the pass has, not even observedGeneration


def test_a_needs_a_change_reason_is_a_warning() -> None:
    plan = decide(session(), waiting(AdmissionReason.BUDGET_REQUIRES_MAX_BUDGET_USD), SETTINGS, T0)
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "Queued")]


def test_an_admitted_attempt_starts_held_to_its_reservation() -> None:
    queued = apply(
        session({"maxBudgetUsd": 0.5}),
        decide(session({"maxBudgetUsd": 0.5}), waiting(), SETTINGS, T0),
    )
    plan = decide(queued, ADMITTED, SETTINGS, T0)
    assert plan.create_pod is not None
    assert plan.admission_attempt is None
    assert plan.status is not None
    assert plan.status.phase == "Running"
    assert conditions(plan.status)["Admitted"] == ("True", "Admitted")
    assert ("Normal", "Admitted") in [(e.type, e.reason) for e in plan.events]
    config = decode_run_config(plan.create_pod["metadata"]["annotations"][CONFIG_ANNOTATION])
    assert config["maxBudgetUsd"] == 0.3  # what the budget holds, not the spec's 0.5


def test_a_retry_waits_for_its_own_admission_after_the_backoff() -> None:
    spec = {"maxBudgetUsd": 0.5}
    running = apply(session(spec), decide(session(spec), Observed(), SETTINGS, T0))
    failed = ended(1, 1, {"subtype": "error_during_execution", "isError": True}, reason="Error")
    later = T0 + dt.timedelta(seconds=60)  # past the backoff
    backoff = decide(running, Observed(pods=(failed,), admission=waiting().admission), SETTINGS, T0)
    assert backoff.outcome is not None
    assert backoff.create_pod is None
    plan = decide(
        apply(running, backoff),
        Observed(pods=(failed,), admission=waiting().admission),
        SETTINGS,
        later,
    )
    assert plan.create_pod is None
    assert plan.admission_attempt == 2
    assert plan.status is not None
    assert plan.status.phase == "Queued"
    queued = apply(apply(running, backoff), plan)
    start = decide(queued, Observed(pods=(failed,), admission=ADMITTED.admission), SETTINGS, later)
    assert start.create_pod is not None
    assert start.create_pod["metadata"]["name"] == "hello-2"
    assert start.status is not None
    assert start.status.attempts == 2


def test_suspending_a_queued_session_holds_it_without_a_pod() -> None:
    spec = {"maxBudgetUsd": 0.5}
    queued = apply(session(spec), decide(session(spec), waiting(), SETTINGS, T0))
    suspended = queued.model_copy(update={"spec": queued.spec.model_copy(update={"suspend": True})})
    plan = decide(suspended, waiting(), SETTINGS, T0)
    assert plan.create_pod is None
    assert plan.admission_attempt is None
    assert plan.status is not None
    assert plan.status.phase == "Suspended"


def test_a_paused_session_raised_asks_for_a_new_reservation() -> None:
    spec = {"maxBudgetUsd": 0.5, "maxTurns": 10, "onLimitReached": "Pause"}
    running = apply(session(spec), decide(session(spec), Observed(), SETTINGS, T0))
    at_limit = ended(1, 0, {"reason": "MaxTurnsReached"}, report=gateway_report(requests=10))
    plan = decide(running, Observed(pods=(at_limit,), admission=waiting().admission), SETTINGS, T0)
    assert plan.outcome is not None  # the controller settles it before writing this status
    assert plan.status is not None
    assert plan.status.phase == "Paused"
    assert plan.admission_attempt is None  # nothing to start until maxTurns is raised
    paused = apply(running, plan)
    raised = paused.model_copy(update={"spec": paused.spec.model_copy(update={"max_turns": 20})})
    resumed = decide(
        raised, Observed(pods=(at_limit,), admission=waiting().admission), SETTINGS, T0
    )
    assert resumed.create_pod is None
    assert resumed.admission_attempt == 2
    assert resumed.status is not None
    assert resumed.status.phase == "Queued"
    assert [e.reason for e in resumed.events] == ["Queued", "Resumed"]
    queued = apply(raised, resumed)
    start = decide(queued, Observed(pods=(at_limit,), admission=ADMITTED.admission), SETTINGS, T0)
    assert start.create_pod is not None
    assert start.create_pod["metadata"]["name"] == "hello-2"


def test_a_charge_is_written_even_while_the_next_attempt_waits_for_its_first_pass() -> None:
    spec = {"maxBudgetUsd": 0.5, "maxTurns": 10, "onLimitReached": "Pause"}
    running = apply(session(spec), decide(session(spec), Observed(), SETTINGS, T0))
    # It ended at maxTurns by its own count, but the gateway metered 2 turns: limits are left,
    # so the next attempt is wanted at once, and asks for admission.
    ended_early = ended(1, 0, {"reason": "MaxTurnsReached"}, report=gateway_report(requests=2))
    plan = decide(
        running,
        Observed(pods=(ended_early,), admission=waiting(reason=None).admission),
        SETTINGS,
        T0,
    )
    assert plan.admission_attempt == 2
    assert plan.status is not None  # the charge of attempt 1 must land
    assert plan.status.num_turns == 2
