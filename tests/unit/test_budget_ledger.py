"""AgentBudget accounting (reconcile/budget.py): exact money, period windows across DST, the
reservation ledger (idempotent reserve and settle, fail-closed settle, rollover), admission
planning (every budget and period, concurrency, strict FIFO per budget, fair share under the
operator-wide cap), status rendering and reconstruction after a restart; plus seeded random
sequences checking that admission never takes a period over its limit."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
from collections.abc import Sequence
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from agentsession_operator.reconcile.budget import (
    MAX_USD,
    ZERO_USD,
    AttemptState,
    BlockReason,
    Budget,
    BudgetRef,
    ChargeBasis,
    ClusterCapacity,
    CorrectionKind,
    Ledger,
    LiveAttempt,
    Period,
    PeriodLimit,
    QueuedSession,
    Reservation,
    format_usd,
    next_boundary,
    next_rollover,
    plan_admissions,
    reconstruct_ledger,
    refusal_for,
    release,
    render_status,
    reservation_for,
    reserve,
    roll_over,
    settle,
    time_zone,
    usd,
    usd_limit,
    usd_to_json,
    window_start,
)

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
T0 = dt.datetime(2026, 11, 18, 12, 0, tzinfo=UTC)  # a Wednesday
DAILY = BudgetRef("team-a", "daily")
MONTHLY = BudgetRef("team-a", "monthly")


def D(text: str) -> Decimal:
    return Decimal(text)


def limits(**amounts: str) -> tuple[PeriodLimit, ...]:
    return tuple(PeriodLimit(Period(p.capitalize()), usd_limit(a)) for p, a in amounts.items())


def budget(
    ref: BudgetRef = DAILY,
    zone: dt.tzinfo = UTC,
    max_concurrent: int | None = None,
    **amounts: str,
) -> Budget:
    return Budget(ref, limits(**amounts), zone, max_concurrent)


def queued(
    name: str,
    need: str | None = "1",
    *,
    namespace: str = "team-a",
    budgets: Sequence[BudgetRef] = (DAILY,),
    at: int = 0,
    attempt: int = 1,
) -> QueuedSession:
    return QueuedSession(
        namespace,
        name,
        f"uid-{namespace}-{name}",
        attempt,
        T0 - dt.timedelta(hours=1) + dt.timedelta(seconds=at),
        usd(need) if need is not None else None,
        tuple(budgets),
    )


def held(name: str, amount: str, attempt: int = 1, namespace: str = "team-a") -> Reservation:
    return Reservation(
        name, f"uid-{namespace}-{name}", attempt, usd(amount), T0 - dt.timedelta(hours=2)
    )


def ledger_at(
    now: dt.datetime,
    zone: dt.tzinfo = UTC,
    spent: str = "0",
    reservations: Sequence[Reservation] = (),
    total: str | None = None,
) -> Ledger:
    """A ledger rolled to `now` with `spent` in every rolling window."""
    rolled = roll_over(Ledger(), zone, now)
    return Ledger(
        tuple(reservations),
        tuple(dataclasses.replace(p, spent_usd=usd(spent)) for p in rolled.periods),
        usd(total if total is not None else spent),
    )


# --- Money ---------------------------------------------------------------------------------------


def test_money_parses_json_numbers_exactly_and_rounds_against_spending() -> None:
    assert usd(json.loads("0.1")) == D("0.1")  # Decimal(0.1) would be 0.1000000000000000055...
    assert usd(json.loads("3.1")) + usd(json.loads("16.9")) == D("20")
    assert usd(json.loads("1e-06")) == D("0.000001")  # how Go's encoder may write it
    assert usd("2.50") == D("2.5")
    assert usd(3) == D("3")
    assert str(usd("2.5")) == "2.500000"  # quantized to the micro-dollar
    # Spend and reservations round up, limits down: rounding never lets more through.
    assert usd("1.0000001") == D("1.000001")
    assert usd_limit("1.0000009") == D("1.000000")
    for bad in ("nan", "inf", "-1", "-0.000001", "twelve"):
        with pytest.raises(ValueError, match=r"money|negative|finite"):
            usd(bad)
    with pytest.raises(TypeError):
        usd(True)


def test_money_renders_to_json_numbers_that_read_back_exactly() -> None:
    rng = random.Random(10)
    amounts = [ZERO_USD, D("0.000001"), D("0.1"), D("20"), MAX_USD]
    amounts += [usd(Decimal(rng.randrange(0, 10**15)) / 10**6) for _ in range(5000)]
    for amount in amounts:
        text = json.dumps({"spentUsd": usd_to_json(amount)})
        assert usd(json.loads(text)["spentUsd"]) == amount, text
    with pytest.raises(ValueError, match="too large"):
        usd_to_json(MAX_USD + D("0.000001"))


def test_amounts_in_the_ledger_are_exact_decimals_never_floats() -> None:
    with pytest.raises(TypeError, match="Decimal"):
        PeriodLimit(Period.DAILY, 20.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="6 decimals"):
        PeriodLimit(Period.DAILY, D("0.0000001"))
    with pytest.raises(ValueError, match="non-negative"):
        Ledger(total_spent_usd=D("-1"))
    with pytest.raises(ValueError, match="timezone-aware"):
        Reservation("s", "u", 1, D("1"), dt.datetime(2026, 1, 1))
    assert PeriodLimit(Period.DAILY, D("1.5")).amount_usd.as_tuple().exponent == -6


def test_amounts_in_messages_show_what_matters() -> None:
    assert format_usd(D("3.1")) == "3.10"
    assert format_usd(D("20")) == "20.00"
    assert format_usd(D("0.004")) == "0.004"
    assert format_usd(D("1.000001")) == "1.000001"


# --- Periods -------------------------------------------------------------------------------------


def local(zone: dt.tzinfo, *parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=zone)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("zone", "period", "at", "start", "end", "hours"),
    [
        # UTC: Daily at midnight, Weekly on Monday, Monthly on the 1st.
        (UTC, Period.DAILY, (2026, 11, 18, 12), (2026, 11, 18), (2026, 11, 19), 24),
        (UTC, Period.WEEKLY, (2026, 11, 18, 12), (2026, 11, 16), (2026, 11, 23), 168),
        (UTC, Period.WEEKLY, (2026, 11, 22, 23, 59), (2026, 11, 16), (2026, 11, 23), 168),
        (UTC, Period.MONTHLY, (2026, 12, 31, 23), (2026, 12, 1), (2027, 1, 1), 744),
        # February, leap years: 2028 and 2000 are, 2026 and 2100 are not.
        (UTC, Period.MONTHLY, (2026, 2, 14), (2026, 2, 1), (2026, 3, 1), 28 * 24),
        (UTC, Period.MONTHLY, (2028, 2, 29, 23), (2028, 2, 1), (2028, 3, 1), 29 * 24),
        (UTC, Period.MONTHLY, (2000, 2, 29), (2000, 2, 1), (2000, 3, 1), 29 * 24),
        (UTC, Period.MONTHLY, (2100, 2, 28), (2100, 2, 1), (2100, 3, 1), 28 * 24),
        (UTC, Period.DAILY, (2028, 2, 29, 5), (2028, 2, 29), (2028, 3, 1), 24),
        # Europe/Berlin: spring forward on 29 March 2026, fall back on 25 October.
        (BERLIN, Period.DAILY, (2026, 3, 29, 12), (2026, 3, 29), (2026, 3, 30), 23),
        (BERLIN, Period.DAILY, (2026, 10, 25, 12), (2026, 10, 25), (2026, 10, 26), 25),
        (BERLIN, Period.DAILY, (2026, 10, 25, 2, 30), (2026, 10, 25), (2026, 10, 26), 25),
        (BERLIN, Period.WEEKLY, (2026, 3, 29, 23), (2026, 3, 23), (2026, 3, 30), 167),
        (BERLIN, Period.MONTHLY, (2026, 3, 15), (2026, 3, 1), (2026, 4, 1), 31 * 24 - 1),
        (BERLIN, Period.MONTHLY, (2026, 10, 15), (2026, 10, 1), (2026, 11, 1), 31 * 24 + 1),
        # America/New_York: 8 March and 1 November 2026.
        (NEW_YORK, Period.DAILY, (2026, 3, 8, 12), (2026, 3, 8), (2026, 3, 9), 23),
        (NEW_YORK, Period.DAILY, (2026, 11, 1, 1, 30), (2026, 11, 1), (2026, 11, 2), 25),
        (NEW_YORK, Period.WEEKLY, (2026, 11, 4), (2026, 11, 2), (2026, 11, 9), 168),
        # Australia/Lord_Howe moves its clocks by half an hour.
        (LORD_HOWE, Period.DAILY, (2026, 10, 4, 12), (2026, 10, 4), (2026, 10, 5), 23.5),
        (LORD_HOWE, Period.DAILY, (2026, 4, 5, 12), (2026, 4, 5), (2026, 4, 6), 24.5),
    ],
)
def test_period_windows_follow_the_local_calendar(
    zone: dt.tzinfo,
    period: Period,
    at: tuple[int, ...],
    start: tuple[int, ...],
    end: tuple[int, ...],
    hours: float,
) -> None:
    moment = local(zone, *at)
    got_start = window_start(period, moment, zone)
    got_end = next_boundary(period, moment, zone)
    assert got_start is not None
    assert got_end is not None
    assert got_start == local(zone, *start)
    assert got_end == local(zone, *end)
    assert got_start.tzinfo is UTC
    assert got_end.tzinfo is UTC
    assert (got_end - got_start) == dt.timedelta(hours=hours)


def test_an_instant_on_the_boundary_belongs_to_the_new_window() -> None:
    boundary = local(BERLIN, 2026, 3, 30)
    just_before = boundary - dt.timedelta(microseconds=1)
    assert window_start(Period.DAILY, boundary, BERLIN) == boundary
    assert window_start(Period.WEEKLY, boundary, BERLIN) == boundary  # a Monday
    assert next_boundary(Period.DAILY, just_before, BERLIN) == boundary
    assert window_start(Period.DAILY, just_before, BERLIN) == local(BERLIN, 2026, 3, 29)
    first = local(UTC, 2026, 12, 1)
    assert window_start(Period.MONTHLY, first, UTC) == first
    assert window_start(Period.MONTHLY, first - dt.timedelta(microseconds=1), UTC) == local(
        UTC, 2026, 11, 1
    )


def test_a_day_whose_midnight_is_skipped_starts_when_the_clocks_jump() -> None:
    santiago = ZoneInfo("America/Santiago")  # 6 September 2026: 24:00 -> 01:00
    start = window_start(Period.DAILY, local(santiago, 2026, 9, 6, 12), santiago)
    assert start == dt.datetime(2026, 9, 6, 4, tzinfo=UTC)
    assert start.astimezone(santiago).hour == 1
    assert next_boundary(Period.DAILY, local(santiago, 2026, 9, 5, 12), santiago) == start
    apia = ZoneInfo("Pacific/Apia")  # skipped 30 December 2011 entirely
    end = next_boundary(Period.DAILY, local(apia, 2011, 12, 29, 12), apia)
    assert end == window_start(Period.DAILY, local(apia, 2011, 12, 31, 12), apia)
    assert end == dt.datetime(2011, 12, 30, 10, tzinfo=UTC)


class GapBeforeMidnight(dt.tzinfo):
    """A zone whose clocks jump from 23:30 to 00:30 (UTC+0 -> UTC+1) at 2026-06-01T23:30Z: the
    midnight guess lands inside the gap, past the instant the day began. No real zone does
    this today, but the tz database has had odder rules."""

    JUMP = dt.datetime(2026, 6, 1, 23, 30)
    BEFORE, AFTER = dt.timedelta(0), dt.timedelta(hours=1)

    def utcoffset(self, moment: dt.datetime | None) -> dt.timedelta:
        if moment is None:
            return self.BEFORE
        wall = moment.replace(tzinfo=None)
        if wall < self.JUMP + self.BEFORE:
            return self.BEFORE
        if wall >= self.JUMP + self.AFTER:
            return self.AFTER
        return self.AFTER if moment.fold else self.BEFORE  # in the gap (PEP 495)

    def dst(self, moment: dt.datetime | None) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, moment: dt.datetime | None) -> str:
        return "GAP"

    def fromutc(self, moment: dt.datetime) -> dt.datetime:
        utc = moment.replace(tzinfo=None)
        offset = self.BEFORE if utc < self.JUMP else self.AFTER
        return (utc + offset).replace(tzinfo=self)


def test_a_jump_over_midnight_starts_the_day_at_the_jump() -> None:
    zone = GapBeforeMidnight()
    jump = dt.datetime(2026, 6, 1, 23, 30, tzinfo=UTC)
    at = dt.datetime(2026, 6, 2, 12, tzinfo=UTC)
    assert window_start(Period.DAILY, at, zone) == jump
    assert next_boundary(Period.DAILY, jump - dt.timedelta(seconds=1), zone) == jump
    assert window_start(Period.DAILY, jump - dt.timedelta(seconds=1), zone) == dt.datetime(
        2026, 6, 1, tzinfo=UTC
    )


def test_period_windows_tile_time_in_every_zone() -> None:
    rng = random.Random(20)
    zones = [UTC, BERLIN, NEW_YORK, LORD_HOWE, ZoneInfo("Asia/Kolkata"), ZoneInfo("Pacific/Apia")]
    for _ in range(3000):
        zone = rng.choice(zones)
        period = rng.choice([Period.DAILY, Period.WEEKLY, Period.MONTHLY])
        at = dt.datetime(2000, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=rng.randrange(10**9))
        start = window_start(period, at, zone)
        end = next_boundary(period, at, zone)
        assert start is not None
        assert end is not None
        assert start <= at < end
        assert window_start(period, start, zone) == start
        assert window_start(period, end, zone) == end
        assert next_boundary(period, start - dt.timedelta(microseconds=1), zone) == start
        first_local = start.astimezone(zone)
        if period is Period.WEEKLY:
            assert first_local.weekday() == 0
        if period is Period.MONTHLY:
            assert first_local.day == 1


def test_total_never_rolls_over_and_naive_times_are_refused() -> None:
    assert window_start(Period.TOTAL, T0, BERLIN) is None
    assert next_boundary(Period.TOTAL, T0, BERLIN) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        window_start(Period.DAILY, dt.datetime(2026, 1, 1), UTC)


def test_time_zone_names_are_iana_and_default_to_utc() -> None:
    assert time_zone(None) is UTC
    assert time_zone("") is UTC
    assert time_zone("Europe/Berlin") == BERLIN
    for bad in ("Mars/Olympus_Mons", "../../etc/passwd"):
        with pytest.raises(ValueError, match="not an IANA time zone"):
            time_zone(bad)


# --- The ledger ----------------------------------------------------------------------------------


def test_reserve_is_idempotent() -> None:
    once = reserve(Ledger(), held("a", "2.5"), UTC, T0).ledger
    again = reserve(once, held("a", "2.5"), UTC, T0 + dt.timedelta(minutes=1))
    assert again.ledger == once
    assert again.charges == ()
    assert once.reserved_usd == D("2.5")
    assert once.running == 1
    different_amount = reserve(once, held("a", "7"), UTC, T0).ledger
    assert different_amount.reserved_usd == D("2.5")  # the first reservation stands
    stale = reserve(reserve(Ledger(), held("a", "2", 2), UTC, T0).ledger, held("a", "5"), UTC, T0)
    assert [r.attempt for r in stale.ledger.reservations] == [2]


def test_settle_replaces_the_reservation_by_the_metered_spend_once() -> None:
    ledger = reserve(Ledger(), held("a", "5"), UTC, T0).ledger
    first = settle(ledger, "uid-team-a-a", 1, D("1.25"), UTC, T0)
    assert first.ledger.reservations == ()
    assert [p.spent_usd for p in first.ledger.periods] == [D("1.25")] * 3
    assert first.ledger.total_spent_usd == D("1.25")
    (charge,) = first.charges
    assert (charge.basis, charge.reserved_usd, charge.charged_usd) == (
        ChargeBasis.METERED,
        D("5"),
        D("1.25"),
    )
    assert charge.overshoot_usd == 0
    again = settle(first.ledger, "uid-team-a-a", 1, D("1.25"), UTC, T0)
    assert again.ledger == first.ledger
    assert again.charges == ()
    nobody = settle(first.ledger, "uid-unknown", 1, None, UTC, T0)
    assert nobody.ledger == first.ledger
    assert nobody.charges == ()


def test_settle_without_a_report_charges_the_whole_reservation() -> None:
    ledger = reserve(Ledger(), held("a", "5"), UTC, T0).ledger
    update = settle(ledger, "uid-team-a-a", 1, None, UTC, T0)
    assert update.ledger.total_spent_usd == D("5")
    assert update.charges[0].basis is ChargeBasis.NO_REPORT


def test_metered_overshoot_is_charged_as_spent() -> None:
    """The gateway can overshoot maxBudgetUsd by one request: that money was spent."""
    ledger = reserve(Ledger(), held("a", "1"), UTC, T0).ledger
    update = settle(ledger, "uid-team-a-a", 1, D("1.04"), UTC, T0)
    assert update.ledger.total_spent_usd == D("1.04")
    assert update.charges[0].overshoot_usd == D("0.04")
    # Metered spend with more precision than the ledger keeps rounds up, never down.
    ledger = reserve(Ledger(), held("b", "1"), UTC, T0).ledger
    precise = settle(ledger, "uid-team-a-b", 1, D("0.1234561"), UTC, T0)
    assert precise.ledger.total_spent_usd == D("0.123457")


def test_an_older_attempt_still_held_is_settled_in_full_first() -> None:
    ledger = reserve(Ledger(), held("a", "3"), UTC, T0).ledger
    by_settle = settle(ledger, "uid-team-a-a", 2, D("0.5"), UTC, T0)
    assert by_settle.ledger.reservations == ()
    assert [(c.attempt, c.charged_usd, c.basis) for c in by_settle.charges] == [
        (1, D("3"), ChargeBasis.NO_REPORT)
    ]  # attempt 2 held nothing: only attempt 1 is charged
    by_reserve = reserve(ledger, held("a", "2", attempt=2), UTC, T0)
    assert [(r.attempt, r.amount_usd) for r in by_reserve.ledger.reservations] == [(2, D("2"))]
    assert by_reserve.ledger.total_spent_usd == D("3")
    assert [c.attempt for c in by_reserve.charges] == [1]
    # Settling the old attempt afterwards (its report arriving late) charges nothing more.
    late = settle(by_reserve.ledger, "uid-team-a-a", 1, D("0.1"), UTC, T0)
    assert late.ledger.total_spent_usd == D("3")
    assert late.charges == ()


def test_release_drops_a_reservation_without_charging() -> None:
    ledger = reserve(Ledger(), held("a", "3"), UTC, T0).ledger
    released = release(ledger, "uid-team-a-a", 1)
    assert released.reservations == ()
    assert released.total_spent_usd == 0
    assert release(released, "uid-team-a-a", 1) is released


def test_rollover_resets_spend_at_the_boundary_and_carries_reservations() -> None:
    evening = local(BERLIN, 2026, 10, 24, 23, 30)  # Saturday; Sunday 25 October has 25 hours
    ledger = reserve(ledger_at(evening, BERLIN, spent="4"), held("a", "6"), BERLIN, evening).ledger
    assert roll_over(ledger, BERLIN, evening) is ledger  # nothing to roll: unchanged object
    midnight = local(BERLIN, 2026, 10, 25)
    rolled = roll_over(ledger, BERLIN, midnight)
    assert rolled.spent_in(Period.DAILY) == 0  # a new day
    assert rolled.spent_in(Period.WEEKLY) == D("4")  # the week goes on to Monday
    assert rolled.spent_in(Period.MONTHLY) == D("4")
    assert rolled.total_spent_usd == D("4")
    assert rolled.reservations == ledger.reservations  # still reserved in the new day
    # Settled in the new day: charged to the new day's window, in every period.
    settled = settle(ledger, "uid-team-a-a", 1, D("2"), BERLIN, midnight + dt.timedelta(hours=1))
    assert settled.ledger.spent_in(Period.DAILY) == D("2")
    assert settled.ledger.spent_in(Period.WEEKLY) == D("6")
    assert settled.ledger.total_spent_usd == D("6")
    # The clock going back (another replica, skew) never moves a window back.
    assert roll_over(settled.ledger, BERLIN, evening) == settled.ledger
    monday = roll_over(settled.ledger, BERLIN, local(BERLIN, 2026, 10, 26))
    assert (monday.spent_in(Period.WEEKLY), monday.spent_in(Period.MONTHLY)) == (0, D("6"))
    november = roll_over(monday, BERLIN, local(BERLIN, 2026, 11, 1))
    assert november.spent_in(Period.MONTHLY) == 0
    assert november.total_spent_usd == D("6")


def test_the_next_rollover_is_the_nearest_boundary_of_a_limited_period() -> None:
    now = local(BERLIN, 2026, 3, 28, 20)
    assert next_rollover(budget(zone=BERLIN, daily="5", monthly="50"), now) == local(
        BERLIN, 2026, 3, 29
    )
    assert next_rollover(budget(zone=BERLIN, monthly="50"), now) == local(BERLIN, 2026, 4, 1)
    assert next_rollover(budget(zone=BERLIN, total="50"), now) is None
    assert next_rollover(budget(max_concurrent=3), now) is None


def test_a_reservation_is_what_the_session_may_still_spend() -> None:
    assert reservation_for(D("5")) == D("5")
    assert reservation_for(D("5"), D("1.75")) == D("3.25")
    assert reservation_for(D("5"), D("5.2")) == 0  # an overshoot never makes it negative
    assert reservation_for(None, D("1")) is None


# --- Admission -----------------------------------------------------------------------------------


def plan(
    sessions: Sequence[QueuedSession],
    budgets: Sequence[Budget],
    ledgers: dict[BudgetRef, Ledger] | None = None,
    cluster: ClusterCapacity | None = None,
    now: dt.datetime = T0,
) -> tuple[list[str], dict[str, tuple[BlockReason, str]], dict[BudgetRef, Ledger]]:
    result = plan_admissions(
        sessions,
        {b.ref: b for b in budgets},
        ledgers or {},
        cluster or ClusterCapacity(),
        now,
    )
    admitted = [a.session.name for a in result.admitted]
    blocked = {b.session.name: (b.reason, b.message) for b in result.blocked}
    return admitted, blocked, dict(result.ledgers)


def test_a_session_is_refused_with_the_budget_the_period_and_the_numbers() -> None:
    ledgers = {DAILY: ledger_at(T0, spent="3.1", reservations=[held("x", "16")])}
    admitted, blocked, after = plan([queued("s", "1")], [budget(daily="20")], ledgers)
    assert admitted == []
    assert blocked["s"] == (
        BlockReason.BUDGET_EXHAUSTED,
        "AgentBudget team-a/daily: Daily limit 20.00 USD, spent 3.10, reserved 16.00, "
        "needs 1.00 (queued 1st of 1 in namespace team-a)",
    )
    assert after[DAILY] == ledgers[DAILY]
    # 0.9 fits exactly: spent + reserved + need == limit is allowed.
    admitted, _, after = plan([queued("s", "0.9")], [budget(daily="20")], ledgers)
    assert admitted == ["s"]
    assert after[DAILY].reserved_usd == D("16.9")


def test_every_period_of_every_selecting_budget_must_fit() -> None:
    budgets = [
        budget(DAILY, daily="20", monthly="100"),
        budget(MONTHLY, monthly="10"),
    ]
    ledgers = {DAILY: ledger_at(T0, spent="0", total="0")}
    ledgers[DAILY] = dataclasses.replace(
        ledgers[DAILY],
        periods=tuple(
            dataclasses.replace(p, spent_usd=D("95") if p.period is Period.MONTHLY else D("0"))
            for p in ledgers[DAILY].periods
        ),
    )
    _, blocked, _ = plan([queued("s", "6")], budgets, ledgers)
    assert "Monthly limit 100.00 USD, spent 95.00" in blocked["s"][1]
    # Fits DAILY, not MONTHLY's 10: refused by MONTHLY, and DAILY holds nothing for it.
    _, blocked, after = plan([queued("s", "4.5", budgets=(DAILY, MONTHLY))], budgets)
    assert blocked == {}
    assert after[DAILY].reserved_usd == after[MONTHLY].reserved_usd == D("4.5")
    _, blocked, after = plan(
        [queued("t", "4.5", budgets=(DAILY, MONTHLY))],
        budgets,
        {MONTHLY: ledger_at(T0, spent="6")},
    )
    assert "AgentBudget team-a/monthly: Monthly limit 10.00 USD, spent 6.00" in blocked["t"][1]
    assert after[DAILY].reservations == ()
    assert after[MONTHLY].reservations == ()


def test_admissions_in_one_pass_count_before_the_next_check() -> None:
    sessions = [queued(name, "8", at=i) for i, name in enumerate("abc")]
    admitted, blocked, after = plan(sessions, [budget(daily="20")])
    assert admitted == ["a", "b"]
    assert "reserved 16.00, needs 8.00" in blocked["c"][1]
    assert after[DAILY].reserved_usd == D("16")


def test_max_concurrent_sessions_counts_the_reservations_held() -> None:
    ledgers = {DAILY: ledger_at(T0, reservations=[held("x", "0")])}
    sessions = [queued(name, "1", at=i) for i, name in enumerate("abc")]
    admitted, blocked, after = plan(sessions, [budget(max_concurrent=2)], ledgers)
    assert admitted == ["a"]
    assert blocked["b"] == (
        BlockReason.CONCURRENCY_LIMITED,
        "AgentBudget team-a/daily: maxConcurrentSessions 2, running 2 "
        "(queued 1st of 2 in namespace team-a)",
    )
    assert after[DAILY].running == 2


def test_a_session_without_max_budget_usd_is_refused_by_a_money_limit_only() -> None:
    sessions = [queued("uncapped", None, at=0), queued("capped", "1", at=1)]
    admitted, blocked, _ = plan(sessions, [budget(daily="20")])
    assert admitted == ["capped"]  # a session needing a spec change holds no place in line
    reason, message = blocked["uncapped"]
    assert reason is BlockReason.BUDGET_REQUIRES_MAX_BUDGET_USD
    assert "AgentBudget team-a/daily limits spend (Daily 20.00 USD)" in message
    assert "spec.maxBudgetUsd" in message
    # A budget with only maxConcurrentSessions has nothing to reserve against: it is admitted.
    admitted, _, after = plan([queued("uncapped", None)], [budget(max_concurrent=1)])
    assert admitted == ["uncapped"]
    assert after[DAILY].reservations[0].amount_usd == 0


def test_a_session_that_can_never_fit_does_not_hold_the_queue() -> None:
    sessions = [queued("huge", "30", at=0), queued("small", "1", at=1)]
    admitted, blocked, _ = plan(sessions, [budget(daily="20")])
    assert admitted == ["small"]
    assert blocked["huge"][0] is BlockReason.EXCEEDS_BUDGET_LIMIT
    assert (
        "needs 30.00 USD but the Daily limit is 20.00 USD, so it can never fit"
        in (blocked["huge"][1])
    )
    # Total spend never rolls over: what no longer fits beside it never will.
    ledgers = {DAILY: ledger_at(T0, total="18")}
    sessions = [queued("big", "3", at=0), queued("small", "1", at=1)]
    admitted, blocked, _ = plan(sessions, [budget(total="20")], ledgers)
    assert admitted == ["small"]
    assert "Total limit 20.00 USD has 18.00 spent" in blocked["big"][1]


def test_first_come_first_served_per_budget_so_big_sessions_are_not_starved() -> None:
    ledgers = {DAILY: ledger_at(T0, spent="15")}
    other = BudgetRef("team-a", "other")
    sessions = [
        queued("big", "10", at=0),
        queued("small", "1", at=1),
        queued("elsewhere", "1", at=2, budgets=(other,)),
        queued("unbudgeted", "1", at=3, budgets=()),
    ]
    admitted, blocked, after = plan(
        sessions, [budget(daily="20"), budget(other, daily="5")], ledgers
    )
    assert admitted == ["elsewhere", "unbudgeted"]  # other budgets and no budget go on
    assert blocked["small"] == (
        BlockReason.BUDGET_EXHAUSTED,
        "AgentBudget team-a/daily: first come, first served: waiting behind team-a/big, "
        "which needs 10.00 USD (queued 2nd of 2 in namespace team-a)",
    )
    assert after[DAILY].reservations == ()
    # Next day: big goes first, and small only if it still fits beside it.
    tomorrow = T0 + dt.timedelta(days=1)
    admitted, blocked, after = plan(sessions[:2], [budget(daily="10")], after, now=tomorrow)
    assert admitted == ["big"]
    assert blocked["small"][0] is BlockReason.BUDGET_EXHAUSTED


def test_a_waiting_session_holds_its_place_in_every_budget_that_selects_it() -> None:
    budgets = [budget(DAILY, daily="20"), budget(MONTHLY, monthly="100")]
    ledgers = {DAILY: ledger_at(T0, spent="15")}
    sessions = [
        queued("big", "10", at=0, budgets=(DAILY, MONTHLY)),
        queued("small", "1", at=1, budgets=(MONTHLY,)),
    ]
    admitted, blocked, _ = plan(sessions, budgets, ledgers)
    assert admitted == []
    assert (
        "AgentBudget team-a/monthly: first come, first served: waiting behind"
        in (blocked["small"][1])
    )


def test_fifo_is_per_namespace_queue_order_creation_time_first() -> None:
    sessions = [queued("late", "5", at=10), queued("early", "5", at=5), queued("mid", "5", at=7)]
    admitted, blocked, _ = plan(sessions, [budget(daily="10")])
    assert admitted == ["early", "mid"]
    assert blocked["late"][0] is BlockReason.BUDGET_EXHAUSTED


def test_fair_share_one_queued_session_is_not_starved_by_a_thousand() -> None:
    flood = [queued(f"a{i:04}", namespace="ns-a", budgets=(), at=i) for i in range(1000)]
    lone = queued("b", namespace="ns-b", budgets=(), at=5000)
    cluster = ClusterCapacity(max_running=10, running_by_namespace={"ns-a": 9})
    result = plan_admissions([*flood, lone], {}, {}, cluster, T0)
    assert [a.session.name for a in result.admitted] == ["b"]
    assert len(result.blocked) == 1000
    first = result.blocked[0]
    assert (first.session.name, first.position, first.reason) == (
        "a0000",
        1,
        BlockReason.CONCURRENCY_LIMITED,
    )
    assert first.message == (
        "the operator runs at most 10 sessions and runs 10 (9 in ns-a); free slots go to the "
        "namespace running the fewest first (queued 1st of 1000 in namespace ns-a)"
    )
    assert result.blocked[-1].position == 1000
    # Nobody running yet, two slots: one each, not two for the namespace that queued first.
    admitted, _, _ = plan([*flood, lone], [], cluster=ClusterCapacity(max_running=2))
    assert sorted(admitted) == ["a0000", "b"]


def test_fair_share_hands_slots_to_the_namespace_running_the_fewest() -> None:
    sessions = [
        queued(f"{ns}{i}", namespace=ns, budgets=(), at=i)
        for ns in ("a", "b", "c")
        for i in range(10)
    ]
    cluster = ClusterCapacity(max_running=10, running_by_namespace={"a": 3, "b": 1})
    result = plan_admissions(sessions, {}, {}, cluster, T0)
    per_namespace = {
        ns: [a.session.name for a in result.admitted if a.session.namespace == ns] for ns in "abc"
    }
    # 6 free slots: c (0 running) and b (1) catch up with a (3), then one each round.
    assert {ns: len(names) for ns, names in per_namespace.items()} == {"a": 1, "b": 2, "c": 3}
    assert per_namespace == {"a": ["a0"], "b": ["b0", "b1"], "c": ["c0", "c1", "c2"]}
    assert result.admitted[0].session.namespace == "c"
    # No free slot at all (the cap was lowered below what runs): nobody starts.
    full = ClusterCapacity(max_running=2, running_by_namespace={"a": 3})
    assert plan_admissions(sessions, {}, {}, full, T0).admitted == ()


def test_a_namespace_blocked_on_its_budget_leaves_the_slot_to_others() -> None:
    ledgers = {DAILY: ledger_at(T0, spent="20")}
    sessions = [
        queued("a1", at=0),
        queued("a2", at=1),
        queued("b1", namespace="team-b", budgets=(), at=2),
    ]
    cluster = ClusterCapacity(max_running=1)
    admitted, blocked, _ = plan(sessions, [budget(daily="20")], ledgers, cluster)
    assert admitted == ["b1"]
    assert blocked["a1"][0] is BlockReason.BUDGET_EXHAUSTED


def test_a_reservation_from_a_pass_that_crashed_before_its_pod_is_not_counted_twice() -> None:
    sessions = [queued("a", "8", at=0), queued("b", "8", at=1)]
    first = plan_admissions(sessions, {DAILY: budget(daily="16")}, {}, ClusterCapacity(), T0)
    assert [a.session.name for a in first.admitted] == ["a", "b"]
    # Written, then the operator died before creating the pods: both are still queued.
    again = plan_admissions(
        sessions, {DAILY: budget(daily="16")}, first.ledgers, ClusterCapacity(), T0
    )
    assert [a.session.name for a in again.admitted] == ["a", "b"]
    assert again.changed == frozenset()
    assert again.ledgers[DAILY] == first.ledgers[DAILY]
    # If it no longer fits (the limit was lowered meanwhile), its stale reservation goes.
    lowered = plan_admissions(
        sessions, {DAILY: budget(daily="10")}, first.ledgers, ClusterCapacity(), T0
    )
    assert [a.session.name for a in lowered.admitted] == ["a"]
    assert [r.session for r in lowered.ledgers[DAILY].reservations] == ["a"]


def test_a_retry_settles_its_earlier_attempt_before_it_is_checked() -> None:
    ledgers = {DAILY: ledger_at(T0, reservations=[held("s", "6")])}
    result = plan_admissions(
        [queued("s", "4", attempt=2)],
        {DAILY: budget(daily="10", max_concurrent=1)},
        ledgers,
        ClusterCapacity(),
        T0,
    )
    assert [a.session.attempt for a in result.admitted] == [2]  # attempt 1 no longer runs
    assert [(c.attempt, c.charged_usd, c.basis) for c in result.charges] == [
        (1, D("6"), ChargeBasis.NO_REPORT)
    ]
    ledger = result.ledgers[DAILY]
    assert ledger.total_spent_usd == D("6")
    assert ledger.reserved_usd == D("4")


def test_what_queued_attempts_hold_is_cleared_in_budgets_that_no_longer_select_them() -> None:
    ledgers = {
        MONTHLY: ledger_at(
            T0, reservations=[held("moved", "3"), held("retry", "2"), held("running", "1")]
        )
    }
    result = plan_admissions(
        [queued("moved", "3"), queued("retry", "2", attempt=2)],
        {DAILY: budget(daily="10"), MONTHLY: budget(MONTHLY, monthly="10")},
        ledgers,
        ClusterCapacity(),
        T0,
    )
    # Both now select DAILY only: MONTHLY keeps just what runs; the retry's first attempt ended.
    monthly = result.ledgers[MONTHLY]
    assert [r.session for r in monthly.reservations] == ["running"]
    assert monthly.total_spent_usd == D("2")
    assert [(c.session, c.attempt) for c in result.charges] == [("retry", 1)]
    assert sorted(r.session for r in result.ledgers[DAILY].reservations) == ["moved", "retry"]


def test_planning_rolls_the_windows_over_and_refuses_bad_input() -> None:
    ledgers = {DAILY: ledger_at(T0, spent="20")}
    tomorrow = local(UTC, 2026, 11, 19)
    result = plan_admissions(
        [queued("s", "5")], {DAILY: budget(daily="20")}, ledgers, ClusterCapacity(), tomorrow
    )
    assert [a.session.name for a in result.admitted] == ["s"]
    assert result.changed == {DAILY}
    with pytest.raises(ValueError, match="queued twice"):
        plan_admissions([queued("s"), queued("s")], {DAILY: budget()}, {}, ClusterCapacity(), T0)
    with pytest.raises(ValueError, match="unknown budget"):
        plan_admissions([queued("s")], {}, {}, ClusterCapacity(), T0)


def test_an_unenforceable_budget_holds_the_sessions_it_selects() -> None:
    broken = dataclasses.replace(budget(daily="20"), problem="timeZone 'Mars/Base' is unknown")
    _, blocked, _ = plan([queued("s")], [broken])
    assert blocked["s"][0] is BlockReason.BUDGET_INVALID
    assert "AgentBudget team-a/daily cannot be enforced: timeZone 'Mars/Base'" in blocked["s"][1]
    status = render_status(broken, Ledger(), T0)
    assert (status.ready.status, status.ready.reason) == ("False", "InvalidSpec")


def test_refusal_for_checks_one_budget() -> None:
    ledger = ledger_at(T0, spent="19")
    assert refusal_for(budget(daily="20"), ledger, D("1")) is None
    refused = refusal_for(budget(daily="20"), ledger, D("1.000001"))
    assert refused is not None
    assert refused.period is Period.DAILY


# --- Status --------------------------------------------------------------------------------------


def test_status_shows_every_limit_with_what_remains() -> None:
    spec = budget(zone=BERLIN, daily="20", total="100", max_concurrent=3)
    now = local(BERLIN, 2026, 11, 18, 9)
    ledger = ledger_at(now, BERLIN, spent="3.1", total="40", reservations=[held("a", "6")])
    status = render_status(spec, ledger, now, queued_needs=[D("2"), None])
    daily, total = status.periods
    assert (daily.period, daily.period_start) == (Period.DAILY, local(BERLIN, 2026, 11, 18))
    assert (daily.limit_usd, daily.spent_usd, daily.reserved_usd, daily.remaining_usd) == (
        D("20"),
        D("3.1"),
        D("6"),
        D("10.9"),
    )
    assert (total.period_start, total.spent_usd, total.remaining_usd) == (None, D("40"), D("54"))
    assert (status.running, status.queued) == (1, 2)
    assert (status.exhausted.status, status.exhausted.reason) == ("False", "WithinLimits")
    assert (status.ready.status, status.ready.reason) == ("True", "Enforced")
    assert status.next_rollover == local(BERLIN, 2026, 11, 19)


def test_exhausted_when_a_limit_has_less_than_the_smallest_queued_need() -> None:
    spec = budget(daily="20")
    ledger = ledger_at(T0, spent="18")
    assert render_status(spec, ledger, T0, [D("5"), D("3")]).exhausted.reason == (
        "InsufficientForQueued"
    )
    assert render_status(spec, ledger, T0, [D("2"), None]).exhausted.status == "False"
    assert render_status(spec, ledger, T0).exhausted.status == "False"
    drained = render_status(spec, ledger_at(T0, spent="20"), T0).exhausted
    assert (drained.status, drained.reason) == ("True", "LimitReached")


def test_a_limit_lowered_below_usage_shows_zero_remaining_and_says_so() -> None:
    ledger = ledger_at(T0, spent="15", reservations=[held("a", "5")])
    status = render_status(budget(daily="12"), ledger, T0)
    (daily,) = status.periods
    assert (daily.remaining_usd, daily.over_limit_usd) == (0, D("8"))
    assert status.exhausted.status == "True"
    assert "usage exceeds the limit by 8.00" in status.exhausted.message
    assert "remaining is shown as 0" in status.exhausted.message


def test_queued_needs_leave_out_sessions_waiting_for_a_spec_change() -> None:
    sessions = [queued("huge", "30", at=0), queued("blocked", "5", at=1)]
    result = plan_admissions(
        sessions,
        {DAILY: budget(daily="20")},
        {DAILY: ledger_at(T0, spent="16")},
        ClusterCapacity(),
        T0,
    )
    assert result.queued_needs(DAILY) == (None, D("5"))


# --- Reconstruction after a restart --------------------------------------------------------------


def test_reconstruction_settles_what_ended_and_keeps_what_runs() -> None:
    ledger = ledger_at(
        T0,
        spent="1",
        reservations=[
            held("running", "5"),
            held("reported", "5"),
            held("silent", "5"),
            held("deleted", "5"),
            held("deleted-reported", "5"),
            held("forgotten", "5"),
            held("running", "5"),  # a duplicate: one attempt, one reservation
        ],
    )
    live = [
        LiveAttempt("uid-team-a-running", 1, AttemptState.RUNNING),
        LiveAttempt("uid-team-a-reported", 1, AttemptState.ENDED, D("0.75")),
        LiveAttempt("uid-team-a-silent", 1, AttemptState.ENDED),
        LiveAttempt("uid-team-a-deleted", 1, AttemptState.DELETED),
        LiveAttempt("uid-team-a-deleted-reported", 1, AttemptState.DELETED, D("0.25")),
        LiveAttempt("uid-team-a-settled-already", 1, AttemptState.ENDED, D("9")),
    ]
    result = reconstruct_ledger(ledger, live, UTC, T0)
    assert [r.session for r in result.ledger.reservations] == ["running"]
    kinds = {
        c.session: (c.kind, c.charge.charged_usd if c.charge else None) for c in result.corrections
    }
    assert kinds == {
        "running": (CorrectionKind.DROPPED_DUPLICATE, None),
        "reported": (CorrectionKind.SETTLED_ENDED, D("0.75")),
        "silent": (CorrectionKind.SETTLED_ENDED, D("5")),
        "deleted": (CorrectionKind.RELEASED_DELETED, D("5")),
        "deleted-reported": (CorrectionKind.RELEASED_DELETED, D("0.25")),
        "forgotten": (CorrectionKind.SETTLED_UNACCOUNTED, D("5")),
    }
    assert result.ledger.total_spent_usd == D("1") + D("0.75") + 5 + 5 + D("0.25") + 5
    assert result.ledger.spent_in(Period.DAILY) == result.ledger.total_spent_usd
    # Applying it and reconstructing again changes nothing: nothing is counted twice.
    again = reconstruct_ledger(result.ledger, live, UTC, T0 + dt.timedelta(minutes=1))
    assert again.ledger == result.ledger
    assert again.corrections == ()
    with pytest.raises(ValueError, match="listed twice"):
        reconstruct_ledger(ledger, [live[0], live[0]], UTC, T0)


def test_reconstruction_matches_attempts_not_sessions() -> None:
    ledger = ledger_at(T0, reservations=[held("s", "5", attempt=1), held("s", "4", attempt=2)])
    live = [
        LiveAttempt("uid-team-a-s", 1, AttemptState.ENDED, D("1")),
        LiveAttempt("uid-team-a-s", 2, AttemptState.RUNNING),
    ]
    result = reconstruct_ledger(ledger, live, UTC, T0)
    assert [(r.attempt, r.amount_usd) for r in result.ledger.reservations] == [(2, D("4"))]
    assert result.ledger.total_spent_usd == D("1")


# --- Random sequences ----------------------------------------------------------------------------

BUDGET_A = BudgetRef("team-a", "a")
BUDGET_B = BudgetRef("team-a", "b")
BUDGET_C = BudgetRef("team-b", "c")
SELECTIONS = {
    "team-a": [(BUDGET_A,), (BUDGET_B,), (BUDGET_A, BUDGET_B), ()],
    "team-b": [(BUDGET_C,), ()],
}


def initial_budgets() -> dict[BudgetRef, Budget]:
    return {
        BUDGET_A: budget(BUDGET_A, BERLIN, 3, daily="20", monthly="120", total="900"),
        BUDGET_B: budget(BUDGET_B, NEW_YORK, None, weekly="45"),
        BUDGET_C: budget(BUDGET_C, LORD_HOWE, 2, daily="12"),
    }


def usage(budget: Budget, ledger: Ledger, now: dt.datetime) -> dict[Period, Decimal]:
    rolled = roll_over(ledger, budget.time_zone, now)
    return {
        limit.period: rolled.spent_in(limit.period) + rolled.reserved_usd for limit in budget.limits
    }


class Model:
    """The random run: what is queued, what runs, and every charge, kept apart from the ledger
    so window sums can be checked against an independent count."""

    def __init__(self, rng: random.Random, lower_limits: bool, overshoot: bool) -> None:
        self.rng = rng
        self.lower_limits = lower_limits
        self.overshoot = overshoot
        self.now = local(BERLIN, 2026, 3, 20, 8)  # both DST changes within the run
        self.budgets = initial_budgets()
        self.ledgers: dict[BudgetRef, Ledger] = {}
        self.queue: list[QueuedSession] = []
        self.caps: dict[str, Decimal] = {}
        self.spent: dict[str, Decimal] = {}
        self.running: dict[str, tuple[QueuedSession, Decimal]] = {}
        self.charges: dict[BudgetRef, list[tuple[dt.datetime, Decimal]]] = {
            ref: [] for ref in self.budgets
        }
        self.settled: list[QueuedSession] = []
        self.made = 0

    def arrive(self) -> None:
        self.made += 1
        namespace = self.rng.choice(["team-a", "team-a", "team-b"])
        cap = (
            None
            if self.rng.random() < 0.05
            else usd(Decimal(self.rng.randrange(1, 15_000_000)) / 10**6)
        )
        uid = f"uid-{self.made}"
        if cap is not None:
            self.caps[uid] = cap
            self.spent[uid] = ZERO_USD
        self.queue.append(
            QueuedSession(
                namespace,
                f"s{self.made}",
                uid,
                1,
                self.now,
                cap,
                self.rng.choice(SELECTIONS[namespace]),
            )
        )

    def plan(self) -> None:
        running = {ns: 0 for ns in SELECTIONS}
        for session, _ in self.running.values():
            running[session.namespace] += 1
        result = plan_admissions(
            self.queue, self.budgets, self.ledgers, ClusterCapacity(5, running), self.now
        )
        assert result.charges == ()  # every attempt was settled before its retry queued
        for admission in result.admitted:
            for ref in admission.session.budgets:
                assert result.ledgers[ref].holds(admission.session.uid, admission.session.attempt)
            self.running[admission.session.uid] = (admission.session, admission.reservation_usd)
        admitted = {a.session.uid for a in result.admitted}
        assert admitted.isdisjoint({b.session.uid for b in result.blocked})
        assert len(admitted) + len(result.blocked) == len(self.queue)
        assert sum(running.values()) + len(admitted) <= max(5, sum(running.values()))
        self.queue = [s for s in self.queue if s.uid not in admitted]
        self.ledgers.update(result.ledgers)

    def settle_one(self) -> Decimal:
        """Returns how far the metered spend went above the reservation."""
        if not self.running:
            return ZERO_USD
        uid = self.rng.choice(sorted(self.running))
        session, reserved = self.running.pop(uid)
        roll = self.rng.random()
        if roll < 0.2:
            metered: Decimal | None = None
        elif self.overshoot and roll < 0.3:
            metered = reserved + usd(Decimal(self.rng.randrange(0, 200_000)) / 10**6)
        else:
            metered = usd(reserved * Decimal(self.rng.random()))
        charged = reserved if metered is None else metered
        for ref in session.budgets:
            zone = self.budgets[ref].time_zone
            update = settle(self.ledger(ref), uid, session.attempt, metered, zone, self.now)
            assert [c.charged_usd for c in update.charges] == [charged]
            self.ledgers[ref] = update.ledger
            self.charges[ref].append((self.now, charged))
            # Idempotent: settling again, or reserving it again, is a no-op.
            again = settle(update.ledger, uid, session.attempt, metered, zone, self.now)
            assert again.ledger == update.ledger
            assert again.charges == ()
        self.settled.append(session)
        if uid in self.caps:
            self.spent[uid] += charged
        if (
            self.rng.random() < 0.3
            and (need := reservation_for(self.caps.get(uid), self.spent.get(uid, ZERO_USD))) != 0
        ):
            self.queue.append(
                dataclasses.replace(session, attempt=session.attempt + 1, need_usd=need)
            )
        return max(charged - reserved, ZERO_USD)

    def reserve_again(self) -> None:
        if not self.running:
            return
        session, amount = self.running[self.rng.choice(sorted(self.running))]
        for ref in session.budgets:
            ledger = roll_over(self.ledger(ref), self.budgets[ref].time_zone, self.now)
            again = Reservation(session.name, session.uid, session.attempt, amount + 1, self.now)
            update = reserve(ledger, again, self.budgets[ref].time_zone, self.now)
            assert update.ledger == ledger
            assert update.charges == ()

    def change_limit(self) -> None:
        ref = self.rng.choice(sorted(self.budgets))
        spec = self.budgets[ref]
        factor = Decimal(self.rng.choice(["0.5", "0.8", "1.25", "2"]))
        new_limits = tuple(
            PeriodLimit(limit.period, usd_limit(limit.amount_usd * factor)) for limit in spec.limits
        )
        self.budgets[ref] = dataclasses.replace(spec, limits=new_limits)

    def reconstruct(self) -> None:
        live = [
            LiveAttempt(s.uid, s.attempt, AttemptState.RUNNING) for s, _ in self.running.values()
        ]
        live += [LiveAttempt(s.uid, s.attempt, AttemptState.ENDED, D("99")) for s in self.settled]
        for ref in self.budgets:
            ledger = roll_over(self.ledger(ref), self.budgets[ref].time_zone, self.now)
            result = reconstruct_ledger(ledger, live, self.budgets[ref].time_zone, self.now)
            assert result.corrections == ()
            assert result.ledger == ledger

    def ledger(self, ref: BudgetRef) -> Ledger:
        return self.ledgers.get(ref, Ledger())

    def check(self) -> None:
        """The ledger agrees with the independent count; status never shows negative money."""
        for ref, spec in self.budgets.items():
            ledger = roll_over(self.ledger(ref), spec.time_zone, self.now)
            assert ledger.total_spent_usd == sum((a for _, a in self.charges[ref]), ZERO_USD)
            for window in ledger.periods:
                expected = sum(
                    (a for at, a in self.charges[ref] if at >= window.period_start), ZERO_USD
                )
                assert window.spent_usd == expected, (ref, window)
            holders = {s.uid for s, _ in self.running.values() if ref in s.budgets}
            assert {r.uid for r in ledger.reservations} == holders
            if spec.max_concurrent_sessions is not None:
                assert ledger.running <= spec.max_concurrent_sessions
            status = render_status(spec, ledger, self.now, [s.need_usd for s in self.queue])
            for period in status.periods:
                assert period.remaining_usd >= 0
                used = period.spent_usd + period.reserved_usd
                assert period.remaining_usd == max(period.limit_usd - used, ZERO_USD)
                if used >= period.limit_usd:
                    assert status.exhausted.status == "True"


@pytest.mark.parametrize("seed", range(15))
def test_random_sequences_never_take_a_period_over_its_limit(seed: int) -> None:
    """With limits that only stay put and metered spend within reservations, reserved + spent
    never exceeds any limit, at any time, in any window."""
    model = Model(random.Random(seed), lower_limits=False, overshoot=False)
    for _ in range(250):
        op = model.rng.choices(
            ["arrive", "plan", "settle", "reserve", "advance", "reconstruct"],
            weights=[5, 4, 4, 1, 3, 1],
        )[0]
        if op == "arrive":
            model.arrive()
        elif op == "plan":
            model.plan()
        elif op == "settle":
            assert model.settle_one() == 0
        elif op == "reserve":
            model.reserve_again()
        elif op == "advance":
            model.now += dt.timedelta(minutes=model.rng.randrange(1, 3 * 24 * 60))
        else:
            model.reconstruct()
        model.check()
        for ref, spec in model.budgets.items():
            for period, used in usage(spec, model.ledger(ref), model.now).items():
                limit = next(lim.amount_usd for lim in spec.limits if lim.period is period)
                assert used <= limit, (seed, ref, period, used, limit)


@pytest.mark.parametrize("seed", range(15))
def test_random_sequences_with_limit_changes_and_overshoot(seed: int) -> None:
    """Lowering a limit below usage, or a metered overshoot, can leave usage above a limit:
    then no admission adds to it, usage only goes above the limit by the overshoot, and the
    status shows 0 remaining, Exhausted."""
    model = Model(random.Random(1000 + seed), lower_limits=True, overshoot=True)
    for _ in range(250):
        op = model.rng.choices(
            ["arrive", "plan", "settle", "advance", "limit"], weights=[5, 4, 4, 3, 1]
        )[0]
        before = {
            ref: usage(spec, model.ledger(ref), model.now) for ref, spec in model.budgets.items()
        }
        overshoot = ZERO_USD
        if op == "arrive":
            model.arrive()
        elif op == "plan":
            model.plan()
        elif op == "settle":
            overshoot = model.settle_one()
        elif op == "advance":
            model.now += dt.timedelta(minutes=model.rng.randrange(1, 3 * 24 * 60))
            before = {
                ref: usage(spec, model.ledger(ref), model.now)
                for ref, spec in model.budgets.items()
            }
        else:
            model.change_limit()
        model.check()
        for ref, spec in model.budgets.items():
            for period, used in usage(spec, model.ledger(ref), model.now).items():
                limit = next(lim.amount_usd for lim in spec.limits if lim.period is period)
                # An operation never pushes usage over the limit, beyond where it already was,
                # except by the overshoot a settlement actually metered.
                assert used <= max(limit, before[ref][period]) + overshoot, (seed, ref, period)
