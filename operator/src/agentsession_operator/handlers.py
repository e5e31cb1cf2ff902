"""The kopf handlers: thin wiring from watch events to `Controller.reconcile()`.

Imported by `agentsession_operator.main` (importing registers them with kopf). Only event
handlers and indexes are used: kopf then writes nothing of its own to our objects (no
finalizers, no progress annotations, no status fields), so the status API stays ours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf
import prometheus_client

from agentsession_operator.controller import Controller
from agentsession_operator.kube.client import KubeClient, connection_info
from agentsession_operator.metrics import Metrics
from agentsession_operator.models.resource import GROUP, PLURAL, VERSION
from agentsession_operator.reconcile.decide import TERMINAL_PHASES
from agentsession_operator.reconcile.observed import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    SESSION_LABEL,
    PodView,
    RefView,
)
from agentsession_operator.settings import OperatorSettings

RUNNER_PODS = {MANAGED_BY_LABEL: MANAGED_BY}


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
    metrics = Metrics()
    if operator_settings.metrics_port:
        prometheus_client.start_http_server(
            operator_settings.metrics_port, registry=metrics.registry
        )
    client = KubeClient(connection_info(), metrics)
    await client.__aenter__()
    controller = Controller(operator_settings, client, metrics)
    memo["controller"] = controller
    memo["timers"] = asyncio.create_task(controller.run_timers())


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    timers = memo.get("timers")
    if timers is not None:
        timers.cancel()
    controller: Controller | None = memo.get("controller")
    if controller is not None:
        await controller.client.close()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.index("pods", labels=RUNNER_PODS)
def runner_pods(body: kopf.Body, namespace: str | None, labels: Mapping[str, str], **_: Any) -> Any:
    view = PodView.from_body(body)
    return {(str(namespace), labels[SESSION_LABEL]): view} if view is not None else None


@kopf.index(GROUP, VERSION, PLURAL)
def sessions_by_name(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    return {(str(namespace), name): RefView.from_body(body)}


@kopf.index(GROUP, VERSION, PLURAL)
def waiting_on(
    spec: kopf.Spec, status: kopf.Status, namespace: str | None, name: str, **_: Any
) -> Any:
    """Sessions that wait for another to finish, keyed by the one they wait for."""
    ref = (spec.get("resume") or {}).get("sessionRef")
    if ref and status.get("phase") not in TERMINAL_PHASES:
        return {(str(namespace), ref): name}
    return None


@kopf.on.event(GROUP, VERSION, PLURAL)
async def session_changed(
    type: str,
    body: kopf.Body,
    namespace: str | None,
    name: str,
    status: kopf.Status,
    memo: Any,
    **kwargs: Any,
) -> None:
    controller: Controller = memo["controller"]
    controller.attach_indexes(kwargs["runner_pods"], kwargs["sessions_by_name"])
    key = (str(namespace), name)
    if type == "DELETED":
        controller.forget(key)
        return
    await controller.reconcile(body)
    if status.get("phase") in TERMINAL_PHASES:
        for waiter in kwargs["waiting_on"].get(key, ()):
            controller.requeue((key[0], waiter))


@kopf.on.event("pods", labels=RUNNER_PODS)
async def runner_pod_changed(
    namespace: str | None, labels: Mapping[str, str], memo: Any, **kwargs: Any
) -> None:
    controller: Controller = memo["controller"]
    controller.attach_indexes(kwargs["runner_pods"], kwargs["sessions_by_name"])
    session = labels.get(SESSION_LABEL)
    if session:
        controller.requeue((str(namespace), session))


logging.getLogger("kopf.objects").setLevel(logging.WARNING)
