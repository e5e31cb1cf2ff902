"""The AgentBudget resource (group agents.dev, version v1alpha1): cost governance for the
AgentSessions of a namespace. Its spec caps spend per calendar period and concurrent sessions for
the sessions its selector picks; its status is the operator's ledger (spend per period, the
reservations it holds for admitted sessions). The source of the AgentBudget CRD (via models.crd).

Money is USD as an exact decimal with at most 6 fractional digits (whole micro-dollars); see
`Usd`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    BeforeValidator,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
    StringConstraints,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from agentsession_contract.run import WireModel

from .markers import (
    LIST_ATOMIC,
    MAP_ATOMIC,
    UUID_PATTERN,
    ObjectName,
    Rule,
    RuledModel,
    list_map,
)
from .resource import API_VERSION, API_VERSION_DESCRIPTION, GROUP, KIND_DESCRIPTION, ObjectMeta
from .status import CONDITIONS_MAX_ITEMS, Condition, Time

KIND: Final = "AgentBudget"
PLURAL: Final = "agentbudgets"
SINGULAR: Final = "agentbudget"
SHORT_NAMES: Final = ("agb",)
CATEGORIES: Final = ("agents",)  # shared with AgentSession: `kubectl get agents` lists both
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# --- money -------------------------------------------------------------------------------------

USD_DECIMAL_PLACES: Final = 6
MICRO_USD: Final = Decimal(1).scaleb(-USD_DECIMAL_PLACES)
LIMIT_MAX_USD: Final = Decimal(1_000_000)
"""The largest limit per period: a typo (an extra zero or three) fails at apply time."""
LEDGER_MAX_USD: Final = Decimal(1_000_000_000)
"""The largest amount in the status (all-time spend included)."""


def _number_not_string(value: Any) -> Any:
    # The CRD says `type: number`: refuse what the API server refuses (pydantic would take "1.5").
    if isinstance(value, str | bool):
        raise ValueError("an amount is a JSON number, not a string or boolean")
    return value


class _JsonNumber:
    """Decimal's JSON schema is `number or string`; on this API's wire an amount is a number."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler.resolve_ref_schema(handler(core_schema))
        if "anyOf" not in schema:
            return schema
        (number,) = (b for b in schema["anyOf"] if b.get("type") == "number")
        return {**number, **{k: v for k, v in schema.items() if k != "anyOf"}}


# Why Decimal in Python and a JSON number on the wire, and why 6 fractional digits:
# - The ledger adds and subtracts many small amounts (a session's cost is often a fraction of a
#   cent); binary floats would drift, Decimal is exact, so `limit - spent - reserved` is too.
# - The API server and every client decode JSON numbers as IEEE doubles. A double holds any
#   decimal of at most 15 significant digits exactly through a decode/encode round trip (Go and
#   Python both print the shortest representation). Whole micro-dollars below 1e9 have at most
#   15 significant digits, so `Decimal(str(float))`, which is how pydantic reads a float, gives
#   back exactly the decimal that was written, on every hop (YAML, JSON, etcd, kubectl).
# - A string (like resource.Quantity) would round-trip too, but `kubectl get` columns,
#   `kubectl patch -p '{"spec":...:5}'` and CEL comparisons all want numbers.
# - The schema cannot say "6 fractional digits" reliably: `multipleOf: 0.000001` is evaluated in
#   floating point by the API server (0.5 / 0.000001 is not an integer there). So the model
#   refuses more digits exactly (Decimal), and for user input (spec) a CEL rule checks it with a
#   tolerance that is safe for amounts up to LIMIT_MAX_USD (see BudgetLimit).
_AS_JSON_NUMBER = PlainSerializer(float, return_type=float, when_used="json")
PositiveUsd = Annotated[
    Decimal,
    Field(gt=0, le=LIMIT_MAX_USD),
    BeforeValidator(_number_not_string),
    _AS_JSON_NUMBER,
    _JsonNumber(),
]
"""A limit: more than 0, at most LIMIT_MAX_USD (its fractional digits are a CEL rule's job)."""
Usd = Annotated[
    Decimal,
    Field(ge=0, le=LEDGER_MAX_USD, decimal_places=USD_DECIMAL_PLACES),
    BeforeValidator(_number_not_string),
    _AS_JSON_NUMBER,
    _JsonNumber(),
]
"""An amount in the status: 0 to LEDGER_MAX_USD in whole micro-dollars."""


def to_usd(value: float | int | str | Decimal) -> Decimal:
    """`value` in whole micro-dollars, rounded up: how a cost the SDK reports as a float (often
    with more digits) enters the ledger, never in the spender's favour."""
    amount = value if isinstance(value, Decimal) else Decimal(str(value))
    return amount.quantize(MICRO_USD, rounding=ROUND_CEILING)


