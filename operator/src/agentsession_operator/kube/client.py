"""Every Kubernetes API call the operator makes (besides kopf's own watches), over aiohttp.

Built once at start-up from kopf's login result and handed to the handlers through kopf's memo.
Counts every request it makes by verb, resource and status code, so the API writes the operator
causes are observable (`agentsession_operator_api_requests_total`).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import json
import os
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import kopf

from agentsession_operator.metrics import Metrics
from agentsession_operator.models.resource import API_VERSION, GROUP, KIND, PLURAL, VERSION

COMPONENT = "agentsession-operator"


class KubeError(Exception):
    """An API request failed in a way the caller cannot take as an answer."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


def in_cluster_server(env: Mapping[str, str]) -> str | None:
    """The API server address the kubelet gives every container, as client-go's InClusterConfig
    reads it; None outside a pod. kopf's own service-account login names
    `kubernetes.default.svc`, which a pod without cluster DNS (hostNetwork pods with the default
    dnsPolicy, clusters without CoreDNS) cannot resolve."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """In-cluster service account if present (at the address in_cluster_server names), else the
    kubeconfig. Used for kopf's own watches (the login handler) and for KubeClient alike."""
    info = kopf.login_with_service_account(settings=settings)
    if info is not None:
        server = in_cluster_server(os.environ)
        return dataclasses.replace(info, server=server) if server else info
    return kopf.login_with_kubeconfig(settings=settings)


def connection_info() -> kopf.ConnectionInfo:
    """The credentials KubeClient starts with (see login)."""
    info = login(kopf.OperatorSettings())
    if info is None:
        raise kopf.LoginError("no in-cluster service account and no kubeconfig found")
    return info


def _write_material(data: str | bytes, directory: str, name: str) -> str:
    """Decode base64 PEM material into a file (ssl loads client certificates only from files)."""
    target = os.path.join(directory, name)
    with open(target, "wb") as handle:
        handle.write(base64.b64decode(data))
    os.chmod(target, 0o600)
    return target


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    context = ssl.create_default_context()
    if info.ca_path:
        context.load_verify_locations(cafile=os.fsdecode(info.ca_path))
    elif info.ca_data:
        context.load_verify_locations(cadata=base64.b64decode(info.ca_data).decode())
    cert_path = os.fsdecode(info.certificate_path) if info.certificate_path else None
    key_path = os.fsdecode(info.private_key_path) if info.private_key_path else None
    if cert_path or info.certificate_data:
        # In a pod (token auth) nothing is written; a kubeconfig with embedded client
        # certificates needs a scratch directory for the moment of loading.
        with tempfile.TemporaryDirectory() as scratch:
            if cert_path is None and info.certificate_data:
                cert_path = _write_material(info.certificate_data, scratch, "tls.crt")
            if key_path is None and info.private_key_data:
                key_path = _write_material(info.private_key_data, scratch, "tls.key")
            assert cert_path is not None
            context.load_cert_chain(cert_path, key_path)
    if info.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


WATCH_READ_SECONDS = 360
"""Longer than the watches' timeoutSeconds (300) plus a bookmark interval: a silent stream
this long is a dead connection."""


def _pods_path(namespace: str | None) -> str:
    return f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"


def _network_policy_path(namespace: str, name: str) -> str:
    return f"/apis/networking.k8s.io/v1/namespaces/{namespace}/networkpolicies/{name}"


def _session_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


