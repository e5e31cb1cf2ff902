"""Two operator replicas on a real control plane: one leader, a standby that takes over, a leader
that loses its Lease and stops writing, and an API server restart under a running operator.

The operators are real processes (tests/support/operator_process.py) under the operator's
ServiceAccount (config/rbac/operator.yaml, Lease Role included), on `own_cluster`: a control
plane of its own that keeps an audit log of every write, so "the standby wrote nothing" and "the
old leader wrote nothing after it lost the Lease" are read from the API server's own record (by
the User-Agent, which names the replica's holderIdentity). There is no node: runner pods stay
Pending, but a session's pod create and status write prove that a replica reconciled it.
"""

from __future__ import annotations

import datetime as dt
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.cluster import LocalCluster, wait_for
from tests.support.operator_process import (
    OPERATOR_NAMESPACE,
    OperatorProcess,
    control_plane_operator,
    operator_kubeconfig,
)

pytestmark = pytest.mark.cluster

LEASE = "agentsession-operator"
LEASE_DURATION = 10  # the operator's default (AGENTSESSION_LEADER_ELECTION_LEASE_DURATION_SECONDS)
FAILOVER_GOAL_SECONDS = 15.0
WRITES = {"create", "update", "patch", "delete", "deletecollection"}

Operators = Callable[..., OperatorProcess]


@pytest.fixture(scope="module")
def kubeconfig(own_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return operator_kubeconfig(own_cluster, tmp_path_factory.mktemp("ha") / "kubeconfig")


@pytest.fixture
def api(own_cluster: LocalCluster) -> Iterator[client.ApiClient]:
    """An admin client (not for tests that restart the API server: its pool dies with it)."""
    api_client = own_cluster.api_client()
    yield api_client
    api_client.close()


@pytest.fixture
def operators(own_cluster: LocalCluster, kubeconfig: Path, tmp_path: Path) -> Iterator[Operators]:
    """`operators(name, leader_election=True)`: a started operator; all are stopped afterwards
    and the Lease is deleted, so the next test starts without a holder to wait out."""
    started: list[OperatorProcess] = []

    def start(name: str, *, leader_election: bool = True) -> OperatorProcess:
        process = control_plane_operator(
            kubeconfig, tmp_path / name, name, leader_election=leader_election
        )
        process.start()
        started.append(process)
        return process

    yield start
    for process in started:
        # Captured: pytest shows it only for a failed test.
        print(f"--- {process.log_path.name} ---\n{process.log_tail(40)}")
        process.stop(kill=True)
    api = own_cluster.api_client()
    try:
        client.CoordinationV1Api(api).delete_namespaced_lease(LEASE, OPERATOR_NAMESPACE)
    except client.ApiException as error:
        if error.status != 404:
            raise
    finally:
        api.close()


@pytest.fixture
def namespace(own_cluster: LocalCluster) -> Iterator[str]:
    name = own_cluster.create_namespace("ha", labels={})
    yield name
    own_cluster.delete_namespace(name)


def holder(api: client.ApiClient) -> tuple[str, int] | None:
    """(holderIdentity, leaseTransitions) of the Lease, None if it does not exist yet."""
    try:
        lease = client.CoordinationV1Api(api).read_namespaced_lease(LEASE, OPERATOR_NAMESPACE)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return str(lease.spec.holder_identity or ""), int(lease.spec.lease_transitions or 0)


def identity(process: OperatorProcess) -> str:
    return str(process.readiness()[1]["identity"])


def wait_leader(api: client.ApiClient, process: OperatorProcess, timeout: float = 30.0) -> None:
    name = identity(process)
    wait_for(
        lambda: (holder(api) or ("", 0))[0] == name and process.leader_gauge() == 1,
        timeout=timeout,
        what=f"{name} to hold the Lease",
    )


def create_session(api: client.ApiClient, namespace: str) -> str:
    name = f"ha-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": "agents.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": name},
        "spec": {"prompt": "Say hello."},
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        "agents.dev", "v1alpha1", namespace, "agentsessions", body
    )
    return name


def status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    body = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "agents.dev", "v1alpha1", namespace, "agentsessions", name
    )
    return dict(body.get("status") or {})


def wait_reconciled(
    api: client.ApiClient, namespace: str, name: str, timeout: float = 30.0
) -> dict[str, Any]:
    """The session's status once a replica created its pod and wrote it."""
    return wait_for(
        lambda: (s := status(api, namespace, name)).get("podName") and s,
        timeout=timeout,
        what=f"AgentSession {name} to get its pod and status",
    )