def _whole_micro_usd(amount: Decimal) -> bool:
    return amount == amount.quantize(MICRO_USD)


# --- label selector ----------------------------------------------------------------------------

# As Kubernetes validates label keys and values (metav1 LabelSelector). `[.]` instead of `\.` so
# the patterns read the same inside CEL string literals.
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY_PATTERN: Final = rf"^({_DNS_SUBDOMAIN}/)?{_LABEL_NAME}$"
LABEL_KEY_MAX_LENGTH: Final = 253 + 1 + 63  # prefix, "/", name
LABEL_VALUE_PATTERN: Final = rf"^({_LABEL_NAME})?$"
LABEL_VALUE_MAX_LENGTH: Final = 63
MATCH_LABELS_MAX: Final = 64
MATCH_EXPRESSIONS_MAX: Final = 16
SELECTOR_VALUES_MAX: Final = 64

LabelValue = Annotated[
    str, StringConstraints(max_length=LABEL_VALUE_MAX_LENGTH, pattern=LABEL_VALUE_PATTERN)
]


def _is_label_key(key: str) -> bool:
    # The pattern bounds the name part to 63 characters; the prefix's 253 needs the `/` position.
    return (
        len(key) <= LABEL_KEY_MAX_LENGTH
        and re.fullmatch(LABEL_KEY_PATTERN, key) is not None
        and key.find("/") <= 253
    )


SelectorOperator = Literal["In", "NotIn", "Exists", "DoesNotExist"]


class LabelSelectorRequirement(RuledModel):
    """A label requirement, as in a Kubernetes LabelSelector: a key, an operator and values."""

    cel_rules = (
        Rule(
            cel="self.key.indexOf('/') <= 253",
            message="the key's prefix (before `/`) is at most 253 characters",
            field_path=".key",
            holds=lambda r: r.key.find("/") <= 253,
        ),
        Rule(
            cel=(
                "self.operator in ['In', 'NotIn']"
                " ? has(self.values) && size(self.values) > 0"
                " : !has(self.values) || size(self.values) == 0"
            ),
            message="values must be non-empty for In and NotIn, and empty for Exists and "
            "DoesNotExist",
            field_path=".values",
            holds=lambda r: bool(r.values) == (r.operator in ("In", "NotIn")),
        ),
    )

    key: str = Field(
        min_length=1,
        max_length=LABEL_KEY_MAX_LENGTH,
        pattern=LABEL_KEY_PATTERN,
        description="The label key, e.g. `team` or `agents.dev/tier`.",
    )
    operator: SelectorOperator = Field(
        description="`In`, `NotIn`, `Exists` or `DoesNotExist`.",
        json_schema_extra={"maxLength": 12},  # bounds what the CEL rule reads
    )
    values: list[LabelValue] | None = Field(
        default=None,
        max_length=SELECTOR_VALUES_MAX,
        description="Label values: non-empty for In and NotIn, empty for Exists and DoesNotExist.",
        json_schema_extra=LIST_ATOMIC,
    )


class LabelSelector(RuledModel):
    """Which AgentSessions of the namespace a budget covers, by their labels, as a Kubernetes
    LabelSelector: matchLabels and matchExpressions are ANDed."""

    cel_rules = (
        Rule(
            cel=(
                "!has(self.matchLabels) || self.matchLabels.all(k,"
                f" size(k) <= {LABEL_KEY_MAX_LENGTH} && k.matches('{LABEL_KEY_PATTERN}')"
                " && k.indexOf('/') <= 253)"
            ),
            message=(
                "matchLabels keys must be label keys: an optional DNS subdomain prefix (at most "
                "253 characters) and `/`, then 1 to 63 alphanumerics, `-`, `_` or `.`, beginning "
                "and ending with an alphanumeric"
            ),
            field_path=".matchLabels",
            holds=lambda s: all(_is_label_key(k) for k in s.match_labels or {}),
        ),
    )

    match_labels: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=MATCH_LABELS_MAX,
        description="Labels a session must have, with these values.",
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None,
        max_length=MATCH_EXPRESSIONS_MAX,
        description="Requirements a session's labels must meet.",
        json_schema_extra=LIST_ATOMIC,
    )


# --- spec --------------------------------------------------------------------------------------

MAX_CONCURRENT_SESSIONS_LIMIT: Final = 10_000
TIME_ZONE_PATTERN: Final = r"^[A-Za-z][-+_A-Za-z0-9]*(/[A-Za-z0-9][-+_A-Za-z0-9]*)*$"
TIME_ZONE_MAX_LENGTH: Final = 64
DEFAULT_TIME_ZONE: Final = "UTC"


