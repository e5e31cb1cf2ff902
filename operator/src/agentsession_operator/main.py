"""`agentsession-operator`: the operator's entry point (the operator image's command).

Reads the settings from `AGENTSESSION_*`, sets up JSON logging, serves metrics and health, and
runs kopf with our handlers (kopf's standalone mode: no kopf peering). With leader election on
(AGENTSESSION_LEADER_ELECTION, the chart's default with two replicas) it first waits as a standby
until it holds the Lease, then runs kopf while renewing it; a replica that loses the Lease stops
writing at once (the fence) and exits 1, so its Deployment restarts it as a standby, and one
stopped by SIGTERM releases the Lease so a standby takes over at its next look.
"""

from __future__ import annotations

import sys

# kopf imports the kubernetes clients when they are installed (as in a dev venv, or an image that
# adds them), to recognise their objects; the operator never uses them and they cost ~40 MB of
# resident memory. Marking them absent before kopf loads keeps them out of this process.
for _client in ("kubernetes", "kubernetes_asyncio"):
    sys.modules.setdefault(_client, None)  # type: ignore[arg-type]

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping  # noqa: E402

import kopf  # noqa: E402
import prometheus_client  # noqa: E402
from pydantic import ValidationError  # noqa: E402
from pydantic_core import ErrorDetails  # noqa: E402

from agentsession_contract import logs  # noqa: E402
from agentsession_operator.health import HealthServer  # noqa: E402
from agentsession_operator.kube.client import KubeClient, connection, own_namespace  # noqa: E402
from agentsession_operator.kube.leader import (  # noqa: E402
    ElectionConfig,
    LeaderElector,
    candidate_identity,
)
from agentsession_operator.metrics import Metrics  # noqa: E402
from agentsession_operator.settings import OperatorSettings  # noqa: E402

logger = logging.getLogger("agentsession_operator")

LOST_LEASE_EXIT_CODE = 1
STOP_AFTER_LOSS_SECONDS = 10.0
"""How long kopf gets to wind down after the Lease was lost (writes are fenced already)."""


JSON_NESTING_RECURSION_LIMIT = 50_000
"""Python's recursion limit in the operator. The API server stores JSON nested up to 10,000
levels (spec.outputFormat.schema is free-form, and CEL cannot bound its depth); with Python's
default (1,000) the JSON parser gives up at about 1,000, so one such AgentSession would make
kopf's watch of all of them fail, and the operator with it. 10,000 levels take about 2 MB of the
main thread's C stack (8 MB by default); the operator fails such a session (InvalidSpec)."""


def main() -> int:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), JSON_NESTING_RECURSION_LIMIT))
    logs.configure(
        bound=frozenset(
            {"namespace", "session", "pod", "reason", "error", "lease", "holder", "identity"}
        )
    )
    try:
        settings = OperatorSettings()
    except ValidationError as exc:
        problems = "; ".join(_problem(err) for err in exc.errors(include_url=False))
        print(f"agentsession-operator: invalid settings: {problems}", file=sys.stderr)
        return 2
    import agentsession_operator.handlers  # noqa: F401  (registers the handlers with kopf)

    return asyncio.run(run(settings))


