"""Admission, pure: AgentBudget and AgentSession models onto the budget ledger, and back.

The budget controller (`agentsession_operator.budgets`) calls these to read a budget's spec and
durable ledger, to pick the budgets that select a session, to work out what a session reserves,
to tell `decide()` whether an attempt may start (`AdmissionView`), and to render the status it
writes. Nothing here reads a clock or talks to the API.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from agentsession_operator.models.budget import (
    AgentBudget,
    AgentBudgetStatus,
    BudgetPeriod,
    BudgetPeriodStatus,
    BudgetReservation,
    BudgetWindowSpend,
    LabelSelector,
)
from agentsession_operator.models.status import AdmissionReason, Condition
from agentsession_operator.reconcile.budget import (
    Blocked,
    Budget,
    BudgetRef,
    ConditionValue,
    Ledger,
    Period,
    PeriodLimit,
    PeriodSpend,
    Reservation,
    format_usd,
    render_status,
    reservation_for,
    roll_over,
    time_zone,
    usd,
    usd_limit,
)


def budget_ref(budget: AgentBudget) -> BudgetRef:
    return BudgetRef(str(budget.metadata.namespace), str(budget.metadata.name))


def to_budget(budget: AgentBudget) -> Budget:
    """The spec as the ledger applies it; an unknown timeZone makes it unenforceable (its
    sessions wait with BudgetInvalid rather than run unaccounted)."""
    spec = budget.spec
    problem = None
    try:
        zone = time_zone(spec.time_zone)
    except ValueError as error:
        zone, problem = dt.UTC, str(error)
    limits = tuple(
        PeriodLimit(Period(limit.period.value), usd_limit(limit.amount_usd))
        for limit in spec.limits or []
    )
    return Budget(budget_ref(budget), limits, zone, spec.max_concurrent_sessions, problem)


def to_ledger(status: AgentBudgetStatus | None) -> Ledger:
    """The durable ledger the operator last wrote to a budget's status."""
    if status is None:
        return Ledger()
    reservations = tuple(
        Reservation(r.session, r.uid, r.attempt, usd(r.amount_usd), r.reserved_at)
        for r in status.reservations or []
    )
    windows = tuple(
        PeriodSpend(Period(w.period.value), w.period_start, usd(w.spent_usd))
        for w in status.spend or []
        if w.period is not BudgetPeriod.TOTAL
    )
    return Ledger(reservations, windows, usd(status.total_spent_usd or 0))