class BudgetPeriod(enum.StrEnum):
    """A budget period: calendar periods in spec.timeZone, or the budget's whole life."""

    DAILY = "Daily"
    """From midnight to midnight."""
    WEEKLY = "Weekly"
    """From Monday 00:00 to the next Monday 00:00."""
    MONTHLY = "Monthly"
    """From the 1st 00:00 to the next month's 1st 00:00."""
    TOTAL = "Total"
    """Since the budget was created; never resets."""


class BudgetLimit(RuledModel):
    """The most the selected sessions may spend together in one period."""

    cel_rules = (
        Rule(
            # Floating point in CEL: amountUsd * 1e6 is within 0.001 of a whole number exactly
            # when it has at most 6 fractional digits, for every amount up to LIMIT_MAX_USD (the
            # product's rounding error is below 2.5e-4 there; a 7th digit moves it by >= 0.1).
            cel=(
                "self.amountUsd * 1000000.0 + 0.001"
                " - double(int(self.amountUsd * 1000000.0 + 0.001)) < 0.002"
            ),
            message="amountUsd has at most 6 fractional digits (whole micro-dollars)",
            field_path=".amountUsd",
            holds=lambda limit: _whole_micro_usd(limit.amount_usd),
        ),
    )

    period: BudgetPeriod = Field(
        description=(
            "`Daily`, `Weekly` (from Monday), `Monthly` (from the 1st), in spec.timeZone, or "
            "`Total` (the budget's whole life). At most one limit per period."
        ),
    )
    amount_usd: PositiveUsd = Field(
        description=(
            "The most the selected sessions may spend together in the period, in USD (more than "
            "0, at most 1000000, at most 6 fractional digits)."
        ),
    )


def _limits_something(spec: AgentBudgetSpec) -> bool:
    return bool(spec.limits) or spec.max_concurrent_sessions is not None


class AgentBudgetSpec(RuledModel):
    """The limits, and the sessions they apply to. Every field may be changed at any time."""

    cel_rules = (
        Rule(
            cel="(has(self.limits) && size(self.limits) > 0) || has(self.maxConcurrentSessions)",
            message="a budget must limit something: set limits, maxConcurrentSessions or both",
            reason="FieldValueRequired",
            holds=_limits_something,
        ),
    )

    limits: list[BudgetLimit] | None = Field(
        default=None,
        max_length=len(BudgetPeriod),
        description=(
            "Spend limits, at most one per period. A session is admitted only when every limit "
            "has room for what it may spend (its maxBudgetUsd, which a session under a spend "
            "limit must set)."
        ),
        json_schema_extra=list_map("period"),
    )
    time_zone: str = Field(
        default=DEFAULT_TIME_ZONE,
        min_length=1,
        max_length=TIME_ZONE_MAX_LENGTH,
        pattern=TIME_ZONE_PATTERN,
        description=(
            "The IANA time zone the calendar periods follow, e.g. `Europe/Berlin`: a day starts at "
            "midnight there, a week on Monday 00:00, a month on the 1st 00:00."
        ),
    )
    max_concurrent_sessions: int | None = Field(
        default=None,
        ge=0,
        le=MAX_CONCURRENT_SESSIONS_LIMIT,
        description=(
            "The most selected sessions that may run at once; more wait in phase Queued. 0 admits "
            "none. Omitted: no concurrency limit."
        ),
    )
    selector: LabelSelector | None = Field(
        default=None,
        description=(
            "Which AgentSessions in the budget's namespace it applies to, by label. Omitted or "
            "empty: every AgentSession in the namespace. A session selected by several budgets "
            "needs room in all of them."
        ),
        json_schema_extra=MAP_ATOMIC,
    )

    @field_validator("limits")
    @classmethod
    def _one_limit_per_period(cls, limits: list[BudgetLimit] | None) -> list[BudgetLimit] | None:
        # The CRD's list-map key (period) makes the API server refuse duplicates the same way.
        periods = [limit.period for limit in limits or []]
        if len(set(periods)) != len(periods):
            raise ValueError("at most one limit per period")
        return limits


# --- status ------------------------------------------------------------------------------------

RESERVATIONS_MAX: Final = 1000


class BudgetConditionType(enum.StrEnum):
    """The condition types an AgentBudget reports.

    `Ready` is True when the operator applies the budget and the ledger in status is current;
    False (reason InvalidSpec) when it cannot enforce it, for example for a timeZone that is no
    IANA zone it knows: the sessions it selects then wait. `Exhausted` is True (reason
    LimitReached) while some period has nothing left for the sessions waiting on it; its message
    names the period and the numbers. Sessions that need the budget then wait in phase Queued.
    """

    READY = "Ready"
    EXHAUSTED = "Exhausted"


