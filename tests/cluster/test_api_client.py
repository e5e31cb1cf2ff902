"""The operator's API client (kube/client.py) against a real API server that misbehaves.

On `own_cluster` (a control plane tests may restart): a token file rotated under the client, with
the old token revoked; a request in flight while the API server restarts; and, through a small
HTTP front that answers chosen requests with 429, 5xx, a dropped connection or a lost reply
before passing the rest to the real API server, what is retried, how long it waits and what is
never sent twice.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
import yaml
from aiohttp import web
from kubernetes import client

from agentsession_operator.kube.client import Connection, KubeClient, KubeError, connection
from agentsession_operator.metrics import Metrics
from tests.support.cluster import LocalCluster, kubeconfig_document

pytestmark = pytest.mark.cluster


@pytest.fixture
def namespace(own_cluster: LocalCluster) -> Iterator[str]:
    name = own_cluster.create_namespace("client", labels={})
    yield name
    own_cluster.delete_namespace(name)


def admin(cluster: LocalCluster) -> Connection:
    return Connection(
        kopf.ConnectionInfo(
            server=cluster.server, ca_path=str(cluster.ca_file), token=cluster.token
        )
    )


def pod_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "registry.example/never-pulled:0"}]},
    }


def requests_counted(metrics: Metrics, verb: str, code: str) -> float:
    return sum(
        sample.value
        for family in metrics.api_requests.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
        and sample.labels["verb"] == verb
        and sample.labels["code"] == code
    )


# --- token rotation ------------------------------------------------------------------------------


def mint_bound_token(api: client.ApiClient, namespace: str, account: str, secret: str) -> str:
    """A token of `account` bound to Secret `secret`: deleting the Secret revokes it at once."""
    core = client.CoreV1Api(api)
    created = core.create_namespaced_secret(namespace, {"metadata": {"name": secret}})
    request = {
        "spec": {
            "expirationSeconds": 3600,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Secret",
                "name": secret,
                "uid": created.metadata.uid,
            },
        }
    }
    token = core.create_namespaced_service_account_token(account, namespace, request)
    return str(token.status.token)


def test_client_reads_a_rotated_token_from_its_file(
    own_cluster: LocalCluster, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = own_cluster.api_client()
    core = client.CoreV1Api(api)
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "rotating"}})
        rbac = client.RbacAuthorizationV1Api(api)
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "rotating-view"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "view",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": "rotating", "namespace": namespace}
                ],
            },
        )
        token_file = tmp_path / "token"
        token_file.write_text(mint_bound_token(api, namespace, "rotating", "token-a"))
        document = kubeconfig_document(
            own_cluster.server, own_cluster.ca_file.read_bytes(), "rotating", "unused"
        )
        document["users"][0]["user"] = {"tokenFile": str(token_file)}
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(document))
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        conn = connection()
        assert conn.token_file == str(token_file)
        metrics = Metrics()

        async def scenario() -> None:
            async with KubeClient(conn, metrics, 2) as kube:
                items, _ = await kube.list_pods(namespace, "a=b")
                assert items == []
                # The kubelet rotates the token; the old one is revoked.
                old = token_file.read_text()
                token_file.write_text(mint_bound_token(api, namespace, "rotating", "token-b"))
                core.delete_namespaced_secret("token-a", namespace)
                await until_refused(own_cluster, old)
                items, _ = await kube.list_pods(namespace, "a=b")
                assert items == []

        asyncio.run(scenario())
        # The one refusal was answered by reading the file again, and the retry went through.
        assert requests_counted(metrics, "GET", "401") == 1
        assert requests_counted(metrics, "GET", "200") == 2
    finally:
        api.close()


async def until_refused(cluster: LocalCluster, token: str) -> None:
    """Poll until the API server refuses `token` (revocation is immediate, but poll anyway)."""
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while True:
            async with http.get(
                f"{cluster.server}/api",
                headers={"Authorization": f"Bearer {token}"},
                ssl=context,
            ) as response:
                if response.status == 401:
                    return
            assert time.monotonic() < deadline, "the revoked token is still accepted"
            await asyncio.sleep(0.2)  # polling with a deadline


# --- an API server restart -------------------------------------------------------------------


def test_a_request_in_flight_survives_an_api_server_restart(
    own_cluster: LocalCluster, namespace: str
) -> None:
    # The client runs in a thread of its own: the API server must be started again from this
    # (main) thread, since its processes die with the thread that started them (PDEATHSIG).
    created, server_down = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def client_side() -> None:
        async def scenario() -> None:
            async with KubeClient(admin(own_cluster), Metrics(), 2) as kube:
                assert await kube.create_pod(namespace, pod_manifest("before"))
                created.set()
                await asyncio.to_thread(server_down.wait, 30)
                outcome["asked"] = time.monotonic()
                items, _ = await kube.list_pods(namespace, "app!=none")
                outcome["answered"] = time.monotonic()
                outcome["items"] = [p["metadata"]["name"] for p in items]
                # Writes too, after the restart, on the client's pooled connections.
                outcome["created"] = await kube.create_pod(namespace, pod_manifest("after"))

        asyncio.run(scenario())

    thread = threading.Thread(target=client_side)
    thread.start()
    assert created.wait(timeout=30)
    own_cluster.stop_apiserver()
    server_down.set()
    time.sleep(1.0)  # the outage's length, not synchronisation: the listing fails meanwhile
    restarted = time.monotonic()
    own_cluster.start_apiserver()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert outcome["asked"] < restarted < outcome["answered"], "the request was not in flight"
    assert outcome["items"] == ["before"]
    assert outcome["created"] is True


# --- 429, 5xx and lost replies through a front --------------------------------------------------


@dataclass
class Fault:
    """Answer the next `times` requests whose method and path match with `action`."""

    method: str
    path_part: str
    action: str
    """'429', '503', '500': that status (429/503 with Retry-After: `retry_after`); 'drop': close
    the connection without a reply; 'lose-reply': pass the request on, then answer 504 instead
    of the API server's reply (the request took effect; the client cannot know)."""
    times: int = 1
    retry_after: str | None = None