class KubeClient:
    """The operator's API client: sessions' status, runner pods, their Secrets and
    NetworkPolicy, events."""

    def __init__(self, info: kopf.ConnectionInfo, metrics: Metrics, connections: int) -> None:
        self._server = info.server.rstrip("/")
        self._headers = {"Accept": "application/json", **_auth_headers(info)}
        self._ssl = _ssl_context(info)
        self._metrics = metrics
        self._http: aiohttp.ClientSession | None = None
        self._watch_http: aiohttp.ClientSession | None = None
        self._instance = socket.gethostname()
        self._connections = connections

    async def __aenter__(self) -> KubeClient:
        self._http = aiohttp.ClientSession(
            headers=self._headers,
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._connections),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        # Watches hold their connection for minutes: their own pool, so they never take one
        # from the passes, and no total timeout (the server ends each watch).
        self._watch_http = aiohttp.ClientSession(
            headers=self._headers,
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, connect=30, sock_read=WATCH_READ_SECONDS),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for http in (self._http, self._watch_http):
            if http is not None:
                await http.close()
        self._http = self._watch_http = None

    async def _request(
        self,
        method: str,
        path: str,
        resource: str,
        *,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        accept: tuple[int, ...] = (),
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """Send one request; statuses in `accept` come back as answers, other errors raise."""
        assert self._http is not None, "KubeClient used outside `async with`"
        headers = {"Content-Type": content_type} if body is not None else {}
        async with self._http.request(
            method, self._server + path, json=body, headers=headers, params=params
        ) as response:
            self._metrics.api_requests.labels(method, resource, str(response.status)).inc()
            text = await response.text()
            if response.status < 300 or response.status in accept:
                try:
                    return response.status, (await response.json(content_type=None)) or {}
                except ValueError:
                    return response.status, {}
            raise KubeError(method, path, response.status, text)

    async def get_session(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, body = await self._request(
            "GET", _session_path(namespace, name), PLURAL, accept=(404,)
        )
        return None if status == 404 else body

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, body = await self._request(
            "GET", f"/api/v1/namespaces/{namespace}/pods/{name}", "pods", accept=(404,)
        )
        return None if status == 404 else body

    async def list_pods(
        self, namespace: str | None, selector: str
    ) -> tuple[list[dict[str, Any]], str]:
        """Pods matching `selector` (in `namespace`, or everywhere) and the list's version."""
        _, body = await self._request(
            "GET", _pods_path(namespace), "pods", params={"labelSelector": selector}
        )
        return list(body.get("items") or []), str(
            (body.get("metadata") or {}).get("resourceVersion")
        )

    async def watch_pods(
        self, namespace: str | None, selector: str, version: str, seconds: int
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events of the pods matching `selector` after `version`, until the server ends."""
        assert self._watch_http is not None, "KubeClient used outside `async with`"
        params = {
            "labelSelector": selector,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(seconds),
        }
        async with self._watch_http.get(
            self._server + _pods_path(namespace), params=params
        ) as response:
            self._metrics.api_requests.labels("WATCH", "pods", str(response.status)).inc()
            if response.status >= 300:
                raise KubeError(
                    "WATCH", _pods_path(namespace), response.status, await response.text()
                )
            async for event in json_lines(response.content.iter_any()):
                yield event

    async def create_pod(self, namespace: str, manifest: Mapping[str, Any]) -> bool:
        """Create the pod; False when one of that name exists (the caller reads it to see whose:
        names are deterministic, so it may be ours from a pass whose status write was lost)."""
        status, _ = await self._request(
            "POST", f"/api/v1/namespaces/{namespace}/pods", "pods", body=manifest, accept=(409,)
        )
        return status != 409

    async def create_secret(self, namespace: str, manifest: Mapping[str, Any]) -> bool:
        """Create a Secret of ours (an attempt's vended credentials); False if it exists.

        Create is the only verb the operator has on Secrets: it never reads one."""
        status, _ = await self._request(
            "POST",
            f"/api/v1/namespaces/{namespace}/secrets",
            "secrets",
            body=manifest,
            accept=(409,),
        )
        return status != 409

    async def get_network_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        status, body = await self._request(
            "GET", _network_policy_path(namespace, name), "networkpolicies", accept=(404,)
        )
        return None if status == 404 else body

    async def apply_network_policy(self, manifest: Mapping[str, Any]) -> None:
        """Server-side apply (forced: the policy is the operator's) of a NetworkPolicy, which
        creates it or makes it say what the manifest says. The RBAC allows it one name only."""
        meta = manifest["metadata"]
        await self._request(
            "PATCH",
            _network_policy_path(meta["namespace"], meta["name"]),
            "networkpolicies",
            body=manifest,
            content_type="application/apply-patch+yaml",  # JSON is YAML
            params={"fieldManager": COMPONENT, "force": "true"},
        )

    async def delete_pod(self, namespace: str, name: str) -> None:
        await self._request(
            "DELETE",
            f"/api/v1/namespaces/{namespace}/pods/{name}",
            "pods",
            body={"propagationPolicy": "Background"},
            accept=(404,),
        )

    async def patch_status(
        self,
        namespace: str,
        name: str,
        resource_version: str | None,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
    ) -> bool:
        """Replace our status fields; False if the object changed since it was read (409)."""
        status_patch: dict[str, Any] = {key: None for key in old if key not in new}
        status_patch.update(new)
        patch: dict[str, Any] = {"status": status_patch}
        if resource_version:
            patch["metadata"] = {"resourceVersion": resource_version}
        code, _ = await self._request(
            "PATCH",
            _session_path(namespace, name) + "/status",
            f"{PLURAL}/status",
            body=patch,
            content_type="application/merge-patch+json",
            accept=(404, 409),
        )
        return code < 300

    async def delete_session(self, namespace: str, name: str, uid: str | None) -> None:
        body: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        await self._request(
            "DELETE", _session_path(namespace, name), PLURAL, body=body, accept=(404, 409)
        )

    async def create_event(
        self,
        namespace: str,
        involved: Mapping[str, Any],
        type_: str,
        reason: str,
        message: str,
    ) -> None:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        name = str(involved.get("name"))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": name,
                "namespace": namespace,
                "uid": involved.get("uid"),
                "resourceVersion": involved.get("resourceVersion"),
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._request("POST", f"/api/v1/namespaces/{namespace}/events", "events", body=event)


def _auth_headers(info: kopf.ConnectionInfo) -> dict[str, str]:
    if info.token:
        return {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"}
    if info.username and info.password:
        return {"Authorization": aiohttp.BasicAuth(info.username, info.password).encode()}
    return {}


async def json_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any]]:
    """Split a watch stream into its JSON objects, however long a line is."""
    pending = bytearray()  # grows in place while a long object arrives in many chunks
    async for chunk in chunks:
        pending += chunk
        if b"\n" not in chunk:
            continue
        *lines, rest = pending.split(b"\n")
        pending = bytearray(rest)
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        with contextlib.suppress(ValueError):  # a line the server cut off when it closed
            yield json.loads(pending)
