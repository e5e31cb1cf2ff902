"""What the operator observes about a session's world, as small immutable values.

The controller builds these from API bodies (runner pods from its label-selected watch,
referenced sessions by a read); `decide()` reads only these, never a raw body or the API. A pod
belongs to a session by its controller ownerReference's UID, never by its name or labels: anyone
who can create pods in a namespace can copy those.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agentsession_operator.models.resource import KIND
from agentsession_operator.reconcile.admission import NOT_REQUIRED, AdmissionView

SESSION_LABEL = "agents.dev/session"
RUNNER_CONTAINER = "runner"
GATEWAY_CONTAINER = "gateway"
WORKSPACE_CONTAINER = "workspace"
ATTEMPT_LABEL = "agents.dev/attempt"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "agentsession-operator"
COMPONENT_LABEL = "app.kubernetes.io/component"
RUNNER_COMPONENT = "runner"
STARTING_REASONS = frozenset({"ContainerCreating", "PodInitializing"})
"""Container waiting reasons of a pod on its way to running (any other is a problem)."""


def parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True, slots=True)
class Owner:
    """An object's controller, from its ownerReferences (the one with `controller: true`)."""

    kind: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> Owner | None:
        for ref in metadata.get("ownerReferences") or []:
            if ref.get("controller"):
                return cls(str(ref.get("kind")), str(ref.get("name")), str(ref.get("uid")))
        return None

    def is_session(self, uid: str | None) -> bool:
        """Whether this is the AgentSession with `uid` (not merely one of the same name)."""
        return self.kind == KIND and uid is not None and self.uid == uid


@dataclass(frozen=True, slots=True)
class TakenPod:
    """A pod with a name this session's runner pods use that is not the session's own: its
    controller is something else (a StatefulSet, an earlier AgentSession of the same name) or
    nothing. Never adopted, never deleted by the operator."""

    name: str
    owner: Owner | None
    deleting: bool

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> TakenPod:
        metadata = body.get("metadata") or {}
        return cls(
            name=str(metadata.get("name")),
            owner=Owner.of(metadata),
            deleting=bool(metadata.get("deletionTimestamp")),
        )

    def goes_away_for(self, session_name: str) -> bool:
        """Whether the name frees up without anyone's help: the pod is being deleted, or it is
        the runner pod of a deleted AgentSession of the same name (the garbage collector deletes
        it within seconds)."""
        if self.deleting:
            return True
        owner = self.owner
        return owner is not None and owner.kind == KIND and owner.name == session_name

    def describe(self) -> str:
        owner = f"owned by {self.owner}" if self.owner is not None else "owned by nothing"
        if self.owner is not None and self.owner.kind == KIND:
            owner += f" (uid {self.owner.uid}, an earlier AgentSession of this name)"
        return f"{owner}{', being deleted' if self.deleting else ''}"


@dataclass(frozen=True, slots=True)
class ContainerEnd:
    """How the runner container terminated (kubelet's containerStatuses[].state.terminated)."""

    exit_code: int
    reason: str | None
    message: str | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class PodView:
    """The parts of a runner pod the operator decides on."""

    name: str
    attempt: int
    phase: str | None
    reason: str | None
    """Pod-level status.reason: Evicted, DeadlineExceeded, NodeLost, ..."""
    message: str | None
    created_at: dt.datetime | None
    deleting: bool
    running_since: dt.datetime | None
    waiting_reason: str | None
    waiting_message: str | None
    ended: ContainerEnd | None
    """The agent container's end (the runner's summary is its termination message)."""
    gateway_report: str | None = None
    """The gateway container's latest termination message: its report of the attempt (the
    current instance's if it ended, else a restarted instance's previous one)."""
    gateway_ended: bool = False
    """The gateway container (the current instance) has terminated: its report is final."""
    gateway_running: bool = False
    """The gateway container (the current instance) runs: a final report is still to come."""
    owner: Owner | None = None
    """Its controller (ownerReferences): the AgentSession whose UID it names is its session."""
    unschedulable: str | None = None
    """The scheduler's message while it finds no node for the pod (PodScheduled False,
    Unschedulable: requests larger than any node, a RuntimeClass's scheduling, ...)."""
    workspace_init: ContainerEnd | None = None
    """How the workspace init step ended (its report is the termination message), if it ran."""

    @property
    def finished(self) -> bool:
        """The container will run no more (or the pod failed without running it)."""
        return self.ended is not None or self.phase in ("Succeeded", "Failed")

    @property
    def finished_at(self) -> dt.datetime | None:
        return self.ended.finished_at if self.ended else None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> PodView | None:
        """Parse a pod body; None for pods that are not runner pods of a session."""
        metadata = body.get("metadata") or {}
        labels = metadata.get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or SESSION_LABEL not in labels:
            return None
        try:
            attempt = int(labels.get(ATTEMPT_LABEL, "0"))
        except ValueError:
            return None
        status = body.get("status") or {}
        statuses = status.get("containerStatuses") or []
        runner = next((s for s in statuses if s.get("name") == RUNNER_CONTAINER), None)
        if runner is None and statuses:
            runner = statuses[0]  # pods of an older operator had a single container
        state = (runner or {}).get("state") or {}
        terminated = state.get("terminated")
        ended = None
        if terminated:
            ended = ContainerEnd(
                exit_code=int(terminated.get("exitCode", -1)),
                reason=terminated.get("reason"),
                message=terminated.get("message"),
                started_at=parse_time(terminated.get("startedAt")),
                finished_at=parse_time(terminated.get("finishedAt")),
            )
        running = state.get("running") or {}
        waiting = state.get("waiting") or {}
        gateway: Mapping[str, Any] = next(
            (
                s
                for s in status.get("initContainerStatuses") or []
                if s.get("name") == GATEWAY_CONTAINER
            ),
            {},
        )
        gateway_state = gateway.get("state") or {}
        report = (gateway_state.get("terminated") or {}).get("message") or (
            (gateway.get("lastState") or {}).get("terminated") or {}
        ).get("message")
        gateway_waiting = gateway_state.get("waiting") or {}
        init_status: Mapping[str, Any] = next(
            (
                s
                for s in status.get("initContainerStatuses") or []
                if s.get("name") == WORKSPACE_CONTAINER
            ),
            {},
        )
        init_end = None
        init_state = init_status.get("state") or {}
        if not state or waiting.get("reason") in STARTING_REASONS:
            # The agent cannot start before its gateway and the workspace init step: while it
            # waits for them (PodInitializing), their reason (a missing API key Secret, a
            # source's missing Secret or ConfigMap, ...) is why the pod does not run.
            waiting = gateway_waiting or init_state.get("waiting") or waiting
        init_terminated = init_state.get("terminated")
        if init_terminated:
            init_end = ContainerEnd(
                exit_code=int(init_terminated.get("exitCode", -1)),
                reason=init_terminated.get("reason"),
                message=init_terminated.get("message"),
                started_at=parse_time(init_terminated.get("startedAt")),
                finished_at=parse_time(init_terminated.get("finishedAt")),
            )
        return cls(
            name=str(metadata.get("name")),
            attempt=attempt,
            phase=status.get("phase"),
            reason=status.get("reason"),
            message=status.get("message"),
            created_at=parse_time(metadata.get("creationTimestamp")),
            deleting=bool(metadata.get("deletionTimestamp")),
            running_since=parse_time(running.get("startedAt")),
            waiting_reason=waiting.get("reason"),
            waiting_message=waiting.get("message"),
            ended=ended,
            gateway_report=report,
            gateway_ended=bool(gateway_state.get("terminated")),
            gateway_running=bool(gateway_state.get("running")),
            owner=Owner.of(metadata),
            unschedulable=_unschedulable(status),
            workspace_init=init_end,
        )

    def owned_by(self, uid: str | None) -> bool:
        return self.owner is not None and self.owner.is_session(uid)

    def taken(self) -> TakenPod:
        """This pod as a name another session cannot use."""
        return TakenPod(name=self.name, owner=self.owner, deleting=self.deleting)