@dataclass
class ApiFront:
    """A plain-HTTP server in front of the real API server (as the admin), with faults."""

    cluster: LocalCluster
    faults: list[Fault] = field(default_factory=list)
    seen: list[tuple[str, str, float]] = field(default_factory=list)
    """(method, path, monotonic time) of every request the front received."""
    url: str = ""
    _runner: web.AppRunner | None = None
    _http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiFront:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        context = ssl.create_default_context(cafile=str(self.cluster.ca_file))
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._http is not None
        assert self._runner is not None
        await self._http.close()
        await self._runner.cleanup()

    def count(self, method: str, path_part: str) -> int:
        return sum(1 for m, p, _ in self.seen if m == method and path_part in p)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, time.monotonic()))
        fault = next(
            (
                f
                for f in self.faults
                if f.times > 0 and f.method == request.method and f.path_part in request.path
            ),
            None,
        )
        if fault is not None:
            fault.times -= 1
            if fault.action == "drop":
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            if fault.action != "lose-reply":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                return web.Response(status=int(fault.action), headers=headers, text="{}")
        assert self._http is not None
        body = await request.read()
        async with self._http.request(
            request.method,
            self.cluster.server + request.path_qs,
            data=body or None,
            headers={
                "Authorization": f"Bearer {self.cluster.token}",
                "Content-Type": request.headers.get("Content-Type", "application/json"),
            },
        ) as upstream:
            payload = await upstream.read()
            status = upstream.status
        if fault is not None and fault.action == "lose-reply":
            return web.Response(status=504, text="{}")
        return web.Response(body=payload, status=status, content_type="application/json")


