"""Leader election on a coordination.k8s.io/v1 Lease: the pure rules, as client-go applies them.

`kube.leader.LeaderElector` reads the Lease, asks `next_step()` what to write, writes it with the
resourceVersion it read (optimistic concurrency) and asks `still_leading()` before every write the
operator makes. No I/O here; both clocks are arguments, so the table tests in
tests/unit/test_lease.py pin every case.

Two clocks, as in client-go (whose times carry a monotonic reading):
- `now` (monotonic seconds, this process only) decides expiry: a Lease is expired when its record
  has not changed for `leaseDurationSeconds` since *we first saw it*, never by comparing another
  host's `renewTime` with our wall clock, so clock skew between replicas cannot end a live lease;
- `wall` (UTC) is only written into the record (`acquireTime`, `renewTime`) for humans and tools.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
"""metav1.MicroTime on the wire (RFC 3339 with microseconds, UTC)."""


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease's spec that election uses (the leader-election record)."""

    holder: str
    """holderIdentity; empty when nobody holds it (released)."""
    duration_seconds: int
    acquire_time: dt.datetime | None = None
    renew_time: dt.datetime | None = None
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> LeaseRecord:
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=_parse_time(spec.get("acquireTime")),
            renew_time=_parse_time(spec.get("renewTime")),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.duration_seconds,
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time is not None:
            spec["acquireTime"] = self.acquire_time.strftime(MICRO_TIME)
        if self.renew_time is not None:
            spec["renewTime"] = self.renew_time.strftime(MICRO_TIME)
        return spec


def _parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Observation:
    """The last record this candidate read and when (monotonic) it first read it as it is."""

    record: LeaseRecord
    seen_at: float


class Verdict(enum.Enum):
    CREATE = "create"
    """No Lease exists: create it, holding it."""
    TAKE = "take"
    """Nobody holds it, or its holder let it expire: update it to hold it (a new term)."""
    RENEW = "renew"
    """We hold it: update renewTime."""
    WAIT = "wait"
    """Someone else holds a live lease: write nothing, look again after the retry period."""


@dataclass(frozen=True)
class LeaseStep:
    verdict: Verdict
    write: LeaseRecord | None
    """What to write (CREATE, TAKE, RENEW), with the resourceVersion just read; None to wait."""
    observation: Observation | None
    """What the candidate remembers for next time (None only when no Lease exists)."""


def next_step(
    identity: str,
    current: LeaseRecord | None,
    previous: Observation | None,
    *,
    duration_seconds: int,
    now: float,
    wall: dt.datetime,
) -> LeaseStep:
    """What a candidate named `identity` does with the Lease it just read (`current`, None if
    absent), given what it saw before (`previous`); client-go's tryAcquireOrRenew."""
    if current is None:
        record = LeaseRecord(identity, duration_seconds, wall, wall, 0)
        return LeaseStep(Verdict.CREATE, record, None)
    observation = (
        previous
        if previous is not None and previous.record == current
        else Observation(current, now)
    )
    # Expiry counts from when we first saw this very record (a renewal changes renewTime, so a
    # live leader keeps resetting it), with the duration the holder wrote.
    held_by_another = bool(current.holder) and current.holder != identity
    if held_by_another and now < observation.seen_at + current.duration_seconds:
        return LeaseStep(Verdict.WAIT, None, observation)
    if current.holder == identity:
        record = replace(current, duration_seconds=duration_seconds, renew_time=wall)
        return LeaseStep(Verdict.RENEW, record, observation)
    record = LeaseRecord(identity, duration_seconds, wall, wall, current.transitions + 1)
    return LeaseStep(Verdict.TAKE, record, observation)


def released(current: LeaseRecord, wall: dt.datetime) -> LeaseRecord:
    """The record a leader writes on a graceful stop: no holder, so a standby takes it at its
    next look instead of waiting out the lease (client-go's ReleaseOnCancel)."""
    return LeaseRecord("", 1, wall, wall, current.transitions)


def still_leading(last_renewed: float | None, now: float, renew_deadline_seconds: float) -> bool:
    """Whether a leader may still act: its last successful write of the Lease was *sent* less than
    the renew deadline ago. Others wait the (longer) lease duration from when they *saw* that
    write, so the leader stops before anyone else can start."""
    return last_renewed is not None and now - last_renewed < renew_deadline_seconds