def selects(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """Whether a label selector picks an object with `labels`, as metav1.LabelSelector does: an
    omitted or empty selector picks everything; NotIn and DoesNotExist match an absent key."""
    if selector is None:
        return True
    for key, value in (selector.match_labels or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.match_expressions or []:
        present = requirement.key in labels
        values = requirement.values or []
        match requirement.operator:
            case "In":
                matched = present and labels[requirement.key] in values
            case "NotIn":
                matched = not present or labels[requirement.key] not in values
            case "Exists":
                matched = present
            case _:
                matched = not present
        if not matched:
            return False
    return True


def session_need(
    max_budget_usd: float | None, operator_max_usd: float, spent_usd: float | None
) -> Decimal | None:
    """What a session's next attempt reserves: its spec.maxBudgetUsd (held to the operator's
    maximum, as the gateway applies it) less what its earlier attempts were charged; None when
    the spec declares no maxBudgetUsd (a budget with spend limits then refuses it)."""
    if max_budget_usd is None:
        return None
    return reservation_for(usd(min(max_budget_usd, operator_max_usd)), usd(spent_usd or 0.0))


@dataclass(frozen=True)
class AdmissionView:
    """What decide() needs to know about admission for the attempt it would start next."""

    required: bool = False
    """An AgentBudget selects the session, or the operator caps running sessions."""
    admitted: bool = True
    """The attempt holds its reservation in every selecting budget (and its slot)."""
    reason: AdmissionReason | None = None
    """While not admitted: why it waits; None until an admission pass has considered it."""
    message: str = ""
    reserved_usd: Decimal | None = None
    """What the admitted attempt holds: the most its gateway may let it spend."""


NOT_REQUIRED = AdmissionView(
    message="no AgentBudget selects the session and the operator does not cap running sessions"
)


def admission_view(
    uid: str,
    attempt: int,
    selecting: Sequence[tuple[BudgetRef, Ledger]],
    capped: bool,
    slot_held: bool,
    blocked: Blocked | None,
) -> AdmissionView:
    """Whether attempt `attempt` of the session `uid` may start: it holds a reservation in every
    budget that selects it (a reservation is only made together with its slot), or, selected by
    none under an operator-wide cap, an admission pass gave it a slot."""
    if not selecting and not capped:
        return NOT_REQUIRED
    if selecting:
        held = [ledger.reservation(uid, attempt) for _, ledger in selecting]
        if all(r is not None for r in held):
            amount = min(r.amount_usd for r in held if r is not None)
            names = ", ".join(str(ref) for ref, _ in selecting)
            if amount == 0:
                # A session that declares no maxBudgetUsd, under budgets that only limit how many
                # run: it holds a slot, and its own limit is the operator's default.
                return AdmissionView(
                    required=True,
                    admitted=True,
                    reason=AdmissionReason.ADMITTED,
                    message=f"holds a slot in AgentBudget {names}",
                )
            return AdmissionView(
                required=True,
                admitted=True,
                reason=AdmissionReason.ADMITTED,
                message=f"holds a reservation of {format_usd(amount)} USD in AgentBudget {names}",
                reserved_usd=amount,
            )
    elif slot_held:
        return AdmissionView(
            required=True,
            admitted=True,
            reason=AdmissionReason.ADMITTED,
            message="holds one of the operator's slots for running sessions",
        )
    if blocked is None:
        return AdmissionView(required=True, admitted=False)
    return AdmissionView(
        required=True,
        admitted=False,
        reason=AdmissionReason(blocked.reason.value),
        message=blocked.message,
    )


def _condition(
    value: ConditionValue,
    previous: Sequence[Condition],
    now: dt.datetime,
    generation: int | None,
) -> Condition:
    before = next((c for c in previous if c.type == value.type), None)
    unchanged = before is not None and before.status == value.status
    return Condition(
        type=value.type,
        status=value.status,
        reason=value.reason,
        message=value.message[:1024],
        observed_generation=generation,
        last_transition_time=before.last_transition_time if unchanged and before else now,
    )


def budget_status(
    budget: Budget,
    ledger: Ledger,
    now: dt.datetime,
    queued_needs: Sequence[Decimal | None],
    generation: int | None,
    previous: AgentBudgetStatus | None,
) -> AgentBudgetStatus:
    """The status to write: the ledger (rolled over to `now`), the limits' current periods, the
    counts and the Ready and Exhausted conditions (their transition times kept while unchanged)."""
    ledger = roll_over(ledger, budget.time_zone, now)
    rendered = render_status(budget, ledger, now, queued_needs)
    earlier = (previous.conditions if previous is not None else None) or []
    ready = rendered.ready
    return AgentBudgetStatus(
        periods=[
            BudgetPeriodStatus(
                period=BudgetPeriod(p.period.value),
                period_start=p.period_start,
                limit_usd=p.limit_usd,
                spent_usd=p.spent_usd,
                reserved_usd=p.reserved_usd,
                remaining_usd=p.remaining_usd,
            )
            for p in rendered.periods
        ]
        or None,
        spend=[
            BudgetWindowSpend(
                period=BudgetPeriod(w.period.value),
                period_start=w.period_start,
                spent_usd=w.spent_usd,
            )
            for w in ledger.periods
        ]
        or None,
        reservations=[
            BudgetReservation(
                session=r.session,
                uid=r.uid,
                attempt=r.attempt,
                amount_usd=r.amount_usd,
                reserved_at=r.reserved_at,
            )
            for r in ledger.reservations
        ]
        or None,
        total_spent_usd=ledger.total_spent_usd,
        running=rendered.running,
        queued=rendered.queued,
        observed_generation=generation,
        conditions=sorted(
            (
                _condition(rendered.exhausted, earlier, now, generation),
                _condition(ready, earlier, now, generation),
            ),
            key=lambda c: c.type,
        ),
    )
