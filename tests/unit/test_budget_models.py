"""The AgentBudget pydantic models: money as exact decimals on a JSON-number wire, the label
selector, the status ledger's shape, and the CEL twins (the API-server side is in test_crd.py)."""

from __future__ import annotations

import json
import random
import re
import zoneinfo
from decimal import Decimal
from typing import Any

import pydantic
import pytest

from agentsession_operator.models import (
    AgentBudget,
    AgentBudgetSpec,
    AgentBudgetStatus,
    BudgetConditionType,
    BudgetLimit,
    BudgetPeriod,
    LabelSelector,
    LabelSelectorRequirement,
    to_usd,
)
from agentsession_operator.models.budget import (
    LABEL_KEY_PATTERN,
    LEDGER_MAX_USD,
    TIME_ZONE_MAX_LENGTH,
    TIME_ZONE_PATTERN,
)

UID = "6f1d0a52-0f0e-4a39-a0b5-0d2d5b1c9e11"


def cel_messages(error: pydantic.ValidationError) -> list[tuple[tuple[Any, ...], str, str]]:
    return [
        (tuple(d["loc"]), d["ctx"]["field_path"], d["ctx"]["message"])
        for d in error.errors()
        if d["type"] == "cel_rule"
    ]


# --- money -------------------------------------------------------------------------------------


def test_amounts_are_exact_decimals_in_python_and_numbers_on_the_wire() -> None:
    limit = BudgetLimit.model_validate({"period": "Daily", "amountUsd": 0.1})
    assert limit.amount_usd == Decimal("0.1")  # not 0.1000000000000000055...
    assert limit.to_wire() == {"period": "Daily", "amountUsd": 0.1}
    assert json.dumps(limit.to_wire()) == '{"period": "Daily", "amountUsd": 0.1}'
    assert BudgetLimit.model_validate({"period": "Total", "amountUsd": 5}).amount_usd == 5


def test_every_micro_dollar_amount_round_trips_through_json_exactly() -> None:
    rng = random.Random(10)
    amounts = [Decimal(rng.randint(0, 10**15)).scaleb(-6) for _ in range(20_000)]
    amounts += [Decimal(0), Decimal("0.000001"), LEDGER_MAX_USD, LEDGER_MAX_USD - Decimal("1e-6")]
    for amount in amounts:
        wire = AgentBudgetStatus(total_spent_usd=amount).to_wire()
        back = AgentBudgetStatus.model_validate(json.loads(json.dumps(wire)))
        assert back.total_spent_usd == amount


@pytest.mark.parametrize("value", ["1.5", True, float("nan"), float("inf")])
def test_an_amount_is_a_finite_json_number(value: Any) -> None:
    # The CRD says `type: number`: a string is refused there, so the model refuses it too.
    with pytest.raises(pydantic.ValidationError):
        BudgetLimit.model_validate({"period": "Daily", "amountUsd": value})


@pytest.mark.parametrize(
    ("amount", "ok"),
    [
        (0.000001, True),
        (10.123456, True),
        (999999.999999, True),
        (1_000_000, True),
        (0, False),
        (-1, False),
        (1_000_000.000001, False),
    ],
)
def test_limits_are_positive_and_bounded(amount: float, ok: bool) -> None:
    body = {"period": "Monthly", "amountUsd": amount}
    if ok:
        assert BudgetLimit.model_validate(body).amount_usd == Decimal(str(amount))
    else:
        with pytest.raises(pydantic.ValidationError):
            BudgetLimit.model_validate(body)


def test_a_seventh_fractional_digit_is_refused_naming_the_field() -> None:
    with pytest.raises(pydantic.ValidationError) as error:
        BudgetLimit.model_validate({"period": "Daily", "amountUsd": 10.0000001})
    assert cel_messages(error.value) == [
        ((), ".amountUsd", "amountUsd has at most 6 fractional digits (whole micro-dollars)")
    ]
    # Status amounts are the operator's: refused by the type itself (it must round first).
    with pytest.raises(pydantic.ValidationError, match="6 decimal places"):
        AgentBudgetStatus(total_spent_usd=Decimal("0.0000001"))


def cel_whole_micro_usd(amount: float) -> bool:
    """BudgetLimit's CEL rule, computed as the API server does: in float64."""
    scaled = amount * 1000000.0 + 0.001
    return scaled - float(int(scaled)) < 0.002


def test_the_cel_rule_and_its_twin_agree_up_to_the_largest_limit() -> None:
    (rule,) = BudgetLimit.cel_rules
    assert rule.cel == (
        "self.amountUsd * 1000000.0 + 0.001 - double(int(self.amountUsd * 1000000.0 + 0.001))"
        " < 0.002"
    )
    rng = random.Random(6)
    for _ in range(50_000):
        whole = Decimal(rng.randint(1, 10**12)).scaleb(-6)  # up to LIMIT_MAX_USD
        finer = Decimal(rng.randint(1, 10**13 - 1)).scaleb(-7)
        for amount in (whole, finer):
            twin = rule.holds is not None and rule.holds(
                BudgetLimit.model_construct(period=BudgetPeriod.DAILY, amount_usd=amount)
            )
            assert cel_whole_micro_usd(float(amount)) == twin, amount


