"""The reconcile loop's glue: observe (indexes, one GET when needed) -> decide() -> apply the plan.

The kopf handlers call `Controller.reconcile()` for every trigger; the controller serialises
passes per session, schedules delayed passes (backoff, waits, TTL) on one in-process timer heap,
and keeps metrics. All API calls go through `kube.client.KubeClient`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import heapq
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from pydantic import ValidationError

from agentsession_contract.run import Reason
from agentsession_operator.budgets import BudgetController
from agentsession_operator.kube.client import KubeClient, KubeError, is_api_failure
from agentsession_operator.kube.pods import Key, RunnerPods
from agentsession_operator.metrics import Metrics
from agentsession_operator.models import AgentSession, AgentSessionStatus, Phase
from agentsession_operator.reconcile.admission import NOT_REQUIRED, AdmissionView
from agentsession_operator.reconcile.budget import usd
from agentsession_operator.reconcile.decide import (
    TERMINAL_PHASES,
    Plan,
    attempt_in_flight,
    decide,
    pod_event_matters,
)
from agentsession_operator.reconcile.hold import (
    OPERATOR_FORBIDDEN,
    QUOTA_EXCEEDED,
    RETRYING,
    held_status,
    unparseable_status,
)
from agentsession_operator.reconcile.network_policy import (
    NETWORK_POLICY_MISSING,
    is_current,
    missing_policy_message,
    runner_network_policy,
)
from agentsession_operator.reconcile.observed import (
    Observed,
    PodView,
    RefView,
    TakenPod,
    split_by_owner,
)
from agentsession_operator.reconcile.outcome import Verdict
from agentsession_operator.reconcile.podspec import pod_name, store_secret, store_secret_name
from agentsession_operator.reconcile.refusal import Refusal, classify_refusal, refusal_message
from agentsession_operator.settings import NetworkPolicyMode, OperatorSettings
from agentsession_operator.store_access import IsolationRefused, StoreAccess, StoreAccessError

logger = logging.getLogger("agentsession_operator")

ERROR_BACKOFF_MIN_SECONDS = 1.0
"""The first retry of a failed or held pass waits at least this long (even with
AGENTSESSION_BACKOFF_BASE_SECONDS=0), so an error never makes a tight loop."""
UNPARSEABLE_ERRORS_SHOWN = 5


class Held(Exception):
    """The pass could not take the session's next step for a reason outside its spec (no
    NetworkPolicy, no store credentials, the operator's RBAC, a full ResourceQuota): the session
    waits with `reason` and `message` on its status and in a Warning Event, and is retried with
    backoff. `log` is the operator's log line, `detail` what it adds."""

    def __init__(self, reason: str, message: str, log: str, detail: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.log = log
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class RefusedPod:
    """A runner pod the API server refused for good (its own create, or its store Secret's):
    `explanation` names the object and gives the API server's message."""

    name: str
    explanation: str


class KeyedLocks:
    """One asyncio.Lock per key, kept only while someone holds or waits for it.

    Passes over one session must not interleave; keeping a lock for each of 10,000 idle sessions
    would cost memory for nothing.
    """

    def __init__(self) -> None:
        self._entries: dict[Key, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def hold(self, key: Key) -> AsyncIterator[None]:
        lock, users = self._entries.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._entries[key]


class Controller:
    def __init__(
        self,
        settings: OperatorSettings,
        client: KubeClient,
        metrics: Metrics,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
        store: StoreAccess | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.clock = clock
        self.store = store
        """Vends per-attempt store credentials and reads stored gateway reports (S3 stores)."""
        self.pods = RunnerPods(client, settings.watch_namespaces, self._pod_changed)
        self.budgets = BudgetController(
            settings, client, metrics, self.requeue, self._readmitted, clock
        )
        self._locks = KeyedLocks()
        # Passes that hold a slot are the only ones with API requests in flight (the client's
        # pool has as many connections), so no request times out waiting for a connection.
        self._slots = asyncio.Semaphore(settings.max_concurrent_reconciles)
        self._heap: list[tuple[float, Key]] = []
        self._due: dict[Key, float] = {}
        self._wakeup = asyncio.Event()
        self._seen_started: set[str] = set()
        self._patched_over: dict[Key, str] = {}
        """Per session, the resourceVersion our last successful status write replaced."""
        self._streaks: dict[Key, int] = {}
        """Per session, its passes in a row that failed or were held (the backoff's exponent)."""
        self._held: dict[Key, tuple[str, str | None]] = {}
        """Per held session, the status message written for the hold and the one it replaced
        (put back when a pass succeeds again and nothing else rewrote it)."""

    # -- triggers ------------------------------------------------------------------------------

    def _pod_changed(self, key: Key, pod: PodView | None) -> None:
        if pod_event_matters(pod):
            self.requeue(key)

    def _readmitted(self, body: Mapping[str, Any]) -> None:
        """An admission pass admitted a session whose pass wrote nothing since it asked: go on
        from the body that pass saw (no read); one a status write replaced is read again."""
        meta = body.get("metadata") or {}
        key: Key = (str(meta.get("namespace")), str(meta.get("name")))
        if meta.get("resourceVersion") == self._patched_over.get(key):
            self.requeue(key)
        else:
            asyncio.create_task(self.reconcile(body))  # noqa: RUF006

    def requeue(self, key: Key, delay: float = 0.0) -> None:
        """Reconcile `key` again after `delay` seconds (the earliest request wins)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + max(delay, 0.0)
        if key in self._due and self._due[key] <= due:
            return
        self._due[key] = due
        heapq.heappush(self._heap, (due, key))
        self._wakeup.set()

    async def run_timers(self) -> None:
        """The one timer task: runs due requeues, each by re-reading the session."""
        loop = asyncio.get_running_loop()
        while True:
            self._wakeup.clear()
            now = loop.time()
            while self._heap and self._heap[0][0] <= now:
                due, key = heapq.heappop(self._heap)
                if self._due.get(key) == due:
                    del self._due[key]
                    asyncio.create_task(self._reconcile_by_key(key))  # noqa: RUF006
            timeout = self._heap[0][0] - now if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def forget(self, key: Key) -> None:
        self._patched_over.pop(key, None)
        self._streaks.pop(key, None)
        self._held.pop(key, None)
        self._due.pop(key, None)
        self.metrics.set_running(key[0], key[1], False)

    async def _synced(self) -> None:
        """Until pods, budgets and sessions are listed, a missing one proves nothing."""
        await self.pods.synced.wait()
        await self.budgets.synced.wait()

    async def _reconcile_by_key(self, key: Key) -> None:
        await self._synced()
        # Read under the lock: a body read before a pass in flight finishes would be stale.
        async with self._locks.hold(key), self._slots:
            body = None
            try:
                body = await self.client.get_session(*key)
                if body is None:
                    self.forget(key)
                    return
                await self._reconcile(key, body)
            except Exception as exc:
                await self._failed(key, body, exc)
            else:
                await self._recovered(key)

    # -- one pass ------------------------------------------------------------------------------

    async def reconcile(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key: Key = (str(meta.get("namespace")), str(meta.get("name")))
        await self._synced()
        async with self._locks.hold(key):
            if meta.get("resourceVersion") == self._patched_over.get(key):
                return  # the watch delivering the version our last status write replaced
            async with self._slots:
                try:
                    await self._reconcile(key, body)
                except Exception as exc:
                    await self._failed(key, body, exc)
                else:
                    await self._recovered(key)

    def _backoff(self, key: Key) -> float:
        """The delay before the next try of a session whose pass failed or was held: the
        settings' backoff (AGENTSESSION_BACKOFF_*), doubling per pass in a row, per session."""
        streak = self._streaks.get(key, 0)
        self._streaks[key] = streak + 1
        base = max(self.settings.backoff_base_seconds, ERROR_BACKOFF_MIN_SECONDS)
        return float(min(base * 2 ** min(streak, 32), max(self.settings.backoff_max_seconds, base)))

    async def _failed(self, key: Key, body: Mapping[str, Any] | None, exc: Exception) -> None:
        """A pass raised: try again with backoff, saying why on the session (its message, a
        Warning Event when the reason is new) unless it has finished."""
        delay = self._backoff(key)
        extra = {"namespace": key[0], "session": key[1]}
        if isinstance(exc, Held):
            reason, message = exc.reason, exc.message
            logger.error(exc.log, extra={**extra, "error": exc.detail[:500]})
        else:
            self.metrics.reconcile_errors.labels(type(exc).__name__).inc()
            reason = RETRYING
            cap = max(self.settings.backoff_max_seconds, ERROR_BACKOFF_MIN_SECONDS)
            message = (
                f"the operator's last pass over this session failed; it retries with backoff "
                f"(at most {cap:g}s apart): {_describe(exc)}"
            )
            # An error of the API or the network says all in its text; anything else is a bug,
            # whose traceback is wanted.
            logger.error(
                f"Reconcile failed; retrying in {delay:g}s",
                extra={**extra, "error": _describe(exc)},
                exc_info=None if is_api_failure(exc) else exc,
            )
        if body is not None:
            await self._report_held(key, body, reason, message)
        self.requeue(key, delay)

    async def _report_held(
        self, key: Key, body: Mapping[str, Any], reason: str, message: str
    ) -> None:
        """Say on the session why its pass is retried (best effort: the API may be what fails).
        Written only when the message changes, so retries do not rewrite it; a finished session
        keeps its final status."""
        namespace, name = key
        meta = body.get("metadata") or {}
        try:
            current = AgentSessionStatus.model_validate(body.get("status") or {})
        except ValidationError:
            return
        if current.phase in TERMINAL_PHASES:
            return
        new = held_status(current, reason, message, self.clock(), meta.get("generation"))
        try:
            if new.to_wire() != current.to_wire():
                written = await self.client.patch_status(
                    namespace, name, meta.get("resourceVersion"), current.to_wire(), new.to_wire()
                )
                version = ((written or {}).get("metadata") or {}).get("resourceVersion")
                if version:
                    # Its own echo from the watch brings nothing new: the backoff's requeue
                    # tries again (a pass per echo would make an error loop at API speed).
                    self._patched_over[key] = str(version)
                before = self._held.get(key)
                self._held[key] = (
                    new.message or "",
                    before[1] if before is not None else current.message,
                )
            if current.message != new.message:
                await self.client.create_event(namespace, meta, "Warning", reason, message[:1024])
        except Exception as exc:
            logger.warning(
                "Status of a held session not written",
                extra={"namespace": namespace, "session": name, "error": _describe(exc)},
            )

    async def _recovered(self, key: Key) -> None:
        """A pass succeeded: the backoff starts over, and a hold's message that no one has
        rewritten since gives way to the one it replaced."""
        self._streaks.pop(key, None)
        held = self._held.pop(key, None)
        if held is None:
            return
        written, before = held
        try:
            body = await self.client.get_session(*key)
            status = (body or {}).get("status") or {}
            if body is None or status.get("message") != written:
                return
            restored = {k: v for k, v in status.items() if k != "message"}
            if before is not None:
                restored["message"] = before
            meta = body.get("metadata") or {}
            await self.client.patch_status(
                key[0], key[1], meta.get("resourceVersion"), status, restored
            )
        except Exception as exc:
            logger.warning(
                "Message of a recovered session not restored",
                extra={"namespace": key[0], "session": key[1], "error": _describe(exc)},
            )

    async def _observe(self, key: Key, session: AgentSession) -> Observed:
        uid = session.metadata.uid
        # Labels and names say which session a pod claims to serve; only its controller
        # reference's UID says whose it is (a deleted namesake's, or someone's copy, is not).
        pods, taken = split_by_owner(self.pods.of(key), uid)
        status = session.status or AgentSessionStatus()
        expected = status.pod_name
        attempts = status.attempts or 0
        if expected and attempts and not any(p.attempt >= attempts for p in pods.values()):
            # The index may lag behind our own create; only the API can say it is really gone.
            found = await self.client.get_pod(key[0], expected)
            view = PodView.from_body(found) if found else None
            if view is not None and view.owned_by(uid):
                pods[view.name] = view
            elif found is not None:
                taken[expected] = TakenPod.from_body(found)
        ref: RefView | None = None
        ref_missing = False
        resume = session.spec.resume
        if resume is not None and resume.session_ref and not (attempts and status.session_id):
            # Only a session that has not started yet needs its reference (decide() resolves it
            # once); a read here costs less than indexing every session's status in memory.
            found = await self.client.get_session(key[0], resume.session_ref)
            ref = RefView.from_body(found) if found is not None else None
            ref_missing = ref is None
        from_sessions: dict[str, RefView | None] = {}
        workspace = session.spec.workspace
        if workspace is not None and status.phase not in TERMINAL_PHASES:
            # One read per fromSession source while the session runs: its session id is what
            # a (re)fetch restores, and the session must have finished first.
            for source in workspace.sources or []:
                if source.from_session is not None:
                    name = source.from_session.name
                    found = await self.client.get_session(key[0], name)
                    from_sessions[name] = RefView.from_body(found) if found is not None else None
        namespace_uid = None
        if not (status.namespace_uid or status.attempts) and status.phase not in TERMINAL_PHASES:
            # Until the status records it (its first write does): a session started by an
            # operator before the store was scoped by it has none and keeps the old layout.
            namespace_uid = await self.client.get_namespace_uid(key[0])
        stored = await self._stored_report(key, status, pods)
        admission: AdmissionView = NOT_REQUIRED
        if status.phase not in TERMINAL_PHASES:
            admission = await self.budgets.check(session, _latest_attempt(status, pods) + 1)
        return Observed(
            pods=tuple(pods.values()),
            ref=ref,
            ref_missing=ref_missing,
            stored_reports=stored,
            admission=admission,
            taken=taken,
            from_sessions=from_sessions,
            namespace_uid=namespace_uid,
        )

    def _with_holders(self, session: AgentSession, observed: Observed) -> Observed:
        """Who else runs the SDK session id this session would resume in place (from the
        in-memory index of non-terminal sessions). Looked up with no await before decide() and
        `_claim_session_id`, so two such passes cannot both miss each other."""
        resume = session.spec.resume
        status = session.status or AgentSessionStatus()
        if resume is None or resume.fork or status.attempts:
            return observed
        wanted = resume.session_id
        if wanted is None and observed.ref is not None and observed.ref.terminal:
            wanted = observed.ref.session_id
        if not wanted:
            return observed
        namespace = str(session.metadata.namespace)
        holders = self.budgets.holders_of(namespace, wanted, session.metadata.uid)
        return dataclasses.replace(observed, session_id_holders=holders) if holders else observed

    def _claim_session_id(self, session: AgentSession, plan: Plan) -> None:
        if plan.create_pod is not None and plan.status is not None and plan.status.session_id:
            self.budgets.claim(session, plan.status.session_id)

    async def _stored_report(
        self, key: Key, status: AgentSessionStatus, pods: Mapping[str, PodView]
    ) -> dict[str, str]:
        """The latest attempt's report from the store when its pod cannot show it: the pod is
        gone (a lost node, a force delete) or ended without a gateway report."""
        # Only an attempt still to be charged needs it: a finished, backing-off, Suspended or
        # Paused session has charged its last attempt already.
        if self.store is None or not attempt_in_flight(status):
            return {}
        pod_name, session_id = status.pod_name, status.session_id
        if not pod_name or not session_id:
            return {}
        pod = pods.get(pod_name)
        if pod is not None and (not pod.finished or pod.gateway_report):
            return {}
        try:
            report = await self.store.read_attempt_report(
                key[0], session_id, pod_name, status.namespace_uid
            )
        except Exception as exc:  # no stored report is the fail-closed case, not an error
            logger.warning(
                "Reading the attempt's stored gateway report failed",
                extra={"namespace": key[0], "session": key[1], "pod": pod_name, "error": str(exc)},
            )
            return {}
        return {pod_name: json.dumps(report)} if report else {}

    async def _reconcile(self, key: Key, body: Mapping[str, Any]) -> None:
        if (body.get("metadata") or {}).get("deletionTimestamp"):
            return  # garbage collection stops its pods; nothing of ours to finish
        try:
            session = AgentSession.from_body(body)
        except ValidationError as exc:
            # The API server validated it: it was stored before the CRD became stricter.
            await self._unparseable(key, body, exc)
            return
        try:
            observed = self._with_holders(session, await self._observe(key, session))
            self._record_pod_starts(observed)
            now = self.clock()
            plan = decide(session, observed, self.settings, now)
            self._claim_session_id(session, plan)
            await self._admission(session, observed, plan, body=body)
            blocked = await self._apply(key, body, session, plan)
            if blocked is not None:
                # The pod to create exists and is not ours, or the API server refused it for
                # good: decide again knowing that (it waits or fails; it never starts the
                # attempt), and give back what was reserved for it (our pod was never created).
                if isinstance(blocked, TakenPod):
                    observed = dataclasses.replace(
                        observed, taken={**observed.taken, blocked.name: blocked}
                    )
                else:
                    observed = dataclasses.replace(
                        observed, refused={**observed.refused, blocked.name: blocked.explanation}
                    )
                plan = decide(session, observed, self.settings, now)
                await self._admission(session, observed, plan, pod_absent=True)
                await self._apply(key, body, session, plan)
        finally:
            self.budgets.done(session)

    async def _unparseable(self, key: Key, body: Mapping[str, Any], exc: ValidationError) -> None:
        """A session the operator cannot read (stored before its CRD was made stricter) fails
        for good, saying why: its runner pods are stopped and what its budgets hold for it is
        settled in full (fail closed: whether a pod spent it is unknown). A finished one is left
        as it is."""
        namespace, name = key
        meta = body.get("metadata") or {}
        raw = body.get("status") or {}
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors(include_url=False, include_input=False)[
                :UNPARSEABLE_ERRORS_SHOWN
            ]
        )
        extra = {"namespace": namespace, "session": name, "error": problems[:1000]}
        if not isinstance(raw, Mapping) or raw.get("phase") in TERMINAL_PHASES:
            logger.warning("Left a finished AgentSession the operator cannot parse", extra=extra)
            return
        message = (
            "the operator cannot read this AgentSession (it was stored before the CRD's schema "
            f"became stricter, or its status was changed by hand): {problems}"
        )
        uid = meta.get("uid")
        for pod in self.pods.of(key):
            if pod.owned_by(uid) and not pod.finished and not pod.deleting:
                await self.client.delete_pod(namespace, pod.name)
        await self.budgets.session_gone(namespace, uid)
        new = unparseable_status(raw, message, self.clock(), meta.get("generation"))
        written = await self.client.patch_status(
            namespace, name, meta.get("resourceVersion"), raw, new
        )
        if written is None:
            self.requeue(key)  # changed meanwhile: look again
            return
        logger.error("Failed an AgentSession the operator cannot parse", extra=extra)
        with contextlib.suppress(KubeError):
            await self.client.create_event(
                namespace, meta, "Warning", Reason.INVALID_SPEC.value, message[:1024]
            )

    async def _admission(
        self,
        session: AgentSession,
        observed: Observed,
        plan: Plan,
        *,
        pod_absent: bool = False,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        """The budget side of a pass, before anything else is written: an ended attempt's
        reservation is settled from its gateway's report (the ledger first, so a lost status
        write settles nothing twice); an attempt that waits is registered; a reservation whose
        attempt will not start now is given back, once its pod provably does not exist."""
        status = session.status or AgentSessionStatus()
        latest = _latest_attempt(status, {p.name: p for p in observed.pods})
        if plan.outcome is not None and latest:
            report = plan.outcome.report
            metered = None if report is None else usd(report.spent_usd + report.in_flight_usd)
            await self.budgets.settle(session, latest, metered)
        if plan.admission_attempt is not None:
            # The body is current only if this pass writes no status.
            self.budgets.request(
                session, plan.admission_attempt, body if plan.status is None else None
            )
            return
        self.budgets.withdraw(session)
        unstarted = latest + 1
        if plan.create_pod is None and self.budgets.holds(session, unstarted):
            namespace, name = str(session.metadata.namespace), str(session.metadata.name)
            if (
                pod_absent
                or await self.client.get_pod(namespace, pod_name(name, unstarted)) is None
            ):
                await self.budgets.release_unstarted(session, unstarted)

    async def _apply(
        self, key: Key, body: Mapping[str, Any], session: AgentSession, plan: Plan
    ) -> TakenPod | RefusedPod | None:
        """Carry out the plan; the pod it was to create, if that name is another owner's or the
        API server refused it for good (the plan's status is then not written: the attempt did
        not start). Raises Held when the pod must wait for something outside the spec."""
        namespace, name = key
        meta = body.get("metadata") or {}
        for pod in plan.delete_pods:
            await self.client.delete_pod(namespace, pod)
            logger.info("Deleted Pod", extra={"namespace": namespace, "session": name, "pod": pod})
        if plan.create_pod is not None:
            pod_name = plan.create_pod["metadata"]["name"]
            await self._runner_policy_ready(key)
            if self.store is not None and self.settings.store_role_arn:
                try:
                    namespace_uid = plan.status.namespace_uid if plan.status else None
                    await self._create_store_secret(session, plan.create_pod, namespace_uid)
                except StoreAccessError as exc:
                    raise _no_store_credentials(exc) from exc
                except KubeError as exc:
                    secret = store_secret_name(pod_name)
                    what = f"Secret {secret} (the store credentials of runner pod {pod_name})"
                    return _refused(key, pod_name, what, exc)
            try:
                created = await self.client.create_pod(namespace, plan.create_pod)
            except KubeError as exc:
                return _refused(key, pod_name, f"runner pod {pod_name}", exc)
            if created:
                self.metrics.attempts.labels(namespace).inc()
            else:
                existing = await self.client.get_pod(namespace, pod_name)
                if existing is None:  # deleted since: try again at once
                    self.requeue(key)
                    return None
                taken = TakenPod.from_body(existing)
                if taken.owner is None or not taken.owner.is_session(session.metadata.uid):
                    logger.warning(
                        "Refused to adopt a Pod that is not the session's",
                        extra={
                            "namespace": namespace,
                            "session": name,
                            "pod": pod_name,
                            "error": taken.describe(),
                        },
                    )
                    return taken
            logger.info(
                # Ours already: the status write after an earlier create did not land.
                "Created Pod" if created else "Adopted existing Pod",
                extra={"namespace": namespace, "session": name, "pod": pod_name},
            )
        if plan.status is not None:
            old = (session.status or AgentSessionStatus()).to_wire()
            written = await self.client.patch_status(
                namespace, name, meta.get("resourceVersion"), old, plan.status.to_wire()
            )
            if written is None:
                # Someone (often our own previous pass) changed it: decide again on fresh data.
                self.requeue(key)
                return None
            self.budgets.session_seen(written)
            if meta.get("resourceVersion"):
                self._patched_over[key] = str(meta["resourceVersion"])
            self._record_transition(namespace, name, session.status, plan)
        for event in plan.events:
            try:
                await self.client.create_event(
                    namespace, meta, event.type, event.reason, event.message
                )
            except KubeError as exc:  # an event is worth less than the pass that made it
                logger.warning(
                    "Event not recorded", extra={"namespace": namespace, "error": str(exc)}
                )
        if plan.delete_session:
            await self.client.delete_session(namespace, name, meta.get("uid"))
            logger.info(
                "Deleted finished AgentSession (ttlSecondsAfterFinished)",
                extra={"namespace": namespace, "session": name},
            )
            self.forget(key)
            return None
        if plan.requeue_after is not None:
            self.requeue(key, plan.requeue_after)
        return None

    async def _runner_policy_ready(self, key: Key) -> None:
        """Make sure the namespace's runner NetworkPolicy is in place, so a runner pod may start:
        applied now (mode create), found (require), or not asked for (off); else raise Held
        (NetworkPolicyMissing). Checked before every pod (one read; a write only when it is
        missing or differs), so a policy deleted since is noticed and namespaces created after
        the operator started are covered. Never the spec's fault: the policy is made of the
        operator's settings alone, so a refusal of it holds the session, never fails it."""
        mode = self.settings.runner_network_policy
        if mode is NetworkPolicyMode.OFF:
            return
        namespace = key[0]
        name = self.settings.runner_network_policy_name
        try:
            existing = await self.client.get_network_policy(namespace, name)
            if mode is NetworkPolicyMode.CREATE:
                desired = runner_network_policy(self.settings, namespace)
                if not is_current(existing, desired):
                    await self.client.apply_network_policy(desired)
                    logger.info(
                        f"Applied NetworkPolicy {name}",
                        extra={"namespace": namespace, "session": key[1]},
                    )
                existing = desired
            if existing is not None:
                return
            problem = (
                "it does not exist; create it (the chart's networkPolicy.runners shows the rules "
                "the operator would apply), or let the operator create it (mode create)"
            )
        except KubeError as exc:
            problem = f"reading or applying it failed: {exc.status} {exc.reason or ''}: "
            problem += refusal_message(exc.api_message)
        raise Held(
            NETWORK_POLICY_MISSING,
            missing_policy_message(self.settings, namespace, problem),
            "Refused to start a runner pod without the namespace's NetworkPolicy",
            problem,
        )

    async def _create_store_secret(
        self, session: AgentSession, pod: Mapping[str, Any], namespace_uid: str | None
    ) -> None:
        """Vend the attempt's store credentials, scoped to its namespace as it exists now (its
        UID), into its Secret (the gateway's env reads it), valid as long as the pod may run."""
        assert self.store is not None
        namespace, name = str(session.metadata.namespace), str(session.metadata.name)
        lifetime = int(pod["spec"]["activeDeadlineSeconds"]) + 300
        duration = max(900, min(lifetime, self.settings.store_credentials_max_seconds))
        credentials = await self.store.vend(namespace, name, duration, namespace_uid)
        pod_name = str(pod["metadata"]["name"])
        created = await self.client.create_secret(
            namespace, store_secret(session, pod_name, credentials.env())
        )
        logger.info(
            "Created Secret" if created else "Kept existing Secret",
            extra={"namespace": namespace, "session": name, "pod": pod_name},
        )

    def _record_pod_starts(self, observed: Observed) -> None:
        for pod in observed.pods:
            if pod.running_since and pod.created_at and pod.name not in self._seen_started:
                self._seen_started.add(pod.name)
                latency = (pod.running_since - pod.created_at).total_seconds()
                self.metrics.pod_start_latency.observe(max(latency, 0.0))
        if len(self._seen_started) > 100_000:  # bounded memory over a long life
            self._seen_started.clear()

    def _record_transition(
        self, namespace: str, name: str, before: AgentSessionStatus | None, plan: Plan
    ) -> None:
        status = plan.status
        assert status is not None
        self.metrics.set_running(namespace, name, status.phase == Phase.RUNNING)
        outcome = plan.outcome
        if outcome is not None:
            charged = (status.total_cost_usd or 0.0) - ((before and before.total_cost_usd) or 0.0)
            self.metrics.record_attempt_usage(namespace, outcome.report, charged)
        # An attempt stopped for spec.suspend ends retryable too, but it is no retry.
        interrupted = (status.interrupted_attempts or 0) > (
            (before and before.interrupted_attempts) or 0
        )
        if (
            outcome is not None
            and outcome.verdict is Verdict.RETRY
            and status.phase not in TERMINAL_PHASES
            and not interrupted
        ):
            self.metrics.retries.labels(namespace, outcome.reason.value).inc()
        was_terminal = before is not None and before.phase in TERMINAL_PHASES
        if status.phase in TERMINAL_PHASES and not was_terminal:
            reason = status.reason.value if status.reason else ""
            self.metrics.sessions.labels(namespace, str(status.phase), reason).inc()
            self.metrics.turns.labels(namespace).observe(status.num_turns or 0)
            if status.start_time and status.completion_time:
                elapsed = (status.completion_time - status.start_time).total_seconds()
                self.metrics.duration.labels(namespace).observe(elapsed)
            logger.info(
                f"AgentSession {status.phase}",
                extra={
                    "namespace": namespace,
                    "session": name,
                    "reason": reason,
                    "pod": status.pod_name,
                },
            )


def _no_store_credentials(exc: StoreAccessError) -> Held:
    """No pod without scoped credentials: the session waits, saying why, and is tried again
    with backoff (STS or S3 failing, or a namespace role that does not isolate its prefix)."""
    refused = isinstance(exc, IsolationRefused)
    message = str(exc) if refused else f"cannot vend store credentials yet: {exc}"
    return Held(
        "StoreCredentialsRefused" if refused else "StoreCredentialsUnavailable",
        message,
        "Refused to start a runner pod without scoped store credentials",
        message,
    )


def _refused(key: Key, pod: str, what: str, exc: KubeError) -> RefusedPod:
    """The API server refused a create that runner pod `pod` needs (`what` names the object):
    for good (the session fails: the RefusedPod says why), or raise what retries it."""
    message = refusal_message(exc.api_message)
    refusal = classify_refusal(exc.status, exc.reason, exc.api_message)
    answer = f"{exc.status} {exc.reason or ''}".strip()
    if refusal is Refusal.SPEC:
        logger.warning(
            "The API server refused a runner pod for good; the session fails",
            extra={"namespace": key[0], "session": key[1], "pod": pod, "error": message[:500]},
        )
        return RefusedPod(pod, f"the API server refused {what} ({answer}): {message}")
    if refusal is Refusal.OPERATOR:
        raise Held(
            OPERATOR_FORBIDDEN,
            f"the operator may not create {what} in namespace {key[0]} ({answer}: {message}): "
            "a misconfiguration of the operator's RBAC or credentials, not of this session; "
            "it retries with backoff",
            "The operator's own permissions refused a create",
            message,
        ) from exc
    if refusal is Refusal.QUOTA:
        raise Held(
            QUOTA_EXCEEDED,
            f"{what} waits for room in the namespace's ResourceQuota ({message}); the operator "
            "retries with backoff",
            "A ResourceQuota has no room for a runner pod now",
            message,
        ) from exc
    raise exc


def _describe(exc: BaseException) -> str:
    """An exception for a log line: its type always (some, like TimeoutError, say nothing else)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text[:500]}" if text else type(exc).__name__


def _latest_attempt(status: AgentSessionStatus, pods: Mapping[str, PodView]) -> int:
    """The newest attempt started, as decide() counts it (a pod may be ahead of the status)."""
    return max([status.attempts or 0, *(p.attempt for p in pods.values())])