class BudgetPeriodStatus(WireModel):
    """Spend in the current period of one limit."""

    period: BudgetPeriod = Field(description="The limit's period.")
    period_start: Time | None = Field(
        default=None,
        description=(
            "When the current period began (computed in spec.timeZone, written in UTC); "
            "omitted for Total, which has no periods."
        ),
    )
    limit_usd: Usd = Field(description="The period's limit (spec.limits[].amountUsd).")
    spent_usd: Usd = Field(
        description=(
            "What the selected sessions spent in this period, as the SDK priced it, rounded up "
            "to whole micro-dollars. It may exceed limitUsd by what runs already admitted spent."
        ),
    )
    reserved_usd: Usd = Field(
        description="What the reservations of admitted sessions hold (they count in every period).",
    )
    remaining_usd: Usd = Field(
        description="limitUsd minus spentUsd and reservedUsd, never below 0: what can be reserved.",
    )


class BudgetWindowSpend(WireModel):
    """Spend in the current Daily, Weekly or Monthly window, kept whatever the limits."""

    period: BudgetPeriod = Field(description="`Daily`, `Weekly` or `Monthly`.")
    period_start: Time = Field(
        description="When the window began (computed in spec.timeZone, written in UTC)."
    )
    spent_usd: Usd = Field(description="What the selected sessions spent in the window so far.")


class BudgetReservation(WireModel):
    """One entry of the durable ledger: an amount held for an admitted session's attempt."""

    session: ObjectName = Field(description="The AgentSession's name.")
    uid: str = Field(
        max_length=36,
        pattern=UUID_PATTERN,
        description=(
            "The AgentSession's metadata.uid, the ledger's key: a new session of the same name is "
            "a new entry."
        ),
    )
    attempt: int = Field(
        ge=1, description="The session's attempt the amount is held for (status.attempts)."
    )
    amount_usd: Usd = Field(
        description=(
            "The amount held: the most the attempt may still spend (the session's maxBudgetUsd "
            "less what its earlier attempts spent)."
        ),
    )
    reserved_at: Time = Field(description="When the amount was reserved.")


class AgentBudgetStatus(WireModel):
    """The budget's ledger and state, written by the operator."""

    periods: list[BudgetPeriodStatus] | None = Field(
        default=None,
        max_length=len(BudgetPeriod),
        description="One entry per spec.limits entry, in the same order: the current period.",
        json_schema_extra=list_map("period"),
    )
    spend: list[BudgetWindowSpend] | None = Field(
        default=None,
        max_length=3,
        description=(
            "Spend in the current Daily, Weekly and Monthly windows, whether or not a limit uses "
            "them: a limit added mid-period counts what was already spent in it."
        ),
        json_schema_extra=list_map("period"),
    )
    reservations: list[BudgetReservation] | None = Field(
        default=None,
        max_length=RESERVATIONS_MAX,
        description=(
            "The durable ledger: what is held for admitted sessions, one entry per session. An "
            "entry is released when the session's attempt ends and its cost is added to spent."
        ),
        json_schema_extra=list_map("uid"),
    )
    total_spent_usd: Usd | None = Field(
        default=None, description="What the selected sessions spent since the budget was created."
    )
    running: int | None = Field(
        default=None, ge=0, description="Selected sessions admitted and running now."
    )
    queued: int | None = Field(
        default=None, ge=0, description="Selected sessions waiting for this budget (Queued)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation the operator last acted on."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        max_length=CONDITIONS_MAX_ITEMS,
        description=(
            "`Ready` (the budget is applied) and `Exhausted` (True while a period has nothing "
            "left)."
        ),
        json_schema_extra=list_map("type"),
    )


# --- the resource ------------------------------------------------------------------------------


class AgentBudget(RuledModel):
    """AgentBudget caps what the AgentSessions of its namespace (all, or those its selector
    picks) may spend per day, week, month or in total, and how many may run at once. A session
    is admitted only with room in every budget that selects it; until then it waits in phase
    Queued."""

    api_version: Literal["agents.dev/v1alpha1"] = Field(
        default=API_VERSION,
        description=API_VERSION_DESCRIPTION,
    )
    kind: Literal["AgentBudget"] = Field(
        default=KIND,
        description=KIND_DESCRIPTION,
    )
    metadata: ObjectMeta = Field(
        default_factory=ObjectMeta, description="Standard object metadata."
    )
    spec: AgentBudgetSpec = Field(description="The limits and the sessions they apply to.")
    status: AgentBudgetStatus | None = Field(
        default=None, description="The budget's ledger and state, written by the operator."
    )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Self:
        """Parse a watched object (a kopf body or a plain dict); raises pydantic.ValidationError."""
        return cls.model_validate(dict(body))
