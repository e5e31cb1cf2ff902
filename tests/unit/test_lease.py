"""Leader election's rules (reconcile/lease.py): acquire, renew, wait, take over, step down."""

from __future__ import annotations

import datetime as dt

import pytest

from agentsession_operator.reconcile.lease import (
    LeaseRecord,
    Observation,
    Verdict,
    next_step,
    released,
    still_leading,
)

ME, OTHER = "operator-a_1234", "operator-b_5678"
T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
WALL = T0 + dt.timedelta(seconds=30)
DURATION = 10


def held_by(holder: str, *, renewed: float = 0.0, transitions: int = 3) -> LeaseRecord:
    return LeaseRecord(
        holder, DURATION, T0, T0 + dt.timedelta(seconds=renewed), transitions=transitions
    )


# (case, current Lease, what we saw before, monotonic now) -> (verdict, holder written,
# transitions written)
CASES = [
    ("no lease: create it", None, None, 100.0, Verdict.CREATE, ME, 0),
    ("released (no holder): take it at once", held_by(""), None, 100.0, Verdict.TAKE, ME, 4),
    ("ours: renew, same term", held_by(ME), None, 100.0, Verdict.RENEW, ME, 3),
    ("another's, first sight: wait", held_by(OTHER), None, 100.0, Verdict.WAIT, None, None),
    (
        "another's, unchanged for less than its duration: wait",
        held_by(OTHER),
        Observation(held_by(OTHER), 95.0),
        104.9,
        Verdict.WAIT,
        None,
        None,
    ),
    (
        "another's, unchanged for its whole duration: take over, a new term",
        held_by(OTHER),
        Observation(held_by(OTHER), 95.0),
        105.0,
        Verdict.TAKE,
        ME,
        4,
    ),
    (
        "another's, renewed since we looked: the clock starts again",
        held_by(OTHER, renewed=1.0),
        Observation(held_by(OTHER), 80.0),
        105.0,
        Verdict.WAIT,
        None,
        None,
    ),
]


@pytest.mark.parametrize(
    ("current", "previous", "now", "verdict", "holder", "transitions"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_next_step(
    current: LeaseRecord | None,
    previous: Observation | None,
    now: float,
    verdict: Verdict,
    holder: str | None,
    transitions: int | None,
) -> None:
    step = next_step(ME, current, previous, duration_seconds=DURATION, now=now, wall=WALL)
    assert step.verdict is verdict
    if holder is None:
        assert step.write is None
        return
    assert step.write is not None
    assert step.write.holder == holder
    assert step.write.transitions == transitions
    assert step.write.renew_time == WALL
    assert step.write.duration_seconds == DURATION


def test_renewal_keeps_the_acquire_time_and_a_take_over_starts_a_new_one() -> None:
    renewed = next_step(ME, held_by(ME), None, duration_seconds=DURATION, now=1.0, wall=WALL)
    assert renewed.write is not None
    assert renewed.write.acquire_time == T0
    taken = next_step(ME, held_by(""), None, duration_seconds=DURATION, now=1.0, wall=WALL)
    assert taken.write is not None
    assert taken.write.acquire_time == WALL


def test_expiry_uses_the_holders_duration_and_our_clock_not_its_renew_time() -> None:
    # A holder whose wall clock runs 1 h behind ours writes an old renewTime; we still wait its
    # whole duration from when we saw the record change.
    skewed = LeaseRecord(OTHER, 30, T0, T0 - dt.timedelta(hours=1), 1)
    seen = next_step(ME, skewed, None, duration_seconds=DURATION, now=50.0, wall=WALL)
    assert seen.verdict is Verdict.WAIT
    assert seen.observation == Observation(skewed, 50.0)
    later = next_step(ME, skewed, seen.observation, duration_seconds=DURATION, now=79.9, wall=WALL)
    assert later.verdict is Verdict.WAIT
    expired = next_step(
        ME, skewed, later.observation, duration_seconds=DURATION, now=80.0, wall=WALL
    )
    assert expired.verdict is Verdict.TAKE


def test_release_leaves_no_holder_and_keeps_the_count() -> None:
    record = released(held_by(ME, transitions=7), WALL)
    assert record.holder == ""
    assert record.transitions == 7
    assert record.duration_seconds == 1
    after = next_step(OTHER, record, None, duration_seconds=DURATION, now=0.0, wall=WALL)
    assert after.verdict is Verdict.TAKE


@pytest.mark.parametrize(
    ("last_renewed", "now", "leading"),
    [(None, 100.0, False), (95.0, 100.0, True), (93.01, 100.0, True), (93.0, 100.0, False)],
)
def test_still_leading_until_the_renew_deadline(
    last_renewed: float | None, now: float, leading: bool
) -> None:
    assert still_leading(last_renewed, now, 7.0) is leading


def test_wire_round_trip() -> None:
    spec = {
        "holderIdentity": ME,
        "leaseDurationSeconds": 10,
        "acquireTime": "2026-01-01T12:00:00.000000Z",
        "renewTime": "2026-01-01T12:00:30.250000Z",
        "leaseTransitions": 2,
    }
    record = LeaseRecord.from_spec(spec)
    assert record.renew_time == T0 + dt.timedelta(seconds=30.25)
    assert record.to_spec() == spec
    assert LeaseRecord.from_spec({}) == LeaseRecord("", 0)
