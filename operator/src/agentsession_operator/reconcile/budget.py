"""AgentBudget accounting (periods, reservation ledger, admission queue), pure: for the controller.

The budget controller (to come) calls it with the budgets, their ledgers and an injected clock.
Nothing here reads a clock, talks to the API or knows the CRD's pydantic models: the controller
maps AgentBudget and AgentSession objects onto the small frozen dataclasses below, calls these
functions, and writes back what they return. Every ledger change is a new `Ledger`.

Money is `Decimal` quantized to 0.000001 USD, never float: `usd()` / `usd_limit()` parse (a JSON
number read as a float goes through its shortest repr, which is exact), `usd_to_json()` renders.
An amount charged or reserved rounds up, a limit rounds down, so rounding never lets more through.

Rules (each is tested in tests/unit/test_budget_ledger.py):
- Periods: Daily starts at local midnight, Weekly on Monday 00:00, Monthly on the 1st 00:00, in
  the budget's IANA time zone (default UTC); Total never rolls over. A window starts at the first
  instant whose local date is its first day, so DST days last 23 or 25 hours (23.5 or 24.5 on
  Lord Howe) and an instant exactly on a boundary belongs to the new window.
- Admission: an attempt starts only if, in every budget that selects it, spent (current window)
  + reserved + its reservation <= limit for every limit, every such budget holds fewer than
  maxConcurrentSessions reservations, and an operator-wide slot is free. Its reservation is what
  it may still spend: spec.maxBudgetUsd minus the metered spend of its earlier attempts.
- A session without spec.maxBudgetUsd is refused by a budget with a money limit
  (BudgetRequiresMaxBudgetUsd): without a declared cap there is nothing honest to reserve.
- Settlement replaces the reservation by the gateway's metered spend, or the whole reservation
  when there is no report (fail closed), charged to the windows containing the settlement time.
  Metered spend above the reservation (the gateway stops at maxBudgetUsd after at most one
  request's overshoot) is charged as metered: real money was spent. That, and a limit lowered
  below what is already used, are the only ways usage can exceed a limit.
- Queues: strict first come, first served per budget (a waiting session holds its place in every
  budget that selects it, so small sessions cannot starve a big one), and operator-wide slots go
  to the namespace running the fewest sessions first, so 1,000 queued sessions in one namespace
  cannot starve a single one in another.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import heapq
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation

# --- Money ---------------------------------------------------------------------------------------

USD_QUANTUM = Decimal("0.000001")
ZERO_USD = Decimal("0.000000")
MAX_USD = Decimal("999999999.999999")
"""The largest amount rendered as a JSON number exactly: 15 significant digits survive a float64."""

UsdInput = Decimal | int | str | float


def _to_decimal(value: UsdInput) -> Decimal:
    if isinstance(value, bool):  # bool is an int: True would silently be 1 USD
        raise TypeError("a boolean is not an amount of money")
    if isinstance(value, float):
        # A JSON number comes back from json.loads as a float; its repr is the shortest decimal
        # that round-trips, which is the text that was written. Decimal(float) would instead
        # carry the binary expansion (0.1 -> 0.1000000000000000055...).
        return Decimal(repr(value))
    if isinstance(value, Decimal | int | str):
        try:
            return Decimal(value)
        except InvalidOperation as error:
            raise ValueError(f"{value!r} is not an amount of money") from error
    raise TypeError(f"{type(value).__name__} is not an amount of money")


def _quantize(value: UsdInput, rounding: str) -> Decimal:
    amount = _to_decimal(value)
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not a finite amount of money")
    if amount < 0:
        raise ValueError(f"{value!r} is negative; amounts of money here never are")
    return amount.quantize(USD_QUANTUM, rounding=rounding)


def usd(value: UsdInput) -> Decimal:
    """An amount spent or reserved (maxBudgetUsd, metered spend, ledger values): rounds up."""
    return _quantize(value, ROUND_CEILING)


def usd_limit(value: UsdInput) -> Decimal:
    """A limit (an AgentBudget's amountUsd): rounds down, so rounding never raises a limit."""
    return _quantize(value, ROUND_FLOOR)


def usd_to_json(amount: Decimal) -> float:
    """The JSON number for an amount, exact: `usd(usd_to_json(a)) == a` for every valid amount."""
    amount = _exact_usd(amount, "amount")
    if amount > MAX_USD:
        raise ValueError(f"{amount} USD is too large to render exactly as a JSON number")
    number = float(amount)
    assert Decimal(repr(number)) == amount  # 15 significant digits always round-trip a float64
    return number


def format_usd(amount: Decimal) -> str:
    """For messages: two decimals, more only when they matter ("3.10", "0.004", "1.000001")."""
    text = f"{amount.quantize(USD_QUANTUM):f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(2, "0")
    return f"{whole}.{fraction}"


def _exact_usd(value: object, what: str) -> Decimal:
    """Validate a dataclass field: a finite, non-negative Decimal with at most 6 decimals."""
    if not isinstance(value, Decimal):
        raise TypeError(f"{what} must be a Decimal (parse with usd()), not {type(value).__name__}")
    if not value.is_finite() or value < 0:
        raise ValueError(f"{what} {value} is not a non-negative amount of money")
    quantized = value.quantize(USD_QUANTUM)
    if quantized != value:
        raise ValueError(f"{what} {value} has more than 6 decimals (parse with usd())")
    return quantized


def _set_usd(obj: object, name: str) -> None:
    object.__setattr__(obj, name, _exact_usd(getattr(obj, name), name))


def _require_aware(moment: dt.datetime, what: str) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {moment.isoformat()}")


# --- Periods -------------------------------------------------------------------------------------


class Period(enum.StrEnum):
    DAILY = "Daily"
    WEEKLY = "Weekly"
    MONTHLY = "Monthly"
    TOTAL = "Total"


ROLLING_PERIODS = (Period.DAILY, Period.WEEKLY, Period.MONTHLY)
"""Tracked in every ledger whatever its limits: a limit added mid-period knows the spend so far."""

_SECOND = dt.timedelta(seconds=1)


def time_zone(name: str | None) -> dt.tzinfo:
    """An AgentBudget's spec.timeZone (IANA, default UTC); ValueError with a message if unknown."""
    if not name:
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(
            f"timeZone {name!r} is not an IANA time zone the operator knows"
        ) from error


def _local_date(moment: dt.datetime, zone: dt.tzinfo) -> dt.date:
    return moment.astimezone(zone).date()


def _first_instant(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    """The first instant (UTC) whose local date in `zone` is `day` or later."""
    # Local midnight with fold=0 is the first of a repeated midnight, and for a skipped one
    # (America/Santiago jumps from 24:00 to 01:00) the instant the clocks jumped, which is when
    # the day began. Aware arithmetic in one zone is wall-clock arithmetic, so convert to UTC.
    guess = dt.datetime.combine(day, dt.time(), tzinfo=zone).astimezone(dt.UTC)
    if _local_date(guess - _SECOND, zone) < day:
        return guess
    # A jump that starts before midnight (or skips the whole day, as Pacific/Apia did on
    # 2011-12-30) began the day earlier than the guess: find the first second of it.
    # Invariant: local(lo) < day <= local(hi); tz transitions fall on whole seconds.
    lo = int((guess - dt.timedelta(days=2)).timestamp())
    hi = int(guess.timestamp())
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if dt.datetime.fromtimestamp(mid, zone).date() < day:
            lo = mid
        else:
            hi = mid
    return dt.datetime.fromtimestamp(hi, dt.UTC)


def _first_day(period: Period, day: dt.date) -> dt.date:
    if period is Period.DAILY:
        return day
    if period is Period.WEEKLY:
        return day - dt.timedelta(days=day.weekday())  # ISO weeks start on Monday
    return day.replace(day=1)


def _next_first_day(period: Period, day: dt.date) -> dt.date:
    first = _first_day(period, day)
    if period is Period.DAILY:
        return first + dt.timedelta(days=1)
    if period is Period.WEEKLY:
        return first + dt.timedelta(days=7)
    return (first + dt.timedelta(days=31)).replace(day=1)


def window_start(period: Period, at: dt.datetime, zone: dt.tzinfo) -> dt.datetime | None:
    """The start (UTC) of the `period` window containing `at`; None for Total (no windows)."""
    _require_aware(at, "at")
    if period is Period.TOTAL:
        return None
    return _first_instant(_first_day(period, _local_date(at, zone)), zone)


def next_boundary(period: Period, at: dt.datetime, zone: dt.tzinfo) -> dt.datetime | None:
    """The start (UTC) of the window after the one containing `at`; None for Total."""
    _require_aware(at, "at")
    if period is Period.TOTAL:
        return None
    return _first_instant(_next_first_day(period, _local_date(at, zone)), zone)


# --- Budgets and ledgers -------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class BudgetRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class PeriodLimit:
    period: Period
    amount_usd: Decimal

    def __post_init__(self) -> None:
        _set_usd(self, "amount_usd")


@dataclass(frozen=True)
class Budget:
    """An AgentBudget's spec, as the controller read it (selection is the controller's job)."""

    ref: BudgetRef
    limits: tuple[PeriodLimit, ...] = ()
    time_zone: dt.tzinfo = dt.UTC
    max_concurrent_sessions: int | None = None
    problem: str | None = None
    """Why the budget cannot be enforced (say, an unknown timeZone): sessions it selects wait
    with reason BudgetInvalid rather than run unaccounted (fail closed); Ready is False."""

    @property
    def has_money_limits(self) -> bool:
        return bool(self.limits)


@dataclass(frozen=True)
class Reservation:
    """What one admitted attempt may still spend, held until the attempt is settled."""

    session: str
    uid: str
    attempt: int
    amount_usd: Decimal
    reserved_at: dt.datetime

    def __post_init__(self) -> None:
        _set_usd(self, "amount_usd")
        _require_aware(self.reserved_at, "reserved_at")

    @property
    def key(self) -> tuple[str, int]:
        return (self.uid, self.attempt)


@dataclass(frozen=True)
class PeriodSpend:
    """Spend settled in one rolling window (Total's is Ledger.total_spent_usd)."""

    period: Period
    period_start: dt.datetime
    spent_usd: Decimal

    def __post_init__(self) -> None:
        if self.period is Period.TOTAL:
            raise ValueError("Total has no window: its spend is Ledger.total_spent_usd")
        _set_usd(self, "spent_usd")
        _require_aware(self.period_start, "period_start")


@dataclass(frozen=True)
class Ledger:
    """An AgentBudget's durable accounting, kept in its status."""

    reservations: tuple[Reservation, ...] = ()
    periods: tuple[PeriodSpend, ...] = ()
    total_spent_usd: Decimal = ZERO_USD

    def __post_init__(self) -> None:
        _set_usd(self, "total_spent_usd")

    @property
    def reserved_usd(self) -> Decimal:
        return sum((r.amount_usd for r in self.reservations), ZERO_USD)

    @property
    def running(self) -> int:
        """Attempts holding a reservation: what maxConcurrentSessions counts."""
        return len({r.key for r in self.reservations})

    def spent_in(self, period: Period) -> Decimal:
        """Spend in the window the ledger was last rolled to (roll_over() it to `now` first)."""
        if period is Period.TOTAL:
            return self.total_spent_usd
        held = next((p for p in self.periods if p.period is period), None)
        return held.spent_usd if held is not None else ZERO_USD

    def holds(self, uid: str, attempt: int) -> bool:
        return self.reservation(uid, attempt) is not None

    def reservation(self, uid: str, attempt: int) -> Reservation | None:
        return next((r for r in self.reservations if r.key == (uid, attempt)), None)


class ChargeBasis(enum.StrEnum):
    METERED = "Metered"
    """The gateway's metered spend."""
    NO_REPORT = "NoReport"
    """No report reached the operator: the whole reservation (fail closed)."""


@dataclass(frozen=True)
class Charge:
    """One settled attempt: what it had reserved and what the budget was charged."""

    session: str
    uid: str
    attempt: int
    reserved_usd: Decimal
    charged_usd: Decimal
    basis: ChargeBasis
    at: dt.datetime

    @property
    def overshoot_usd(self) -> Decimal:
        """Metered spend above the reservation (at most one request's worth from the gateway)."""
        return max(self.charged_usd - self.reserved_usd, ZERO_USD)


@dataclass(frozen=True)
class LedgerUpdate:
    ledger: Ledger
    charges: tuple[Charge, ...] = ()


def roll_over(ledger: Ledger, zone: dt.tzinfo, now: dt.datetime) -> Ledger:
    """The ledger with every rolling window moved to the one containing `now`.

    A window that has ended restarts with nothing spent; reservations are untouched (one made in
    the previous window still counts in the new one until settled). Windows never move back: a
    clock behind the stored window keeps it. A changed timeZone starts the next window where the
    new zone says, so one window can be short or long by the difference in offsets.
    """
    _require_aware(now, "now")
    held = {p.period: p for p in ledger.periods}
    periods: list[PeriodSpend] = []
    for period in ROLLING_PERIODS:
        start = window_start(period, now, zone)
        assert start is not None
        current = held.get(period)
        if current is None or start > current.period_start:
            current = PeriodSpend(period, start, ZERO_USD)
        periods.append(current)
    rolled = tuple(periods)
    return ledger if rolled == ledger.periods else dataclasses.replace(ledger, periods=rolled)


def next_rollover(budget: Budget, now: dt.datetime) -> dt.datetime | None:
    """When the next window of a limited period starts: the controller's timer, no polling."""
    boundaries = [
        boundary
        for limit in budget.limits
        if (boundary := next_boundary(limit.period, now, budget.time_zone)) is not None
    ]
    return min(boundaries, default=None)


def reservation_for(
    max_budget_usd: Decimal | None, spent_by_earlier_attempts: Decimal = ZERO_USD
) -> Decimal | None:
    """What an attempt reserves: its session's remaining maxBudgetUsd (None: no declared cap)."""
    if max_budget_usd is None:
        return None
    return max(usd(max_budget_usd) - usd(spent_by_earlier_attempts), ZERO_USD)


def _charge_all(ledger: Ledger, amount: Decimal) -> Ledger:
    return dataclasses.replace(
        ledger,
        periods=tuple(
            dataclasses.replace(p, spent_usd=p.spent_usd + amount) for p in ledger.periods
        ),
        total_spent_usd=ledger.total_spent_usd + amount,
    )


def _settle_held(
    ledger: Ledger,
    matches: Iterable[Reservation],
    metered_usd: Decimal | None,
    now: dt.datetime,
) -> LedgerUpdate:
    """Replace the given reservations (one attempt each) by their charges, in `now`'s windows."""
    charges: list[Charge] = []
    settled: set[tuple[str, int]] = set()
    for reservation in matches:
        if reservation.key in settled:
            continue  # a duplicated reservation is one attempt: charge it once
        settled.add(reservation.key)
        if metered_usd is None:
            charged, basis = reservation.amount_usd, ChargeBasis.NO_REPORT
        else:
            # Charged as metered even above the reservation: that money was really spent.
            charged, basis = usd(metered_usd), ChargeBasis.METERED
        charges.append(
            Charge(
                reservation.session,
                reservation.uid,
                reservation.attempt,
                reservation.amount_usd,
                charged,
                basis,
                now,
            )
        )
        ledger = _charge_all(ledger, charged)
    if settled:
        ledger = dataclasses.replace(
            ledger, reservations=tuple(r for r in ledger.reservations if r.key not in settled)
        )
    return LedgerUpdate(ledger, tuple(charges))


def _older_attempts(ledger: Ledger, uid: str, attempt: int) -> list[Reservation]:
    return [r for r in ledger.reservations if r.uid == uid and r.attempt < attempt]


def settle(
    ledger: Ledger,
    uid: str,
    attempt: int,
    metered_usd: Decimal | None,
    zone: dt.tzinfo,
    now: dt.datetime,
) -> LedgerUpdate:
    """An attempt ended: its reservation becomes its metered spend (None: no report, so the whole
    reservation). Idempotent: an attempt holding no reservation (settled already) is a no-op.

    Older attempts of the same session still holding reservations ended before this one began,
    and their reports never reached the ledger, so they are settled first, in full (fail closed).
    """
    ledger = roll_over(ledger, zone, now)
    older = LedgerUpdate(ledger)
    stale = _older_attempts(ledger, uid, attempt)
    if stale:
        older = _settle_held(ledger, stale, None, now)
    this = [r for r in older.ledger.reservations if r.key == (uid, attempt)]
    update = _settle_held(older.ledger, this, metered_usd, now)
    return LedgerUpdate(update.ledger, older.charges + update.charges)


def reserve(
    ledger: Ledger, reservation: Reservation, zone: dt.tzinfo, now: dt.datetime
) -> LedgerUpdate:
    """Hold `reservation` (unchecked: plan_admissions() decides what fits). Idempotent: an attempt
    already holding one keeps it, and a stale request for an attempt older than one held is
    ignored. Older attempts of the same session still held are settled in full first."""
    ledger = roll_over(ledger, zone, now)
    same_uid = [r for r in ledger.reservations if r.uid == reservation.uid]
    if any(r.attempt >= reservation.attempt for r in same_uid):
        return LedgerUpdate(ledger)
    older = LedgerUpdate(ledger)
    if same_uid:
        older = _settle_held(ledger, same_uid, None, now)
    held = dataclasses.replace(older.ledger, reservations=(*older.ledger.reservations, reservation))
    return LedgerUpdate(held, older.charges)


def release(ledger: Ledger, uid: str, attempt: int) -> Ledger:
    """Drop an attempt's reservation without charging it. Only for an attempt that provably never
    started (its pod was never created); anything that may have run is settle()d instead."""
    kept = tuple(r for r in ledger.reservations if r.key != (uid, attempt))
    return (
        ledger
        if len(kept) == len(ledger.reservations)
        else dataclasses.replace(ledger, reservations=kept)
    )


# --- Admission -----------------------------------------------------------------------------------


class BlockReason(enum.StrEnum):
    BUDGET_EXHAUSTED = "BudgetExhausted"
    """Waits: the limit has room for it once spend rolls over or reservations settle."""
    CONCURRENCY_LIMITED = "ConcurrencyLimited"
    """Waits: a budget's maxConcurrentSessions or the operator-wide cap is reached."""
    EXCEEDS_BUDGET_LIMIT = "ExceedsBudgetLimit"
    """Needs a change: it can never fit (its reservation is above a limit, or above what a Total
    limit has left, which only shrinks). It does not hold its place in the queue."""
    BUDGET_REQUIRES_MAX_BUDGET_USD = "BudgetRequiresMaxBudgetUsd"
    """Needs a change: a budget with a money limit selects it and it sets no spec.maxBudgetUsd,
    so there is no declared cap to reserve. It does not hold its place in the queue."""
    BUDGET_INVALID = "BudgetInvalid"
    """Needs a change: a budget selecting it cannot be enforced (Budget.problem)."""

    @property
    def waits(self) -> bool:
        """Whether time alone can admit it; waiting sessions hold their place in their budgets."""
        return self in (BlockReason.BUDGET_EXHAUSTED, BlockReason.CONCURRENCY_LIMITED)


@dataclass(frozen=True)
class QueuedSession:
    """An attempt waiting to start (no pod yet). Queue order is (queued_at, name, uid)."""

    namespace: str
    name: str
    uid: str
    attempt: int
    queued_at: dt.datetime
    """The session's creationTimestamp, so a retry keeps its place."""
    need_usd: Decimal | None
    """reservation_for(): its remaining maxBudgetUsd; None when it declares none."""
    budgets: tuple[BudgetRef, ...] = ()
    """The budgets that select it."""

    def __post_init__(self) -> None:
        if self.need_usd is not None:
            _set_usd(self, "need_usd")
        _require_aware(self.queued_at, "queued_at")

    @property
    def order(self) -> tuple[dt.datetime, str, str]:
        return (self.queued_at, self.name, self.uid)


@dataclass(frozen=True)
class ClusterCapacity:
    """The operator-wide cap on running sessions (None: no cap) and who runs now."""

    max_running: int | None = None
    running_by_namespace: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Admission:
    session: QueuedSession
    reservation_usd: Decimal
    """Held in every budget in session.budgets."""


@dataclass(frozen=True)
class Blocked:
    session: QueuedSession
    reason: BlockReason
    message: str
    position: int
    """1-based place among the sessions of its namespace still queued after this pass."""
    budget: BudgetRef | None = None
    """The budget that blocks it (None: the operator-wide cap)."""
    period: Period | None = None
    """The limit's period when a money limit blocks it."""


@dataclass(frozen=True)
class AdmissionPlan:
    admitted: tuple[Admission, ...]
    """In the order they were admitted (fair-share order)."""
    blocked: tuple[Blocked, ...]
    """In queue order per namespace."""
    ledgers: Mapping[BudgetRef, Ledger]
    """Every budget's ledger after this pass: rolled over, with the admitted reservations."""
    changed: frozenset[BudgetRef]
    """The ledgers to write back. Write them (optimistically, on their resourceVersion) before
    creating any admitted pod, and plan again on a conflict."""
    charges: tuple[Charge, ...] = ()
    """Older attempts still held by admitted or queued sessions, settled in full (fail closed)."""

    def queued_needs(self, ref: BudgetRef) -> tuple[Decimal | None, ...]:
        """For render_status(): one entry per session `ref` selects that is still queued, its
        need if it waits for capacity, None if it needs a spec change (it counts as queued, but
        an oversized session must not keep the budget Exhausted)."""
        return tuple(
            b.session.need_usd if b.reason.waits else None
            for b in self.blocked
            if ref in b.session.budgets
        )


@dataclass(frozen=True)
class Refusal:
    """Why an attempt cannot start now."""

    reason: BlockReason
    message: str
    budget: BudgetRef | None = None
    period: Period | None = None


def _never_fits(budget: Budget, ledger: Ledger, need: Decimal) -> Refusal | None:
    for limit in budget.limits:
        if need > limit.amount_usd:
            detail = f"the {limit.period} limit is {format_usd(limit.amount_usd)} USD"
        elif limit.period is Period.TOTAL and ledger.total_spent_usd + need > limit.amount_usd:
            detail = (
                f"the Total limit {format_usd(limit.amount_usd)} USD has "
                f"{format_usd(ledger.total_spent_usd)} spent, and Total spend never rolls over"
            )
        else:
            continue
        return Refusal(
            BlockReason.EXCEEDS_BUDGET_LIMIT,
            f"AgentBudget {budget.ref}: needs {format_usd(need)} USD but {detail}, so it can "
            "never fit; raise the limit or lower spec.maxBudgetUsd",
            budget.ref,
            limit.period,
        )
    return None


def refusal_for(budget: Budget, ledger: Ledger, need: Decimal) -> Refusal | None:
    """Why an attempt needing `need` cannot start under `budget` now (None: it fits).

    `ledger` must be rolled over to now and must not hold this attempt's own reservation.
    """
    for limit in budget.limits:
        spent = ledger.spent_in(limit.period)
        reserved = ledger.reserved_usd
        if spent + reserved + need > limit.amount_usd:
            return Refusal(
                BlockReason.BUDGET_EXHAUSTED,
                f"AgentBudget {budget.ref}: {limit.period} limit "
                f"{format_usd(limit.amount_usd)} USD, spent {format_usd(spent)}, "
                f"reserved {format_usd(reserved)}, needs {format_usd(need)}",
                budget.ref,
                limit.period,
            )
    cap = budget.max_concurrent_sessions
    if cap is not None and ledger.running >= cap:
        return Refusal(
            BlockReason.CONCURRENCY_LIMITED,
            f"AgentBudget {budget.ref}: maxConcurrentSessions {cap}, running {ledger.running}",
            budget.ref,
        )
    return None


@dataclass
class _Pass:
    """The state of one planning pass: every admission is accounted for before the next check."""

    budgets: Mapping[BudgetRef, Budget]
    ledgers: dict[BudgetRef, Ledger]
    now: dt.datetime
    slots: int | None
    running: dict[str, int]
    max_running: int | None
    held_by: dict[BudgetRef, QueuedSession] = field(default_factory=dict)
    charges: list[Charge] = field(default_factory=list)
    earlier: dict[tuple[BudgetRef, str, int], Reservation] = field(default_factory=dict)
    """Reservations queued attempts hold from an earlier pass, taken out of the ledgers."""

    def clear_queued(self, queued: Sequence[QueuedSession]) -> None:
        """Before any check, take out what queued attempts hold, in every budget (one that no
        longer selects the session included), so every check sees only what runs.

        A queued attempt N means attempts < N have ended: any still held is settled in full
        (fail closed). Attempt N itself never started (it is queued: it has no pod), so a
        reservation it holds (a pass admitted it, then died before creating its pod) is set
        aside without a charge, and put back unchanged if it is admitted again."""
        attempts = {session.uid: session.attempt for session in queued}
        for ref, ledger in self.ledgers.items():
            older = [r for r in ledger.reservations if r.attempt < attempts.get(r.uid, 0)]
            if older:
                update = _settle_held(ledger, older, None, self.now)
                ledger = update.ledger
                self.charges.extend(update.charges)
            current = [r for r in ledger.reservations if r.attempt == attempts.get(r.uid)]
            for reservation in current:
                self.earlier.setdefault((ref, *reservation.key), reservation)
            if current:
                ledger = dataclasses.replace(
                    ledger,
                    reservations=tuple(r for r in ledger.reservations if r not in current),
                )
            self.ledgers[ref] = ledger

    def refusal(self, session: QueuedSession) -> Refusal | None:
        budgets = [self.budgets[ref] for ref in sorted(set(session.budgets))]
        for budget in budgets:
            if budget.problem is not None:
                return Refusal(
                    BlockReason.BUDGET_INVALID,
                    f"AgentBudget {budget.ref} cannot be enforced: {budget.problem}",
                    budget.ref,
                )
        for budget in budgets:
            if budget.has_money_limits and session.need_usd is None:
                limit = budget.limits[0]
                return Refusal(
                    BlockReason.BUDGET_REQUIRES_MAX_BUDGET_USD,
                    f"AgentBudget {budget.ref} limits spend ({limit.period} "
                    f"{format_usd(limit.amount_usd)} USD), so the sessions it selects must set "
                    "spec.maxBudgetUsd: it is what a session reserves against the limit",
                    budget.ref,
                    limit.period,
                )
        need = session.need_usd if session.need_usd is not None else ZERO_USD
        for budget in budgets:
            never = _never_fits(budget, self.ledgers[budget.ref], need)
            if never is not None:
                return never
        for budget in budgets:
            refused = refusal_for(budget, self.ledgers[budget.ref], need)
            if refused is not None:
                return refused
        for budget in budgets:
            head = self.held_by.get(budget.ref)
            if head is not None:
                return Refusal(
                    BlockReason.BUDGET_EXHAUSTED,
                    f"AgentBudget {budget.ref}: first come, first served: waiting behind "
                    f"{head.namespace}/{head.name}, which needs "
                    f"{format_usd(head.need_usd or ZERO_USD)} USD",
                    budget.ref,
                )
        if self.slots is not None and self.slots <= 0:
            total = sum(self.running.values())
            return Refusal(
                BlockReason.CONCURRENCY_LIMITED,
                f"the operator runs at most {self.max_running} sessions and runs {total} "
                f"({self.running.get(session.namespace, 0)} in {session.namespace}); free "
                "slots go to the namespace running the fewest first",
            )
        return None

    def admit(self, session: QueuedSession) -> Admission:
        need = session.need_usd if session.need_usd is not None else ZERO_USD
        for ref in dict.fromkeys(session.budgets):
            reservation = self.earlier.get((ref, session.uid, session.attempt))
            if reservation is None or reservation.amount_usd != need:
                reservation = Reservation(
                    session.name, session.uid, session.attempt, need, self.now
                )
            ledger = self.ledgers[ref]
            self.ledgers[ref] = dataclasses.replace(
                ledger, reservations=(*ledger.reservations, reservation)
            )
        self.running[session.namespace] = self.running.get(session.namespace, 0) + 1
        if self.slots is not None:
            self.slots -= 1
        return Admission(session, need)

    def block(self, session: QueuedSession, refusal: Refusal) -> None:
        if refusal.reason.waits:
            for ref in session.budgets:
                self.held_by.setdefault(ref, session)


def plan_admissions(
    queued: Sequence[QueuedSession],
    budgets: Mapping[BudgetRef, Budget],
    ledgers: Mapping[BudgetRef, Ledger],
    cluster: ClusterCapacity,
    now: dt.datetime,
) -> AdmissionPlan:
    """Which queued attempts start now, and why each other one waits.

    Fair share: while operator-wide slots are free, the next goes to the namespace running the
    fewest sessions (counting this pass's admissions; ties: the one whose next session has
    waited longest, then by name); within a namespace, sessions go in queue order. Per budget,
    strict first come, first served: a session that waits (BudgetExhausted, ConcurrencyLimited)
    holds its place in every budget that selects it, so later sessions of those budgets wait
    behind it even if they would fit. One that needs a spec change holds no place.
    A ledger missing from `ledgers` is a new budget's: empty.
    """
    _require_aware(now, "now")
    seen: set[str] = set()
    for session in queued:
        if session.uid in seen:
            raise ValueError(f"session uid {session.uid} is queued twice")
        seen.add(session.uid)
        for ref in session.budgets:
            if ref not in budgets:
                raise ValueError(f"{session.namespace}/{session.name} names unknown budget {ref}")
    original = {ref: ledgers.get(ref, Ledger()) for ref in budgets}
    working = {ref: roll_over(original[ref], budgets[ref].time_zone, now) for ref in budgets}
    running = {ns: n for ns, n in cluster.running_by_namespace.items() if n > 0}
    slots = None
    if cluster.max_running is not None:
        slots = max(cluster.max_running - sum(running.values()), 0)
    state = _Pass(budgets, working, now, slots, running, cluster.max_running)
    state.clear_queued(queued)

    by_namespace: dict[str, list[QueuedSession]] = {}
    for session in sorted(queued, key=lambda s: s.order):
        by_namespace.setdefault(session.namespace, []).append(session)
    # Heap of (running, next session's order, namespace, index of that session). A namespace's
    # running count only changes by its own admission, after which it is pushed back with the
    # new count, so no entry is ever stale.
    heap = [(running.get(ns, 0), q[0].order, ns, 0) for ns, q in by_namespace.items()]
    heapq.heapify(heap)
    admitted: list[Admission] = []
    outcome: dict[str, Refusal] = {}
    while heap:
        _, _, namespace, index = heapq.heappop(heap)
        sessions = by_namespace[namespace]
        while index < len(sessions):
            session = sessions[index]
            index += 1
            refusal = state.refusal(session)
            if refusal is None:
                admitted.append(state.admit(session))
                break
            state.block(session, refusal)
            outcome[session.uid] = refusal
        if index < len(sessions):
            heapq.heappush(
                heap,
                (running.get(namespace, 0), sessions[index].order, namespace, index),
            )

    blocked: list[Blocked] = []
    for namespace in sorted(by_namespace):
        waiting = [s for s in by_namespace[namespace] if s.uid in outcome]
        for position, session in enumerate(waiting, start=1):
            refusal = outcome[session.uid]
            blocked.append(
                Blocked(
                    session,
                    refusal.reason,
                    f"{refusal.message} (queued {_ordinal(position)} of {len(waiting)} in "
                    f"namespace {namespace})",
                    position,
                    refusal.budget,
                    refusal.period,
                )
            )
    for ref in budgets:
        state.ledgers[ref] = _in_original_order(state.ledgers[ref], original[ref])
    changed = frozenset(ref for ref in budgets if state.ledgers[ref] != original[ref])
    return AdmissionPlan(
        tuple(admitted), tuple(blocked), dict(state.ledgers), changed, tuple(state.charges)
    )


def _in_original_order(ledger: Ledger, original: Ledger) -> Ledger:
    """Reservations kept from `original` in their old order, new ones after: a pass that
    re-admits what an earlier one admitted leaves the ledger equal, so nothing is written."""
    position = {id(r): i for i, r in enumerate(original.reservations)}
    after = len(position)
    ordered = sorted(
        enumerate(ledger.reservations), key=lambda item: (position.get(id(item[1]), after), item[0])
    )
    return dataclasses.replace(ledger, reservations=tuple(r for _, r in ordered))


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# --- Status --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeriodStatus:
    period: Period
    period_start: dt.datetime | None
    """None for Total."""
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal
    remaining_usd: Decimal
    """Clamped at 0: never negative, even when usage exceeds the limit."""
    over_limit_usd: Decimal
    """How far usage exceeds the limit (a lowered limit, or a metered overshoot); usually 0."""


@dataclass(frozen=True)
class ConditionValue:
    type: str
    status: str  # True | False
    reason: str
    message: str


@dataclass(frozen=True)
class BudgetStatus:
    periods: tuple[PeriodStatus, ...]
    running: int
    queued: int
    reserved_usd: Decimal
    total_spent_usd: Decimal
    exhausted: ConditionValue
    ready: ConditionValue
    next_rollover: dt.datetime | None


def render_status(
    budget: Budget,
    ledger: Ledger,
    now: dt.datetime,
    queued_needs: Sequence[Decimal | None] = (),
) -> BudgetStatus:
    """The budget's status now. Exhausted is True when some limit has nothing left, or less
    than the smallest need still queued under it (AdmissionPlan.queued_needs())."""
    ledger = roll_over(ledger, budget.time_zone, now)
    reserved = ledger.reserved_usd
    periods: list[PeriodStatus] = []
    for limit in budget.limits:
        spent = ledger.spent_in(limit.period)
        start = next((p.period_start for p in ledger.periods if p.period is limit.period), None)
        used = spent + reserved
        periods.append(
            PeriodStatus(
                limit.period,
                start,
                limit.amount_usd,
                spent,
                reserved,
                max(limit.amount_usd - used, ZERO_USD),
                max(used - limit.amount_usd, ZERO_USD),
            )
        )
    needs = [n for n in queued_needs if n is not None]
    smallest = min(needs, default=None)
    return BudgetStatus(
        tuple(periods),
        ledger.running,
        len(queued_needs),
        reserved,
        ledger.total_spent_usd,
        _exhausted(budget, periods, smallest),
        _ready(budget, now),
        next_rollover(budget, now),
    )


def _exhausted(
    budget: Budget, periods: Sequence[PeriodStatus], smallest_need: Decimal | None
) -> ConditionValue:
    for status in periods:
        numbers = (
            f"{status.period} limit {format_usd(status.limit_usd)} USD, spent "
            f"{format_usd(status.spent_usd)}, reserved {format_usd(status.reserved_usd)}"
        )
        if status.over_limit_usd > 0:
            return ConditionValue(
                "Exhausted",
                "True",
                "LimitReached",
                f"AgentBudget {budget.ref}: {numbers}: usage exceeds the limit by "
                f"{format_usd(status.over_limit_usd)} (the limit was lowered, or the last "
                "request overshot a session's maxBudgetUsd); remaining is shown as 0",
            )
        if status.remaining_usd == 0:
            return ConditionValue(
                "Exhausted",
                "True",
                "LimitReached",
                f"AgentBudget {budget.ref}: {numbers}: nothing remains",
            )
        if smallest_need is not None and status.remaining_usd < smallest_need:
            return ConditionValue(
                "Exhausted",
                "True",
                "InsufficientForQueued",
                f"AgentBudget {budget.ref}: {numbers}: remaining "
                f"{format_usd(status.remaining_usd)} is less than the smallest queued need "
                f"{format_usd(smallest_need)}",
            )
    if not periods:
        return ConditionValue("Exhausted", "False", "NoMoneyLimits", "no money limits to exhaust")
    return ConditionValue(
        "Exhausted",
        "False",
        "WithinLimits",
        "; ".join(
            f"{p.period} {format_usd(p.remaining_usd)} of {format_usd(p.limit_usd)} USD left"
            for p in periods
        ),
    )


def _ready(budget: Budget, now: dt.datetime) -> ConditionValue:
    if budget.problem is not None:
        return ConditionValue(
            "Ready",
            "False",
            "InvalidSpec",
            f"cannot be enforced, so the sessions it selects wait: {budget.problem}",
        )
    rollover = next_rollover(budget, now)
    until = f"; next rollover at {rollover.isoformat()}" if rollover is not None else ""
    cap = budget.max_concurrent_sessions
    concurrency = f", at most {cap} running" if cap is not None else ""
    return ConditionValue(
        "Ready",
        "True",
        "Enforced",
        f"enforcing {len(budget.limits)} limit(s){concurrency} in {budget.time_zone}{until}",
    )


# --- Reconstruction after a restart --------------------------------------------------------------


class AttemptState(enum.StrEnum):
    RUNNING = "Running"
    """Admitted and not ended: its pod runs, or is still to be created. Keeps its reservation."""
    ENDED = "Ended"
    """Its pod ended: settled at LiveAttempt.metered_usd (None: no report, so in full)."""
    DELETED = "Deleted"
    """Its session is gone: released at its metered spend if known, else in full."""


@dataclass(frozen=True)
class LiveAttempt:
    uid: str
    attempt: int
    state: AttemptState
    metered_usd: Decimal | None = None
    """The gateway's report (spent plus in flight), when one reached the operator."""

    def __post_init__(self) -> None:
        if self.metered_usd is not None:
            _set_usd(self, "metered_usd")


class CorrectionKind(enum.StrEnum):
    SETTLED_ENDED = "SettledEnded"
    RELEASED_DELETED = "ReleasedDeleted"
    SETTLED_UNACCOUNTED = "SettledUnaccounted"
    """A reservation whose attempt the live set does not list: charged in full (fail closed)."""
    DROPPED_DUPLICATE = "DroppedDuplicate"


@dataclass(frozen=True)
class Correction:
    kind: CorrectionKind
    session: str
    uid: str
    attempt: int
    charge: Charge | None
    """None for a dropped duplicate (the attempt's other reservation stays)."""


@dataclass(frozen=True)
class Reconstruction:
    ledger: Ledger
    corrections: tuple[Correction, ...]


def reconstruct_ledger(
    ledger: Ledger, live: Iterable[LiveAttempt], zone: dt.tzinfo, now: dt.datetime
) -> Reconstruction:
    """After a restart: reconcile the ledger read from status with the attempts as they are.

    `live` must list every attempt of every session whose uid holds a reservation here (from a
    fresh list, not a partial cache): a reservation whose attempt it does not list is charged in
    full. Running attempts keep their reservations; spend is counted once per attempt, because
    only attempts still holding a reservation are charged, and charging removes it, so applying
    the result and reconstructing again changes nothing.
    """
    by_key: dict[tuple[str, int], LiveAttempt] = {}
    for attempt in live:
        key = (attempt.uid, attempt.attempt)
        if key in by_key:
            raise ValueError(f"attempt {attempt.attempt} of uid {attempt.uid} is listed twice")
        by_key[key] = attempt
    ledger = roll_over(ledger, zone, now)
    corrections: list[Correction] = []
    unique: list[Reservation] = []
    for reservation in ledger.reservations:
        if any(r.key == reservation.key for r in unique):
            corrections.append(
                Correction(
                    CorrectionKind.DROPPED_DUPLICATE,
                    reservation.session,
                    reservation.uid,
                    reservation.attempt,
                    None,
                )
            )
        else:
            unique.append(reservation)
    ledger = dataclasses.replace(ledger, reservations=tuple(unique))
    for reservation in unique:
        state = by_key.get(reservation.key)
        if state is not None and state.state is AttemptState.RUNNING:
            continue
        if state is None:
            kind, metered = CorrectionKind.SETTLED_UNACCOUNTED, None
        elif state.state is AttemptState.ENDED:
            kind, metered = CorrectionKind.SETTLED_ENDED, state.metered_usd
        else:
            kind, metered = CorrectionKind.RELEASED_DELETED, state.metered_usd
        update = _settle_held(ledger, [reservation], metered, now)
        ledger = update.ledger
        corrections.extend(Correction(kind, c.session, c.uid, c.attempt, c) for c in update.charges)
    return Reconstruction(ledger, tuple(corrections))
