"""The operator's runner-pod watch against the real API server: label-selected LIST + WATCH that
reports every change and recovers, by listing again, from a connection cut mid-watch.

Run by `make test` / `pytest tests/cluster` (marker `cluster`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import kopf
import pytest
from kubernetes import client

from agentsession_operator.kube.client import Connection, KubeClient
from agentsession_operator.kube.pods import Key, RunnerPods
from agentsession_operator.metrics import Metrics
from agentsession_operator.reconcile.observed import PodView
from tests.support.cluster import LocalCluster, restricted_pod
from tests.support.tcp_proxy import ToggleProxy

pytestmark = pytest.mark.cluster


# Only watched, never run: the node may try to pull it and fail, which changes nothing here.
IMAGE = "registry.example/never-pulled:0"


def runner_pod(name: str, session: str) -> dict[str, Any]:
    pod = restricted_pod(name, ["sleep", "300"], image=IMAGE)
    pod["metadata"]["labels"] = {
        "app.kubernetes.io/managed-by": "agentsession-operator",
        "agents.dev/session": session,
        "agents.dev/attempt": name.rsplit("-", 1)[1],
    }
    return pod


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds; fail after 30 s."""
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)  # polling with a deadline


def names(pods: RunnerPods, key: Key) -> set[str]:
    return {p.name for p in pods.of(key)}


def test_runner_pods_follow_the_api_and_recover_from_a_cut_watch(
    local_cluster: LocalCluster, namespace: str
) -> None:
    core = client.CoreV1Api(local_cluster.api_client())
    api = urlparse(local_cluster.server)
    proxy = ToggleProxy("127.0.0.1", int(api.port or 443))
    info = kopf.ConnectionInfo(
        server=f"https://127.0.0.1:{proxy.port}",
        ca_path=str(local_cluster.ca_file),
        token=local_cluster.token,
    )
    changes: list[tuple[Key, str | None]] = []

    def changed(key: Key, view: PodView | None) -> None:
        changes.append((key, view.name if view else None))

    async def create(manifest: dict[str, Any]) -> None:
        await asyncio.to_thread(core.create_namespaced_pod, namespace, manifest)

    async def delete(name: str) -> None:
        await asyncio.to_thread(core.delete_namespaced_pod, name, namespace, grace_period_seconds=0)

    async def scenario() -> None:
        await create(runner_pod("listed-1", "listed"))
        async with KubeClient(Connection(info), Metrics(), connections=4) as kube:
            pods = RunnerPods(kube, [namespace], changed)
            follower = asyncio.create_task(pods.run())
            try:
                await asyncio.wait_for(pods.synced.wait(), 30)
                assert names(pods, (namespace, "listed")) == {"listed-1"}
                # Only runner pods reach the operator: the selector is applied by the server.
                await create(restricted_pod("unrelated", ["sleep", "300"], image=IMAGE))
                await create(runner_pod("watched-1", "watched"))
                await eventually(
                    lambda: "watched-1" in names(pods, (namespace, "watched")), "ADDED"
                )
                assert len(pods) == 2

                # The connection breaks; meanwhile one pod goes away and another arrives.
                proxy.down()
                await delete("listed-1")
                await create(runner_pod("watched-2", "watched"))
                proxy.up()
                await eventually(
                    lambda: (
                        names(pods, (namespace, "watched")) == {"watched-1", "watched-2"}
                        and not pods.of((namespace, "listed"))
                    ),
                    "the state after the outage",
                )
                assert ((namespace, "listed"), None) in changes
                assert ((namespace, "watched"), "watched-2") in changes

                # A plain watch event for a deletion, too.
                await delete("watched-1")
                await eventually(
                    lambda: names(pods, (namespace, "watched")) == {"watched-2"}, "DELETED"
                )
                assert not follower.done()
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        proxy.close()
