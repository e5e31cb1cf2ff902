"""The budget controller: admission of AgentSession attempts against AgentBudgets and the
operator-wide cap on running sessions, with the ledger kept in each AgentBudget's status.

Built by the kopf start-up handler next to the session `Controller`, which asks it, once per
pass, whether the attempt it would start is admitted (`check`), registers attempts that wait
(`request`), settles an ended attempt's reservation before writing the session's status
(`settle`), and tells it what it saw of sessions (`session_seen`, `session_gone`). The kopf
handlers feed it AgentBudget events. One task (`run`) makes admission passes: the pure planner
(`reconcile.budget.plan_admissions`) decides; the changed ledgers are written first, on their
resourceVersion; only then are the admitted sessions requeued, and their passes create the pods.

Every ledger change (a pass, a settle, a release) holds one lock, and a session's check marks its
attempt as starting under that lock, so a pass never takes back a reservation whose pod is being
created. All API calls go through `kube.client.KubeClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from agentsession_operator.kube.client import KubeClient, KubeError
from agentsession_operator.kube.pods import Key
from agentsession_operator.metrics import Metrics
from agentsession_operator.models import AgentSession, AgentSessionStatus
from agentsession_operator.models.budget import PLURAL as BUDGETS
from agentsession_operator.models.budget import AgentBudget, AgentBudgetStatus
from agentsession_operator.models.resource import PLURAL as SESSIONS
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
    AttemptState,
    Blocked,
    Budget,
    BudgetRef,
    ClusterCapacity,
    Ledger,
    LiveAttempt,
    QueuedSession,
    next_rollover,
    plan_admissions,
    reconstruct_ledger,
    release,
    roll_over,
    settle,
)
from agentsession_operator.reconcile.decide import TERMINAL_PHASES, attempt_in_flight
from agentsession_operator.reconcile.observed import SessionIdHolder
from agentsession_operator.settings import OperatorSettings

logger = logging.getLogger("agentsession_operator.budgets")

PASS_BATCH_SECONDS = 0.05
"""How long a pass waits after its trigger, so a burst of requests is planned together."""
PASS_BATCH_MAX_SECONDS = 0.5
"""While requests keep arriving (a burst of new sessions), a pass waits for them up to this long:
every pass rewrites the budgets' whole ledger, so fewer, larger passes cost less."""
PASS_RETRY_SECONDS = 2.0
WRITE_ATTEMPTS = 5
"""Conflicting writes a pass or settle retries (re-reading the budget) before it gives up."""


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What admission needs of an AgentSession: identity, labels, limits and progress."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    created_at: dt.datetime
    labels: Mapping[str, str]
    max_budget_usd: float | None
    spent_usd: float
    attempts: int
    in_flight: bool
    terminal: bool
    session_id: str | None = None
    """The SDK session id its attempts run (status.sessionId), once it has started one."""
    phase: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> SessionFacts | None:
        meta = body.get("metadata") or {}
        uid, created = meta.get("uid"), meta.get("creationTimestamp")
        if not uid or not created:
            return None
        try:
            status = AgentSessionStatus.model_validate(body.get("status") or {})
        except ValidationError:
            return None
        budget = (body.get("spec") or {}).get("maxBudgetUsd")
        return cls(
            namespace=str(meta.get("namespace")),
            name=str(meta.get("name")),
            uid=str(uid),
            resource_version=str(meta.get("resourceVersion") or ""),
            created_at=dt.datetime.fromisoformat(str(created).replace("Z", "+00:00")),
            labels=dict(meta.get("labels") or {}),
            max_budget_usd=float(budget) if isinstance(budget, int | float) else None,
            spent_usd=status.total_cost_usd or 0.0,
            attempts=status.attempts or 0,
            in_flight=attempt_in_flight(status),
            terminal=status.phase in TERMINAL_PHASES,
            session_id=status.session_id if status.attempts else None,
            phase=str(status.phase) if status.phase else None,
        )


def _newer(candidate: str, held: str) -> bool:
    """Whether resourceVersion `candidate` is not older than `held` (they are etcd revisions in
    practice; when either is not a number, the later arrival wins)."""
    if candidate.isdigit() and held.isdigit():
        return int(candidate) >= int(held)
    return True


@dataclass
class _BudgetEntry:
    model: AgentBudget
    budget: Budget
    ledger: Ledger
    status: AgentBudgetStatus | None
    readable: bool
    """Its status parsed: an unreadable ledger is never overwritten (its sessions wait)."""

    @property
    def resource_version(self) -> str:
        return str(self.model.metadata.resource_version or "")