def through_front(
    cluster: LocalCluster,
    faults: list[Fault],
    work: Callable[[KubeClient], Awaitable[Any]],
) -> tuple[ApiFront, Any]:
    async def scenario() -> tuple[ApiFront, Any]:
        async with ApiFront(cluster, faults) as front:
            info = kopf.ConnectionInfo(server=front.url)
            async with KubeClient(Connection(info), Metrics(), 2) as kube:
                return front, await work(kube)

    return asyncio.run(scenario())


def test_429_is_retried_after_the_time_the_server_asked_for(
    own_cluster: LocalCluster, namespace: str
) -> None:
    faults = [Fault("GET", "/pods", "429", times=2, retry_after="1")]
    front, (items, _) = through_front(
        own_cluster, faults, lambda kube: kube.list_pods(namespace, "a=b")
    )
    assert items == []
    times = [t for m, p, t in front.seen if m == "GET" and "/pods" in p]
    assert len(times) == 3
    assert times[1] - times[0] >= 1.0
    assert times[2] - times[1] >= 1.0


def test_5xx_and_dropped_connections_are_retried_for_reads(
    own_cluster: LocalCluster, namespace: str
) -> None:
    faults = [
        Fault("GET", "/pods", "503", times=1),
        Fault("GET", "/pods", "500", times=1),
        Fault("GET", "/pods", "drop", times=1),
    ]
    front, (items, _) = through_front(
        own_cluster, faults, lambda kube: kube.list_pods(namespace, "a=b")
    )
    assert items == []
    assert front.count("GET", "/pods") == 4


def test_a_pod_create_whose_reply_was_lost_is_retried_and_adopted(
    own_cluster: LocalCluster, namespace: str
) -> None:
    name = f"lost-{uuid.uuid4().hex[:6]}"
    faults = [Fault("POST", "/pods", "lose-reply")]
    front, created = through_front(
        own_cluster, faults, lambda kube: kube.create_pod(namespace, pod_manifest(name))
    )
    # The first create took effect; its retry found the pod (409): ours, adopted, one pod.
    assert created is False
    assert front.count("POST", "/pods") == 2
    api = own_cluster.api_client()
    try:
        pods = client.CoreV1Api(api).list_namespaced_pod(namespace).items
    finally:
        api.close()
    assert [p.metadata.name for p in pods] == [name]


def test_an_event_is_never_sent_twice_after_an_ambiguous_failure(
    own_cluster: LocalCluster, namespace: str
) -> None:
    involved = {"name": "some-session", "uid": str(uuid.uuid4()), "resourceVersion": "1"}

    async def post(kube: KubeClient) -> str:
        try:
            await kube.create_event(namespace, involved, "Normal", "Tested", "once")
        except KubeError as error:
            return f"HTTP {error.status}"
        return "created"

    front, outcome = through_front(own_cluster, [Fault("POST", "/events", "lose-reply")], post)
    assert outcome == "HTTP 504"
    assert front.count("POST", "/events") == 1  # a retry could have made a second Event
    # A 429 means the server did nothing: that is retried even for an Event.
    front, outcome = through_front(
        own_cluster, [Fault("POST", "/events", "429", retry_after="0")], post
    )
    assert outcome == "created"
    assert front.count("POST", "/events") == 2


def test_retries_are_bounded(own_cluster: LocalCluster, namespace: str) -> None:
    faults = [Fault("GET", "/pods", "503", times=100, retry_after="0")]

    async def listing(kube: KubeClient) -> str:
        try:
            await kube.list_pods(namespace, "a=b")
        except KubeError as error:
            return f"HTTP {error.status}"
        return "listed"

    front, outcome = through_front(own_cluster, faults, listing)
    assert outcome == "HTTP 503"
    assert front.count("GET", "/pods") == 8


def test_client_errors_are_answers_not_retries(own_cluster: LocalCluster, namespace: str) -> None:
    front, found = through_front(
        own_cluster, [], lambda kube: kube.get_pod(namespace, "no-such-pod")
    )
    assert found is None
    assert front.count("GET", "/pods/no-such-pod") == 1