def test_to_usd_rounds_up_to_whole_micro_dollars() -> None:
    assert to_usd(0.0031234567) == Decimal("0.003124")
    assert to_usd(0.1) == Decimal("0.100000")
    assert to_usd("2") == Decimal("2.000000")
    assert to_usd(Decimal("0.0000001")) == Decimal("0.000001")


# --- spec --------------------------------------------------------------------------------------


def test_spec_speaks_camel_case_and_defaults_the_time_zone() -> None:
    spec = AgentBudgetSpec.model_validate(
        {
            "limits": [{"period": "Daily", "amountUsd": 20}],
            "maxConcurrentSessions": 3,
            "selector": {"matchLabels": {"team": "research"}},
        }
    )
    assert spec.time_zone == "UTC"
    assert spec.to_wire() == {
        "limits": [{"period": "Daily", "amountUsd": 20.0}],
        "timeZone": "UTC",
        "maxConcurrentSessions": 3,
        "selector": {"matchLabels": {"team": "research"}},
    }


@pytest.mark.parametrize(
    "spec",
    [{"limits": [{"period": "Total", "amountUsd": 1}]}, {"maxConcurrentSessions": 0}],
)
def test_a_budget_limits_money_or_concurrency(spec: dict[str, Any]) -> None:
    AgentBudgetSpec.model_validate(spec)


@pytest.mark.parametrize("spec", [{}, {"limits": []}, {"timeZone": "Europe/Berlin"}])
def test_a_budget_that_limits_nothing_is_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError) as error:
        AgentBudgetSpec.model_validate(spec)
    ((_, field_path, message),) = cel_messages(error.value)
    assert field_path == ""
    assert message.startswith("a budget must limit something")


def test_one_limit_per_period() -> None:
    limits = [{"period": "Daily", "amountUsd": 1}, {"period": "Daily", "amountUsd": 2}]
    with pytest.raises(pydantic.ValidationError, match="at most one limit per period"):
        AgentBudgetSpec.model_validate({"limits": limits})
    every = [{"period": p.value, "amountUsd": 1} for p in BudgetPeriod]
    assert len(AgentBudgetSpec.model_validate({"limits": every}).limits or []) == 4


def test_every_iana_zone_matches_the_time_zone_pattern() -> None:
    zones = zoneinfo.available_timezones()
    assert "Europe/Berlin" in zones
    for zone in zones:
        assert re.fullmatch(TIME_ZONE_PATTERN, zone), zone
        assert len(zone) <= TIME_ZONE_MAX_LENGTH, zone