class BudgetController:
    def __init__(
        self,
        settings: OperatorSettings,
        client: KubeClient,
        metrics: Metrics,
        requeue: Callable[[Key, float], None],
        readmit: Callable[[Mapping[str, Any]], None],
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.clock = clock
        self._requeue = requeue
        self._readmit = readmit
        self._bodies: dict[str, Mapping[str, Any]] = {}
        """The body an attempt's pass saw when it first asked, while no pass has planned it: the
        pass it gets once admitted starts from it instead of reading the session again."""
        self._requests = 0
        self._budgets: dict[BudgetRef, _BudgetEntry] = {}
        self._sessions: dict[str, SessionFacts] = {}
        """Non-terminal sessions by uid."""
        self._wants: dict[str, int] = {}
        """Attempts waiting for admission, by session uid (registered by the session's pass)."""
        self._waiting_since: dict[str, float] = {}
        self._slots: dict[str, int] = {}
        """Cap-only admissions (no budget selects the session): uid -> the admitted attempt."""
        self._starting: dict[str, int] = {}
        """Attempts whose pass is creating their pod now."""
        self._blocked: dict[str, Blocked] = {}
        self._unconfirmed: set[str] = set()
        """After start-up: sessions not yet seen by a pass, so FIFO cannot skip them."""
        self._claims: dict[str, str] = {}
        """uid -> the SDK session id its first pod is being created with, until its status says
        so (see `claim`)."""
        self._warmup_until = 0.0
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._rollover: dt.datetime | None = None
        self.synced = asyncio.Event()

    # -- start-up ------------------------------------------------------------------------------

    async def sync(self) -> None:
        """List every AgentBudget and AgentSession before the first check or pass."""
        namespaces: Iterable[str | None] = self.settings.watch_namespaces or [None]
        budgets: list[dict[str, Any]] = []
        sessions: list[dict[str, Any]] = []
        for namespace in namespaces:
            budgets += await self.client.list_custom(BUDGETS, namespace)
            sessions += await self.client.list_custom(SESSIONS, namespace)
        for body in budgets:
            self.budget_seen(body)
        for body in sessions:
            self.session_seen(body)
        self._unconfirmed = set(self._sessions)
        loop = asyncio.get_running_loop()
        self._warmup_until = loop.time() + self.settings.admission_warmup_seconds
        logger.info(
            "Listed AgentBudgets and AgentSessions",
            extra={"budgets": len(self._budgets), "sessions": len(self._sessions)},
        )
        self.synced.set()
        self._wake.set()

    # -- what the watches and the session passes report -----------------------------------------

    def budget_seen(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        held = self._budgets.get(BudgetRef(str(meta.get("namespace")), str(meta.get("name"))))
        version = str(meta.get("resourceVersion") or "")
        if (
            held is not None
            and held.model.metadata.uid == meta.get("uid")
            and (version == held.resource_version or not _newer(version, held.resource_version))
        ):
            return  # older, or our own write coming back through the watch: nothing to parse
        try:
            model = AgentBudget.model_validate(dict(body))
        except ValidationError as error:
            # The status is only ours; its spec was validated by the API server. Keep the budget
            # (its sessions wait) rather than forget the ledger.
            model = AgentBudget.model_validate({**body, "status": None})
            readable = False
            logger.error(
                "AgentBudget status unreadable; its sessions wait",
                extra={"budget": _name(body), "error": str(error)[:500]},
            )
        else:
            readable = True
        budget = to_budget(model)
        ref = budget.ref
        if not readable:
            budget = dataclasses.replace(
                budget, problem="its status (the ledger) is unreadable; see the operator's log"
            )
        spec_changed = held is None or held.model.spec != model.spec
        entry = _BudgetEntry(
            model, budget, to_ledger(model.status) if readable else Ledger(), model.status, readable
        )
        self._budgets[ref] = entry
        self._record_budget_metrics(entry)
        if spec_changed:
            self._wake.set()

    def budget_gone(self, namespace: str, name: str) -> None:
        entry = self._budgets.pop(BudgetRef(namespace, name), None)
        if entry is not None:
            self._forget_budget_metrics(entry)
            self._wake.set()

    def session_seen(self, body: Mapping[str, Any]) -> None:
        facts = SessionFacts.from_body(body)
        if facts is None:
            return
        held = self._sessions.get(facts.uid)
        if held is not None and not _newer(facts.resource_version, held.resource_version):
            return
        if facts.terminal:
            self._drop(facts.uid)
            return
        self._sessions[facts.uid] = facts
        if held is not None and held.labels != facts.labels and facts.uid in self._wants:
            self._wake.set()  # its budgets may be others now
        slot = self._slots.get(facts.uid)
        if slot is not None and facts.attempts >= slot:
            del self._slots[facts.uid]  # started: its status holds the slot now
        wanted = self._wants.get(facts.uid)
        if wanted is not None and facts.attempts >= wanted:
            self._withdraw(facts.uid)
        if facts.session_id is not None:
            self._claims.pop(facts.uid, None)  # its status names the session id now

    async def session_gone(self, namespace: str, uid: str | None) -> None:
        """A deleted session, or one the operator failed without reading it (unparseable):
        what it holds is settled in full (its pod goes, and the operator does not wait for the
        report: fail closed)."""
        if not uid:
            return
        self._drop(uid)
        async with self._lock:
            await self._settle_locked(namespace, uid, None, None)
        self._wake.set()

    def _drop(self, uid: str) -> None:
        self._sessions.pop(uid, None)
        self._claims.pop(uid, None)
        self._slots.pop(uid, None)
        self._unconfirmed.discard(uid)
        self._withdraw(uid)

    def _withdraw(self, uid: str) -> None:
        self._bodies.pop(uid, None)
        self._wants.pop(uid, None)
        self._waiting_since.pop(uid, None)
        self._blocked.pop(uid, None)

    # -- the session pass's side ---------------------------------------------------------------

    def _selecting(self, namespace: str, labels: Mapping[str, str]) -> list[_BudgetEntry]:
        return sorted(
            (
                entry
                for ref, entry in self._budgets.items()
                if ref.namespace == namespace and selects(entry.model.spec.selector, labels)
            ),
            key=lambda entry: entry.budget.ref,
        )

    def _capped(self) -> bool:
        return self.settings.max_running_sessions is not None

    async def check(self, session: AgentSession, attempt: int) -> AdmissionView:
        """Whether attempt `attempt` of `session` may start now. An admitted attempt is marked as
        starting until `done()`, so no pass counts its slot as free meanwhile.

        No lock: it reads the cached ledgers, which only ever change whole (a written status
        replaces an entry). A pass only takes back reservations of sessions it plans as queued,
        which hold a reservation in some but not all of their budgets; such a session is not
        admitted here, before, during or after that pass's writes."""
        uid = str(session.metadata.uid or "")
        namespace = str(session.metadata.namespace)
        self._unconfirmed.discard(uid)
        selecting = self._selecting(namespace, session.metadata.labels or {})
        if not selecting and not self._capped():
            return NOT_REQUIRED
        view = admission_view(
            uid,
            attempt,
            [(entry.budget.ref, entry.ledger) for entry in selecting],
            self._capped(),
            self._slots.get(uid) == attempt,
            self._blocked.get(uid) if self._wants.get(uid) == attempt else None,
        )
        if view.admitted:
            self._starting[uid] = attempt
        return view

    def request(
        self, session: AgentSession, attempt: int, body: Mapping[str, Any] | None = None
    ) -> None:
        """Attempt `attempt` waits for admission: plan it in the next pass. `body`: the session as
        this pass saw it, when the pass wrote nothing."""
        uid = str(session.metadata.uid or "")
        if self._wants.get(uid) == attempt:
            return  # planned already: only a settle, a budget change or a rollover changes that
        if body is not None:
            self._bodies[uid] = body
        self._requests += 1
        self._wants[uid] = attempt
        self._waiting_since[uid] = asyncio.get_running_loop().time()
        self._blocked.pop(uid, None)
        self._wake.set()

    def withdraw(self, session: AgentSession) -> None:
        """The session's pass did not ask for admission this time (it started, waits for
        something else, was suspended, ...)."""
        self._withdraw(str(session.metadata.uid or ""))

    # -- who runs an SDK session id ------------------------------------------------------------

    def holders_of(
        self, namespace: str, session_id: str, except_uid: str | None
    ) -> tuple[SessionIdHolder, ...]:
        """The other non-terminal sessions of `namespace` that run SDK session `session_id`
        (their status says so: they started it, or resume it in place) or whose first pod is
        being created with it (`claim`). A non-fork resume of it must wait for them."""
        found = []
        for uid, facts in self._sessions.items():
            if uid == except_uid or facts.namespace != namespace:
                continue
            if facts.session_id == session_id or self._claims.get(uid) == session_id:
                found.append(SessionIdHolder(facts.name, facts.phase))
        return tuple(sorted(found, key=lambda holder: holder.name))

    def claim(self, session: AgentSession, session_id: str) -> None:
        """`session`'s pass is creating a pod that runs `session_id`. Called in the same step as
        the decision (no await between), so two passes that would resume one session id in place
        cannot both miss each other while their status writes are in flight."""
        uid = str(session.metadata.uid or "")
        facts = self._sessions.get(uid)
        if facts is not None and facts.session_id == session_id:
            return
        self._claims[uid] = session_id

    def done(self, session: AgentSession) -> None:
        """The pass that checked `session` is over."""
        self._starting.pop(str(session.metadata.uid or ""), None)

    def holds(self, session: AgentSession, attempt: int) -> bool:
        """Whether some budget holds a reservation for this attempt."""
        uid = str(session.metadata.uid or "")
        namespace = str(session.metadata.namespace)
        return any(
            entry.ledger.holds(uid, attempt)
            for ref, entry in self._budgets.items()
            if ref.namespace == namespace
        )

    async def release_unstarted(self, session: AgentSession, attempt: int) -> None:
        """Give back a reservation whose attempt never started (the caller made sure its pod
        does not exist): nothing was spent, so nothing is charged."""
        uid = str(session.metadata.uid or "")
        namespace = str(session.metadata.namespace)
        async with self._lock:
            for ref in [r for r in self._budgets if r.namespace == namespace]:
                await self._update(ref, lambda ledger, _: release(ledger, uid, attempt))
        self._wake.set()

    async def settle(
        self, session: AgentSession, attempt: int, metered_usd: Decimal | None
    ) -> None:
        """Attempt `attempt` ended: its reservations become its metered spend (None: no report,
        the whole reservation). Idempotent; call it before writing the session's status."""
        uid = str(session.metadata.uid or "")
        async with self._lock:
            await self._settle_locked(str(session.metadata.namespace), uid, attempt, metered_usd)
        self._wake.set()

    async def _settle_locked(
        self, namespace: str, uid: str, attempt: int | None, metered_usd: Decimal | None
    ) -> None:
        for ref in [r for r in self._budgets if r.namespace == namespace]:
            entry = self._budgets[ref]
            held = [r.attempt for r in entry.ledger.reservations if r.uid == uid]
            if not held:
                continue
            upto = attempt if attempt is not None else max(held)

            def settled(ledger: Ledger, budget: Budget, upto: int = upto) -> Ledger:
                return settle(ledger, uid, upto, metered_usd, budget.time_zone, self.clock()).ledger

            await self._update(ref, settled)

    async def _update(self, ref: BudgetRef, change: Callable[[Ledger, Budget], Ledger]) -> None:
        """Apply `change` to a budget's ledger and write it, re-reading on a conflict."""
        for _ in range(WRITE_ATTEMPTS):
            entry = self._budgets.get(ref)
            if entry is None or not entry.readable:
                return
            ledger = change(entry.ledger, entry.budget)
            if ledger == entry.ledger:
                return
            if await self._write(entry, ledger, self._queued_needs(ref)):
                return
            await self._reread(ref)
        raise KubeError("PATCH", f"agentbudgets/{ref}/status", 409, "kept conflicting")

    def _queued_needs(self, ref: BudgetRef) -> tuple[Decimal | None, ...]:
        return tuple(
            b.session.need_usd if b.reason.waits else None
            for b in self._blocked.values()
            if ref in b.session.budgets
        )

    async def _write(
        self, entry: _BudgetEntry, ledger: Ledger, queued_needs: tuple[Decimal | None, ...]
    ) -> bool:
        """Write `ledger` and the status rendered from it; False on a conflict (re-read)."""
        now = self.clock()
        ledger = roll_over(ledger, entry.budget.time_zone, now)
        status = budget_status(
            entry.budget,
            ledger,
            now,
            queued_needs,
            entry.model.metadata.generation,
            entry.status,
        )
        old = entry.status.to_wire() if entry.status is not None else {}
        new = status.to_wire()
        if new == old:
            entry.ledger = ledger
            return True
        ref = entry.budget.ref
        written = await self.client.replace_custom_status(
            BUDGETS, ref.namespace, ref.name, entry.resource_version, old, new
        )
        if written is None:
            return False
        # What was written is what we hold: keep it without parsing a thousand reservations back.
        metadata = entry.model.metadata.model_copy(
            update={"resource_version": (written.get("metadata") or {}).get("resourceVersion")}
        )
        entry.model = entry.model.model_copy(update={"metadata": metadata, "status": status})
        entry.ledger, entry.status = ledger, status
        self._record_budget_metrics(entry)
        return True

    async def _reread(self, ref: BudgetRef) -> None:
        body = await self.client.get_custom(BUDGETS, ref.namespace, ref.name)
        if body is None:
            self.budget_gone(ref.namespace, ref.name)
        else:
            self.budget_seen(body)

    # -- admission passes ----------------------------------------------------------------------

    async def run(self) -> None:
        """The one admission task: a pass whenever something may admit a queued session (a
        request, a settle, a budget changed) and at the next period rollover; never polls."""
        loop = asyncio.get_running_loop()
        delay = 1.0
        while not self.synced.is_set():
            try:
                await self.sync()
            except Exception as error:  # the API server may still be starting
                logger.error(
                    "Listing AgentBudgets and AgentSessions failed; retrying",
                    extra={"error": f"{type(error).__name__}: {str(error)[:500]}"},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        while True:
            timeout = None
            if self._rollover is not None:
                timeout = max((self._rollover - self.clock()).total_seconds(), 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            started, seen = loop.time(), -1
            while seen != self._requests and loop.time() - started < PASS_BATCH_MAX_SECONDS:
                seen = self._requests
                await asyncio.sleep(PASS_BATCH_SECONDS)
            self._wake.clear()
            warmup = self._warmup_until - loop.time()
            if self._unconfirmed and warmup > 0:
                # Just started: wait for every listed session's first pass (or the deadline),
                # so a session seen late cannot lose its place in a queue.
                loop.call_later(min(warmup, 1.0), self._wake.set)
                continue
            try:
                async with self._lock:
                    await self._pass()
            except Exception as error:
                logger.error(
                    "Admission pass failed; retrying",
                    extra={"error": f"{type(error).__name__}: {str(error)[:500]}"},
                )
                loop.call_later(PASS_RETRY_SECONDS, self._wake.set)

    def _running_by_namespace(self) -> dict[str, int]:
        running: dict[str, int] = {}
        for uid, facts in self._sessions.items():
            wanted = facts.attempts + 1
            if (
                facts.in_flight
                or uid in self._starting
                or self._slots.get(uid) == wanted
                or any(e.ledger.holds(uid, wanted) for e in self._budgets.values())
            ):
                running[facts.namespace] = running.get(facts.namespace, 0) + 1
        return running

    def _reconstruct(self) -> None:
        """Reservations of sessions that are gone or whose attempt ended unsettled are charged in
        full (fail closed): normally there are none, since a session's pass settles before it
        writes the ended attempt, and a deleted session is settled when its deletion is seen."""
        now = self.clock()
        for entry in self._budgets.values():
            if not entry.readable or not entry.ledger.reservations:
                continue
            live: list[LiveAttempt] = []
            for reservation in entry.ledger.reservations:
                facts = self._sessions.get(reservation.uid)
                if facts is None or any(
                    a.uid == reservation.uid and a.attempt == reservation.attempt for a in live
                ):
                    continue
                current = facts.in_flight and facts.attempts == reservation.attempt
                upcoming = reservation.attempt == facts.attempts + 1
                state = AttemptState.RUNNING if current or upcoming else AttemptState.ENDED
                live.append(LiveAttempt(reservation.uid, reservation.attempt, state))
            rebuilt = reconstruct_ledger(entry.ledger, live, entry.budget.time_zone, now)
            for correction in rebuilt.corrections:
                logger.warning(
                    "Corrected an AgentBudget reservation",
                    extra={
                        "budget": str(entry.budget.ref),
                        "session": correction.session,
                        "kind": str(correction.kind),
                        "attempt": correction.attempt,
                    },
                )
            entry.ledger = rebuilt.ledger

    def _queued(self) -> list[QueuedSession]:
        queued: list[QueuedSession] = []
        for uid, attempt in self._wants.items():
            facts = self._sessions.get(uid)
            if facts is None or attempt != facts.attempts + 1 or uid in self._starting:
                continue
            selecting = self._selecting(facts.namespace, facts.labels)
            if not selecting and not self._capped():
                # Nothing governs it any more (its budget was deleted or no longer selects it):
                # its pass starts it.
                self._requeue((facts.namespace, facts.name), 0.0)
                continue
            refs = tuple(entry.budget.ref for entry in selecting)
            if refs and all(self._budgets[ref].ledger.holds(uid, attempt) for ref in refs):
                continue  # admitted: its pass creates the pod
            if not refs and self._slots.get(uid) == attempt:
                continue
            need = session_need(
                facts.max_budget_usd, self.settings.max_max_budget_usd, facts.spent_usd
            )
            queued.append(
                QueuedSession(
                    facts.namespace, facts.name, uid, attempt, facts.created_at, need, refs
                )
            )
        return queued

    async def _pass(self) -> None:
        for _ in range(WRITE_ATTEMPTS):
            self._reconstruct()
            now = self.clock()
            queued = self._queued()
            budgets = {ref: entry.budget for ref, entry in self._budgets.items()}
            ledgers = {ref: entry.ledger for ref, entry in self._budgets.items()}
            cluster = ClusterCapacity(
                self.settings.max_running_sessions, self._running_by_namespace()
            )
            plan = plan_admissions(queued, budgets, ledgers, cluster, now)
            blocked = {b.session.uid: b for b in plan.blocked}
            conflicts: list[BudgetRef] = []
            for ref, entry in list(self._budgets.items()):
                needs = tuple(
                    b.session.need_usd if b.reason.waits else None
                    for b in blocked.values()
                    if ref in b.session.budgets
                )
                if not entry.readable:
                    continue
                if not await self._write(entry, plan.ledgers[ref], needs):
                    conflicts.append(ref)
            if conflicts:
                for ref in conflicts:
                    await self._reread(ref)
                continue
            self._after_pass(plan.admitted, blocked)
            self._rollover = min(
                (
                    moment
                    for entry in self._budgets.values()
                    if (moment := next_rollover(entry.budget, now)) is not None
                ),
                default=None,
            )
            return
        raise KubeError("PATCH", "agentbudgets/status", 409, "kept conflicting")

    def _after_pass(self, admitted: Iterable[Any], blocked: Mapping[str, Blocked]) -> None:
        loop = asyncio.get_running_loop()
        for admission in admitted:
            session = admission.session
            if not session.budgets:
                self._slots[session.uid] = session.attempt
            since = self._waiting_since.pop(session.uid, None)
            if since is not None:
                self.metrics.queue_wait.observe(loop.time() - since)
            self._blocked.pop(session.uid, None)
            body = self._bodies.pop(session.uid, None)
            if body is not None:
                self._readmit(body)
            else:
                self._requeue((session.namespace, session.name), 0.0)
        queued: dict[tuple[str, str], int] = {}
        for uid, verdict in blocked.items():
            before = self._blocked.get(uid)
            self._blocked[uid] = verdict
            self._bodies.pop(uid, None)  # its pass writes Queued: the body would be stale
            session = verdict.session
            key = (session.namespace, verdict.reason.value)
            queued[key] = queued.get(key, 0) + 1
            if before is None or (before.reason, before.budget) != (verdict.reason, verdict.budget):
                self._requeue((session.namespace, session.name), 0.0)
            elif before.message != verdict.message:
                # Its place in the queue moved: say so, but not on every pass.
                self._requeue(
                    (session.namespace, session.name), self.settings.queue_status_refresh_seconds
                )
        self.metrics.set_queued(queued)

    # -- metrics -------------------------------------------------------------------------------

    def _record_budget_metrics(self, entry: _BudgetEntry) -> None:
        status = entry.status
        ref = entry.budget.ref
        for period in (status.periods if status is not None else None) or []:
            labels = (ref.namespace, ref.name, period.period.value)
            self.metrics.budget_limit.labels(*labels).set(float(period.limit_usd))
            self.metrics.budget_spent.labels(*labels).set(float(period.spent_usd))
            self.metrics.budget_reserved.labels(*labels).set(float(period.reserved_usd))

    def _forget_budget_metrics(self, entry: _BudgetEntry) -> None:
        ref = entry.budget.ref
        for limit in entry.budget.limits:
            labels = (ref.namespace, ref.name, limit.period.value)
            for gauge in (
                self.metrics.budget_limit,
                self.metrics.budget_spent,
                self.metrics.budget_reserved,
            ):
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)


def _name(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"
