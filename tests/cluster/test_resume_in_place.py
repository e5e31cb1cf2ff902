"""A resume in place (spec.resume without fork) of an SDK session that another session runs waits,
with the operator as a real process on a control plane of its own.

There is no node: runner pods stay Pending, so a session whose pod was created stays Running for
as long as the test needs, which is exactly the "still running" source. Two followers created at
once must not both start: exactly one runs the id once the source is gone, the other waits for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.cluster import LocalCluster, wait_for
from tests.support.operator_process import (
    NETWORK_POLICY_ENV,
    OperatorProcess,
    control_plane_operator,
    operator_kubeconfig,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def operator(own_cluster: LocalCluster, tmp_path: Path) -> Iterator[OperatorProcess]:
    kubeconfig = operator_kubeconfig(own_cluster, tmp_path / "kubeconfig")
    process = control_plane_operator(
        kubeconfig, tmp_path / "operator", "resume", leader_election=False, env=NETWORK_POLICY_ENV
    )
    process.start()
    yield process
    print(process.log_tail(40))  # shown for a failed test only
    process.stop(kill=True)


@pytest.fixture
def api(own_cluster: LocalCluster, operator: OperatorProcess) -> Iterator[client.CustomObjectsApi]:
    api_client = own_cluster.api_client()
    yield client.CustomObjectsApi(api_client)
    api_client.close()


@pytest.fixture
def namespace(own_cluster: LocalCluster) -> Iterator[str]:
    name = own_cluster.create_namespace("resume", labels={})
    yield name
    own_cluster.delete_namespace(name)


def create(api: client.CustomObjectsApi, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {
        "apiVersion": "agents.dev/v1alpha1",
        "kind": "AgentSession",
        "metadata": {"name": name},
        "spec": {"prompt": "Go on.", **spec},
    }
    api.create_namespaced_custom_object("agents.dev", "v1alpha1", namespace, "agentsessions", body)


def status(api: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    body = api.get_namespaced_custom_object(
        "agents.dev", "v1alpha1", namespace, "agentsessions", name
    )
    return dict(body.get("status") or {})


def reason(found: dict[str, Any]) -> str | None:
    return next(
        (c["reason"] for c in found.get("conditions", []) if c["type"] == "Succeeded"), None
    )


def waiting_for(api: client.CustomObjectsApi, namespace: str, name: str, holder: str) -> None:
    def check() -> bool:
        found = status(api, namespace, name)
        return (
            found.get("phase") == "Pending"
            and reason(found) == "SessionIdInUse"
            and f"waiting for AgentSession {holder} (" in found.get("message", "")
        )

    wait_for(check, timeout=30, what=f"{name} to wait for {holder}")


def test_resumes_in_place_wait_for_the_session_that_runs_the_id_and_never_run_together(
    api: client.CustomObjectsApi, namespace: str
) -> None:
    create(api, namespace, "source", {})
    source = wait_for(
        lambda: (s := status(api, namespace, "source")).get("podName") and s,
        timeout=30,
        what="source to get its pod",
    )
    session_id = source["sessionId"]
    assert source["phase"] == "Running"

    resume = {"resume": {"sessionId": session_id}}
    create(api, namespace, "follower-a", resume)
    create(api, namespace, "follower-b", resume)
    create(api, namespace, "brancher", {"resume": {"sessionId": session_id, "fork": True}})
    for follower in ("follower-a", "follower-b"):
        waiting_for(api, namespace, follower, "source")
    # A fork writes its own id: it starts at once, next to the running source.
    brancher = wait_for(
        lambda: (s := status(api, namespace, "brancher")).get("podName") and s,
        timeout=30,
        what="the fork to get its pod",
    )
    assert brancher["sessionId"] != session_id
    for follower in ("follower-a", "follower-b"):
        assert "attempts" not in status(api, namespace, follower)

    # The source goes: one follower runs the id in place, the other now waits for that one.
    api.delete_namespaced_custom_object(
        "agents.dev", "v1alpha1", namespace, "agentsessions", "source"
    )

    def one_started() -> str | None:
        started = [
            name
            for name in ("follower-a", "follower-b")
            if status(api, namespace, name).get("attempts")
        ]
        return started[0] if len(started) == 1 else None

    first = wait_for(one_started, timeout=30, what="one follower to start")
    second = "follower-b" if first == "follower-a" else "follower-a"
    assert status(api, namespace, first)["sessionId"] == session_id
    waiting_for(api, namespace, second, first)
    assert "attempts" not in status(api, namespace, second)