async def run(settings: OperatorSettings) -> int:
    metrics = Metrics()
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port, registry=metrics.registry)
    identity = candidate_identity(os.environ.get("POD_NAME"), socket.gethostname())
    memo = kopf.Memo()
    memo["settings"] = settings
    memo["metrics"] = metrics
    memo["identity"] = identity
    started = asyncio.Event()
    """Raised by kopf once the start-up handler has run (the controller exists)."""
    elector: LeaderElector | None = None

    def readiness() -> tuple[bool, Mapping[str, object]]:
        if elector is None:
            return started.is_set(), {"role": "leader"}
        if elector.leading():
            return started.is_set(), {"role": "leader", "identity": identity}
        contact = elector.last_contact
        fresh = contact is not None and (
            time.monotonic() - contact < settings.leader_election_lease_duration_seconds
        )
        return fresh, {"role": "standby", "identity": identity, "holder": elector.holder}

    health = HealthServer(settings.health_port, readiness)
    if settings.health_port:
        await health.start()
    try:
        if not settings.leader_election:
            metrics.leader.set(1)
            return await _operate(settings, memo, started, keeper=None)
        namespace = settings.leader_election_namespace or own_namespace()
        if not namespace:
            print(
                "agentsession-operator: invalid settings: AGENTSESSION_LEADER_ELECTION_NAMESPACE "
                "is required outside a pod (no service account namespace to default to)",
                file=sys.stderr,
            )
            return 2
        config = ElectionConfig(
            namespace=namespace,
            name=settings.leader_election_lease_name,
            lease_duration_seconds=settings.leader_election_lease_duration_seconds,
            renew_deadline_seconds=settings.leader_election_renew_deadline_seconds,
            retry_period_seconds=settings.leader_election_retry_period_seconds,
        )
        # Two connections: a read and a write of the Lease, never queued behind anything.
        async with KubeClient(connection(), metrics, 2, identity=identity) as lease_client:
            elector = LeaderElector(lease_client, config, identity, metrics)
            memo["fence"] = elector.leading
            if not await _acquire_unless_stopped(elector):
                return 0  # SIGTERM while a standby: nothing to hand over
            keeper = asyncio.create_task(elector.keep_leading(), name="leader lease renewal")
            code = await _operate(settings, memo, started, keeper=keeper)
            if code == 0:
                await elector.release()
            return code
    finally:
        await health.stop()


async def _acquire_unless_stopped(elector: LeaderElector) -> bool:
    """Wait as a standby until the Lease is ours (True) or SIGTERM/SIGINT arrives (False).

    kopf installs its own signal handlers once it runs; until then these stop a standby."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    acquiring = asyncio.create_task(elector.acquire(), name="leader lease acquisition")
    stopping = asyncio.create_task(stop.wait(), name="standby stop")
    await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (acquiring, stopping):
        task.cancel()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    if stop.is_set() or not acquiring.done() or acquiring.cancelled():
        return False
    acquiring.result()  # a bug in acquire() must not pass for holding the Lease
    return True


async def _operate(
    settings: OperatorSettings,
    memo: kopf.Memo,
    started: asyncio.Event,
    keeper: asyncio.Task[None] | None,
) -> int:
    """Run kopf until it stops (SIGTERM: 0) or the Lease is lost (1)."""
    operator = asyncio.create_task(
        kopf.operator(
            standalone=True,
            clusterwide=not settings.watch_namespaces,
            namespaces=settings.watch_namespaces,
            memo=memo,
            ready_flag=started,
        ),
        name="kopf",
    )
    waiting: set[asyncio.Task[None]] = {operator} if keeper is None else {operator, keeper}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if keeper is not None and keeper.done() and not operator.done():
        # The fence refuses writes already; stop kopf as SIGTERM does. (kopf's stop_flag would
        # leave its flag waiter behind on a signal, which holds every stop for 5 s.)
        signal.raise_signal(signal.SIGTERM)
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(operator, STOP_AFTER_LOSS_SECONDS)
        return LOST_LEASE_EXIT_CODE
    if keeper is not None:
        keeper.cancel()
    with contextlib.suppress(asyncio.CancelledError):  # as kopf.run() does: a normal stop
        await operator
    return 0


def _problem(error: ErrorDetails) -> str:
    """`AGENTSESSION_<FIELD>[.path]: message` for one validation error (the variable to fix)."""
    field, *path = error["loc"] or ("",)
    if not field:
        # A check across settings: its message names the variables.
        return str(error["msg"]).removeprefix("Value error, ")
    where = f"AGENTSESSION_{str(field).upper()}"
    where += "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path)
    return f"{where}: {error['msg']}"


if __name__ == "__main__":
    sys.exit(main())