@pytest.mark.parametrize("zone", ["+02:00", "Europe/Berlin ", "../etc/passwd", "", "UTC/", "/UTC"])
def test_what_is_not_a_zone_name_is_refused(zone: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        AgentBudgetSpec.model_validate({"maxConcurrentSessions": 1, "timeZone": zone})


def test_enums() -> None:
    assert [p.value for p in BudgetPeriod] == ["Daily", "Weekly", "Monthly", "Total"]
    assert [c.value for c in BudgetConditionType] == ["Ready", "Exhausted"]


# --- label selector ----------------------------------------------------------------------------

VALID_KEYS = ["team", "agents.dev/tier", "app.kubernetes.io/name", "a" * 63, "A_b.c-D", "x"]
INVALID_KEYS = [
    "team name",
    "-team",
    "team-",
    "a" * 64,
    "Agents.dev/tier",  # the prefix is a lower-case DNS subdomain
    "/tier",
    "agents.dev/",
    "a/b/c",
    "",
    ".".join(["a" * 63] * 3) + "." + "b" * 62 + "/tier",  # a 254-character prefix
]


@pytest.mark.parametrize("key", VALID_KEYS)
def test_label_keys_as_kubernetes_accepts_them(key: str) -> None:
    LabelSelector(match_labels={key: "v"})
    LabelSelectorRequirement(key=key, operator="Exists")


@pytest.mark.parametrize("key", INVALID_KEYS, ids=lambda k: k[:20] or "<empty>")
def test_label_keys_kubernetes_refuses(key: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        LabelSelector(match_labels={key: "v"})
    with pytest.raises(pydantic.ValidationError):
        LabelSelectorRequirement(key=key, operator="Exists")


def test_the_key_pattern_reads_the_same_in_cel() -> None:
    # `[.]` instead of `\\.`: the pattern is pasted into a CEL string literal unescaped.
    assert "\\" not in LABEL_KEY_PATTERN
    (rule,) = LabelSelector.cel_rules
    assert f"k.matches('{LABEL_KEY_PATTERN}')" in rule.cel


@pytest.mark.parametrize(
    ("operator", "values", "ok"),
    [
        ("In", ["a", "b"], True),
        ("NotIn", ["a"], True),
        ("Exists", None, True),
        ("DoesNotExist", [], True),
        ("In", None, False),
        ("NotIn", [], False),
        ("Exists", ["a"], False),
        ("DoesNotExist", ["a"], False),
    ],
)
def test_requirement_values_follow_the_operator(
    operator: str, values: list[str] | None, ok: bool
) -> None:
    body = {"key": "team", "operator": operator, "values": values}
    if ok:
        LabelSelectorRequirement.model_validate(body)
    else:
        with pytest.raises(pydantic.ValidationError) as error:
            LabelSelectorRequirement.model_validate(body)
        ((_, field_path, _),) = cel_messages(error.value)
        assert field_path == ".values"


@pytest.mark.parametrize("value", ["a b", "-a", "a" * 64, "é"])
def test_label_values_are_checked(value: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        LabelSelector(match_labels={"team": value})
    with pytest.raises(pydantic.ValidationError):
        LabelSelectorRequirement(key="team", operator="In", values=[value])


def test_an_empty_selector_is_allowed() -> None:
    assert LabelSelector().to_wire() == {}
    assert LabelSelector(match_labels={"team": ""}).to_wire() == {"matchLabels": {"team": ""}}


# --- the resource and its status ---------------------------------------------------------------


def live_budget() -> dict[str, Any]:
    """A budget as a watch delivers it: server-set metadata, defaults applied, a status."""
    return {
        "apiVersion": "agents.dev/v1alpha1",
        "kind": "AgentBudget",
        "metadata": {
            "name": "research",
            "namespace": "team-a",
            "uid": "0b6e5f8e-4a8f-4a51-9c3e-6a3c1e2f9d10",
            "generation": 2,
            "creationTimestamp": "2026-11-01T08:00:00Z",
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {
            "limits": [
                {"period": "Daily", "amountUsd": 20},
                {"period": "Total", "amountUsd": 1000.5},
            ],
            "timeZone": "Europe/Berlin",
            "maxConcurrentSessions": 3,
        },
        "status": {
            "periods": [
                {
                    "period": "Daily",
                    "periodStart": "2026-11-17T23:00:00Z",
                    "limitUsd": 20,
                    "spentUsd": 3.141592,
                    "reservedUsd": 1.5,
                    "remainingUsd": 15.358408,
                },
                {
                    "period": "Total",
                    "limitUsd": 1000.5,
                    "spentUsd": 101.25,
                    "reservedUsd": 1.5,
                    "remainingUsd": 897.75,
                },
            ],
            "reservations": [
                {
                    "session": "survey",
                    "uid": UID,
                    "attempt": 2,
                    "amountUsd": 1.5,
                    "reservedAt": "2026-11-18T09:30:00Z",
                }
            ],
            "totalSpentUsd": 101.25,
            "running": 1,
            "queued": 4,
            "observedGeneration": 2,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Applied",
                    "message": "",
                    "lastTransitionTime": "2026-11-01T08:00:01Z",
                    "observedGeneration": 2,
                },
                {
                    "type": "Exhausted",
                    "status": "False",
                    "reason": "WithinLimits",
                    "message": "",
                    "lastTransitionTime": "2026-11-01T08:00:01Z",
                },
            ],
        },
    }


def test_from_body_parses_a_live_budget_and_its_status_round_trips() -> None:
    body = live_budget()
    budget = AgentBudget.from_body(body)
    assert budget.metadata.name == "research"
    assert budget.spec.limits is not None
    assert budget.spec.limits[1].amount_usd == Decimal("1000.5")
    assert budget.status is not None
    assert budget.status.periods is not None
    assert budget.status.periods[0].remaining_usd == Decimal("15.358408")
    assert budget.status.periods[1].period_start is None  # Total has no periods
    assert budget.status.reservations is not None
    assert budget.status.reservations[0].attempt == 2
    assert budget.status.to_wire() == body["status"]
    assert "managedFields" not in budget.to_wire()["metadata"]


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("reservations", 0, "attempt"), 0),
        (("reservations", 0, "uid"), "not-a-uid"),
        (("reservations", 0, "session"), "Not_A_Name"),
        (("periods", 0, "spentUsd"), -0.01),
        (("running",), -1),
        (("conditions", 0, "status"), "Maybe"),
    ],
)
def test_status_bounds(path: tuple[Any, ...], value: Any) -> None:
    status = live_budget()["status"]
    node = status
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(pydantic.ValidationError):
        AgentBudgetStatus.model_validate(status)


def test_the_spec_has_no_transition_rules() -> None:
    # Every field of a budget may change after creation (a limit lowered, the selector edited).
    for cls in (AgentBudgetSpec, BudgetLimit, LabelSelector, LabelSelectorRequirement):
        assert not [r for r in cls.cel_rules if r.is_transition]