def writes_by(
    cluster: LocalCluster, replica: str, since: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Write requests the API server received from `replica` (by its User-Agent), after `since`."""
    found = []
    for event in cluster.audit_events():
        if replica not in event.get("userAgent", "") or event.get("verb") not in WRITES:
            continue
        received = dt.datetime.fromisoformat(event["requestReceivedTimestamp"])
        if since is None or received >= since:
            found.append(event)
    return found


def test_two_replicas_elect_exactly_one_leader_and_only_it_writes(
    own_cluster: LocalCluster, api: client.ApiClient, operators: Operators, namespace: str
) -> None:
    first = operators("replica-a")
    wait_leader(api, first)
    second = operators("replica-b")
    # The standby is live and ready (it can take over), says so, and is not the leader.
    wait_for(lambda: second.readiness()[0] == 200, timeout=15, what="the standby's /readyz")
    _, body = second.readiness()
    assert body["role"] == "standby"
    assert body["holder"] == identity(first)
    assert second.leader_gauge() == 0
    leading = {"ready": True, "role": "leader", "identity": identity(first)}
    assert first.readiness() == (200, leading)

    name = create_session(api, namespace)
    wait_reconciled(api, namespace, name)
    writes = writes_by(own_cluster, identity(first))
    resources = {(e["objectRef"]["resource"], e["objectRef"].get("subresource")) for e in writes}
    assert ("pods", None) in resources
    assert ("agentsessions", "status") in resources
    assert ("leases", None) in resources
    assert writes_by(own_cluster, identity(second)) == []  # not even the Lease: it never held it
    assert (holder(api) or ("", 0))[0] == identity(first)


def test_standby_takes_over_within_the_goal_when_the_leader_is_killed(
    own_cluster: LocalCluster, api: client.ApiClient, operators: Operators, namespace: str
) -> None:
    leader = operators("replica-a")
    wait_leader(api, leader)
    standby = operators("replica-b")
    wait_for(lambda: standby.readiness()[0] == 200, timeout=15, what="the standby's /readyz")
    _, transitions = holder(api) or ("", 0)

    leader.signal(signal.SIGKILL)
    killed = time.monotonic()
    name = create_session(api, namespace)
    reconciled = wait_reconciled(api, namespace, name, timeout=60)
    failover = time.monotonic() - killed

    assert failover <= FAILOVER_GOAL_SECONDS, f"failover took {failover:.1f}s"
    assert failover >= LEASE_DURATION - 2  # the standby waited the lease out: no early grab
    assert holder(api) == (identity(standby), transitions + 1)
    assert reconciled["attempts"] == 1
    assert standby.leader_gauge() == 1
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    assert [p.metadata.name for p in pods] == [reconciled["podName"]]
    created_by = {
        e["userAgent"]
        for e in writes_by(own_cluster, "replica-")
        if e["objectRef"]["resource"] == "pods" and e["objectRef"].get("namespace") == namespace
    }
    assert len(created_by) == 1
    assert identity(standby) in created_by.pop()


def test_a_stopped_leader_releases_the_lease_for_a_quick_hand_over(
    api: client.ApiClient, operators: Operators, namespace: str
) -> None:
    leader = operators("replica-a")
    wait_leader(api, leader)
    standby = operators("replica-b")
    wait_for(lambda: standby.readiness()[0] == 200, timeout=15, what="the standby's /readyz")

    leader.signal(signal.SIGTERM)  # a rolling update or a drain
    stopped = time.monotonic()
    assert leader.wait_exit(timeout=20) == 0
    wait_leader(api, standby, timeout=LEASE_DURATION)
    hand_over = time.monotonic() - stopped
    assert hand_over < LEASE_DURATION / 2, f"hand-over took {hand_over:.1f}s"
    name = create_session(api, namespace)
    wait_reconciled(api, namespace, name)


def test_a_paused_leader_writes_nothing_once_it_lost_the_lease_and_exits(
    own_cluster: LocalCluster, api: client.ApiClient, operators: Operators, namespace: str
) -> None:
    old = operators("replica-a")
    wait_leader(api, old)
    new = operators("replica-b")
    wait_for(lambda: new.readiness()[0] == 200, timeout=15, what="the standby's /readyz")
    old_identity = identity(old)
    assert writes_by(own_cluster, old_identity), "the audit log must show the leader's writes"

    old.signal(signal.SIGSTOP)  # a partition, a long GC pause, a frozen VM: past the lease
    # Work arrives while it is paused: its watch streams hold these events for when it wakes.
    before_takeover = create_session(api, namespace)
    wait_leader(api, new, timeout=30)
    wait_reconciled(api, namespace, before_takeover)
    after_takeover = create_session(api, namespace)
    wait_reconciled(api, namespace, after_takeover)

    resumed = dt.datetime.now(dt.UTC)
    old.signal(signal.SIGCONT)
    assert old.wait_exit(timeout=30) == 1  # lost the Lease: exits, to restart as a standby
    assert "Lost the leader Lease" in old.log_path.read_text()

    assert writes_by(own_cluster, old_identity, since=resumed) == []
    for name in (before_takeover, after_takeover):
        assert status(api, namespace, name)["attempts"] == 1
    assert len(client.CoreV1Api(api).list_namespaced_pod(namespace).items) == 2
    assert (holder(api) or ("", 0))[0] == identity(new)


def test_one_replica_keeps_working_across_an_api_server_restart(
    own_cluster: LocalCluster, operators: Operators, namespace: str
) -> None:
    """Without leader election (replicaCount 1): requests fail over the outage and are retried,
    both watches (kopf's and the runner pods') come back, nothing restarts."""
    operator = operators("replica-a", leader_election=False)
    api = own_cluster.api_client()
    try:
        before = create_session(api, namespace)
        first_pod = wait_reconciled(api, namespace, before)["podName"]
    finally:
        api.close()  # its pooled connections die with the server

    outage = own_cluster.restart_apiserver()
    api = own_cluster.api_client()
    try:
        # A new session is reconciled: kopf's watch came back.
        after = create_session(api, namespace)
        wait_reconciled(api, namespace, after, timeout=60)
        # A pod deleted after the restart is noticed: the runner pod watch came back too, and
        # the session's status moves on (a lost attempt without a gateway report is charged its
        # whole reservation, so here it ends rather than retries).
        was = status(api, namespace, before)
        client.CoreV1Api(api).delete_namespaced_pod(first_pod, namespace, grace_period_seconds=0)
        wait_for(
            lambda: status(api, namespace, before) != was,
            timeout=60,
            what=f"{before} to see its pod deleted",
        )
    finally:
        api.close()
    assert operator.process is not None
    assert operator.process.poll() is None, f"exited across a {outage:.1f}s API server outage"


def test_two_replicas_keep_working_across_an_api_server_restart(
    own_cluster: LocalCluster, operators: Operators, namespace: str
) -> None:
    """With leader election: an outage longer than the renew deadline makes the leader stop and
    exit (it cannot prove it still holds the Lease; its Deployment restarts it); the standby,
    which saw the Lease unchanged for longer than its duration, takes over as soon as the API
    server answers. Either way exactly one replica leads and sessions are reconciled."""
    first = operators("replica-a")
    api = own_cluster.api_client()
    try:
        wait_leader(api, first)
        second = operators("replica-b")
        wait_for(lambda: second.readiness()[0] == 200, timeout=15, what="the standby's /readyz")
        replicas = {identity(first): first, identity(second): second}
    finally:
        api.close()

    outage = own_cluster.restart_apiserver()
    api = own_cluster.api_client()
    try:
        name = create_session(api, namespace)
        wait_reconciled(api, namespace, name, timeout=60)
        leader_identity = (holder(api) or ("", 0))[0]
        assert leader_identity in replicas
        assert replicas[leader_identity].leader_gauge() == 1
        for other, process in replicas.items():
            if other == leader_identity:
                continue
            if process.process is not None and process.process.poll() is None:
                assert process.leader_gauge() == 0
            else:  # the old leader, after an outage past its renew deadline
                assert outage > 7.0
                assert process.process is not None
                assert process.process.returncode == 1
    finally:
        api.close()


BURST = 200


def test_a_failover_in_the_middle_of_a_burst_duplicates_and_loses_nothing(
    own_cluster: LocalCluster, api: client.ApiClient, operators: Operators, namespace: str
) -> None:
    """The issue's scenario: 200 sessions created at once, the leader killed while it is busy
    with them. Every session ends up with exactly one pod (no second create by the new leader,
    which adopts what the old one made) and a status that names it."""
    leader = operators("replica-a")
    wait_leader(api, leader)
    standby = operators("replica-b")
    wait_for(lambda: standby.readiness()[0] == 200, timeout=15, what="the standby's /readyz")

    with ThreadPoolExecutor(max_workers=16) as pool:
        names = list(pool.map(lambda _: create_session(api, namespace), range(BURST)))
    custom = client.CustomObjectsApi(api)

    def reconciled() -> int:
        items = custom.list_namespaced_custom_object(
            "agents.dev", "v1alpha1", namespace, "agentsessions"
        )["items"]
        return sum(1 for item in items if (item.get("status") or {}).get("podName"))

    wait_for(lambda: reconciled() >= BURST // 4, timeout=60, what="a quarter of the burst")
    leader.signal(signal.SIGKILL)
    at_kill = reconciled()
    wait_for(lambda: reconciled() == BURST, timeout=120, what="every session of the burst")

    assert at_kill < BURST, "the burst was over before the kill: nothing was in flight"
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    assert sorted(p.metadata.name for p in pods) == sorted(f"{n}-1" for n in names)
    for name in names:
        state = status(api, namespace, name)
        assert state["podName"] == f"{name}-1"
        assert state["attempts"] == 1
    assert (holder(api) or ("", 0))[0] == identity(standby)