def _unschedulable(status: Mapping[str, Any]) -> str | None:
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            return str(condition.get("message") or "no node fits the pod")
    return None


def split_by_owner(
    pods: Iterable[PodView], uid: str | None
) -> tuple[dict[str, PodView], dict[str, TakenPod]]:
    """The session's own runner pods (by name), and the pods that merely look like them: the
    right labels and name, but a controller other than the AgentSession with `uid`."""
    own: dict[str, PodView] = {}
    taken: dict[str, TakenPod] = {}
    for pod in pods:
        if pod.owned_by(uid):
            own[pod.name] = pod
        else:
            taken[pod.name] = pod.taken()
    return own, taken


@dataclass(frozen=True, slots=True)
class RefView:
    """A session named by spec.resume.sessionRef, as far as a dependent session cares."""

    name: str
    phase: str | None
    reason: str | None
    session_id: str | None

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RefView:
        status = body.get("status") or {}
        return cls(
            name=str((body.get("metadata") or {}).get("name")),
            phase=status.get("phase"),
            reason=status.get("reason"),
            session_id=status.get("sessionId"),
        )


@dataclass(frozen=True, slots=True)
class SessionIdHolder:
    """Another non-terminal AgentSession of the namespace that runs (or is starting) the SDK
    session id a session would resume in place."""

    name: str
    phase: str | None


@dataclass(frozen=True, slots=True)
class Observed:
    """Everything decide() may look at besides the session itself."""

    pods: tuple[PodView, ...] = ()
    ref: RefView | None = None
    ref_missing: bool = False
    """spec.resume.sessionRef is set and no such AgentSession exists."""
    admission: AdmissionView = NOT_REQUIRED
    """Whether the attempt decide() would start next may start (AgentBudgets, the operator's cap
    on running sessions): from the budget controller's ledgers."""
    stored_reports: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Gateway reports read from the store, by pod name: the fallback for an attempt whose pod
    vanished (a lost node, a force delete) or ended without its report in the pod status."""
    from_sessions: Mapping[str, RefView | None] = dataclasses.field(default_factory=dict)
    """The AgentSessions spec.workspace.sources' fromSession sources name, by name (None: no
    such session)."""
    taken: Mapping[str, TakenPod] = dataclasses.field(default_factory=dict)
    """Pods, by name, that have a name this session's runner pods use but are not its own
    (`pods` holds only those). decide() never starts an attempt whose pod name is taken."""
    refused: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Runner pods, by name, whose create (or whose store Secret's) the API server refused for
    good in this pass, with the controller's explanation (the object, the API server's message):
    decide() fails the session instead of starting them."""
    namespace_uid: str | None = None
    """The UID of the session's namespace, read for a session whose status has none yet (before
    its first attempt): the store scope of everything it runs (keys.store_scope)."""
    session_id_holders: tuple[SessionIdHolder, ...] = ()
    """For a session that would resume an SDK session id in place (spec.resume without fork) and
    has not started: the other non-terminal sessions that run that id. It waits for them."""
