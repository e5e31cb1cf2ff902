"""The kopf handlers: thin wiring from AgentSession watch events to `Controller.reconcile()`.

Imported by `agentsession_operator.main` (importing registers them with kopf). Only event
handlers are used: kopf then writes nothing of its own to our objects (no
finalizers, no progress annotations, no status fields), so the status API stays ours. Runner
pods are not kopf's: the controller follows them with its own label-selected watch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from agentsession_operator.controller import Controller
from agentsession_operator.kube.client import KubeClient, connection
from agentsession_operator.kube.client import login as kube_login
from agentsession_operator.metrics import Metrics
from agentsession_operator.models.budget import PLURAL as BUDGETS
from agentsession_operator.models.resource import GROUP, PLURAL, VERSION
from agentsession_operator.reconcile.decide import TERMINAL_PHASES
from agentsession_operator.settings import OperatorSettings
from agentsession_operator.store_access import StoreAccess


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.posting.enabled = False  # our own Events only: kopf's would be API writes too
    settings.watching.server_timeout = 300
    settings.networking.error_backoffs = [1, 2, 5, 10]
    # Per-object workers (a task, a queue, the last body) linger this long after an event;
    # kopf's 5 s default holds tens of MB at 10,000 sessions for no benefit here.
    settings.queueing.idle_timeout = 0.5
    operator_settings: OperatorSettings = memo["settings"]
    # With named namespaces there is nothing to discover, and the least-privilege Roles do not
    # allow listing namespaces (kopf would retry and log errors before falling back). The CRD
    # must then exist before the operator starts, which the chart guarantees.
    settings.scanning.disabled = bool(operator_settings.watch_namespaces)
    metrics: Metrics = memo["metrics"]
    # A running per-object worker holds a task, kopf's wrappers and our pass; past this many, a
    # burst of new sessions waits in kopf's queue as bare watch events, which cost less.
    settings.queueing.worker_limit = 4 * operator_settings.max_concurrent_reconciles
    # With leader election, main.py runs this only once the replica holds the Lease, and every
    # write the client makes is checked against it first (the fence).
    client = KubeClient(
        connection(settings),
        metrics,
        operator_settings.max_concurrent_reconciles,
        fence=memo.get("fence"),
        identity=memo.get("identity"),
    )
    await client.__aenter__()
    store = None
    if operator_settings.store_role_arn:
        store = StoreAccess(
            operator_settings.store_url,
            operator_settings.store_role_arn,
            s3_endpoint_url=operator_settings.s3_endpoint_url,
            sts_endpoint_url=operator_settings.store_sts_endpoint_url,
            region=operator_settings.s3_region,
            max_duration_seconds=operator_settings.store_credentials_max_seconds,
        )
    controller = Controller(operator_settings, client, metrics, store=store)
    memo["controller"] = controller
    memo["waiters"] = Waiters()
    memo["tasks"] = [
        asyncio.create_task(controller.run_timers(), name="requeue timers"),
        asyncio.create_task(controller.pods.run(), name="runner pod watch"),
        asyncio.create_task(controller.budgets.run(), name="admission passes"),
    ]
    for task in memo["tasks"]:
        task.add_done_callback(_background_task_ended)


def _background_task_ended(task: asyncio.Task[None]) -> None:
    """These tasks run until cleanup cancels them; one that ends otherwise is a bug: say so."""
    if not task.cancelled():
        logging.getLogger("agentsession_operator").critical(
            f"The operator's {task.get_name()} task ended", exc_info=task.exception()
        )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.get("tasks", ()):
        task.cancel()
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        await controller.client.close()


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo | None:
    return kube_login(settings)


class Waiters:
    """Sessions that wait for another to finish (`resume.sessionRef`), keyed by the one they
    wait for, so its end requeues them at once. Kept from the event stream here rather than as a
    kopf index: kopf holds every handler until each object of its first listing has been indexed
    by a worker of its own, so with more sessions than `worker_limit` workers at start (a
    failover or restart under load) it would never run a handler at all. A waiter missed here
    (its event not seen yet) still finds its reference finished on its own next pass."""

    def __init__(self) -> None:
        self._by_target: dict[tuple[str, str], set[str]] = {}

    def update(
        self, namespace: str, name: str, spec: Mapping[str, Any], phase: object, gone: bool
    ) -> None:
        ref = (spec.get("resume") or {}).get("sessionRef")
        if not ref:
            return
        target = (namespace, str(ref))
        waiting = self._by_target.setdefault(target, set())
        if gone or phase in TERMINAL_PHASES:
            waiting.discard(name)
        else:
            waiting.add(name)
        if not waiting:
            del self._by_target[target]

    def of(self, namespace: str, name: str) -> tuple[str, ...]:
        return tuple(self._by_target.get((namespace, name), ()))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def session_changed(
    type: str,
    body: kopf.Body,
    spec: kopf.Spec,
    namespace: str | None,
    name: str,
    status: kopf.Status,
    memo: Any,
    **_: Any,
) -> None:
    controller: Controller = memo["controller"]
    waiters: Waiters = memo["waiters"]
    key = (str(namespace), name)
    waiters.update(key[0], name, spec, status.get("phase"), gone=type == "DELETED")
    if type == "DELETED":
        controller.forget(key)
        await controller.budgets.session_gone(str(namespace), body.get("metadata", {}).get("uid"))
        return
    controller.budgets.session_seen(body)
    await controller.reconcile(body)
    if status.get("phase") in TERMINAL_PHASES:
        for waiter in waiters.of(*key):
            controller.requeue((key[0], waiter))


@kopf.on.event(GROUP, VERSION, BUDGETS)
async def budget_changed(
    type: str, body: kopf.Body, namespace: str | None, name: str, memo: Any, **_: Any
) -> None:
    """AgentBudgets feed the budget controller's cache: a new or changed spec (a raised limit)
    makes an admission pass; the operator's own status writes come back here too."""
    controller: Controller = memo["controller"]
    if type == "DELETED":
        controller.budgets.budget_gone(str(namespace), name)
    else:
        controller.budgets.budget_seen(body)


logging.getLogger("kopf.objects").setLevel(logging.WARNING)
